"""A small synthetic serving environment where the best arm differs by (domain, difficulty)."""

from __future__ import annotations

import numpy as np

ARM_NAMES = ("full", "careful", "balanced", "aggressive")
TOKENS = {"full": 1000, "careful": 700, "balanced": 500, "aggressive": 300}
# P(EM) per cell and arm; at λ=0.2, token_scale=1000 the best arm beats the runner-up by ≥ 0.13 reward in every cell.
EM = {
    ("math", "hard"): {"full": 0.95, "careful": 0.70, "balanced": 0.45, "aggressive": 0.15},  # full
    ("math", "easy"): {"full": 0.90, "careful": 0.97, "balanced": 0.75, "aggressive": 0.55},  # careful
    ("trivia", "hard"): {"full": 0.85, "careful": 0.75, "balanced": 0.88, "aggressive": 0.45},  # balanced
    ("trivia", "easy"): {"full": 0.88, "careful": 0.88, "balanced": 0.88, "aggressive": 0.97},  # aggressive
}
TEMPLATES = {
    ("math", "easy"): ("What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} - {b}."),
    ("math", "hard"): (
        "Compute the total remaining after each step: start with {a}{b}, multiply by {b}{a}, subtract {a}, "
        "then divide by 13 and prove the remainder is at least 5. Explain why every step holds, "
        "compare with {b}{b} + {a}{a} - {b} * 3 and derive the sum of all digits of the product.",
        "Let x = {a}{b} and y = {b}{a}. Find the product x * y, then the sum of its digits, then prove "
        "that the remainder mod 7 is at least 2 after each step; explain every step and compare totals.",
    ),
    ("trivia", "easy"): ("Which river runs through the old capital?", "Who wrote that famous play?",
                         "What colour is the sky on a clear day?"),
    ("trivia", "hard"): (
        "Which explorer, after leaving the northern port, reached the island that later gave its name to "
        "a treaty, and why did the crown then compare his route with the earlier expedition of his rival? "
        "Explain each step of the reasoning and derive the year from the two voyages.",
        "Name the composer whose student's student wrote the opera premiered in the same city where the "
        "treaty was signed; explain why each link in that chain holds and compare the two premieres.",
    ),
}
CELLS = tuple(EM)
PROMPTS = {"easy": TEMPLATES[("trivia", "easy")][0], "hard": TEMPLATES[("math", "hard")][0].format(a=38, b=47)}


def prompt(rng: np.random.Generator, cell: tuple[str, str]) -> str:
    """A random prompt of the cell: domain-typical wording, varied numbers and phrasing."""
    options = TEMPLATES[cell]
    text = options[int(rng.integers(len(options)))]
    return text.format(a=int(rng.integers(10, 99)), b=int(rng.integers(10, 99)))


def best_arm(cell: tuple[str, str], lam: float = 0.2) -> str:
    return max(ARM_NAMES, key=lambda a: EM[cell][a] - lam * TOKENS[a] / 1000)


def outcome(rng: np.random.Generator, cell: tuple[str, str], arm: str) -> tuple[float, int]:
    em = float(rng.random() < EM[cell][arm])
    return em, TOKENS[arm] + int(rng.integers(-20, 21))
