"""What the Selector returns: a :class:`Decision` per request, and its :class:`Health`."""

from __future__ import annotations

from dataclasses import dataclass

from stopbandit.bandit.arms import Arm


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
    # True when the decision row was committed, or fsync'd to the spill, before ``choose`` returned (durable
    # mode); False in the queued mode, and in durable mode when neither the store nor the spill's disk took it
    durable: bool = False


@dataclass(frozen=True, slots=True)
class Health:
    """The Selector's own counters and its writer's, in one snapshot (``Selector.health()``)."""

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
    conflicts: int = 0  # rows refused: their request key is stored for a different decision (another process)
    unspilled: int = 0  # rows only in memory: the store and the spill's disk both refused them (retried)
    replay_errors: int = 0  # spill replay steps that failed on the local disk (the file is kept and retried)
    overloads: int = 0  # times the writer fell `[store] timeout` behind the serving threads and spilled its queue
    # conservative exploration ([exploration] baseline): None / 0 while it is off. Reward units, cumulative:
    budget_baseline: str | None = None  # the arm the budget is measured against
    budget_total: float = 0.0  # loss allowed so far (max_loss·decisions + max_loss_fraction·baseline reward)
    budget_spent: float = 0.0  # loss the lower bound cannot rule out: max(0, −LB Σ(served − baseline))
    budget_left: float = 0.0  # total + LB − charges held for decisions not rewarded yet (< 0: exploring stops)
    budget_restricted: int = 0  # decisions whose exploration the budget cut down
    domains_tracked: int = 0  # domains with a difficulty prior of their own (the shared bucket included)
    domains_folded: int = 0  # outcomes of domains beyond max_domains, learned into the shared "(other)" bucket
    max_domains: int = 0  # the cap on tracked domains (SelectorConfig.max_domains)
    last_checkpoint: str | None = None  # version of the newest checkpoint this Selector stored
    lambda_pending: int = 0  # λ changes made here and not stored yet (written off the request path)
    lambda_unwritten: int = 0  # λ changes given up at close (the store did not answer)


__all__ = ["Decision", "Health"]
