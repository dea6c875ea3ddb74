"""What the Selector returns: a :class:`Decision` per request, and its :class:`Health` (store part, selector part)."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass

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
class StoreHealth:
    """The writer's and the store's side of :class:`Health`: where the rows are, and what the store refused.

    ``store_ok`` is False while the batch writer, the follower or the λ writer
    cannot reach the store; the counters are the batch writer's
    (:class:`~stopbandit.replay.writer.WriterHealth`), the follower's
    (``snapshot_error``) and the λ writer's (``lambda_*``).
    """

    store_ok: bool
    last_error: str | None
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
    snapshot_error: str | None = None  # why the newest stored snapshot was refused (still serving the old one)
    conflicts: int = 0  # rows refused: their request key is stored for a different decision (another process)
    unspilled: int = 0  # rows only in memory: the store and the spill's disk both refused them (retried)
    replay_errors: int = 0  # spill replay steps that failed on the local disk (the file is kept and retried)
    overloads: int = 0  # times the writer fell `[store] timeout` behind the serving threads and spilled its queue
    lambda_pending: int = 0  # λ changes made here and not stored yet (written off the request path)
    lambda_unwritten: int = 0  # λ changes given up at close (the store did not answer)


@dataclass(frozen=True, slots=True)
class SelectorHealth:
    """The Selector's own side of :class:`Health`: its policy, decisions, reward windows, budget and domains."""

    lam: float
    policy: str
    policy_version: str
    decisions: int
    rewards: int
    pending_rewards: int  # decisions in memory waiting for a reward (open windows with reward_window_s)
    defaulted: int = 0  # windows closed without a reward (default recorded and learned)
    late: int = 0  # rewards after their window: stored with status late, not learned
    discarded: int = 0  # rewards after the outcome was settled (earliest: later ones; sum: after close)
    evicted: int = 0  # decisions pushed out of memory by max_pending (windows closed early)
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


_FLAT = ("store_ok", "last_error", "lam", "policy", "policy_version", "decisions", "rewards", "pending_rewards",
         "queue_depth", "spill_backlog", "spilled", "dropped", "rejected", "write_lag_s", "outages", "down_since",
         "replayed", "max_spill_backlog", "defaulted", "late", "discarded", "evicted", "snapshot_error",
         "conflicts", "unspilled", "replay_errors", "overloads", "budget_baseline", "budget_total", "budget_spent",
         "budget_left", "budget_restricted", "domains_tracked", "domains_folded", "max_domains", "last_checkpoint",
         "lambda_pending", "lambda_unwritten")
"""Every field of both parts, in the order of the flat form (:meth:`Health.to_dict`, ``/healthz``)."""


@dataclass(frozen=True, slots=True)
class Health:
    """A snapshot of a Selector (``Selector.health()``): ``store`` (the writer and the store) and ``selector``.

    Every field of both parts reads on the snapshot itself too
    (``health.queue_depth`` is ``health.store.queue_depth``,
    ``health.decisions`` is ``health.selector.decisions``), and
    :meth:`to_dict` is the flat mapping of all of them that ``/healthz`` and
    the dashboard show. ``dataclasses.asdict`` gives the two parts nested.
    """

    store: StoreHealth
    selector: SelectorHealth

    @classmethod
    def of(cls, **values: object) -> Health:
        """From the fields of both parts by name (each goes to its own part)."""
        store = {k: v for k, v in values.items() if k in StoreHealth.__dataclass_fields__}
        rest = {k: v for k, v in values.items() if k not in store}
        return cls(StoreHealth(**store), SelectorHealth(**rest))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        """Every field of both parts in one flat mapping (the shape of ``/healthz``'s ``selector``)."""
        return {name: getattr(self, name) for name in _FLAT}


def _read_through(part: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, part), name),
                    doc=f"``{part}.{name}`` (read through for the flat form)")


for _part, _cls in (("store", StoreHealth), ("selector", SelectorHealth)):
    for _name in _cls.__dataclass_fields__:
        setattr(Health, _name, _read_through(_part, _name))
assert set(_FLAT) == set(StoreHealth.__dataclass_fields__) | set(SelectorHealth.__dataclass_fields__)


def flat(value: object) -> object:
    """``dataclasses.asdict`` for JSON, with every :class:`Health` inside in its flat form (:meth:`Health.to_dict`)."""
    if isinstance(value, Health):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: flat(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: flat(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple, rebuilt field by field
        return type(value)(*(flat(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(flat(v) for v in value)
    return value


__all__ = ["Decision", "Health", "SelectorHealth", "StoreHealth", "flat"]
