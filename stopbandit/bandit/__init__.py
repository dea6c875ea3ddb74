"""Pure bandit parts: arms, the stop rule, probe traces, reward, exploration, VW policies, snapshots as bytes."""

from stopbandit.bandit.arms import DEFAULT_ARMS, Arm, ArmSet, arms_from_config
from stopbandit.bandit.exploration import EpsilonGreedy, Exploration, Softmax, SquareCB, exploration_from_config
from stopbandit.bandit.reward import reward
from stopbandit.bandit.stoprule import stop_reason
from stopbandit.bandit.trace import Probe, ProbeTrace, counterfactual

__all__ = [
    "DEFAULT_ARMS",
    "Arm",
    "ArmSet",
    "EpsilonGreedy",
    "Exploration",
    "Probe",
    "ProbeTrace",
    "Softmax",
    "SquareCB",
    "arms_from_config",
    "counterfactual",
    "exploration_from_config",
    "reward",
    "stop_reason",
]
