"""Answer strings of simulated requests.

Every request owns an integer ``base``; its reference answer renders ``base``
and each wrong answer renders a different integer, in the domain's style. The
renderings are injective, so a wrong answer can never equal the reference
under :func:`stopbandit.bandit.trace.em_of` (exact match after ``strip``).

Answer codes (what the latent process says the model would answer at an offset):

* ``REFERENCE`` -- the reference answer;
* ``SETTLED_WRONG`` -- the wrong answer an unsolvable item settles on;
* ``RELAPSED`` -- the wrong answer an over-thinking item drifts to;
* ``j >= 0`` -- the ``j``-th tentative wrong answer before the answer settles.

>>> render(12345, "decimal"), render(12345, "list"), render(0x2a, "word")
('123.45', '[345, 12]', 'Bepe')
"""

from __future__ import annotations

from stopbandit.errors import ConfigError

REFERENCE = -1
SETTLED_WRONG = -2
RELAPSED = -3

_SYLLABLES = ("mo", "ka", "be", "ri", "ta", "lu", "ne", "so", "vi", "da", "pe", "gu", "ro", "fa", "li", "zu")


def value_of(base: int, code: int) -> int:
    """The integer an answer code renders: ``base`` for the reference, a distinct one otherwise."""
    if code == REFERENCE:
        return base
    if code == SETTLED_WRONG:
        return base - 1
    if code == RELAPSED:
        return base - 2
    return base + 1 + code


def render(value: int, style: str) -> str:
    """Text of an answer in a domain style (injective in ``value`` for ``value >= 0``)."""
    if style == "integer":
        return str(value)
    if style == "decimal":
        return f"{value // 100}.{value % 100:02d}"
    if style == "list":
        return f"[{value % 1000}, {value // 1000}]"
    if style == "word":
        digits = []
        v = value
        while True:
            digits.append(_SYLLABLES[v % 16])
            v //= 16
            if v == 0:
                break
        return "".join(reversed(digits)).capitalize()
    raise ConfigError(f"answer_style must be integer/decimal/list/word, got {style!r}")


def answer_text(base: int, code: int, style: str) -> str:
    """Text of the answer with ``code`` for a request whose reference value is ``base``."""
    return render(value_of(base, code), style)


__all__ = ["RELAPSED", "REFERENCE", "SETTLED_WRONG", "answer_text", "render", "value_of"]
