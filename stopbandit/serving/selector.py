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
  rows accepted within the last ``store.flush_interval`` plus one commit while
  the writer keeps up, and never rows older than ``store.timeout`` plus one
  commit (a writer that falls that far behind spills its queue);
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

The facade is assembled from small parts: the served policy sits in a
:class:`~stopbandit.serving.slot.PolicySlot` (acquire, swap, retire), the
reward bookkeeping is a :class:`~stopbandit.serving.ledger.RewardLedger` that
returns what to learn and what to log (carried out by the reward path,
:class:`~stopbandit.serving.rewarding.RewardPath`), snapshots and checkpoints
are saved and loaded by :class:`~stopbandit.serving.snapshots.SnapshotPath`,
and a :class:`~stopbandit.serving.follower.StoreFollower` thread keeps λ, the
newest snapshot and the schema in step with the store. The facade validates
input once, runs the ledger's steps, and hands rows to the writer.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

import numpy as np

from stopbandit import validation
from stopbandit.bandit.arms import ArmSet, arms_from_config
from stopbandit.bandit.conservative import BudgetState, ConservativeBudget
from stopbandit.bandit.delayed import RewardWindow
from stopbandit.bandit.exploration import TraceShare
from stopbandit.bandit.policy import FrozenPolicy, Policy, make_policy
from stopbandit.bandit.reward import check_lambda
from stopbandit.bandit.trace import ProbeTrace
from stopbandit.bandit.vw import shared_line
from stopbandit.config import SelectorConfig, load_config, snapshot_key
from stopbandit.errors import ConfigError, InputError, StoreError
from stopbandit.features.extract import FeatureExtractor
from stopbandit.replay.store import ReplayStore
from stopbandit.replay.writer import BatchWriter
from stopbandit.serving.baseline import SnapshotBaseline
from stopbandit.serving.decision import Decision, Health
from stopbandit.serving.follower import StoreFollower, prepare_store
from stopbandit.serving.lambdas import LambdaWriter
from stopbandit.serving.ledger import Pending, RewardLedger
from stopbandit.serving.rewarding import RewardPath
from stopbandit.serving.slot import PolicySlot
from stopbandit.serving.snapshots import SnapshotPath
from stopbandit.serving.stop_learning import StopLearner

log = logging.getLogger("stopbandit.selector")

MAX_PENDING = 200_000  # the default of SelectorConfig.max_pending
FOLLOW_MODES = (True, False, "all", "lambda")  # what a Selector follows in the store (see Selector.open)
EXPERIMENTS = ("champion", "challenger", "holdout")  # decisions.experiment (migration 0004)
FORCED_TAG = "forced"  # policy_version prefix of a forced decision unless the caller tags it
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_OPEN_ONLY = ("snapshot", "follow", "learn", "durable")
"""Keywords of :meth:`Selector.open` that are not :class:`SelectorConfig` fields."""


