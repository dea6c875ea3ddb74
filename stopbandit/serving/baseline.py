"""A stored policy snapshot as the conservative budget's baseline (``[exploration] baseline = "snapshot:V"``).

The operator's current setting may be a policy rather than one arm: the
snapshot they serve today. Its arm for each request is what the budget
compares against, so the baseline's own reward is revealed exactly by every
served arm at least as lenient as that arm, and estimated from comparable
requests otherwise (:mod:`stopbandit.bandit.conservative`). The snapshot is
loaded once, verified like any other (checksum, signature, arms and features
must fit this Selector), and never learns; its greedy arm is the baseline
(a fixed setting does not explore). It is read when the Selector opens: a
store that does not answer then, or a snapshot it does not hold, fails the
open (no arm could be compared against). Decisions forced past the policy
(guardrail, overrides) never ask for the snapshot's arm, so the budget books
them at their worst case.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from stopbandit.bandit.policy import Policy
from stopbandit.bandit.snapshot import check_snapshot_meta, unpack
from stopbandit.errors import InputError

if TYPE_CHECKING:
    from stopbandit.config import SelectorConfig
    from stopbandit.replay.store import ReplayStore


class SnapshotBaseline:
    """The greedy arm of a stored snapshot, per request (thread-safe: one VW workspace behind a lock)."""

    def __init__(self, policy: Policy, version: str) -> None:
        self.policy = policy
        self.version = version
        self._lock = threading.Lock()

    @classmethod
    def load(cls, store: ReplayStore, config: SelectorConfig, key: bytes | None) -> SnapshotBaseline:
        """Load ``config.conservative.snapshot`` from ``store``; a missing or unfit snapshot raises."""
        version = config.conservative.snapshot
        assert version is not None
        stored = store.get_snapshot(version)
        if stored is None:
            raise InputError(f"exploration.baseline names snapshot {version!r}, which is not in the store")
        check_snapshot_meta(stored.meta, config.token_scale)
        policy = unpack(stored.model, stored.meta, stored.checksum, arms=config.arms,
                        feature_config=config.features.to_dict(), exploration=config.exploration, key=key)
        return cls(policy, stored.version)

    def arm(self, shared: str, lam: float) -> int:
        """The snapshot's greedy arm for this context line at λ (ties: the first)."""
        with self._lock:
            _, scores = self.policy.decide(shared, lam)
        return max(range(len(scores)), key=lambda a: (scores[a], -a))

    def close(self) -> None:
        with self._lock:
            self.policy.close()


__all__ = ["SnapshotBaseline"]
