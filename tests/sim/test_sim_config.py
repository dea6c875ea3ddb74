"""SimConfig and its parts reject invalid values with errors naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from stopbandit.errors import ConfigError
from stopbandit.sim import DEFAULT_DOMAINS, Degradation, DomainShift, DomainSpec, SimConfig, Simulator

MATH = DEFAULT_DOMAINS[0]

INVALID_CONFIG = [
    ({"probe_spacing": 0}, r"sim\.probe_spacing must be >= 1, got 0"),
    ({"probe_spacing": 64.0}, r"sim\.probe_spacing must be an integer, got 64\.0"),
    ({"length_sigma": -0.1}, r"sim\.length_sigma must be >= 0, got -0\.1"),
    ({"length_slope": float("nan")}, r"sim\.length_slope must be a finite number, got nan"),
    ({"min_think_tokens": 0}, r"sim\.min_think_tokens must be >= 1, got 0"),
    ({"max_think_tokens": 8}, r"sim\.max_think_tokens must be >= 16, got 8"),
    ({"max_think_tokens": 10**7}, r"max_think_tokens / probe_spacing must be <= 4096 probes"),
    ({"settle_base": 0.0}, r"sim\.settle_base must be in \(0, 1\], got 0\.0"),
    ({"settle_base": 0.5, "settle_slope": 0.6}, r"settle_base \+ settle_slope must be < 1"),
    ({"settle_concentration": 0}, r"sim\.settle_concentration must be > 0, got 0"),
    ({"overthink_rate": 1.2}, r"sim\.overthink_rate must be in \[0, 1\], got 1\.2"),
    ({"flip_rate": -0.1}, r"sim\.flip_rate must be in \[0, 1\], got -0\.1"),
    ({"post_ramp": 0.0}, r"sim\.post_ramp must be > 0, got 0\.0"),
    ({"probe_noise": -1.0}, r"sim\.probe_noise must be >= 0, got -1\.0"),
    ({"pre_difficulty": "high"}, r"sim\.pre_difficulty must be a finite number, got 'high'"),
    ({"domains": ()}, r"sim\.domains must be a non-empty list of DomainSpec"),
    ({"domains": (MATH, MATH)}, r"duplicate domain name\(s\) \['math'\]"),
    ({"domains": (dataclasses.replace(MATH, weight=0.0),)}, r"weights must not all be 0"),
    ({"schedule": (DomainShift(10), DomainShift(5))}, r"strictly increasing 'at', got \[10, 5\]"),
    ({"schedule": (DomainShift(10, mix={"poetry": 1.0}),)}, r"shift at 10 names unknown domain\(s\) \['poetry'\]"),
    ({"schedule": ({"at": 3},)}, r"sim\.schedule must be a list of DomainShift"),
    ({"degradations": (Degradation("poetry", 0, 0.5),)}, r"sim\.degradations: unknown domain 'poetry'"),
]


@pytest.mark.parametrize(("kwargs", "match"), INVALID_CONFIG)
def test_invalid_sim_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SimConfig(**kwargs)


INVALID_PARTS = [
    (lambda: DomainSpec("my domain", 1.0), r"domain\.name must be an identifier-like string, got 'my domain'"),
    (lambda: DomainSpec("x", -1.0), r"domain 'x'\.weight must be >= 0, got -1\.0"),
    (lambda: DomainSpec("x", 1.0, difficulty_a=0), r"domain 'x'\.difficulty_a must be > 0, got 0"),
    (lambda: DomainSpec("x", 1.0, answer_tokens_min=9, answer_tokens_max=8), r"answer_tokens_max must be >= 9, got 8"),
    (lambda: DomainSpec("x", 1.0, answer_style="prose"), r"answer_style must be one of .*, got 'prose'"),
    (lambda: DomainSpec("x", 1.0, terms=()), r"domain 'x'\.terms must be a non-empty list"),
    (lambda: DomainSpec("x", 1.0, terms="words"), r"domain 'x'\.terms must be a non-empty list"),
    (lambda: DomainShift(-1), r"shift\.at must be >= 0, got -1"),
    (lambda: DomainShift(5, mix={}), r"shift at 5: mix must be a non-empty table"),
    (lambda: DomainShift(5, mix={"math": -1.0}), r"shift at 5: mix\.math must be >= 0, got -1\.0"),
    (lambda: DomainShift(5, mix={"math": 0.0}), r"mix weights must not all be 0"),
    (lambda: DomainShift(5, difficulty_shift=float("inf")), r"difficulty_shift must be a finite number, got inf"),
    (lambda: Degradation("math", -3, 0.5), r"degradation\.from_request must be >= 0, got -3"),
    (lambda: Degradation("math", 0, -0.5), r"degradation\.em_factor must be in \[0, 1\], got -0\.5"),
    (lambda: Simulator(seed=-1), r"seed must be a non-negative integer, got -1"),
    (lambda: Simulator(seed=1.5), r"seed must be a non-negative integer, got 1\.5"),
    (lambda: Simulator({"probe_spacing": 64}), r"config must be a SimConfig, got dict"),
    (lambda: SimConfig.from_dict({"probe_spacng": 32}), r"sim: unknown field\(s\) \['probe_spacng'\]"),
    (lambda: SimConfig.from_dict({"domains": [{"name": "a"}]}), r"a domain needs 'name' and 'weight'"),
    (lambda: SimConfig.from_dict({"domains": "math"}), r"sim\.domains must be an array of tables, got str"),
    (lambda: SimConfig.from_dict({"schedule": [{"mix": {"math": 1}}]}), r"a shift needs 'at'"),
    (lambda: SimConfig.from_dict({"_names": ("a",)}), r"unknown field\(s\) \['_names'\]"),
]


@pytest.mark.parametrize(("build", "match"), INVALID_PARTS)
def test_invalid_parts(build, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        SimConfig(probe_spacing=-5)


def test_from_dict_builds_the_same_config_as_the_constructor() -> None:
    data = {
        "probe_spacing": 32,
        "domains": [
            {"name": "math", "weight": 2, "terms": ["sum", "prime"]},
            {"name": "trivia", "weight": 1, "answer_style": "word", "terms": ["river"]},
        ],
        "schedule": [{"at": 100, "mix": {"trivia": 1}, "difficulty_shift": 0.5}],
        "degradations": [{"domain": "math", "from_request": 50, "em_factor": 0.8}],
    }
    cfg = SimConfig.from_dict(data)
    assert cfg.domain_names == ("math", "trivia")
    assert cfg.domains[0].terms == ("sum", "prime")
    assert cfg.schedule == (DomainShift(100, {"trivia": 1.0}, 0.5),)
    assert cfg.degradations == (Degradation("math", 50, 0.8),)
    reqs = Simulator(cfg, seed=1).take(150)
    assert all(r.probe_spacing == 32 for r in reqs)
    assert {r.domain for r in reqs[100:]} == {"trivia"}


def test_config_is_frozen() -> None:
    cfg = SimConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.probe_spacing = 32  # type: ignore[misc]
    assert dataclasses.replace(cfg, probe_spacing=32).probe_spacing == 32