class Selector(RewardPath, SnapshotPath):
    """Chooses a stopping arm per request and learns from rewards. Thread-safe."""

    def __init__(self, config: SelectorConfig, store: ReplayStore, *, snapshot: str | None = "latest",
                 follow: bool | str = True, learn: bool = True) -> None:
        if follow not in FOLLOW_MODES:
            raise InputError(f"follow must be one of {list(FOLLOW_MODES)}, got {follow!r}")
        if not isinstance(learn, bool):
            raise InputError(f"learn must be True or False, got {learn!r}")
        self._learns = learn
        self.config = config
        self.arms: ArmSet = config.arms
        self._arm_names = self.arms.names  # ArmSet.names builds a new tuple per call; choose needs it every time
        self._reveals = self.arms.reveals()  # for [learning] revealed_weighting, per reward
        self.store = store
        self.extractor = FeatureExtractor(config.features, max_domains=config.max_domains)
        self._snapshot_key = snapshot_key()
        self._rng = np.random.default_rng(config.seed)
        self._rng_lock = threading.Lock()
        self._key_rng, self._key_pid = random.Random(os.urandom(32)), os.getpid()
        self._lam = config.lam
        self._lambda_id = 0
        self._lam_lock = threading.Lock()
        self._ckpt_lock = threading.Lock()
        self._ckpt_outcomes = 0  # outcomes learned since the last checkpoint
        self._ckpt_at = time.monotonic()
        self.last_checkpoint: str | None = None
        self._fault: str | None = None
        self._window: RewardWindow | None = config.reward_window
        self._ledger = RewardLedger(self._window, config.max_pending, len(self.arms))
        self._swap_lock = threading.Lock()
        # the exploration rule's record of traced rewards belongs to this Selector, never to its config,
        # and carries over from one policy it serves to the next
        self._trace_share = TraceShare()
        # the learned stop rule and its online training from traced rewards (None: no arm uses it, not trained)
        self.stop_learner = StopLearner.for_selector(self.arms, config.learning, config.token_scale)
        # conservative exploration's running lower bound: state of this Selector, never of its config
        self._budget: ConservativeBudget | None = (
            ConservativeBudget(config.conservative, self._arm_names, self._reveals)
            if config.conservative.enabled else None)
        self._baseline: SnapshotBaseline | None = None  # a snapshot baseline's policy (loaded with the store)
        fresh = make_policy(config.policy, self.arms, config.exploration, config.token_scale)
        fresh.trace_share = self._trace_share
        self._slot = PolicySlot(fresh if learn else FrozenPolicy(fresh), f"fresh-{uuid.uuid4().hex[:8]}")
        self._stop = threading.Event()
        self._wake = threading.Event()
        fault = prepare_store(store)
        if fault is not None:
            self.record_fault(fault)
        self.writer = BatchWriter(
            store,
            max_queue=config.store.max_queue,
            batch_size=config.store.batch_size,
            flush_interval=config.store.flush_interval,
            spill_path=config.store.spill_path,
            max_spill_bytes=config.store.max_spill_bytes,
            retry_interval=config.store.retry_interval,
            timeout=config.store.timeout,
            spill_dir=config.store.spill_dir,
        )
        self._follower = StoreFollower(store, self, interval=config.follow_interval,
                                       snapshots=follow is True or follow == "all", store_ok=fault is None,
                                       writer_ok=lambda: self.writer.health().store_ok, after_tick=self._slot.sweep)
        self._lambdas = LambdaWriter(store, written=self._lambda_written, fault=self.record_fault,
                                     retry_interval=config.store.retry_interval)
        # durable: committed or fsync'd before choose/reward return; else queued (bound once, off the hot path)
        self._log_row = self.writer.write_now if config.store.durable else self.writer.submit
        try:
            if config.conservative.snapshot is not None:  # nothing can be served without the baseline's arm
                self._baseline = SnapshotBaseline.load(store, config, self._snapshot_key)
            if fault is None:
                try:
                    self._sync_lambda(initial=True)
                    if snapshot == "latest":
                        self._resume()
                    elif snapshot is not None:
                        self.load_snapshot(snapshot)
                except StoreError as exc:
                    self.record_fault(exc)
                    self._follower.follow_ok = False
        except BaseException:
            self._lambdas.close(0.0)
            self.writer.close(5.0)
            self._slot.live.policy.close()
            if self._baseline is not None:
                self._baseline.close()
            raise
        if follow:
            self._follower.start()
        self._reaper: threading.Thread | None = None
        if self._window is not None:
            self._reaper = threading.Thread(target=self._reap_loop, name="stopbandit-rewards", daemon=True)
            self._reaper.start()

    # -- construction -------------------------------------------------------------
    @classmethod
    def open(cls, url: str | None = None, config: str | os.PathLike[str] | SelectorConfig | None = None,
             **overrides: Any) -> Selector:
        """Open a Selector on the replay store at ``url`` (migrating it to the newest schema).

        ``config`` is a TOML path or a :class:`SelectorConfig`; ``overrides`` name
        :class:`SelectorConfig` fields (``lam``, ``token_scale``, ``arms``,
        ``policy``, ``exploration``, ``seed``, ``reward_window_s``,
        ``reward_aggregation``, ``learning``, ...; None leaves the config's value)
        and replace them. A few keywords are about opening, not settings:
        ``snapshot``: load this stored snapshot version ("latest": the newest
        *serving* one, if any; a version may name a candidate; None: start fresh).
        ``follow``: True (or "all") follows the store's λ and hot-swaps to newer
        serving snapshots; "lambda" follows λ only (a challenger serving a fixed
        candidate); False follows nothing. ``learn``: False freezes the policy
        (rewards are still logged, never learned): a candidate under A/B
        evaluation must stay exactly what ``ab promote`` would ship.
        ``durable``: commit (or fsync to the spill) every row before
        ``choose``/``reward`` return. An unknown keyword is refused by name.
        """
        settings = {f.name for f in fields(SelectorConfig)}
        unknown = sorted(set(overrides) - settings - set(_OPEN_ONLY))
        if unknown:
            raise ConfigError(f"Selector.open: unknown setting(s) {unknown}; settings are SelectorConfig fields "
                              f"{sorted(settings)} and {list(_OPEN_ONLY)}")
        snapshot = overrides.pop("snapshot", "latest")
        follow = overrides.pop("follow", True)
        learn = overrides.pop("learn", True)
        durable = overrides.pop("durable", None)
        cfg = config if isinstance(config, SelectorConfig) else (load_config(config) if config else SelectorConfig())
        arms = overrides.get("arms")
        if arms is not None and not isinstance(arms, ArmSet):
            overrides["arms"] = arms_from_config(arms) if isinstance(arms, str) else ArmSet.of(arms)
        cfg = cfg.with_(**overrides)
        if durable is not None:
            cfg = replace(cfg, store=replace(cfg.store, durable=durable))
        store = ReplayStore(url or cfg.store.url, check_schema=False, timeout=cfg.store.timeout)
        return cls(cfg, store, snapshot=snapshot, follow=follow, learn=learn)

    def _new_key(self) -> str:
        """A 128-bit id, time-ordered: 64 bits of ``time.time_ns()`` then 64 random bits, as 32 hex digits.

        Time-ordered, because the store keeps a unique index on the key (and the
        outcomes table one on its copy, plus the foreign key between them):
        random keys land anywhere in those B-trees, ordered keys append
        (``benchmarks/sqlite_key_order.py`` measures the difference). Unique: two
        keys collide only if they are made in the same nanosecond *and* draw the
        same 64 random bits. No syscall: ``uuid4`` reads ``os.urandom``, which
        releases the GIL, and getting it back can wait a switch interval behind
        the writer thread; a per-process Mersenne Twister seeded from
        ``os.urandom`` (re-seeded after fork) draws the random half.
        """
        pid = os.getpid()
        if pid != self._key_pid:
            self._key_rng, self._key_pid = random.Random(os.urandom(32)), pid
        return f"{time.time_ns():016x}{self._key_rng.getrandbits(64):016x}"

    # -- the serving path ---------------------------------------------------------------
    def choose(self, prompt: str, *, domain: str | None = None, request_id: str | None = None,
               features: Mapping[str, Any] | None = None, force_arm: str | None = None,
               experiment: str = "champion", tag: str | None = None) -> Decision:
        """Pick an arm for one request; logs the decision; never raises because of the store.

        ``force_arm``, ``experiment`` and ``tag`` are kept for callers written
        before :meth:`choose_forced`; they are deprecated here and forwarded to it.
        """
        if force_arm is not None or experiment != "champion" or tag is not None:
            warnings.warn("Selector.choose(force_arm=/experiment=/tag=) is deprecated; use Selector.choose_forced",
                          DeprecationWarning, stacklevel=2)
            return self._routed(prompt, domain, request_id, features, force_arm, experiment, tag, "force_arm")
        self._slot.enter()
        try:
            return self._choose(prompt, domain, request_id, features, None, "champion", None)
        finally:
            self._slot.leave()

    def choose_forced(self, prompt: str, *, arm: str | None = None, experiment: str = "champion",
                      tag: str | None = None, domain: str | None = None, request_id: str | None = None,
                      features: Mapping[str, Any] | None = None) -> Decision:
        """A decision routed by the caller (a guardrail holdout, a challenger): logged and rewarded as any other.

        ``arm``: serve this arm instead of sampling the policy's; it is logged
        with one-hot probabilities and propensity 1 and rewarded like any other
        decision (reward windows, spill, counters; the policy learns from it at
        propensity 1), so a caller that overrides the policy never writes rows
        of its own. None: the policy chooses. ``experiment``: the
        ``decisions.experiment`` group (champion, challenger, holdout). ``tag``:
        the logged ``policy_version`` becomes ``<tag>/<version>``; a forced
        decision is tagged ``forced`` unless a tag is given, so the log tells
        the policy's own choices from overrides.
        """
        return self._routed(prompt, domain, request_id, features, arm, experiment, tag, "arm")

    def _routed(self, prompt: str, domain: str | None, request_id: str | None, features: Mapping[str, Any] | None,
                arm: object, experiment: object, tag: object, arm_field: str) -> Decision:
        forced = self._check_route(arm, experiment, tag, arm_field)
        self._slot.enter()
        try:
            return self._choose(prompt, domain, request_id, features, forced, experiment, tag)  # type: ignore[arg-type]
        finally:
            self._slot.leave()

    def _check_route(self, force_arm: object, experiment: object, tag: object, arm_field: str) -> int | None:
        """Validate the routing arguments once; returns the forced arm's index (None: the policy picks).

        ``arm_field``: the argument's name as the caller wrote it (``arm``, or the alias's ``force_arm``).
        """
        if experiment not in EXPERIMENTS:
            raise InputError(f"experiment must be one of {list(EXPERIMENTS)}, got {experiment!r}")
        if tag is not None and (not isinstance(tag, str) or not 1 <= len(tag) <= 32 or not set(tag) <= _TAG_CHARS):
            raise InputError(f"tag must be 1 to 32 letters, digits, '_' or '-', got {tag!r}")
        if force_arm is None:
            return None
        names = self.arms.names
        if not isinstance(force_arm, str) or force_arm not in names:
            raise InputError(f"{arm_field} must be one of the arms {list(names)}, got {force_arm!r}")
        return names.index(force_arm)

    def _choose(self, prompt: str, domain: str | None, request_id: str | None,
                features: Mapping[str, Any] | None, forced: int | None = None, experiment: str = "champion",
                tag: str | None = None) -> Decision:
        key = self._new_key() if request_id is None else validation.identifier(request_id, "request_id")
        feats = self.extractor.extract(prompt, domain, features)
        # the strings that reach the store: the domain (the built-in buckets are made from it and
        # from ASCII) and the caller's own categorical features
        dom = feats.get("domain")
        if isinstance(dom, str):
            validation.text(dom, "domain")
        if features:
            for name in features:
                value = feats.get(name)
                if isinstance(value, str):
                    validation.text(value, f"feature {name!r}")
        shared = shared_line(feats)
        lam = self._lam
        live = self._slot.acquire()
        try:
            if forced is None:
                probs, scores = live.policy.decide(shared, lam)
                if self._budget is not None:  # the distribution served (and logged) is the shaped one
                    probs = self._budget.shape(key, probs, scores,
                                               None if self._baseline is None else self._baseline.arm(shared, lam))
            else:  # one-hot, propensity 1
                probs = [0.0] * len(self.arms)
                probs[forced] = 1.0
        finally:
            self._slot.release(live)
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
        if self._budget is not None:
            self._budget.note_served(idx, key)
        names = self._arm_names
        prob_map = dict(zip(names, probs))
        window = self._window
        pending = Pending(shared, idx, probs[idx], lam, feats.get("domain"),  # type: ignore[arg-type]
                          time.monotonic() + window.seconds if window is not None else math.inf, probs=probs,
                          context=None if self.stop_learner is None else self.stop_learner.context(feats))
        if self._ledger.add(key, pending):
            self._wake.set()  # the reaper closes the evicted window (off the request path)
        row = {
            "request_key": key, "ts": time.time(), "domain": feats.get("domain"), "features": feats,
            "arm": names[idx], "arm_index": idx, "probabilities": prob_map, "propensity": probs[idx],
            "lam": lam, "token_scale": self.config.token_scale, "policy_version": version,
            "experiment": experiment,
        }
        logged = self._log("d", row)
        return Decision(key, self.arms[idx], idx, probs[idx], prob_map, lam, version, feats,
                        logged in ("stored", "spilled"))

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
        self._slot.enter()
        try:
            self._reward(decision_id, em, tokens, latency_ms, trace, reference)
        finally:
            self._slot.leave()

    def budget(self) -> BudgetState | None:
        """Conservative exploration's budget now (None when ``[exploration] baseline`` is unset)."""
        return None if self._budget is None else self._budget.state()

    # -- λ ---------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        return self._lam

    def set_lambda(self, value: float, *, reason: str, who: str = "api") -> None:
        """Change λ now (next ``choose``) and record the change with its reason in the store.

        The store write happens off the caller's thread (in order, retried while the store is down or
        locked), so this never waits for the database; :meth:`flush` waits until it is stored. Until then
        the follower does not take an older λ from the store over this one.
        """
        value = check_lambda(value)
        if not isinstance(reason, str) or not reason.strip():
            raise InputError("set_lambda needs a non-empty reason (it is stored with the change)")
        if not isinstance(who, str) or not who or len(who) > 128:
            raise InputError(f"who must be a non-empty string of at most 128 characters, got {who!r}")
        validation.text(reason, "reason")
        validation.text(who, "who")
        with self._lam_lock:
            self._lam = value
            self._lambdas.submit(value, reason, who)

    def _lambda_written(self, change: Any) -> None:
        with self._lam_lock:
            self._lambda_id = max(self._lambda_id, change.id)

    def sync_lambda(self) -> None:
        """Take the newest λ change in the store (made here or by any process)."""
        self._sync_lambda()

    def _sync_lambda(self, initial: bool = False) -> None:
        change = self.store.current_lambda()
        if change is None:
            if initial:
                change = self.store.add_lambda(self._lam, "initial value (Selector.open)", "selector")
                self._lambda_id = change.id
            return
        with self._lam_lock:
            if self._lambdas.pending or change.id <= self._lambda_id:  # a change of ours is newer
                return
            if initial and change.value != self._lam:
                log.warning("using λ=%s from the store (latest change: %r), not %s", change.value, change.reason,
                            self._lam)
            self._lam, self._lambda_id = change.value, change.id

    # -- snapshots -------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._slot.live.policy

    @property
    def policy_version(self) -> str:
        return self._slot.live.version

    def stop_inputs(self, decision: Decision) -> Any:
        """What a decoder or gateway passes to the stop-rule kernel for ``decision`` when its arm stops on the
        learned rule: :class:`~stopbandit.bandit.learned_stop.LearnedInputs` (the rule now, the decision's λ,
        its context row); None when this Selector has no learned rule."""
        stop = self.stop_learner
        return None if stop is None else stop.inputs(stop.context(decision.features), decision.lam)

    # -- faults ---------------------------------------------------------------------------
    def record_fault(self, exc: BaseException) -> None:
        """Remember the newest store fault for ``health()`` (logged once per distinct message)."""
        msg = f"{type(exc).__name__}: {exc}"
        if msg != self._fault:
            log.error("stopbandit store fault: %s", msg)
        self._fault = msg

    def clear_fault(self) -> None:
        self._fault = None

    # -- lifecycle ------------------------------------------------------------------------------
    def health(self) -> Health:
        w = self.writer.health()
        counts = self._ledger.counts()
        follower = self._follower
        store_ok = w.store_ok and follower.store_ok and follower.follow_ok
        b = self.budget()
        spend = {} if b is None else {"budget_baseline": b.baseline, "budget_total": b.budget,
                                      "budget_spent": b.spent, "budget_left": b.left,
                                      "budget_restricted": b.restricted}
        return Health.of(
            store_ok=store_ok, last_error=w.last_error if not w.store_ok else self._fault if not store_ok else None,
            lam=self._lam, policy=self.config.policy, policy_version=self._slot.live.version,
            decisions=counts["decisions"], rewards=counts["rewards"], pending_rewards=counts["pending_rewards"],
            queue_depth=w.queue_depth, spill_backlog=w.spill_backlog, spilled=w.spilled, dropped=w.dropped,
            rejected=w.rejected, write_lag_s=w.write_lag_s, outages=w.outages, down_since=w.down_since,
            replayed=w.replayed, max_spill_backlog=w.max_spill_backlog, defaulted=counts["defaulted"],
            late=counts["late"], discarded=counts["discarded"], evicted=counts["evicted"],
            snapshot_error=follower.snapshot_error,
            domains_tracked=self.extractor.prior.tracked, domains_folded=self.extractor.prior.folded,
            max_domains=self.config.max_domains, last_checkpoint=self.last_checkpoint,
            lambda_pending=self._lambdas.pending, lambda_unwritten=self._lambdas.unwritten,
            conflicts=w.conflicts, unspilled=w.unspilled, replay_errors=w.replay_errors,
            overloads=w.overloads, **spend,
        )

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row so far is in the store (the store down: the spill), and every λ change so far is stored."""
        deadline = time.monotonic() + timeout
        ok = self.writer.flush(timeout)
        return self._lambdas.flush(max(deadline - time.monotonic(), 0.0)) and ok

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every row so far is in the store (spill replayed, orphans adopted); False on timeout."""
        deadline = time.monotonic() + timeout
        ok = self.writer.drain(timeout)
        return self._lambdas.flush(max(deadline - time.monotonic(), 0.0)) and ok

    def close(self) -> None:
        """Stop the background threads, settle open reward windows, flush the writer, close the policies.

        Open windows are closed early (a ``sum`` with what it has, else the default),
        so a reward arriving after ``close`` is stored as late.
        """
        if not self._slot.close():
            return
        self._stop.set()
        self._wake.set()
        self._follower.stop(10)
        if self._reaper is not None:
            self._reaper.join(10)
        if self._window is not None:
            self._reap_once(force=True)
        if self._ckpt_outcomes and self.checkpoints and self._learns:
            if not self.writer.health().store_ok:  # a down store would only add its deadline to the shutdown
                log.error("no checkpoint stored at shutdown: the store is unavailable (%d outcomes since the last)",
                          self._ckpt_outcomes)
            else:
                try:
                    self.checkpoint()
                except Exception as exc:  # noqa: BLE001 - shutting down never raises because the store is down
                    log.error("no checkpoint stored at shutdown: %s", exc)
                    self.record_fault(exc)
        self._lambdas.close(self.config.store.timeout)
        self.writer.close()
        self._slot.retire_all()
        if self._baseline is not None:
            self._baseline.close()
        self.store.dispose()

    def __enter__(self) -> Selector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Decision", "Health", "Selector"]
