"""The serving facade: ``Selector.open`` / ``choose`` / ``reward`` / ``set_lambda``.

Light like river's ``predict_one``/``learn_one``: ``choose`` extracts
features, asks the policy for a probability vector, samples an arm, logs the
decision (full probability vector and propensity) through the background
writer and returns a :class:`Decision`; ``reward`` validates, learns online and
logs the outcome. Input is validated once here; the parts behind trust it.

Guarantees on the serving path:

* the store being down never makes ``choose`` or ``reward`` raise: rows go to
  the spill file (fsync'd per batch) and are replayed, idempotently, when the
  store answers again; learning continues; :meth:`Selector.health` reports the
  outage (``store_ok``, ``outages``, ``down_since``) and the backlog
  (``queue_depth``, ``spill_backlog``, ``max_spill_backlog``). The one
  exception is a reward for a decision that is no longer in memory: it has to
  be looked up in the store, and raises StoreError while the store is down;
* ``durable=True``: ``choose`` and ``reward`` return only once their row is
  committed, or fsync'd to the spill while the store is down, so a crash
  (``kill -9``) loses nothing acknowledged. Otherwise a crash loses at most the
  rows accepted within the last ``store.flush_interval`` (plus one commit);
* λ changes (here or from any process, via the store) apply to the next
  ``choose``; other processes pick them up within ``follow_interval``;
* a newer snapshot in the store is loaded off the request path and swapped in
  atomically (one reference to the policy *and* its version, so a decision
  never logs the version of a policy it did not use); the old policy is
  closed only when no call is using it any more;
* VW workspaces are guarded by their own locks (not thread-safe otherwise);
* memory is bounded: at most ``max_pending`` decisions wait for their reward
  (and as many settled ids are remembered for idempotency), the writer queue
  holds ``store.max_queue`` rows, the spill ``store.max_spill_bytes``;
* delayed rewards (``reward_window_s``): see :mod:`stopbandit.bandit.delayed`;
  windows are closed by a reaper thread, never on the request path.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stopbandit.bandit.arms import Arm, ArmSet
from stopbandit.bandit.delayed import MAX_TOKENS, Aggregate, ArmMeans, RewardWindow, default_reward
from stopbandit.bandit.exploration import Exploration, TraceShare
from stopbandit.bandit.policy import EM_ARGS, NATIVE_ARGS, TOKEN_ARGS, Policy, make_policy, observation_weights
from stopbandit.bandit.reward import check_lambda
from stopbandit.bandit.snapshot import check_vw_args, pack, unpack
from stopbandit.bandit.trace import ProbeTrace, answer_key, revealed_outcomes
from stopbandit.bandit.vw import shared_line
from stopbandit.config import LearningConfig, SelectorConfig, load_config
from stopbandit.errors import InputError, SnapshotError, StopbanditError, StoreError, UnknownDecisionError
from stopbandit.features.extract import FeatureExtractor
from stopbandit.replay import migrate
from stopbandit.replay.store import ReplayStore, check_role, check_same_outcome, outcome_row
from stopbandit.replay.validate import check_key
from stopbandit.replay.writer import BatchWriter

log = logging.getLogger("stopbandit.selector")

MAX_PENDING = 200_000  # the default of SelectorConfig.max_pending
RETIRE_GRACE_S = 5.0  # a swapped-out policy stays open this long for callers holding ``Selector.policy``
REAP_BATCH = 1000
FOLLOW_MODES = (True, False, "all", "lambda")  # what a Selector follows in the store (see Selector.open)
EXPERIMENTS = ("champion", "challenger", "holdout")  # decisions.experiment (migration 0004)
FORCED_TAG = "forced"  # policy_version prefix of a forced decision unless the caller tags it
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


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
    pending_rewards: int  # decisions in memory waiting for a reward (open windows with reward_window_s)
    queue_depth: int
    spill_backlog: int
    spilled: int
    dropped: int
    rejected: int
    write_lag_s: float
    outages: int = 0
    down_since: float | None = None
    replayed: int = 0
    max_spill_backlog: int = 0
    defaulted: int = 0  # windows closed without a reward (default recorded and learned)
    late: int = 0  # rewards after their window: stored with status late, not learned
    discarded: int = 0  # rewards after the outcome was settled (earliest: later ones; sum: after close)
    evicted: int = 0  # decisions pushed out of memory by max_pending (windows closed early)
    snapshot_error: str | None = None  # why the newest stored snapshot was refused (still serving the old one)


@dataclass(slots=True)
class _Pending:
    shared: str
    arm: int
    prob: float
    lam: float
    domain: str | None
    deadline: float = math.inf  # time.monotonic() at which the reward window closes
    agg: Aggregate | None = None  # rewards so far (reward_aggregation = "sum")
    probs: Sequence[float] | None = None  # the whole probability vector (arm order) that drew ``arm``


@dataclass(slots=True)
class _Settled:
    """A closed reward window: what to learn from and what to store (they differ for a late reward)."""

    pending: _Pending
    learn: dict[str, Any]
    log: dict[str, Any]
    trace: ProbeTrace | None = None
    reference: str | None = None


class _Live:
    """The policy in use and its version, swapped as one reference; ``users`` counts calls in flight."""

    __slots__ = ("policy", "version", "users", "retired_at")

    def __init__(self, policy: Policy, version: str) -> None:
        self.policy, self.version, self.users, self.retired_at = policy, version, 0, 0.0


class FrozenPolicy(Policy):
    """Decides exactly like the policy it wraps and never learns.

    For a Selector opened with ``learn=False``: a challenger serving a
    candidate snapshot logs its decisions and outcomes like any Selector, but
    the candidate must stay what was evaluated (and what ``ab promote`` ships).
    """

    def __init__(self, inner: Policy) -> None:
        super().__init__(inner.arms, inner.exploration, inner.token_scale)
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.t = inner.t
        self.trace_share = inner.trace_share

    def _decide(self, lines: list[str], lam: float) -> tuple[list[float], list[float]]:
        return self.inner._decide(lines, lam)

    def learn(self, shared: str, arm: int, em: float, tokens: int, prob: float, lam: float, *,
              weight: float = 1.0) -> None:
        return None

    def learn_revealed(self, shared: str, outcomes: Mapping[int, tuple[float, int]], logged: int,
                       prob: float, lam: float, *, weights: Mapping[int, float] | None = None) -> None:
        return None

    def predict_heads(self, shared: str) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.predict_heads(shared)

    def predict_heads_batch(self, shared: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.predict_heads_batch(shared)

    def blobs(self) -> dict[str, bytes]:
        return self.inner.blobs()

    def vw_args(self) -> dict[str, str]:
        return self.inner.vw_args()

    def close(self) -> None:
        self.inner.close()


def _check_text(value: str, field: str) -> str:
    """Strings that reach the store must be storable everywhere: no NUL (PostgreSQL), valid Unicode."""
    if "\x00" in value:
        raise InputError(f"{field} must not contain NUL characters, got {value[:80]!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{field} is not valid Unicode (lone surrogate at position {exc.start}): {value[:80]!r}") \
            from None
    return value


def _check_id(value: object, field: str) -> str:
    return _check_text(check_key(value, field=field), field)


def check_snapshot_meta(meta: Mapping[str, Any], token_scale: float) -> None:
    """Refuse stored metadata that would make VW do more than load a model, or that does not fit."""
    version = meta.get("version", "?") if isinstance(meta, Mapping) else "?"
    check_vw_args(meta)
    stored_scale = meta.get("token_scale")
    if isinstance(stored_scale, bool) or not isinstance(stored_scale, (int, float)) or stored_scale != token_scale:
        raise SnapshotError(f"snapshot {version!r} does not fit this selector: token_scale: snapshot has "
                            f"{stored_scale!r}, selector has {token_scale!r}")


class Selector:
    """Chooses a stopping arm per request and learns from rewards. Thread-safe."""

    def __init__(self, config: SelectorConfig, store: ReplayStore, *, snapshot: str | None = "latest",
                 follow: bool | str = True, learn: bool = True) -> None:
        if follow not in FOLLOW_MODES:
            raise InputError(f"follow must be one of {list(FOLLOW_MODES)}, got {follow!r}")
        if not isinstance(learn, bool):
            raise InputError(f"learn must be True or False, got {learn!r}")
        self._follow_snapshots = follow is True or follow == "all"
        self._learns = learn
        self.config = config
        self.arms: ArmSet = config.arms
        self._arm_names = self.arms.names  # ArmSet.names builds a new tuple per call; choose needs it every time
        self._reveals = self.arms.reveals()  # for [learning] revealed_weighting, per reward
        self.store = store
        self.extractor = FeatureExtractor(config.features)
        self._rng = np.random.default_rng(config.seed)
        self._rng_lock = threading.Lock()
        self._key_rng, self._key_pid = random.Random(os.urandom(32)), os.getpid()
        self._lam = config.lam
        self._lambda_id = 0
        self._fault: str | None = None
        self._follow_ok = True
        self._snapshot_error: str | None = None
        self._window: RewardWindow | None = config.reward_window
        self._max_pending = config.max_pending
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._rewarded: OrderedDict[str, tuple[float, int, str]] = OrderedDict()  # id -> (em, tokens, status)
        self._overflow: list[tuple[str, _Pending]] = []  # windows evicted by max_pending, for the reaper
        self._cache_lock = threading.Lock()
        self._means = ArmMeans(len(self.arms))
        self._decisions = self._rewards = 0
        self._defaulted = self._late = self._discarded = self._evicted = 0
        self._own_versions: set[str] = set()
        self._live_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._retired: list[_Live] = []
        # the exploration rule's record of traced rewards belongs to this Selector, never to its config,
        # and carries over from one policy it serves to the next
        self._trace_share = TraceShare()
        fresh = make_policy(config.policy, self.arms, config.exploration, config.token_scale)
        fresh.trace_share = self._trace_share
        self._live = _Live(fresh if learn else FrozenPolicy(fresh), f"fresh-{uuid.uuid4().hex[:8]}")
        self._closed = False
        self._calls = 0  # choose/reward calls in flight (close waits for them)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._store_ok = self._prepare_store()
        self.writer = BatchWriter(
            store,
            max_queue=config.store.max_queue,
            batch_size=config.store.batch_size,
            flush_interval=config.store.flush_interval,
            spill_path=config.store.spill_path,
            max_spill_bytes=config.store.max_spill_bytes,
            retry_interval=config.store.retry_interval,
        )
        # durable: committed or fsync'd before choose/reward return; else queued (bound once, off the hot path)
        self._log_row = self.writer.write_now if config.store.durable else self.writer.submit
        try:
            if self._store_ok:
                try:
                    self._sync_lambda(initial=True)
                    if snapshot is not None:
                        self.load_snapshot(snapshot, missing_ok=snapshot == "latest")
                except StoreError as exc:
                    self._record_fault(exc)
                    self._follow_ok = False
        except BaseException:
            self.writer.close(5.0)
            self._live.policy.close()
            raise
        self._follower: threading.Thread | None = None
        if follow:
            self._follower = threading.Thread(target=self._follow, name="stopbandit-follow", daemon=True)
            self._follower.start()
        self._reaper: threading.Thread | None = None
        if self._window is not None:
            self._reaper = threading.Thread(target=self._reap_loop, name="stopbandit-rewards", daemon=True)
            self._reaper.start()

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
        follow: bool | str = True,
        reward_window_s: float | None = None,
        reward_aggregation: str | None = None,
        learning: LearningConfig | None = None,
        learn: bool = True,
    ) -> Selector:
        """Open a Selector on the replay store at ``url`` (migrating it to the newest schema).

        ``config`` is a TOML path or a :class:`SelectorConfig`; keyword arguments override it.
        ``snapshot``: load this stored snapshot version ("latest": the newest *serving* one, if any; a
        version may name a candidate; None: start fresh).
        ``follow``: True (or "all") follows the store's λ and hot-swaps to newer serving snapshots;
        "lambda" follows λ only (a challenger serving a fixed candidate); False follows nothing.
        ``learn``: False freezes the policy (rewards are still logged, never learned): a candidate
        under A/B evaluation must stay exactly what ``ab promote`` would ship.
        ``durable``: commit (or fsync to the spill) every row before ``choose``/``reward`` return.
        ``reward_window_s``/``reward_aggregation``: delayed rewards (see :mod:`stopbandit.bandit.delayed`).
        ``learning``: how trace-revealed outcomes are weighted (``[learning]``, :class:`LearningConfig`).
        """
        cfg = config if isinstance(config, SelectorConfig) else (load_config(config) if config else SelectorConfig())
        if arms is not None:
            arms = arms if isinstance(arms, ArmSet) else ArmSet.of(arms)
        cfg = cfg.with_(lam=lam, token_scale=token_scale, arms=arms, policy=policy, exploration=exploration, seed=seed,
                        reward_window_s=reward_window_s, reward_aggregation=reward_aggregation, learning=learning)
        if durable is not None:
            cfg = replace(cfg, store=replace(cfg.store, durable=durable))
        store = ReplayStore(url or cfg.store.url, check_schema=False)
        return cls(cfg, store, snapshot=snapshot, follow=follow, learn=learn)

    def _new_key(self) -> str:
        """A 128-bit id, time-ordered: 64 bits of ``time.time_ns()`` then 64 random bits, as 32 hex digits.

        Time-ordered, because the store keeps a unique index on the key (and
        the outcomes table one on its copy, plus the foreign key between
        them): random keys land anywhere in those B-trees, ordered keys append.
        With SQLite at 150,000 decisions that is about 40 against 8 µs of CPU
        per decision+outcome (``benchmarks/sqlite_key_order.py``), most of the
        batch writer's share of the core. Unique: two keys collide only if they are
        made in the same nanosecond *and* draw the same 64 random bits.

        No syscall: ``uuid4`` reads ``os.urandom``, which releases the GIL;
        getting it back can wait a whole switch interval (5 ms) behind the
        writer thread. A per-process Mersenne Twister seeded from
        ``os.urandom`` (re-seeded after fork) draws the random half.
        """
        pid = os.getpid()
        if pid != self._key_pid:
            self._key_rng, self._key_pid = random.Random(os.urandom(32)), pid
        return f"{time.time_ns():016x}{self._key_rng.getrandbits(64):016x}"

    def _prepare_store(self) -> bool:
        try:
            migrate.upgrade(engine=self.store.engine)
            return True
        except StoreError as exc:
            self._record_fault(exc)
            return False

    # -- the policy in use ----------------------------------------------------------------
    def _enter(self) -> None:
        """Admit a choose/reward call; a closed Selector refuses it (its policy and writer are gone)."""
        with self._live_lock:
            if self._closed:
                raise StopbanditError("this Selector is closed; open a new one")
            self._calls += 1

    def _leave(self) -> None:
        with self._live_lock:
            self._calls -= 1

    def _acquire(self) -> _Live:
        with self._live_lock:
            live = self._live
            live.users += 1
            return live

    def _release(self, live: _Live) -> None:
        with self._live_lock:
            live.users -= 1

    def _sweep_retired(self, force: bool = False) -> None:
        """Close swapped-out policies nobody uses any more (after a grace period for ``Selector.policy`` holders)."""
        now = time.monotonic()
        with self._live_lock:
            done = [r for r in self._retired if force or (r.users == 0 and now - r.retired_at >= RETIRE_GRACE_S)]
            self._retired = [r for r in self._retired if r not in done]
        for r in done:
            r.policy.close()

    # -- the serving path ---------------------------------------------------------------
    def choose(self, prompt: str, *, domain: str | None = None, request_id: str | None = None,
               features: Mapping[str, Any] | None = None, force_arm: str | None = None,
               experiment: str = "champion", tag: str | None = None) -> Decision:
        """Pick an arm for one request; logs the decision; never raises because of the store.

        ``force_arm``: serve this arm instead of sampling the policy's (a guardrail
        holdout or fallback). It is logged with one-hot probabilities and
        propensity 1 and rewarded like any other decision (reward windows, spill,
        counters; the policy learns from it at propensity 1), so a caller that
        overrides the policy never writes rows of its own.
        ``experiment``: the ``decisions.experiment`` group (champion, challenger, holdout).
        ``tag``: the logged ``policy_version`` becomes ``<tag>/<version>``; a
        forced decision is tagged ``forced`` unless a tag is given, so the log
        tells the policy's own choices from overrides.
        """
        forced = None
        if force_arm is not None or experiment != "champion" or tag is not None:
            forced = self._check_route(force_arm, experiment, tag)
        self._enter()
        try:
            return self._choose(prompt, domain, request_id, features, forced, experiment, tag)
        finally:
            self._leave()

    def _check_route(self, force_arm: object, experiment: object, tag: object) -> int | None:
        """Validate choose's routing arguments once; returns the forced arm's index (None: the policy picks)."""
        if experiment not in EXPERIMENTS:
            raise InputError(f"experiment must be one of {list(EXPERIMENTS)}, got {experiment!r}")
        if tag is not None and (not isinstance(tag, str) or not 1 <= len(tag) <= 32 or not set(tag) <= _TAG_CHARS):
            raise InputError(f"tag must be 1 to 32 letters, digits, '_' or '-', got {tag!r}")
        if force_arm is None:
            return None
        names = self.arms.names
        if not isinstance(force_arm, str) or force_arm not in names:
            raise InputError(f"force_arm must be one of the arms {list(names)}, got {force_arm!r}")
        return names.index(force_arm)

    def _choose(self, prompt: str, domain: str | None, request_id: str | None,
                features: Mapping[str, Any] | None, forced: int | None = None, experiment: str = "champion",
                tag: str | None = None) -> Decision:
        key = self._new_key() if request_id is None else _check_id(request_id, "request_id")
        feats = self.extractor.extract(prompt, domain, features)
        # the strings that reach the store: the domain (the built-in buckets are made from it and
        # from ASCII) and the caller's own categorical features
        dom = feats.get("domain")
        if isinstance(dom, str):
            _check_text(dom, "domain")
        if features:
            for name in features:
                value = feats.get(name)
                if isinstance(value, str):
                    _check_text(value, f"feature {name!r}")
        shared = shared_line(feats)
        lam = self._lam
        live = self._acquire()
        try:
            if forced is None:
                probs, _ = live.policy.decide(shared, lam)
            else:  # one-hot, propensity 1
                probs = [0.0] * len(self.arms)
                probs[forced] = 1.0
        finally:
            self._release(live)
        version = live.version if tag is None and forced is None else f"{tag or FORCED_TAG}/{live.version}"[:64]
        if forced is None:
            with self._rng_lock:
                u = self._rng.random()
            idx, acc = len(probs) - 1, 0.0
            for i, p in enumerate(probs):
                acc += p
                if u < acc:
                    idx = i
                    break
        else:  # no draw: overrides leave the policy's sampling sequence as it was
            idx = forced
        names = self._arm_names
        prob_map = dict(zip(names, probs))
        window = self._window
        pending = _Pending(shared, idx, probs[idx], lam, feats.get("domain"),  # type: ignore[arg-type]
                           time.monotonic() + window.seconds if window is not None else math.inf,
                           probs=probs)
        evicted = None
        with self._cache_lock:
            if key in self._pending or key in self._rewarded:
                raise InputError(f"request_id {key!r} was already used for a decision; ids must be unique")
            self._pending[key] = pending
            if len(self._pending) > self._max_pending:
                evicted = self._pending.popitem(last=False)
                self._evicted += 1
                if window is not None:
                    self._overflow.append(evicted)
            self._decisions += 1
        if evicted is not None and window is not None:
            self._wake.set()  # the reaper closes the evicted window (off the request path)
        row = {
            "request_key": key, "ts": time.time(), "domain": feats.get("domain"), "features": feats,
            "arm": names[idx], "arm_index": idx, "probabilities": prob_map, "propensity": probs[idx],
            "lam": lam, "token_scale": self.config.token_scale, "policy_version": version,
            "experiment": experiment,
        }
        self._log("d", row)
        return Decision(key, self.arms[idx], idx, probs[idx], prob_map, lam, version, feats)

    def reward(self, decision_id: str, em: float, tokens: int, *, latency_ms: float | None = None,
               trace: ProbeTrace | None = None, reference: str | None = None) -> None:
        """Report the outcome of a decision.

        Without a reward window: idempotent; a conflicting repeat raises
        ConflictError. With ``reward_window_s``: rewards inside the window are
        aggregated, later ones are stored as ``late`` and not learned from
        (:mod:`stopbandit.bandit.delayed`).

        With a probe ``trace`` and the ``reference`` answer, every arm the trace
        reveals (every arm at most as lenient as the logged one) is learned from,
        not only the logged arm (nested feedback).
        """
        self._enter()
        try:
            self._reward(decision_id, em, tokens, latency_ms, trace, reference)
        finally:
            self._leave()

    def _reward(self, decision_id: str, em: float, tokens: int, latency_ms: float | None,
                trace: ProbeTrace | None, reference: str | None) -> None:
        decision_id = _check_id(decision_id, "decision_id")
        if trace is not None and not isinstance(trace, ProbeTrace):
            raise InputError(f"trace must be a ProbeTrace or None, got {type(trace).__name__}")
        if reference is not None and not isinstance(reference, str):
            raise InputError(f"reference must be a string or None, got {type(reference).__name__}")
        row = outcome_row(
            decision_id, em, tokens, latency_ms,
            trace=trace.hashed().to_json() if trace is not None else None,
            reference_key=answer_key(reference) if reference is not None else None,
        )
        if row["tokens"] > MAX_TOKENS:
            raise InputError(f"tokens must be at most {MAX_TOKENS}, got {tokens!r}")
        if self._window is None:
            self._reward_now(decision_id, row, trace, reference)
        else:
            self._reward_windowed(self._window, decision_id, row, trace, reference)

    def _reward_now(self, key: str, row: dict[str, Any], trace: ProbeTrace | None, reference: str | None) -> None:
        with self._cache_lock:
            done = self._rewarded.get(key)
            pending = self._pending.pop(key, None) if done is None else None
            if pending is not None:
                self._remember(key, row["em"], row["tokens"], "ok")
        if done is not None:
            self._repeat(key, done, row)
            return
        if pending is None:
            pending = self._from_store(key, row, trace, reference)
            if pending is None:
                return
            with self._cache_lock:
                done = self._rewarded.get(key)
                if done is None:
                    self._remember(key, row["em"], row["tokens"], "ok")
            if done is not None:  # another thread settled it meanwhile
                self._repeat(key, done, row)
                return
        self._settle_ok(pending, row, trace, reference)

    def _reward_windowed(self, window: RewardWindow, key: str, row: dict[str, Any], trace: ProbeTrace | None,
                         reference: str | None) -> None:
        now = time.monotonic()
        late_row = {**row, "status": "late"}
        settled: _Settled | None = None
        with self._cache_lock:
            done = self._rewarded.get(key)
            pending = None
            if done is not None:
                if done[2] == "defaulted":  # its window closed with the default: this one is late
                    self._remember(key, row["em"], row["tokens"], "late")
                    self._late += 1
                    action = "late"
                else:
                    action = "repeat"
            else:
                pending = self._pending.get(key)
                if pending is None:
                    action = "store"
                elif now >= pending.deadline:  # closed, but the reaper has not got to it yet
                    del self._pending[key]
                    settled = self._settle_locked(window, key, pending, late_row)
                    action = "settle"
                elif window.aggregation == "earliest":
                    del self._pending[key]
                    self._remember(key, row["em"], row["tokens"], "ok")
                    action = "ok"
                else:
                    if pending.agg is None:
                        pending.agg = Aggregate(row, trace, reference)
                    else:
                        pending.agg.add(row)
                    action = "held"
        if action == "late":
            self._log("l", late_row)
        elif action == "repeat":
            self._repeat(key, done, row)  # type: ignore[arg-type]
        elif action == "settle":
            self._apply_settlement(settled)  # type: ignore[arg-type]
        elif action == "ok":
            self._settle_ok(pending, row, trace, reference)  # type: ignore[arg-type]
        elif action == "store":
            found = self._from_store(key, row, trace, reference)
            if found is not None:  # within its window (earliest): settle it here
                with self._cache_lock:
                    done = self._rewarded.get(key)
                    if done is None:
                        self._remember(key, row["em"], row["tokens"], "ok")
                if done is not None:
                    self._repeat(key, done, row)
                else:
                    self._settle_ok(found, row, trace, reference)

    def _repeat(self, key: str, done: tuple[float, int, str], row: Mapping[str, Any]) -> None:
        """A reward for a decision already settled: idempotent if equal; else conflict (no window) or discard."""
        em, tokens, _ = done
        if em == row["em"] and tokens == row["tokens"]:
            return
        if self._window is None:
            check_same_outcome(key, {"em": em, "tokens": tokens}, row)
        with self._cache_lock:
            self._discarded += 1
        log.debug("reward for %r discarded: its outcome is already settled", key)

    def _remember(self, key: str, em: float, tokens: int, status: str) -> None:
        """Record a settled outcome (caller holds the cache lock); bounded like the pending map."""
        self._rewarded[key] = (em, tokens, status)
        self._rewarded.move_to_end(key)
        if len(self._rewarded) > self._max_pending:
            self._rewarded.popitem(last=False)

    def _settle_ok(self, pending: _Pending, row: Mapping[str, Any], trace: ProbeTrace | None,
                   reference: str | None) -> None:
        with self._cache_lock:
            self._rewards += 1
        self._learn(pending, row, trace, reference)
        self._log("o", row)  # a fresh outcome_row dict, not kept by the caller: no copy needed

    def _learn(self, pending: _Pending, row: Mapping[str, Any], trace: ProbeTrace | None,
               reference: str | None) -> None:
        live = self._acquire()
        try:
            policy = live.policy
            if policy.exploration.watches_traces:
                self._trace_share.observe(trace is not None and reference is not None)
            if trace is not None and reference is not None:
                revealed = {k: (em, tok) for k, (em, tok) in
                            revealed_outcomes(trace, self.arms.arms, reference).items() if em is not None}
                revealed[pending.arm] = (row["em"], row["tokens"])
                weights = None
                learning = self.config.learning
                if learning.weighted and pending.probs is not None:  # [learning] revealed_weighting
                    weights = observation_weights(pending.probs, self._reveals, pending.arm, revealed,
                                                  learning.revealed_weight_clip)
                policy.learn_revealed(pending.shared, revealed, pending.arm, pending.prob, pending.lam,
                                      weights=weights)
            else:
                policy.learn(pending.shared, pending.arm, row["em"], row["tokens"], pending.prob, pending.lam)
        finally:
            self._release(live)
        self.extractor.observe(pending.domain, row["em"])
        if row.get("status", "ok") == "ok":
            self._means.observe(pending.arm, row["em"], row["tokens"])

    def _from_store(self, key: str, row: Mapping[str, Any], trace: ProbeTrace | None,
                    reference: str | None) -> _Pending | None:
        """A decision that is no longer (or never was) in memory: settle the reward against the store.

        Returns the decision to learn from (and log ``row`` as ``ok``), or None when nothing is left to do.
        """
        self.writer.flush(5.0)
        try:
            existing = self.store.get_outcome(key)
            d = self.store.get_decision(key) if existing is None else None
        except StoreError as exc:
            self._record_fault(exc)
            raise StoreError(f"cannot check decision {key!r}: the store is unavailable and it is not in memory") from exc
        late_row = {**row, "status": "late"}
        if existing is not None:
            status = existing.get("status") or "ok"
            if status == "defaulted":  # its window closed with a default: this reward is late
                with self._cache_lock:
                    self._remember(key, row["em"], row["tokens"], "late")
                    self._late += 1
                self._log("l", late_row)
                return None
            self._repeat(key, (existing["em"], existing["tokens"], status), row)
            return None
        if d is None:
            raise UnknownDecisionError(f"unknown decision id {key!r}: no such decision was logged")
        logged = d.get("probabilities") or {}
        pending = _Pending(shared_line(d["features"]), d["arm_index"], d["propensity"], d["lam"], d["domain"],
                           probs=[float(logged.get(name, 0.0)) for name in self._arm_names])
        window = self._window
        if window is None:
            return pending
        left = d["ts"] + window.seconds - time.time()
        if left <= 0:  # closed long ago, and nobody recorded a default (evicted, or its process is gone)
            with self._cache_lock:
                self._remember(key, row["em"], row["tokens"], "late")
                self._late += 1
            self._log("o", late_row)
            return None
        if window.aggregation == "earliest":
            return pending
        pending.deadline = time.monotonic() + left
        pending.agg = Aggregate(row, trace, reference)
        with self._cache_lock:
            if key in self._pending or key in self._rewarded:  # raced with another reward for it
                other = self._pending.get(key)
                if other is not None and other.agg is not None:
                    other.agg.add(row)
                return None
            self._pending[key] = pending
            if len(self._pending) > self._max_pending:
                self._overflow.append(self._pending.popitem(last=False))
                self._evicted += 1
        self._wake.set()
        return None

    # -- reward windows ---------------------------------------------------------------
    def _settle_locked(self, window: RewardWindow, key: str, pending: _Pending,
                       late_row: dict[str, Any] | None = None) -> _Settled:
        """Close one window: all the bookkeeping, under the cache lock (the caller removed it from ``_pending``).

        A window with rewards (``sum``) settles to their aggregate, status ok; an
        empty one to the default, which is learned from and stored as
        ``defaulted`` — or, when the reward that closes it came too late
        (``late_row``), stored as ``late`` with that reward's values.
        """
        if pending.agg is not None:
            row = pending.agg.row(key)
            self._remember(key, row["em"], row["tokens"], "ok")
            self._rewards += 1
            if late_row is not None:
                self._discarded += 1
            return _Settled(pending, row, row, pending.agg.trace_obj, pending.agg.reference)
        em, tokens = default_reward(window, self._means, pending.arm)
        default = {"decision_key": key, "ts": time.time(), "em": em, "tokens": tokens, "latency_ms": None,
                   "trace": None, "reference_key": None, "status": "defaulted"}
        self._defaulted += 1
        if late_row is None:
            self._remember(key, em, tokens, "defaulted")
            return _Settled(pending, default, default)
        self._remember(key, late_row["em"], late_row["tokens"], "late")
        self._late += 1
        return _Settled(pending, default, late_row)

    def _apply_settlement(self, s: _Settled) -> None:
        """Learn and log a closed window (outside the lock)."""
        self._learn(s.pending, s.learn, s.trace, s.reference)
        self._log("o", dict(s.log))

    def _reap_once(self, force: bool = False) -> float | None:
        """Close every window that is due (all of them with ``force``); returns the next deadline."""
        while True:
            window = self._window
            if window is None:
                return None
            batch: list[_Settled] = []
            with self._cache_lock:
                now = time.monotonic()
                while self._overflow and len(batch) < REAP_BATCH:
                    key, p = self._overflow.pop()
                    if key not in self._rewarded:
                        batch.append(self._settle_locked(window, key, p))
                while self._pending and len(batch) < REAP_BATCH:
                    key, p = next(iter(self._pending.items()))
                    if not force and p.deadline > now:
                        break
                    del self._pending[key]
                    batch.append(self._settle_locked(window, key, p))
                nxt = next(iter(self._pending.values())).deadline if self._pending else None
            for settled in batch:
                try:
                    self._apply_settlement(settled)
                except Exception as exc:  # noqa: BLE001 - the reaper must never die
                    log.exception("closing the reward window of %r failed", settled.log.get("decision_key"))
                    self._record_fault(exc)
            if len(batch) < REAP_BATCH:
                return nxt

    def _reap_loop(self) -> None:
        while not self._stop.is_set():
            nxt = self._reap_once()
            wait = 0.25 if nxt is None else min(max(nxt - time.monotonic(), 0.002), 0.25)
            self._wake.wait(wait)
            self._wake.clear()

    def _log(self, kind: str, row: dict[str, Any]) -> None:
        """Hand a row to the writer: queued, or written before returning with ``store.durable``.

        The row is the writer's from here on: callers build a fresh dict per call and never change it after.
        """
        self._log_row(kind, row)

    # -- λ ---------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        return self._lam

    def set_lambda(self, value: float, *, reason: str, who: str = "api") -> None:
        """Change λ now (next ``choose``) and record the change with its reason in the store."""
        value = check_lambda(value)
        if not isinstance(reason, str) or not reason.strip():
            raise InputError("set_lambda needs a non-empty reason (it is stored with the change)")
        if not isinstance(who, str) or not who or len(who) > 128:
            raise InputError(f"who must be a non-empty string of at most 128 characters, got {who!r}")
        _check_text(reason, "reason")
        _check_text(who, "who")
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
        return self._live.policy

    @property
    def policy_version(self) -> str:
        return self._live.version

    def snapshot(self, *, role: str = "serving") -> str:
        """Save the current policy to the store; returns its version.

        ``role="serving"``: it becomes the newest serving snapshot, which every
        Selector following the store hot-swaps to. ``role="candidate"``: stored
        for evaluation only (a challenger, ``replay evaluate --policy VERSION``);
        nothing swaps to it until ``stopbandit ab promote`` makes it serve.
        """
        role = check_role(role)
        live = self._acquire()
        try:
            packed = pack(live.policy, lam=self._lam, feature_config=self.config.features.to_dict(),
                          extra={"prior": self.extractor.prior.state()})
        finally:
            self._release(live)
        self.store.save_snapshot(packed.version, packed.model, packed.meta, packed.checksum, role=role)
        if role == "serving":
            self._own_versions.add(packed.version)
        return packed.version

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
            check_snapshot_meta(stored.meta, self.config.token_scale)
            policy = unpack(stored.model, stored.meta, stored.checksum, arms=self.arms,
                            feature_config=self.config.features.to_dict(), exploration=self.config.exploration)
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
            with self._live_lock:
                old, self._live = self._live, _Live(policy, stored.version)
                old.retired_at = time.monotonic()
                self._retired.append(old)
            self._own_versions.add(stored.version)
            self._snapshot_error = None
        self._sweep_retired()
        return True

    # -- background follower ----------------------------------------------------------------
    def _follow(self) -> None:
        while not self._stop.wait(self.config.follow_interval):
            latest = None
            try:
                if not self._store_ok:
                    self._store_ok = self._prepare_store()
                    if not self._store_ok:
                        self._follow_ok = False
                        continue
                self._sync_lambda()
                # only serving snapshots: a stored candidate is never swapped to (it has to be promoted)
                latest = self.store.latest_snapshot_version() if self._follow_snapshots else None
                if latest is not None and latest not in self._own_versions:
                    self.load_snapshot(latest)
                    log.info("hot-swapped to snapshot %s", latest)
                self._follow_ok = True
                if self.writer.health().store_ok:
                    self._fault = None
            except StoreError as exc:
                self._follow_ok = False
                self._record_fault(exc)
            except (SnapshotError, InputError) as exc:  # refused (tampered, does not fit): do not retry every tick
                log.error("refused snapshot %s: %s", latest, exc)
                self._snapshot_error = f"{latest}: {exc}"
                if latest is not None:
                    self._own_versions.add(latest)
            except Exception as exc:  # noqa: BLE001 - the follower must never die
                self._record_fault(exc)
            finally:
                self._sweep_retired()

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
            defaulted, late, discarded, evicted = self._defaulted, self._late, self._discarded, self._evicted
        store_ok = w.store_ok and self._store_ok and self._follow_ok
        return Health(
            store_ok=store_ok, last_error=w.last_error if not w.store_ok else self._fault if not store_ok else None,
            lam=self._lam, policy=self.config.policy, policy_version=self._live.version,
            decisions=self._decisions, rewards=self._rewards, pending_rewards=pending,
            queue_depth=w.queue_depth, spill_backlog=w.spill_backlog, spilled=w.spilled, dropped=w.dropped,
            rejected=w.rejected, write_lag_s=w.write_lag_s, outages=w.outages, down_since=w.down_since,
            replayed=w.replayed, max_spill_backlog=w.max_spill_backlog, defaulted=defaulted, late=late,
            discarded=discarded, evicted=evicted, snapshot_error=self._snapshot_error,
        )

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row so far is in the store or the spill."""
        return self.writer.flush(timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every row so far is in the store (spill replayed, orphans adopted); False on timeout."""
        return self.writer.drain(timeout)

    def close(self) -> None:
        """Stop the background threads, settle open reward windows, flush the writer, close the policies.

        Open windows are closed early (a ``sum`` with what it has, else the default),
        so a reward arriving after ``close`` is stored as late.
        """
        with self._live_lock:
            if self._closed:
                return
            self._closed = True  # no new choose/reward from here on
        deadline = time.monotonic() + 10
        while self._calls and time.monotonic() < deadline:  # let the calls in flight finish (and log)
            time.sleep(0.005)
        self._stop.set()
        self._wake.set()
        for t in (self._follower, self._reaper):
            if t is not None:
                t.join(10)
        if self._window is not None:
            self._reap_once(force=True)
        self.writer.close()
        with self._live_lock:
            self._live.retired_at = 0.0
            self._retired.append(self._live)
        self._sweep_retired(force=True)
        self.store.dispose()

    def __enter__(self) -> Selector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Decision", "Health", "Selector"]
