"""Calibrated simulator of reasoning length versus exact match (EM).

Used by ``stopbandit demo`` and the learning benchmarks in place of a real
reasoning model. A :class:`Simulator` (one seed, one numpy Generator) streams
:class:`SimRequest` objects from several domains (math, science, code, trivia)
whose prompts carry noisy signal about a latent difficulty; each request fixes
a heavy-tailed reasoning length, an answer that settles after some fraction of
the reasoning (early for easy items, late for hard ones: ES-CoT arXiv
2509.14004 and answer convergence 2506.02536 report answers mostly settling
after ~60% of the reasoning), items that are never solved, and a trial-answer
confidence at every probe (every ``probe_spacing`` = 64 thinking tokens) that
is noisy, rises once the answer settles, and is sometimes high on a still-wrong
answer -- more so on hard items. :func:`run` applies an arm with exactly the
stop rule and token accounting of :mod:`stopbandit.bandit.trace` (DEER-style
threshold probes, arXiv 2504.15895) and returns the probe trace; a lenient
run's trace reveals every stricter arm exactly. :func:`outcomes` and
:func:`outcome_table` give every arm's EM and tokens at once for oracle and
hindsight baselines (cf. ThinkBrake's hindsight stop, arXiv 2510.00546).

Calibration, measured with :func:`calibrate` on 50,000 requests of the default
:class:`SimConfig` and ``DEFAULT_ARMS`` (seed 0; seeds 1 and 2 agree within
0.5 EM points and 0.3% savings). Tokens count thinking + every probe before the
stop + the answer; savings and EM loss are against ``full``, which also pays
its probes (993 thinking tokens on average, 1172 in all)::

    arm           EM   tokens  saved  EM loss  EM by difficulty tercile
    full        0.744  1172.5   0.0%   0.0p    0.938 / 0.803 / 0.492
    careful     0.742   907.3  22.6%   0.2p    0.940 / 0.803 / 0.483
    balanced    0.690   719.2  38.7%   5.5p    0.932 / 0.756 / 0.381
    aggressive  0.467   330.3  71.8%  27.7p    0.865 / 0.465 / 0.071

The per-request hindsight oracle over the same four arms, maximising
``EM − λ·tokens/1000``:

    λ=0.2: EM 0.746, 550 tokens (53.1% saved), reward 0.636 vs best static 0.561 (careful)
    λ=0.3: EM 0.741, 533 tokens (54.5% saved), reward 0.581 vs best static 0.474 (balanced)

so the loss of a static threshold sits on the hard third, and choosing per
request saves more than ``balanced`` with no EM loss. :func:`outcome_table`
is the vectorised path for oracle and hindsight baselines over many requests.

That is the ``conservative`` calibration (the default). ``SimConfig.named("overthinking")``
(or ``calibration = "overthinking"`` in a ``sim`` table) is the second one, where stopping
early often raises EM, as published runs of reasoning models report; :func:`published_ceilings`
on 3,000 requests of it (seed 0) gives DEER τ=0.95 +4.6 EM points at 50% fewer reasoning tokens
and the per-request hindsight stop +7.5 points at 76% fewer (ThinkBrake: +8%, −72%).
"""

from __future__ import annotations

from stopbandit.sim.calibration import ArmFigures, Calibration, Ceilings, OracleFigures, calibrate, published_ceilings
from stopbandit.sim.config import CALIBRATIONS, DEFAULT_DOMAINS, Degradation, DomainShift, DomainSpec, SimConfig
from stopbandit.sim.generator import Simulator
from stopbandit.sim.outcome import ArmOutcomes, SimOutcome, outcome_table, outcomes, run, stop_of
from stopbandit.sim.request import SimRequest

__all__ = [
    "CALIBRATIONS",
    "DEFAULT_DOMAINS",
    "Ceilings",
    "published_ceilings",
    "ArmFigures",
    "ArmOutcomes",
    "Calibration",
    "Degradation",
    "DomainShift",
    "DomainSpec",
    "OracleFigures",
    "SimConfig",
    "SimOutcome",
    "SimRequest",
    "Simulator",
    "calibrate",
    "outcome_table",
    "outcomes",
    "run",
    "stop_of",
]
