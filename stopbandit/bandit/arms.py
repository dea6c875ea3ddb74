"""Arms: named stopping configurations.

An arm tells the decoder when to stop thinking: at the first probe whose
trial-answer confidence reaches ``threshold`` (DEER-style, arXiv 2504.15895),
at the first probe at which the last ``agreement`` trial answers agree
(Dynasor's certainty window, arXiv 2412.20993; 0 = off), or when
``max_think_tokens`` reasoning tokens are spent (0 = no cap). A threshold
above 1 can never be reached, so such an arm never stops on confidence. The
rule itself is :mod:`stopbandit.bandit.stoprule`.

Arms are ordered by strictness: ``a.at_most_as_lenient_as(b)`` holds when ``a``
stops at or before ``b`` on every request (lower-or-equal threshold, a
tighter-or-equal cap, and -- when ``b`` stops on agreement -- an agreement
window of its own no longer than ``b``'s). Nested feedback (a lenient run
reveals every stricter arm) rests on that order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stopbandit import validation
from stopbandit.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
MAX_THRESHOLD = 2.0


@dataclass(frozen=True, slots=True)
class Arm:
    """One stopping configuration.

    ``threshold``: trial-answer confidence at which thinking stops, in (0, 2];
    values above 1 mean "never stop on confidence".
    ``max_think_tokens``: thinking budget in tokens, 0 = unlimited.
    ``agreement``: stop once this many consecutive probes give the same
    trial answer (at least 2), 0 = off.
    ``plain``: an arm that is only a name (an imported log's action, e.g. an
    item of a recommender): it has no stopping rule, its threshold is
    meaningless, and it reveals no other arm nor is revealed by one, so the
    graph estimators treat it like a plain contextual-bandit action. Built from
    a table ``{name = "...", plain = true}``; a gateway refuses to serve it.
    ``learned``: aggressiveness of the learned stop rule
    (:mod:`stopbandit.bandit.learned_stop`), > 0; 0 = off. The rule stops once
    the estimated gain of thinking on is at most ``learned · λ · (expected
    further tokens) / token_scale``, so a larger value stops earlier.
    """

    name: str
    threshold: float
    max_think_tokens: int = 0
    agreement: int = 0
    learned: float = 0.0
    plain: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                f"arm name must match {_NAME.pattern} (letters, digits, '_', '.', '-'), got {self.name!r}"
            )
        validation.within(self.threshold, f"arm {self.name!r}: threshold", low=0, low_open=True, high=MAX_THRESHOLD,
                          expected="{range}", wrong_type="a number")
        validation.within(self.max_think_tokens, f"arm {self.name!r}: max_think_tokens", low=0, integral=True,
                          expected="{range} (0 = no cap)", wrong_type="an integer")
        validation.integer(self.agreement, f"arm {self.name!r}: agreement")
        if self.agreement == 1 or self.agreement < 0:
            raise ConfigError(
                f"arm {self.name!r}: agreement must be 0 (off) or >= 2 consecutive probes, got {self.agreement}"
            )
        validation.within(self.learned, f"arm {self.name!r}: learned", low=0,
                          expected="a finite number {range} (0 = off)")
        if not isinstance(self.plain, bool):
            raise ConfigError(f"arm {self.name!r}: plain must be true or false, got {self.plain!r}")
        if self.plain and (self.max_think_tokens or self.agreement or self.learned):
            raise ConfigError(f"arm {self.name!r}: a plain arm has no stopping rule; drop max_think_tokens, "
                              "agreement and learned (or plain)")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "learned", float(self.learned))

    @property
    def stops_on_confidence(self) -> bool:
        """Whether any probe can ever stop this arm (threshold reachable)."""
        return self.threshold <= 1.0

    @property
    def cap(self) -> float:
        """Thinking budget as a number, ``inf`` when uncapped."""
        return float(self.max_think_tokens) if self.max_think_tokens > 0 else math.inf

    @property
    def window(self) -> float:
        """Agreement window as a number, ``inf`` when the arm never stops on agreement."""
        return float(self.agreement) if self.agreement > 0 else math.inf

    @property
    def patience(self) -> float:
        """The learned rule's lenience: ``1 / learned``, ``inf`` when the arm has no learned rule."""
        return 1.0 / self.learned if self.learned > 0 else math.inf

    def at_most_as_lenient_as(self, other: Arm) -> bool:
        """True when this arm stops at or before ``other`` on every request (never between plain arms)."""
        if self.plain or other.plain:
            return self is other or self == other
        return (self.threshold <= other.threshold and self.cap <= other.cap and self.window <= other.window
                and self.patience <= other.patience)

    def lenience(self) -> tuple[float, float, float, float]:
        """Sort key: larger means more lenient (threshold, then cap, agreement window, learned patience)."""
        return (self.threshold, self.cap, self.window, self.patience)

    def to_dict(self) -> dict[str, Any]:
        """The arm as a table; ``agreement`` only when on, so arm sets without it store as before."""
        if self.plain:
            return {"name": self.name, "plain": True}
        out: dict[str, Any] = {"name": self.name, "threshold": self.threshold, "max_think_tokens": self.max_think_tokens}
        if self.agreement:
            out["agreement"] = self.agreement
        if self.learned:
            out["learned"] = self.learned
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Arm:
        if not isinstance(data, Mapping):
            raise ConfigError(f"an arm must be a table with name/threshold/max_think_tokens, got {data!r}")
        unknown = set(data) - {"name", "threshold", "max_think_tokens", "agreement", "learned", "plain"}
        if unknown:
            raise ConfigError(f"arm {data.get('name')!r}: unknown field(s) {sorted(unknown)}")
        if data.get("plain") is True:
            if "name" not in data:
                raise ConfigError(f"a plain arm needs 'name', got {dict(data)!r}")
            return plain_arm(data["name"], **{k: v for k, v in data.items() if k not in ("name", "plain")})
        if "name" not in data or "threshold" not in data:
            raise ConfigError(f"an arm needs 'name' and 'threshold', got {dict(data)!r}")
        return cls(data["name"], data["threshold"], data.get("max_think_tokens", 0), data.get("agreement", 0),
                   data.get("learned", 0.0))


