"""Calibration: the default simulator reproduces the regime the design is built for.

Bands, not point values: the measured figures (50k requests, seeds 0-2) are
quoted in the docstring of ``stopbandit.sim``; these checks use 20k requests.
"""

from __future__ import annotations

import pytest

from stopbandit.bandit.arms import DEFAULT_ARMS
from stopbandit.sim import Calibration, Simulator, calibrate


@pytest.fixture(scope="module")
def cal() -> Calibration:
    return calibrate(Simulator(seed=0).take(20_000), DEFAULT_ARMS, lambdas=(0.2, 0.3))


def test_full_reasoning_em_and_length_in_range(cal: Calibration) -> None:
    assert cal.reference == "full"
    assert 0.70 <= cal.arm("full").em <= 0.80
    assert 800 <= cal.mean_think_len <= 1500


def test_balanced_saves_about_38_percent_at_a_visible_em_loss(cal: Calibration) -> None:
    balanced = cal.arm("balanced")
    assert 0.30 <= balanced.savings <= 0.46
    assert 0.02 <= balanced.em_loss <= 0.08


def test_arms_are_ordered_by_savings_and_loss(cal: Calibration) -> None:
    careful, balanced, aggressive = cal.arm("careful"), cal.arm("balanced"), cal.arm("aggressive")
    assert 0.10 <= careful.savings < balanced.savings < aggressive.savings
    assert careful.em_loss <= 0.015
    assert careful.em_loss < balanced.em_loss < aggressive.em_loss


def test_em_loss_concentrates_on_hard_items(cal: Calibration) -> None:
    full, balanced = cal.arm("full"), cal.arm("balanced")
    easy_loss = full.em_by_tercile[0] - balanced.em_by_tercile[0]
    hard_loss = full.em_by_tercile[2] - balanced.em_by_tercile[2]
    assert easy_loss <= 0.01
    assert hard_loss >= 0.05
    assert full.em_by_tercile[0] > full.em_by_tercile[1] > full.em_by_tercile[2]


@pytest.mark.parametrize("lam", [0.2, 0.3])
def test_per_request_oracle_beats_every_static_arm(cal: Calibration, lam: float) -> None:
    oracle = next(o for o in cal.oracles if o.lam == lam)
    assert oracle.reward >= oracle.best_static_reward + 0.05
    assert oracle.em >= cal.arm("full").em - 0.01  # saves tokens with (nearly) no EM loss
    assert oracle.savings >= 0.38
    assert sum(oracle.choice_shares) == pytest.approx(1.0)


def test_format_names_every_arm(cal: Calibration) -> None:
    text = cal.format()
    for arm in DEFAULT_ARMS:
        assert arm.name in text
    assert "oracle λ=0.2" in text
