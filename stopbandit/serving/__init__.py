"""The serving facade: :class:`Selector`, assembled from a policy slot, a reward ledger and a store follower."""

from stopbandit.serving.decision import Decision, Health, SelectorHealth, StoreHealth
from stopbandit.serving.selector import Selector

__all__ = ["Decision", "Health", "Selector", "SelectorHealth", "StoreHealth"]
