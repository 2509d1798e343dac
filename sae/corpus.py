"""A seeded synthetic chat corpus with realistic PII (Faker), shaped like lmsys-chat-1m rows:
`{"conversation_id", "conversation": [{"role", "content"}, ...], "pii": [{"type", "text"}]}`.

The same (n, seed) always gives the same rows. Tests, the demo, the tiny LM's training text and
the benchmark use it; torch-free.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from faker import Faker

_USER_PII = (
    "Hi, my name is {name} and I need to update my account.",
    "Please send the invoice to {email}, thanks.",
    "You can reach me at {phone} after 5pm.",
    "My card number is {card}, can you check the last charge?",
    "Ship it to {address}, {city}.",
    "Our server at {ip} keeps timing out, any idea why?",
    "I'm {name}. My email is {email} and my phone is {phone}.",
    "The package for {name} should go to {address} in {city}.",
    "Can you charge {card} and email the receipt to {email}?",
    "Login attempts from {ip} were blocked, my username is {email}.",
    "Dear support, this is {name}, please call {phone}.",
)
_ASSISTANT_PII = (
    "Thanks {name}, I have updated your details.",
    "Got it. I will send everything to {email}.",
    "I have noted {phone} as your contact number.",
    "The address {address} is now on file.",
    "I cannot verify card {card} here, please use the secure form.",
    "Traffic from {ip} looks normal on our side.",
    "Sure, {name}. Anything else I can help with?",
)
_USER_PLAIN = (
    "How do I sort a list of numbers in Python?",
    "What is a good recipe for a quick vegetable soup?",
    "Can you explain what a sparse autoencoder is?",
    "Write a short poem about the sea at night.",
    "What are some tips for sleeping better?",
    "How far is the moon from the earth?",
    "Summarise the plot of a mystery novel in two sentences.",
    "Why is the sky blue during the day?",
    "Give me three ideas for a weekend trip.",
    "What does a compiler do?",
)
_ASSISTANT_PLAIN = (
    "Here is a simple answer: start small and build up step by step.",
    "Sure. The short version is that it depends on the details, but usually it works well.",
    "Great question. Light, distance and habit all play a part.",
    "You can use the built-in sorted function, which returns a new list.",
    "Try chopping onions, carrots and celery, then simmer them in stock for twenty minutes.",
    "It learns a dictionary of features so that each input uses only a few of them.",
    "Happy to help with that. Let me know if you want more detail.",
)


def _card(fake: Faker) -> str:
    digits = fake.credit_card_number(card_type=fake.random_element(("visa16", "mastercard")))
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _pii_values(fake: Faker) -> dict[str, tuple[str, str]]:
    """One fresh value per slot: slot -> (pii type, text)."""
    return {
        "name": ("name", f"{fake.first_name()} {fake.last_name()}"),
        "email": ("email", fake.email()),
        "phone": ("phone", fake.phone_number()),
        "card": ("card", _card(fake)),
        "address": ("address", fake.street_address()),
        "city": ("city", fake.city()),
        "ip": ("ip", fake.ipv4_public()),
    }


def _fill(template: str, values: dict[str, tuple[str, str]], found: list[dict[str, str]]) -> str:
    used = [slot for slot in values if "{" + slot + "}" in template]
    found += [{"type": values[slot][0], "text": values[slot][1]} for slot in used if slot != "city"]
    return template.format(**{slot: text for slot, (_, text) in values.items()})


def make_conversation(
    fake: Faker, rng: random.Random
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A conversation of 2-6 messages; about 70% of conversations carry PII."""
    values = _pii_values(fake)
    with_pii = rng.random() < 0.7
    found: list[dict[str, str]] = []
    messages = []
    for _ in range(rng.randint(1, 3)):
        if with_pii and rng.random() < 0.8:
            user, reply = rng.choice(_USER_PII), rng.choice(_ASSISTANT_PII)
        else:
            user, reply = rng.choice(_USER_PLAIN), rng.choice(_ASSISTANT_PLAIN)
        messages.append({"role": "user", "content": _fill(user, values, found)})
        messages.append({"role": "assistant", "content": _fill(reply, values, found)})
    return messages, found


def iter_corpus(n: int, seed: int) -> Iterator[dict[str, Any]]:
    """The rows of the corpus for (n, seed), in order."""
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    for index in range(n):
        conversation, pii = make_conversation(fake, rng)
        yield {"conversation_id": f"synth-{seed}-{index}", "conversation": conversation, "pii": pii}


def write_corpus(path: str | Path, n: int, seed: int) -> Path:
    """Write the corpus as JSONL (one conversation a line) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in iter_corpus(n, seed):
            handle.write(json.dumps(row) + "\n")
    return path
