import json

from sae.cli import main
from sae.corpus import iter_corpus


def test_same_seed_same_rows_other_seed_other_rows():
    assert list(iter_corpus(50, 3)) == list(iter_corpus(50, 3))
    assert list(iter_corpus(50, 3)) != list(iter_corpus(50, 4))


def test_rows_look_like_lmsys_chat_with_pii():
    rows = list(iter_corpus(200, 0))
    assert all(r["conversation"][0]["role"] == "user" for r in rows)
    assert all(len(r["conversation"]) % 2 == 0 for r in rows)
    with_pii = sum(bool(r["pii"]) for r in rows)
    assert 0.5 < with_pii / len(rows) < 0.9
    kinds = {p["type"] for r in rows for p in r["pii"]}
    assert kinds == {"name", "email", "phone", "card", "address", "ip"}


def test_make_corpus_cli_is_deterministic(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        assert main(["make-corpus", str(tmp_path / name), "--n", "40", "--seed", "5"]) == 0
    a, b = (tmp_path / "a.jsonl").read_text(), (tmp_path / "b.jsonl").read_text()
    assert a == b and len(a.splitlines()) == 40
    assert json.loads(a.splitlines()[0])["conversation_id"] == "synth-5-0"
