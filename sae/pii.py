"""A regex PII tagger: finds emails, phone numbers, card numbers (Luhn-checked), IPv4
addresses, street addresses and person names in text, as character spans.

It serves twice: `pii_only` runs keep the rows it flags, and its spans, mapped onto tokens,
are the labels of the PII probe. Names and street suffixes come from lists (Faker's en_US
providers: US census first/last names and the USPS street suffixes). Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from faker.providers.address.en_US import Provider as _AddressProvider
from faker.providers.person.en_US import Provider as _PersonProvider

PII_TYPES: tuple[str, ...] = ("email", "card", "ip", "phone", "address", "name")
"""PII types in priority order: when matches overlap, the earlier type wins."""


@dataclass(frozen=True, order=True)
class PIISpan:
    """Characters [start, end) of a text hold PII of `type`."""

    start: int
    end: int
    type: str


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_CARD = re.compile(
    r"(?<![\d-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"  # 4-4-4-4(-3)
    r"|\d{4}([ -])\d{6}\2\d{5}"  # 4-6-5 (Amex)
    r"|\d{13,19})(?![\d-])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IP = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"(?:\+?1[-. ]?|001[-. ]?)?(?:\(\d{3}\) ?|\d{3}[-. ]?)\d{3}[-. ]?\d{4}"
    r"|\+\d{1,3}(?:[ .-]?\d{2,4}){2,4}"
    r")(?: ?(?:x|ext\.?) ?\d{1,5})?(?![\w])"
)
_NAME_CUE = re.compile(
    r"\b(?:[Mm]y name is|I'm|I am|[Tt]his is|[Cc]all me|[Nn]amed|[Dd]ear|[Hh]i|[Hh]ello|"
    r"[Tt]hanks|[Mm]r\.|[Mm]rs\.|[Mm]s\.|[Dd]r\.)\s+$"
)
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+(?:-[A-Z][a-z]+)?\b")


@cache
def _first_names() -> frozenset[str]:
    return frozenset(_PersonProvider.first_names)


@cache
def _last_names() -> frozenset[str]:
    return frozenset(_PersonProvider.last_names)


@cache
def _address_pattern() -> re.Pattern[str]:
    suffixes = set(_AddressProvider.street_suffixes) | {
        "St", "Ave", "Rd", "Blvd", "Dr", "Ln", "Ct", "Pl", "Ter", "Hwy", "Pkwy", "Sq", "Cir",
    }  # fmt: skip
    alternatives = "|".join(sorted(map(re.escape, suffixes), key=len, reverse=True))
    return re.compile(
        rf"(?<![\w-])\d{{1,6}}(?: [A-Z][a-z]+){{1,3}} (?:{alternatives})\b\.?"
        r"(?:,? (?:Apt\.?|Suite|Unit|#) ?\d{1,5}\b)?"
    )


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum (card numbers do)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def tag_pii(text: str) -> list[PIISpan]:
    """All PII spans in `text`, sorted by position, never overlapping."""
    candidates: list[PIISpan] = []
    candidates += _spans(_EMAIL, text, "email")
    candidates += [
        span
        for span in _spans(_CARD, text, "card")
        if luhn_valid(re.sub(r"\D", "", text[span.start : span.end]))
    ]
    candidates += _spans(_IP, text, "ip")
    candidates += _spans(_PHONE, text, "phone")
    candidates += _spans(_address_pattern(), text, "address")
    candidates += _name_spans(text)
    priority = {name: rank for rank, name in enumerate(PII_TYPES)}
    chosen: list[PIISpan] = []
    for span in sorted(candidates, key=lambda s: (priority[s.type], s.start)):
        if all(span.end <= other.start or span.start >= other.end for other in chosen):
            chosen.append(span)
    return sorted(chosen)


def _spans(pattern: re.Pattern[str], text: str, kind: str) -> list[PIISpan]:
    return [PIISpan(m.start(), m.end(), kind) for m in pattern.finditer(text)]


def _name_spans(text: str) -> list[PIISpan]:
    """A listed first name followed by a listed last name, or a listed name after a cue."""
    firsts, lasts = _first_names(), _last_names()
    words = list(_CAPITALISED.finditer(text))
    spans = []
    index = 0
    while index < len(words):
        word = words[index]
        following = words[index + 1] if index + 1 < len(words) else None
        adjacent = following is not None and text[word.end() : following.start()] == " "
        if word[0] in firsts and adjacent and following is not None and following[0] in lasts:
            spans.append(PIISpan(word.start(), following.end(), "name"))
            index += 2
            continue
        if (word[0] in firsts or word[0] in lasts) and _NAME_CUE.search(
            text, max(0, word.start() - 16), word.start()
        ):
            spans.append(PIISpan(word.start(), word.end(), "name"))
        index += 1
    return spans
