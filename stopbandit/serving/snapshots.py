"""The Selector's snapshots: save the served policy, checkpoint what it learned, resume, load and swap in.

Part of :class:`stopbandit.serving.selector.Selector` (its public
``snapshot``, ``checkpoint`` and ``load_snapshot`` are here): a snapshot is
the served policy packed with the domain prior and the learned stop rule
(:func:`stopbandit.bandit.snapshot.pack`); loading one checks its metadata
against this Selector's settings before the slot swaps it in. The methods run
on the Selector's state; :class:`~stopbandit.serving.selector.Selector` is
the only class that mixes them in.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from stopbandit.bandit.policy import FrozenPolicy
from stopbandit.bandit.snapshot import PackedSnapshot, check_snapshot_meta, pack, stop_rule_of, unpack
from stopbandit.errors import InputError, SnapshotError, StoreError
from stopbandit.replay.store import check_role

CHECKPOINT_PREFIX = "ckpt-"
"""Version prefix of a checkpoint: a snapshot of a serving Selector's own learning, stored as a candidate
(no Selector hot-swaps to it) and resumed from by the next Selector opened on the store."""


class SnapshotPath:
    """Snapshots, checkpoints and loading (mixed into the Selector)."""

    def snapshot(self, *, role: str = "serving") -> str:
        """Save the current policy to the store; returns its version.

        ``role="serving"``: it becomes the newest serving snapshot, which every
        Selector following the store hot-swaps to. ``role="candidate"``: stored
        for evaluation only (a challenger, ``replay evaluate --policy VERSION``);
        nothing swaps to it until ``stopbandit ab promote`` makes it serve.
        """
        role = check_role(role)
        covered = self._ckpt_outcomes  # a snapshot (any role) stands in for a checkpoint of what it holds
        packed = self._pack()
        self.store.save_snapshot(packed.version, packed.model, packed.meta, packed.checksum, role=role)
        if role == "serving":
            self._follower.known.add(packed.version)
        with self._ckpt_lock:  # the operator saved this state on purpose: no checkpoint repeats it
            self._ckpt_outcomes = max(self._ckpt_outcomes - covered, 0)
            self._ckpt_at = time.monotonic()
        return packed.version

    def checkpoint(self) -> str | None:
        """Store the policy this Selector has learned as a checkpoint; returns its version (None: nothing new).

        A checkpoint is a snapshot with role ``candidate`` and a version starting with ``ckpt-``: no
        Selector hot-swaps to it, and the next Selector opened on the store with ``snapshot="latest"``
        resumes from it when it is newer than the newest serving snapshot. A frozen (``learn=False``)
        Selector, one with checkpoints off, or one with no outcome learned since its last checkpoint
        or :meth:`snapshot` (of either role), stores nothing.
        """
        with self._ckpt_lock:
            if not self._learns or self._ckpt_outcomes == 0 or not self.checkpoints:
                return None
            outcomes, self._ckpt_outcomes, self._ckpt_at = self._ckpt_outcomes, 0, time.monotonic()
            packed = self._pack(checkpoint_of=outcomes)
            try:
                self.store.save_snapshot(packed.version, packed.model, packed.meta, packed.checksum, role="candidate")
            except BaseException:
                self._ckpt_outcomes += outcomes  # not stored: the next checkpoint covers these outcomes too
                raise
            self.last_checkpoint = packed.version
            return packed.version

    @property
    def checkpoints(self) -> bool:
        """Whether this Selector stores checkpoints (off when both ``checkpoint_every`` and
        ``checkpoint_interval_s`` are 0)."""
        return bool(self.config.checkpoint_every or self.config.checkpoint_interval_s)

    def checkpoint_due(self) -> bool:
        """True when ``checkpoint_every`` outcomes or ``checkpoint_interval_s`` seconds have passed."""
        n = self._ckpt_outcomes
        if not self._learns or n == 0:
            return False
        every, interval = self.config.checkpoint_every, self.config.checkpoint_interval_s
        return bool((every and n >= every) or (interval and time.monotonic() - self._ckpt_at >= interval))

    def _resume(self) -> None:
        """Load the newest of the serving snapshots and this store's checkpoints (none: stay fresh)."""
        found = self.store.resume_snapshot_version(CHECKPOINT_PREFIX)
        if found is None:
            return
        version, role = found
        if role != "serving":  # a checkpoint newer than every serving snapshot: do not swap back to the older one
            serving = self.store.latest_snapshot_version()
            if serving is not None:
                self._follower.known.add(serving)
        self.load_snapshot(version)  # refused at open: raises (there is no earlier policy of this store to serve)

    def load_snapshot(self, version: str = "latest", *, missing_ok: bool = False) -> bool:
        """Load a stored snapshot and swap it in atomically. False if none exists and ``missing_ok``.

        "latest" is the newest serving snapshot; a version may name any snapshot, a candidate included.
        """
        with self._swap_lock:
            stored = self.store.get_snapshot(version)
            if stored is None:
                if missing_ok:
                    return False
                raise InputError(f"no snapshot {version!r} in the store")
            try:
                check_snapshot_meta(stored.meta, self.config.token_scale)
                policy = unpack(stored.model, stored.meta, stored.checksum, arms=self.arms,
                                feature_config=self.config.features.to_dict(), exploration=self.config.exploration,
                                key=self._snapshot_key)
                try:
                    stop_rule = stop_rule_of(stored.meta)
                    if stop_rule is not None and self.stop_learner is not None:
                        self.stop_learner.check(stop_rule, stored.version)
                except SnapshotError:
                    policy.close()
                    raise
            except (SnapshotError, InputError, StoreError):
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a stored snapshot holds, it is refused, not raised
                raise SnapshotError(f"snapshot {stored.version!r} could not be loaded: {type(exc).__name__}: "
                                    f"{exc}") from exc
            if stored.meta.get("policy") != self.config.policy:
                policy.close()
                raise InputError(f"snapshot {stored.version!r} is a {stored.meta.get('policy')!r} policy; "
                                 f"this selector runs {self.config.policy!r}")
            prior = stored.meta.get("extra", {}).get("prior")
            if prior:
                self.extractor.prior.load(prior)
            policy.trace_share = self._trace_share
            if not self._learns:
                policy = FrozenPolicy(policy)
            if stop_rule is not None and self.stop_learner is not None:
                self.stop_learner.load(stop_rule, stored.version)
            self._slot.swap(policy, stored.version)
            self._follower.known.add(stored.version)
            self._follower.snapshot_error = None
        return True

    def _pack(self, *, checkpoint_of: int | None = None) -> PackedSnapshot:
        """The served policy as a snapshot (with the domain prior and the learned stop rule).

        ``checkpoint_of``: the outcomes a checkpoint covers; it gets a ``ckpt-`` version and says
        which version it continues.
        """
        live = self._slot.acquire()
        try:
            extra: dict[str, Any] = {"prior": self.extractor.prior.state()}
            version = None
            if checkpoint_of is not None:
                extra["checkpoint"] = {"outcomes": checkpoint_of, "of": live.version}
                version = f"{CHECKPOINT_PREFIX}{uuid.uuid4().hex[:8]}-{live.policy.t}"
            return pack(live.policy, lam=self._lam, feature_config=self.config.features.to_dict(), extra=extra,
                        version=version, key=self._snapshot_key,
                        stop_rule=self.stop_learner.rule if self.stop_learner is not None else None)
        finally:
            self._slot.release(live)


__all__ = ["CHECKPOINT_PREFIX", "SnapshotPath"]
