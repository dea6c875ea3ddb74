"""The overthinking calibration reproduces the published per-request ceilings; the conservative one does not."""

from __future__ import annotations

import pytest

from stopbandit.errors import ConfigError
from stopbandit.sim import CALIBRATIONS, SimConfig, Simulator, published_ceilings

N = 2500


def _ceilings(name: str, seed: int = 0):
    return published_ceilings(list(Simulator(SimConfig.named(name), seed=seed).stream(N)))


def test_overthinking_reproduces_deer_and_thinkbrake_figures() -> None:
    c = _ceilings("overthinking")
    # DEER (arXiv 2504.15895): +0.3 to +5 points at 19-80% fewer reasoning tokens, at its default τ = 0.95
    assert 0.3 <= c.deer_gain <= 5.5, c
    assert 0.19 <= c.deer_savings <= 0.80, c
    # ThinkBrake (arXiv 2510.00546): hindsight per-request stop, -72% tokens and +8% accuracy
    assert c.hindsight_savings == pytest.approx(0.72, abs=0.08), c
    assert c.hindsight_gain == pytest.approx(8.0, abs=2.5), c


def test_conservative_stays_the_default_and_rarely_gains_from_stopping() -> None:
    assert SimConfig() == CALIBRATIONS["conservative"] == SimConfig.from_dict({})
    c = _ceilings("conservative")
    assert c.deer_gain < 0.0, c  # stopping early costs EM there
    assert c.hindsight_gain < 1.5, c


def test_calibration_is_selectable_by_name_with_overrides() -> None:
    cfg = SimConfig.from_dict({"calibration": "overthinking", "probe_spacing": 32})
    assert cfg.overthink_rate == CALIBRATIONS["overthinking"].overthink_rate
    assert cfg.probe_spacing == 32
    with pytest.raises(ConfigError, match="sim.calibration must be one of"):
        SimConfig.from_dict({"calibration": "wild"})
    with pytest.raises(ConfigError, match="sim.calibration"):
        SimConfig.named("nope")
