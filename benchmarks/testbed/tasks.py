"""Synthetic multi-step reasoning tasks with a difficulty knob, written as character sequences.

Every item is ``prompt`` (``"<domain>:<payload>"``), a step-by-step
``reasoning`` and a short ``answer``. One reasoning step per input element,
each a fixed-width chunk, so ``difficulty`` (the number of elements) sets
the reasoning length, and an answer produced from a truncated reasoning has
to do the remaining steps "in the head" -- easy for one or two elements,
out of reach for a small model at seven or eight:

==========  ==========================  ===============================  ======
domain      payload                     step                             answer
==========  ==========================  ===============================  ======
``sum``     digits ``3527``             ``d>s `` running sum mod 10      ``7``
``cnt``     letters ``abba``            ``x>c `` running count of ``a``  ``2``
``max``     digits ``3527``             ``d>m `` running maximum         ``7``
``add``     ``754+83`` (LSB first)      ``abc>rs `` column a+b+carry     ``594``
==========  ==========================  ===============================  ======

``add`` writes numbers least-significant digit first (input and answer),
as arithmetic-transformer studies do, so every step is local.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DOMAINS = ("sum", "cnt", "max", "add")
MAX_DIFFICULTY = {"sum": 8, "cnt": 8, "max": 8, "add": 4}
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz:>+ "


@dataclass(frozen=True, slots=True)
class Item:
    """One task instance; ``level`` is ``easy``/``medium``/``hard`` (thirds of the difficulty range)."""

    domain: str
    difficulty: int
    prompt: str
    reasoning: str
    answer: str

    @property
    def level(self) -> str:
        top = MAX_DIFFICULTY[self.domain]
        if self.difficulty <= max(1, top // 4):
            return "easy"
        return "hard" if self.difficulty > top * 5 // 8 else "medium"


def make_item(domain: str, difficulty: int, rng: random.Random) -> Item:
    """One item of ``domain`` with ``difficulty`` input elements."""
    if domain == "sum":
        digits = [rng.randrange(10) for _ in range(difficulty)]
        steps, total = [], 0
        for d in digits:
            total = (total + d) % 10
            steps.append(f"{d}>{total} ")
        return Item(domain, difficulty, "sum:" + "".join(map(str, digits)), "".join(steps), str(total))
    if domain == "cnt":
        letters = [rng.choice("ab") for _ in range(difficulty)]
        steps, count = [], 0
        for x in letters:
            count += x == "a"
            steps.append(f"{x}>{count} ")
        return Item(domain, difficulty, "cnt:" + "".join(letters), "".join(steps), str(count))
    if domain == "max":
        digits = [rng.randrange(10) for _ in range(difficulty)]
        steps, best = [], 0
        for d in digits:
            best = max(best, d)
            steps.append(f"{d}>{best} ")
        return Item(domain, difficulty, "max:" + "".join(map(str, digits)), "".join(steps), str(best))
    if domain == "add":
        a = [rng.randrange(10) for _ in range(difficulty)]
        b = [rng.randrange(10) for _ in range(rng.randint(1, difficulty))]
        b += [0] * (difficulty - len(b))
        steps, out, carry = [], [], 0
        for x, y in zip(a, b):
            total = x + y + carry
            steps.append(f"{x}{y}{carry}>{total:02d} ")
            out.append(str(total % 10))
            carry = total // 10
        if carry:
            out.append("1")
        b_text = "".join(map(str, b)).rstrip("0") or "0"
        prompt = "add:" + "".join(map(str, a)) + "+" + b_text
        return Item(domain, difficulty, prompt, "".join(steps), "".join(out))
    raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")


def sample_items(n: int, seed: int, domains: tuple[str, ...] = DOMAINS) -> list[Item]:
    """``n`` items, domains and difficulties uniform, reproducible from ``seed``."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        domain = rng.choice(domains)
        items.append(make_item(domain, rng.randint(1, MAX_DIFFICULTY[domain]), rng))
    return items


__all__ = ["ALPHABET", "DOMAINS", "MAX_DIFFICULTY", "Item", "make_item", "sample_items"]
