"""The serving facade: ``Selector.open`` / ``choose`` / ``reward`` / ``set_lambda``.

Light like river's ``predict_one``/``learn_one``: ``choose`` extracts
features, asks the policy for a probability vector, samples an arm, logs the
decision (full probability vector and propensity) through the background
writer and returns a :class:`Decision`; ``reward`` validates, learns online and
logs the outcome. Input is validated once here; the parts behind trust it.

Guarantees on the serving path:

* the store being down never makes ``choose`` or ``reward`` raise: rows go to
  the spill file, learning continues, and :meth:`Selector.health` says so;
* λ changes (here or from any process, via the store) apply to the next
  ``choose``; other processes pick them up within ``follow_interval``;
* a newer snapshot in the store is loaded off the request path and swapped in
  atomically (the policy reference is replaced, in-flight calls finish on the
  old one), so requests are never blocked or failed by a swap;
* VW workspaces are guarded by their own locks (not thread-safe otherwise).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stopbandit.bandit.arms import Arm, ArmSet
from stopbandit.bandit.exploration import Exploration
from stopbandit.bandit.policy import Policy, make_policy
from stopbandit.bandit.reward import check_lambda
from stopbandit.bandit.snapshot import pack, unpack
from stopbandit.bandit.trace import ProbeTrace, answer_key, revealed_outcomes
from stopbandit.bandit.vw import shared_line
from stopbandit.config import SelectorConfig, load_config
from stopbandit.errors import InputError, StopbanditError, StoreError, UnknownDecisionError
from stopbandit.features.extract import FeatureExtractor
from stopbandit.replay import migrate
from stopbandit.replay.store import ReplayStore, check_same_outcome, outcome_row
from stopbandit.replay.validate import check_key
from stopbandit.replay.writer import BatchWriter

log = logging.getLogger("stopbandit.selector")

MAX_PENDING = 200_000


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``choose`` returns: the arm to run and everything needed to reward it."""

    decision_id: str
    arm: Arm
    arm_index: int
    probability: float
    probabilities: dict[str, float]
    lam: float
    policy_version: str
    features: dict[str, float | str]


@dataclass(frozen=True, slots=True)
class Health:
    store_ok: bool
    last_error: str | None
    lam: float
    policy: str
    policy_version: str
    decisions: int
    rewards: int
    pending_rewards: int
    queue_depth: int
    spill_backlog: int
    spilled: int
    dropped: int
    rejected: int
    write_lag_s: float


@dataclass(slots=True)
class _Pending:
    shared: str
    arm: int
    prob: float
    lam: float
    domain: str | None