def plain_arm(name: str, **rest: Any) -> Arm:
    """An arm that is only a name (see :class:`Arm`'s ``plain``); its threshold is the never-reached maximum."""
    if "threshold" in rest and rest["threshold"] != MAX_THRESHOLD:
        raise ConfigError(f"arm {name!r}: a plain arm has no threshold; drop threshold (or plain)")
    extra = {k: v for k, v in rest.items() if k != "threshold"}
    return Arm(name, MAX_THRESHOLD, plain=True, **extra)


def action_arm_name(action: int | str) -> str:
    """The name of the plain arm of a numeric action id: ``7`` is ``action_7`` (arm names start with a letter)."""
    return f"action_{action}"


def plain_arms(names: Iterable[str]) -> ArmSet:
    """An arm set of plain arms (an imported log's actions), in the given order."""
    return ArmSet(tuple(plain_arm(n) for n in names))


DEFAULT_ARMS: tuple[Arm, ...] = (
    Arm("full", 1.01, 0),
    Arm("careful", 0.97, 0),
    Arm("balanced", 0.90, 0),
    Arm("aggressive", 0.75, 512),
)


@dataclass(frozen=True, slots=True)
class ArmSet:
    """An ordered, validated collection of arms (order = action index everywhere)."""

    arms: tuple[Arm, ...]

    def __post_init__(self) -> None:
        arms = tuple(self.arms)
        if len(arms) < 2:
            raise ConfigError(f"need at least 2 arms to choose between, got {len(arms)}")
        names = [a.name for a in arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"duplicate arm name(s): {dupes}")
        object.__setattr__(self, "arms", arms)

    @classmethod
    def of(cls, arms: Iterable[Arm | Mapping[str, Any]] | None = None) -> ArmSet:
        if arms is None:
            return cls(DEFAULT_ARMS)
        return cls(tuple(a if isinstance(a, Arm) else Arm.from_dict(a) for a in arms))

    def __len__(self) -> int:
        return len(self.arms)

    def __iter__(self):
        return iter(self.arms)

    def __getitem__(self, i: int) -> Arm:
        return self.arms[i]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    def index(self, name: str) -> int:
        """Action index of ``name``; unknown names raise a ConfigError listing the known ones."""
        for i, a in enumerate(self.arms):
            if a.name == name:
                return i
        raise ConfigError(f"unknown arm {name!r}; known arms: {list(self.names)}")

    def by_name(self, name: str) -> Arm:
        return self.arms[self.index(name)]

    def most_conservative(self) -> int:
        """Index of the most lenient arm (stops last): the safe fallback."""
        return max(range(len(self.arms)), key=lambda i: self.arms[i].lenience())

    def revealed_by(self, logged: int) -> list[int]:
        """Indices of arms whose outcome a trace of arm ``logged`` reveals (itself included)."""
        lead = self.arms[logged]
        if lead.plain:
            return [logged]
        return [i for i, a in enumerate(self.arms) if a.at_most_as_lenient_as(lead)]

    def reveals(self) -> tuple[tuple[int, ...], ...]:
        """:meth:`revealed_by` of every arm, in arm order: the reveal structure of nested feedback."""
        return tuple(tuple(self.revealed_by(i)) for i in range(len(self.arms)))

    def to_list(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.arms]


STOP_POLICY_ARMS: tuple[Arm, ...] = (
    Arm("full", 1.01, 0),
    Arm("deer95", 0.95, 0),
    Arm("deer90", 0.90, 0),
    Arm("agree3", 1.01, 0, 3),
    Arm("budget1024", 1.01, 1024),
    Arm("learned0.25", 1.01, 0, 0, 0.25),
    Arm("learned1", 1.01, 0, 0, 1.0),
    Arm("learned4", 1.01, 0, 0, 4.0),
)
"""A bandit over stop policies: full reasoning, two DEER thresholds, an agreement window, a budget and the
learned rule at three aggressiveness levels. ``full`` stops last on every request, so its trace reveals
every other policy's outcome exactly (nested feedback and the graph estimators rest on that)."""

NAMED_ARM_SETS: dict[str, tuple[Arm, ...]] = {"default": DEFAULT_ARMS, "stop-policies": STOP_POLICY_ARMS}
"""Arm sets a config may name instead of listing ``[[arms]]`` tables (``arms = "stop-policies"``)."""


def arms_from_config(items: Sequence[Mapping[str, Any]] | str | None) -> ArmSet:
    """Build the arm set from the ``[[arms]]`` tables of a TOML config, or a name of
    :data:`NAMED_ARM_SETS` (defaults when absent)."""
    if items is None:
        return ArmSet(DEFAULT_ARMS)
    if isinstance(items, str):
        if items not in NAMED_ARM_SETS:
            raise ConfigError(f"'arms' names unknown arm set {items!r}; known: {sorted(NAMED_ARM_SETS)} "
                              "(or give [[arms]] tables)")
        return ArmSet(NAMED_ARM_SETS[items])
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise ConfigError(f"'arms' must be an array of tables ([[arms]]), got {type(items).__name__}")
    return ArmSet.of(items)
