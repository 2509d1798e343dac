import pytest

from sae.corpus import iter_corpus
from sae.pii import luhn_valid, tag_pii


def found(text):
    return [(text[s.start : s.end], s.type) for s in tag_pii(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mail john.doe+x@example.co.uk today", [("john.doe+x@example.co.uk", "email")]),
        ("call (591)341-7776 now", [("(591)341-7776", "phone")]),
        ("or +1-464-787-0596x40235.", [("+1-464-787-0596x40235", "phone")]),
        ("or 268.859.5748", [("268.859.5748", "phone")]),
        ("in London: +44 20 7946 0958", [("+44 20 7946 0958", "phone")]),
        ("card 4111 1111 1111 1111 ok", [("4111 1111 1111 1111", "card")]),
        ("host 192.168.0.1 is up", [("192.168.0.1", "ip")]),
        ("at 66907 Griffith Forks Apt. 500, ok", [("66907 Griffith Forks Apt. 500", "address")]),
        ("send to 42 Elm St. please", [("42 Elm St.", "address")]),
        ("Haley Rhodes wrote", [("Haley Rhodes", "name")]),
        ("Hi, my name is Haley.", [("Haley", "name")]),
    ],
)
def test_true_positives(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "999.1.1.1 is no address, nor is 1.2.3.4.5",
        "the years 2019-2020 and the number 1234567",
        "I walked 3 miles down the road",
        "May I ask about the Will of the people?",
        "version 10 of the Main branch",
        "user@localhost has no domain",
    ],
)
def test_false_positives_are_not_tagged(text):
    assert found(text) == []


def test_overlaps_resolve_by_priority():
    # the digits of a card must not also come out as a phone number
    assert [t for _, t in found("pay 5500 0000 0000 0004 now")] == ["card"]


def test_luhn():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert luhn_valid("79927398713")


def test_tagger_recalls_the_synthetic_corpus_pii():
    missed = []
    for row in iter_corpus(300, 7):
        text = "\n".join(m["content"] for m in row["conversation"])
        spans = set(found(text))
        missed += [p for p in row["pii"] if (p["text"], p["type"]) not in spans]
    assert missed == []
