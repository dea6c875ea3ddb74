"""Simulator configuration: domains, the latent model's parameters, drift.

Everything the simulator draws is governed by one frozen, validated
:class:`SimConfig`. Its defaults are calibrated (see :mod:`stopbandit.sim` for
the measured figures) so that, with :data:`stopbandit.bandit.arms.DEFAULT_ARMS`,
a static DEER-style threshold of 0.90 saves roughly 38% of all tokens against
the ``full`` arm at a visible EM cost concentrated on hard items -- the regime
described in the design document and the early-exit literature (DEER
arXiv 2504.15895; answer convergence 2506.02536; ES-CoT 2509.14004).

The latent model, per request with difficulty ``x`` in [0, 1] (the symbols
below are the field names):

* reasoning length ``L = length_median · exp(length_slope·x + length_sigma·z)``,
  ``z ~ N(0, 1)`` -- lognormal, heavy-tailed, longer for harder items;
* solvable with ``P = σ(solve_intercept − solve_slope·x + solve_bias)``
  (the rest are never answered correctly, even with full reasoning);
* the answer settles at fraction ``φ ~ Beta`` of the reasoning, mean
  ``settle_base + settle_slope·x`` (easy items settle early, hard ones late;
  ES-CoT reports math answers mostly settle after ~60% of the steps);
* with ``overthink_rate`` a settled correct answer later drifts to a wrong one
  (the hindsight oracle of ThinkBrake, arXiv 2510.00546, beats full reasoning
  partly because of such items);
* probe confidence, in logit space, before settling:
  ``pre_intercept + pre_difficulty·x + pre_progress·min(1, o/C) + noise``;
  after settling:
  ``post_intercept + post_gain·min(1, (o−C)/(post_ramp·L)) − post_difficulty·x
  [− wrong_penalty if the settled answer is wrong] + noise``, where the noise is
  ``request_noise·z_req + probe_noise·ε``. A positive ``pre_difficulty`` makes
  hard items confidently wrong more often, which is what makes aggressive
  thresholds lose EM.

The remaining fields: ``probe_spacing`` -- thinking tokens between probes (64,
as Dynasor-CoT, arXiv 2412.20993; arms' budgets should be multiples of it for
their outcomes to be revealed by more lenient runs); ``min_think_tokens`` /
``max_think_tokens`` clip ``L``; ``settle_concentration`` is ``κ`` in
``φ ~ Beta(m·κ, (1−m)·κ)``; ``flip_rate`` is the chance that the tentative wrong
answer changes at a probe before settling; ``prompt_base_words`` /
``prompt_difficulty_words`` shape the prompt length (:mod:`stopbandit.sim.prompts`);
``schedule`` and ``degradations`` are the drift (:class:`DomainShift`,
:class:`Degradation`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from stopbandit.errors import ConfigError
from stopbandit import validation

ANSWER_STYLES: tuple[str, ...] = ("integer", "decimal", "list", "word")
"""How a domain renders its answers (see :mod:`stopbandit.sim.answers`)."""

_MAX_PROBES_PER_REQUEST = 4096


def _number(owner: str, name: str, value: Any) -> float:
    return validation.number(value, f"{owner}.{name}")


def _positive(owner: str, name: str, value: Any) -> float:
    return validation.number(value, f"{owner}.{name}", low=0.0, low_open=True)


def _nonneg(owner: str, name: str, value: Any) -> float:
    return validation.number(value, f"{owner}.{name}", low=0.0)


def _unit(owner: str, name: str, value: Any, *, open_low: bool = False) -> float:
    return validation.number(value, f"{owner}.{name}", low=0.0, high=1.0, low_open=open_low)


def _integer(owner: str, name: str, value: Any, *, minimum: int) -> int:
    return validation.integer(value, f"{owner}.{name}", low=minimum)


def _check_fields(owner: str, cls: type, data: Mapping[str, Any]) -> None:
    validation.table(data, (f.name for f in fields(cls)), not_table=f"{owner} must be a table, got {{type}}",
                     unknown=f"{owner}: unknown field(s) {{unknown}}; known fields: {{known}}")


@dataclass(frozen=True, slots=True)
class DomainSpec:
    """One request domain.

    ``weight``: share of traffic (relative; normalised over domains).
    ``difficulty_a``/``difficulty_b``: Beta parameters of difficulty.
    ``length_median``: median reasoning tokens of a difficulty-0 item.
    ``solve_bias``: added to the solvability logit (positive = easier to solve).
    ``answer_tokens_min``/``_max``: tokens of one trial answer (= one probe's cost).
    ``answer_style``: one of :data:`ANSWER_STYLES`.
    ``terms``: domain-typical words the synthetic prompt is built from.
    """

    name: str
    weight: float
    difficulty_a: float = 2.0
    difficulty_b: float = 2.0
    length_median: float = 300.0
    solve_bias: float = 0.0
    answer_tokens_min: int = 8
    answer_tokens_max: int = 14
    answer_style: str = "integer"
    terms: tuple[str, ...] = ("item",)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"domain.name must be an identifier-like string, got {self.name!r}")
        owner = f"domain {self.name!r}"
        _nonneg(owner, "weight", self.weight)
        _positive(owner, "difficulty_a", self.difficulty_a)
        _positive(owner, "difficulty_b", self.difficulty_b)
        _positive(owner, "length_median", self.length_median)
        _number(owner, "solve_bias", self.solve_bias)
        _integer(owner, "answer_tokens_min", self.answer_tokens_min, minimum=1)
        _integer(owner, "answer_tokens_max", self.answer_tokens_max, minimum=self.answer_tokens_min)
        if self.answer_style not in ANSWER_STYLES:
            raise ConfigError(f"{owner}.answer_style must be one of {list(ANSWER_STYLES)}, got {self.answer_style!r}")
        terms = tuple(self.terms) if not isinstance(self.terms, str) else ()
        if not terms or not all(isinstance(t, str) and t.strip() and t == t.strip() for t in terms):
            raise ConfigError(f"{owner}.terms must be a non-empty list of non-blank words, got {self.terms!r}")
        object.__setattr__(self, "terms", terms)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainSpec:
        _check_fields("domain", cls, data)
        if "name" not in data or "weight" not in data:
            raise ConfigError(f"a domain needs 'name' and 'weight', got {dict(data)!r}")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class DomainShift:
    """From request index ``at`` on, traffic changes.

    ``mix``: new domain weights (domains left out get weight 0); None keeps the
    current mix. ``difficulty_shift``: added to the logit of every drawn
    difficulty (positive = harder); None keeps the current shift. Each shift
    states the new level, it does not accumulate.
    """

    at: int
    mix: Mapping[str, float] | None = None
    difficulty_shift: float | None = None

    def __post_init__(self) -> None:
        _integer("shift", "at", self.at, minimum=0)
        if self.mix is not None:
            if not isinstance(self.mix, Mapping) or not self.mix:
                raise ConfigError(f"shift at {self.at}: mix must be a non-empty table of weights, got {self.mix!r}")
            for name, w in self.mix.items():
                _nonneg(f"shift at {self.at}: mix", str(name), w)
            if sum(float(w) for w in self.mix.values()) <= 0:
                raise ConfigError(f"shift at {self.at}: mix weights must not all be 0, got {dict(self.mix)!r}")
            object.__setattr__(self, "mix", MappingProxyType({str(k): float(v) for k, v in self.mix.items()}))
        if self.difficulty_shift is not None:
            _number(f"shift at {self.at}", "difficulty_shift", self.difficulty_shift)

    def __hash__(self) -> int:  # the mix is a read-only mapping; hash its items so configs stay hashable
        mix = None if self.mix is None else tuple(sorted(self.mix.items()))
        return hash((self.at, mix, self.difficulty_shift))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainShift:
        _check_fields("shift", cls, data)
        if "at" not in data:
            raise ConfigError(f"a shift needs 'at', got {dict(data)!r}")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Degradation:
    """From request ``from_request`` on, the model gets worse on ``domain``.

    Each item the model would have solved stays solved with probability
    ``em_factor`` (independently per item), so the domain's full-reasoning EM
    is multiplied by ``em_factor`` in expectation. Probe confidences are left
    unchanged: a degraded model is confidently wrong, which only the observed
    EM reveals (the situation a guardrail must catch).
    """

    domain: str
    from_request: int
    em_factor: float

    def __post_init__(self) -> None:
        if not isinstance(self.domain, str) or not self.domain:
            raise ConfigError(f"degradation.domain must be a domain name, got {self.domain!r}")
        _integer("degradation", "from_request", self.from_request, minimum=0)
        _unit("degradation", "em_factor", self.em_factor)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Degradation:
        _check_fields("degradation", cls, data)
        return cls(**data)


DEFAULT_DOMAINS: tuple[DomainSpec, ...] = (
    DomainSpec(
        "math", 0.35, 2.2, 2.0, 300.0, 0.0, 6, 12, "integer",
        ("equation", "integer", "polynomial", "triangle", "probability", "sum", "prime",
         "modulo", "derivative", "sequence", "roots", "geometric", "digits", "ratio"),
    ),
    DomainSpec(
        "science", 0.25, 2.0, 2.2, 260.0, 0.0, 8, 16, "decimal",
        ("energy", "molecule", "velocity", "reaction", "enzyme", "orbit", "voltage",
         "entropy", "photon", "pressure", "cell", "isotope", "momentum", "catalyst"),
    ),
    DomainSpec(
        "code", 0.20, 2.2, 1.8, 340.0, 0.0, 10, 20, "list",
        ("function", "array", "loop", "recursion", "string", "pointer", "hash",
         "sorted", "index", "returns", "complexity", "stack", "graph", "tree"),
    ),
    DomainSpec(
        "trivia", 0.20, 1.4, 3.0, 150.0, 0.3, 4, 10, "word",
        ("capital", "river", "author", "painted", "century", "founded", "island",
         "composer", "empire", "mountain", "novel", "treaty", "language", "festival"),
    ),
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The simulator's full, validated configuration (all fields documented in the module)."""

    domains: tuple[DomainSpec, ...] = DEFAULT_DOMAINS
    probe_spacing: int = 64
    length_slope: float = 2.2
    length_sigma: float = 0.45
    min_think_tokens: int = 16
    max_think_tokens: int = 32768
    solve_intercept: float = 4.0
    solve_slope: float = 5.5
    settle_base: float = 0.10
    settle_slope: float = 0.75
    settle_concentration: float = 6.0
    overthink_rate: float = 0.005
    flip_rate: float = 0.3
    pre_intercept: float = -1.7
    pre_difficulty: float = 1.5
    pre_progress: float = 0.8
    post_intercept: float = 1.2
    post_gain: float = 4.0
    post_ramp: float = 0.3
    post_difficulty: float = 1.0
    wrong_penalty: float = 1.5
    request_noise: float = 0.7
    probe_noise: float = 1.0
    prompt_base_words: int = 10
    prompt_difficulty_words: float = 70.0
    schedule: tuple[DomainShift, ...] = ()
    degradations: tuple[Degradation, ...] = ()
    _names: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        owner = "sim"
        domains = tuple(self.domains) if isinstance(self.domains, Sequence) else ()
        if not domains or not all(isinstance(d, DomainSpec) for d in domains):
            raise ConfigError(f"{owner}.domains must be a non-empty list of DomainSpec, got {self.domains!r}")
        names = [d.name for d in domains]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{owner}.domains: duplicate domain name(s) {dupes}")
        if sum(d.weight for d in domains) <= 0:
            raise ConfigError(f"{owner}.domains: weights must not all be 0, got {[d.weight for d in domains]}")
        object.__setattr__(self, "domains", domains)
        object.__setattr__(self, "_names", tuple(names))
        _integer(owner, "probe_spacing", self.probe_spacing, minimum=1)
        _integer(owner, "min_think_tokens", self.min_think_tokens, minimum=1)
        _integer(owner, "max_think_tokens", self.max_think_tokens, minimum=self.min_think_tokens)
        if self.max_think_tokens // self.probe_spacing > _MAX_PROBES_PER_REQUEST:
            raise ConfigError(
                f"{owner}.max_think_tokens / probe_spacing must be <= {_MAX_PROBES_PER_REQUEST} probes, "
                f"got {self.max_think_tokens} / {self.probe_spacing}"
            )
        _nonneg(owner, "length_slope", self.length_slope)
        _nonneg(owner, "length_sigma", self.length_sigma)
        _number(owner, "solve_intercept", self.solve_intercept)
        _nonneg(owner, "solve_slope", self.solve_slope)
        base = _unit(owner, "settle_base", self.settle_base, open_low=True)
        slope = _nonneg(owner, "settle_slope", self.settle_slope)
        if base + slope >= 1.0:
            raise ConfigError(
                f"{owner}.settle_base + settle_slope must be < 1 (mean settling fraction of the hardest item), "
                f"got {self.settle_base} + {self.settle_slope}"
            )
        _positive(owner, "settle_concentration", self.settle_concentration)
        _unit(owner, "overthink_rate", self.overthink_rate)
        _unit(owner, "flip_rate", self.flip_rate)
        for name in ("pre_intercept", "pre_difficulty", "pre_progress", "post_intercept",
                     "post_gain", "post_difficulty", "wrong_penalty"):
            _number(owner, name, getattr(self, name))
        _positive(owner, "post_ramp", self.post_ramp)
        _nonneg(owner, "request_noise", self.request_noise)
        _nonneg(owner, "probe_noise", self.probe_noise)
        _integer(owner, "prompt_base_words", self.prompt_base_words, minimum=1)
        _nonneg(owner, "prompt_difficulty_words", self.prompt_difficulty_words)

        schedule = tuple(self.schedule)
        if not all(isinstance(s, DomainShift) for s in schedule):
            raise ConfigError(f"{owner}.schedule must be a list of DomainShift, got {self.schedule!r}")
        ats = [s.at for s in schedule]
        if ats != sorted(set(ats)):
            raise ConfigError(f"{owner}.schedule: shifts must have strictly increasing 'at', got {ats}")
        for s in schedule:
            if s.mix is not None:
                unknown = sorted(set(s.mix) - set(names))
                if unknown:
                    raise ConfigError(f"{owner}.schedule: shift at {s.at} names unknown domain(s) {unknown}; known: {names}")
        object.__setattr__(self, "schedule", schedule)
        degradations = tuple(self.degradations)
        for d in degradations:
            self.validate_degradation(d)
        object.__setattr__(self, "degradations", degradations)

    def validate_degradation(self, d: Any) -> None:
        if not isinstance(d, Degradation):
            raise ConfigError(f"sim.degradations must be a list of Degradation, got {d!r}")
        if d.domain not in self._names:
            raise ConfigError(f"sim.degradations: unknown domain {d.domain!r}; known: {list(self._names)}")

    @property
    def domain_names(self) -> tuple[str, ...]:
        return self._names

    @classmethod
    def named(cls, name: str, **overrides: Any) -> SimConfig:
        """The calibration called ``name`` (see :data:`CALIBRATIONS`), with ``overrides`` applied."""
        if not isinstance(name, str) or name not in CALIBRATIONS:
            raise ConfigError(f"sim.calibration must be one of {sorted(CALIBRATIONS)}, got {name!r}")
        return replace(CALIBRATIONS[name], **overrides) if overrides else CALIBRATIONS[name]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimConfig:
        """Build from a TOML-like table: ``domains``/``schedule``/``degradations`` are arrays of tables.

        ``calibration`` (optional) names the calibration the other fields override
        (``conservative`` when absent).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"sim must be a table, got {type(data).__name__}")
        base = data.get("calibration", "conservative")
        data = {k: v for k, v in data.items() if k != "calibration"}
        _check_fields("sim", cls, data)
        if "_names" in data:
            raise ConfigError("sim: unknown field(s) ['_names']")
        kwargs = dict(data)
        if "domains" in kwargs:
            kwargs["domains"] = tuple(DomainSpec.from_dict(d) for d in _tables("sim.domains", kwargs["domains"]))
        if "schedule" in kwargs:
            kwargs["schedule"] = tuple(DomainShift.from_dict(d) for d in _tables("sim.schedule", kwargs["schedule"]))
        if "degradations" in kwargs:
            kwargs["degradations"] = tuple(
                Degradation.from_dict(d) for d in _tables("sim.degradations", kwargs["degradations"])
            )
        return cls.named(base, **kwargs)


CALIBRATIONS: Mapping[str, SimConfig] = MappingProxyType({
    "conservative": SimConfig(),
    "overthinking": SimConfig(overthink_rate=0.10, settle_base=0.05, settle_slope=0.40, solve_intercept=4.5),
})
"""Named calibrations. ``conservative`` (the default) rarely overthinks (``overthink_rate`` 0.005): stopping
early almost never gains EM. ``overthinking`` reproduces the published per-request ceilings of real
reasoning models: answers settle earlier and one solvable item in ten later drifts to a wrong answer, so
DEER's default threshold 0.95 gains EM at fewer reasoning tokens (DEER, arXiv 2504.15895: +0.3 to +5
points at 19-80% fewer) and the hindsight per-request stop saves about three quarters of the reasoning
with about +8 points (ThinkBrake, arXiv 2510.00546: -72% tokens, +8%); :func:`stopbandit.sim.published_ceilings`
measures both."""


def _tables(owner: str, value: Any) -> Sequence[Mapping[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise ConfigError(f"{owner} must be an array of tables, got {type(value).__name__}")
    return value


__all__ = [
    "ANSWER_STYLES",
    "CALIBRATIONS",
    "DEFAULT_DOMAINS",
    "Degradation",
    "DomainShift",
    "DomainSpec",
    "SimConfig",
]