class Selector:
    """Chooses a stopping arm per request and learns from rewards. Thread-safe."""

    def __init__(self, config: SelectorConfig, store: ReplayStore, *, snapshot: str | None = "latest",
                 follow: bool = True) -> None:
        self.config = config
        self.arms: ArmSet = config.arms
        self.store = store
        self.extractor = FeatureExtractor(config.features)
        self._rng = np.random.default_rng(config.seed)
        self._rng_lock = threading.Lock()
        self._key_rng, self._key_pid = random.Random(os.urandom(32)), os.getpid()
        self._lam = config.lam
        self._lambda_id = 0
        self._fault: str | None = None
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._rewarded: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._decisions = 0
        self._rewards = 0
        self._own_versions: set[str] = set()
        self._policy: Policy = make_policy(config.policy, self.arms, config.exploration, config.token_scale)
        self._policy_version = f"fresh-{uuid.uuid4().hex[:8]}"
        self._store_ok = self._prepare_store()
        self.writer = BatchWriter(
            store,
            max_queue=config.store.max_queue,
            batch_size=config.store.batch_size,
            flush_interval=config.store.flush_interval,
            spill_path=config.store.spill_path,
        )
        if self._store_ok:
            self._sync_lambda(initial=True)
            if snapshot is not None:
                self.load_snapshot(snapshot, missing_ok=snapshot == "latest")
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        if follow:
            self._follower = threading.Thread(target=self._follow, name="stopbandit-follow", daemon=True)
            self._follower.start()

    # -- construction -------------------------------------------------------------
    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        config: str | os.PathLike[str] | SelectorConfig | None = None,
        lam: float | None = None,
        token_scale: float | None = None,
        arms: ArmSet | list[Arm] | list[Mapping[str, Any]] | None = None,
        policy: str | None = None,
        exploration: Exploration | None = None,
        seed: int | None = None,
        durable: bool | None = None,
        snapshot: str | None = "latest",
        follow: bool = True,
    ) -> Selector:
        """Open a Selector on the replay store at ``url`` (migrating it to the newest schema).

        ``config`` is a TOML path or a :class:`SelectorConfig`; keyword arguments override it.
        ``snapshot``: load this stored snapshot version ("latest": the newest, if any; None: start fresh).
        """
        cfg = config if isinstance(config, SelectorConfig) else (load_config(config) if config else SelectorConfig())
        if arms is not None:
            arms = arms if isinstance(arms, ArmSet) else ArmSet.of(arms)
        cfg = cfg.with_(lam=lam, token_scale=token_scale, arms=arms, policy=policy, exploration=exploration, seed=seed)
        if durable is not None:
            from dataclasses import replace

            cfg = replace(cfg, store=replace(cfg.store, durable=durable))
        store = ReplayStore(url or cfg.store.url, check_schema=False)
        return cls(cfg, store, snapshot=snapshot, follow=follow)

    def _new_key(self) -> str:
        """A random 128-bit id without a syscall.

        ``uuid4`` reads ``os.urandom``, which releases the GIL; getting it back
        can wait a whole switch interval (5 ms) behind the writer thread, which
        showed up as the single largest cost of ``choose``. A per-process
        Mersenne Twister seeded from ``os.urandom`` (re-seeded after fork) is as
        unique for ids and costs no syscall.
        """
        pid = os.getpid()
        if pid != self._key_pid:
            self._key_rng, self._key_pid = random.Random(os.urandom(32)), pid
        return f"{self._key_rng.getrandbits(128):032x}"

    def _prepare_store(self) -> bool:
        try:
            migrate.upgrade(engine=self.store.engine)
            return True
        except StoreError as exc:
            self._record_fault(exc)
            return False

    # -- the serving path ---------------------------------------------------------------
    def choose(self, prompt: str, *, domain: str | None = None, request_id: str | None = None,
               features: Mapping[str, Any] | None = None) -> Decision:
        """Pick an arm for one request; logs the decision; never raises because of the store."""
        key = self._new_key() if request_id is None else check_key(request_id)
        feats = self.extractor.extract(prompt, domain, features)
        shared = shared_line(feats)
        policy, version, lam = self._policy, self._policy_version, self._lam
        probs, _ = policy.decide(shared, lam)
        with self._rng_lock:
            u = self._rng.random()
        idx, acc = len(probs) - 1, 0.0
        for i, p in enumerate(probs):
            acc += p
            if u < acc:
                idx = i
                break
        names = self.arms.names
        prob_map = dict(zip(names, probs))
        with self._cache_lock:
            if key in self._pending or key in self._rewarded:
                raise InputError(f"request_id {key!r} was already used for a decision; ids must be unique")
            self._pending[key] = _Pending(shared, idx, probs[idx], lam, feats.get("domain"))  # type: ignore[arg-type]
            if len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
            self._decisions += 1
        row = {
            "request_key": key, "ts": time.time(), "domain": feats.get("domain"), "features": feats,
            "arm": names[idx], "arm_index": idx, "probabilities": prob_map, "propensity": probs[idx],
            "lam": lam, "token_scale": self.config.token_scale, "policy_version": version,
            "experiment": "champion",
        }
        self._log("d", row)
        return Decision(key, self.arms[idx], idx, probs[idx], prob_map, lam, version, feats)

    def reward(self, decision_id: str, em: float, tokens: int, *, latency_ms: float | None = None,
               trace: ProbeTrace | None = None, reference: str | None = None) -> None:
        """Report the outcome of a decision. Idempotent; a conflicting repeat raises ConflictError.

        With a probe ``trace`` and the ``reference`` answer, every arm the trace
        reveals (every arm at most as lenient as the logged one) is learned from,
        not only the logged arm (nested feedback).
        """
        row = outcome_row(
            decision_id, em, tokens, latency_ms,
            trace=trace.hashed().to_json() if trace is not None else None,
            reference_key=answer_key(reference) if reference is not None else None,
        )
        with self._cache_lock:
            done = self._rewarded.get(decision_id)
            if done is not None:
                check_same_outcome(decision_id, done, row)
                return
            pending = self._pending.pop(decision_id, None)
        if pending is None:
            pending = self._pending_from_store(decision_id, row)
            if pending is None:
                return  # already stored with the same values
        with self._cache_lock:
            self._rewarded[decision_id] = row
            if len(self._rewarded) > MAX_PENDING:
                self._rewarded.popitem(last=False)
            self._rewards += 1
        self._learn(pending, row, trace, reference)
        self._log("o", row)

    def _learn(self, pending: _Pending, row: Mapping[str, Any], trace: ProbeTrace | None,
               reference: str | None) -> None:
        policy = self._policy
        if trace is not None and reference is not None:
            revealed = {k: (em, tok) for k, (em, tok) in revealed_outcomes(trace, self.arms.arms, reference).items()
                        if em is not None}
            revealed[pending.arm] = (row["em"], row["tokens"])
            policy.learn_revealed(pending.shared, revealed, pending.arm, pending.prob, pending.lam)
        else:
            policy.learn(pending.shared, pending.arm, row["em"], row["tokens"], pending.prob, pending.lam)
        self.extractor.observe(pending.domain, row["em"])

    def _pending_from_store(self, key: str, row: Mapping[str, Any]) -> _Pending | None:
        """A decision that is no longer (or never was) in memory: find it in the store."""
        self.writer.flush(5.0)
        try:
            existing = self.store.get_outcome(key)
            if existing is not None:
                check_same_outcome(key, existing, row)
                return None
            d = self.store.get_decision(key)
        except StoreError as exc:
            self._record_fault(exc)
            raise StoreError(f"cannot check decision {key!r}: the store is unavailable and it is not in memory") from exc
        if d is None:
            raise UnknownDecisionError(f"unknown decision id {key!r}: no such decision was logged")
        return _Pending(shared_line(d["features"]), d["arm_index"], d["propensity"], d["lam"], d["domain"])

    def _log(self, kind: str, row: dict[str, Any]) -> None:
        if self.config.store.durable and self._store_ok:
            try:
                self.store.write_batch([row] if kind == "d" else [], [row] if kind == "o" else [])
                return
            except (StoreError, StopbanditError) as exc:
                self._record_fault(exc)
            except Exception as exc:  # noqa: BLE001 - durable writes fall back to the spill, never raise
                self._record_fault(exc)
            self.writer._to_spill([(kind, row)])
            return
        if kind == "d":
            self.writer.submit_decision(row)
        else:
            self.writer.submit_outcome(row)

    # -- λ ---------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        return self._lam

    def set_lambda(self, value: float, *, reason: str, who: str = "api") -> None:
        """Change λ now (next ``choose``) and record the change with its reason in the store."""
        value = check_lambda(value)
        if not isinstance(reason, str) or not reason.strip():
            raise InputError("set_lambda needs a non-empty reason (it is stored with the change)")
        self._lam = value
        try:
            change = self.store.add_lambda(value, reason, who)
            self._lambda_id = max(self._lambda_id, change.id)
        except StoreError as exc:
            self._record_fault(exc)

    def _sync_lambda(self, initial: bool = False) -> None:
        change = self.store.current_lambda()
        if change is None:
            if initial:
                change = self.store.add_lambda(self._lam, "initial value (Selector.open)", "selector")
                self._lambda_id = change.id
            return
        if change.id > self._lambda_id:
            if initial and change.value != self._lam:
                log.warning("using λ=%s from the store (latest change: %r), not %s", change.value, change.reason,
                            self._lam)
            self._lam, self._lambda_id = change.value, change.id

    # -- snapshots -------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def policy_version(self) -> str:
        return self._policy_version

    def snapshot(self) -> str:
        """Save the current policy to the store; returns its version."""
        packed = pack(self._policy, lam=self._lam, feature_config=self.config.features.to_dict(),
                      extra={"prior": self.extractor.prior.state()})
        self.store.save_snapshot(packed.version, packed.model, packed.meta, packed.checksum)
        self._own_versions.add(packed.version)
        return packed.version

    def load_snapshot(self, version: str = "latest", *, missing_ok: bool = False) -> bool:
        """Load a stored snapshot and swap it in atomically. False if none exists and ``missing_ok``."""
        stored = self.store.get_snapshot(version)
        if stored is None:
            if missing_ok:
                return False
            raise InputError(f"no snapshot {version!r} in the store")
        policy = unpack(stored.model, stored.meta, stored.checksum, arms=self.arms,
                        feature_config=self.config.features.to_dict(), exploration=self.config.exploration)
        if stored.meta.get("policy") != self.config.policy:
            policy.close()
            raise InputError(f"snapshot {stored.version!r} is a {stored.meta.get('policy')!r} policy; "
                             f"this selector runs {self.config.policy!r}")
        prior = stored.meta.get("extra", {}).get("prior")
        if prior:
            self.extractor.prior.load(prior)
        old, self._policy, self._policy_version = self._policy, policy, stored.version
        self._own_versions.add(stored.version)
        threading.Timer(5.0, old.close).start()  # let in-flight calls on the old policy finish
        return True

    # -- background follower ----------------------------------------------------------------
    def _follow(self) -> None:
        while not self._stop.wait(self.config.follow_interval):
            try:
                if not self._store_ok:
                    self._store_ok = self._prepare_store()
                    if not self._store_ok:
                        continue
                self._sync_lambda()
                latest = self.store.latest_snapshot_version()
                if latest is not None and latest not in self._own_versions:
                    self.load_snapshot(latest)
                    log.info("hot-swapped to snapshot %s", latest)
                self._fault = None if self.writer.health().store_ok else self._fault
            except StopbanditError as exc:
                self._record_fault(exc)
                if isinstance(exc, (InputError,)) or "does not fit" in str(exc):
                    latest = self.store.latest_snapshot_version() if self._store_ok else None
                    if latest:
                        self._own_versions.add(latest)  # do not retry a refused snapshot every tick
            except Exception as exc:  # noqa: BLE001 - the follower must never die
                self._record_fault(exc)

    def _record_fault(self, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        if msg != self._fault:
            log.error("stopbandit store fault: %s", msg)
        self._fault = msg

    # -- lifecycle ------------------------------------------------------------------------------
    def health(self) -> Health:
        w = self.writer.health()
        with self._cache_lock:
            pending = len(self._pending)
        store_ok = w.store_ok and self._store_ok
        return Health(
            store_ok=store_ok, last_error=w.last_error if not w.store_ok else self._fault if not store_ok else None,
            lam=self._lam, policy=self.config.policy, policy_version=self._policy_version,
            decisions=self._decisions, rewards=self._rewards, pending_rewards=pending,
            queue_depth=w.queue_depth, spill_backlog=w.spill_backlog, spilled=w.spilled, dropped=w.dropped,
            rejected=w.rejected, write_lag_s=w.write_lag_s,
        )

    def flush(self, timeout: float = 30.0) -> bool:
        return self.writer.flush(timeout)

    def close(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(5)
        self.writer.close()
        self._policy.close()
        self.store.dispose()

    def __enter__(self) -> Selector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Decision", "Health", "Selector"]

