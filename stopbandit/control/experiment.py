"""Champion/challenger: route a share of traffic to a candidate snapshot, compare, promote.

Serving (:class:`~stopbandit.control.serving.ControlledSelector`) assigns each
request at random to one group, logged in ``decisions.experiment``:
``holdout`` (the guardrail's full-arm control), ``challenger`` (a share served
by the candidate snapshot through a second Selector, :func:`open_challenger`,
with its own probabilities and propensities and ``policy_version`` = the
candidate's version) or ``champion`` (the serving Selector). The candidate is
frozen while it is evaluated (``learn=False``): what is compared is exactly
what :func:`promote` would ship. Decisions the guardrail forced to the full
arm keep their group and are marked by a ``guardrail/`` prefix on
``policy_version`` (and propensity 1).

Candidates are stored with ``role="candidate"`` (``Selector.snapshot(role=
"candidate")``, migration 0005): Selectors following the store never swap to
one, so saving a candidate promotes nothing. A serving snapshot can still be
named as a challenger.

:func:`ab_report` reads the groups from the store over the period the
challenger was live (first to last challenger decision) and compares mean EM,
mean tokens and mean reward ``em − λ·tokens/token_scale`` (one λ for both
groups: the one given, else the λ in force). Intervals are normal (CLT) on the
per-decision values, ``mean ± z_{1−α/2}·s/√n``; the challenger − champion
differences use Welch's standard error ``sqrt(s₁²/n₁ + s₂²/n₂)`` with a
two-sided p-value. Both groups are randomised slices of the same traffic at
the same time, so the differences are unbiased (no off-policy weighting is
needed).

:func:`promote` makes the candidate the serving policy: it copies the
challenger snapshot to a new *serving* snapshot row (new version ``p…``; metadata
``extra.promoted_from``, ``promoted_at``, ``promoted_by``, ``promote_reason``;
checksum recomputed over the new metadata) so it becomes the newest serving
snapshot, which every following Selector hot-swaps to within its
``follow_interval``. The candidate row itself stays as it was (what was
evaluated is kept as evaluated).
The audit record is a ``lambda_changes`` row with λ unchanged and the reason
``ab promote: …`` (who did it, which version replaced which, the user's reason),
so ``stopbandit lambda history`` shows promotions next to λ moves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any


from stopbandit import validation
from stopbandit.config import snapshot_key
from stopbandit.bandit.exploration import exploration_from_config
from stopbandit.bandit.policy import Policy
from stopbandit.bandit.snapshot import compute_checksum, new_version, unpack, verify
from stopbandit.bandit.vw import shared_line
from stopbandit.errors import ConfigError, InputError
from stopbandit.features.extract import FeatureExtractor
from stopbandit.replay.store import ReplayStore, StoredSnapshot
from stopbandit.serving.selector import FORCED_TAG, Selector

GROUPS = ("champion", "challenger", "holdout")
GUARDRAIL_TAG = "guardrail"  # Selector.choose_forced(tag=...) of a guardrail fallback
HOLDOUT_TAG = "holdout"  # ... and of a holdout decision
FORCED_PREFIX = GUARDRAIL_TAG + "/"
HOLDOUT_PREFIX = HOLDOUT_TAG + "/"
VERSION_MAX = 64


def base_version(policy_version: str) -> str:
    """The snapshot version behind a logged ``policy_version`` (route prefixes removed)."""
    for prefix in (FORCED_PREFIX, HOLDOUT_PREFIX, FORCED_TAG + "/"):
        if policy_version.startswith(prefix):
            return policy_version[len(prefix):]
    return policy_version


def tagged_version(prefix: str, version: str) -> str:
    return (prefix + version)[:VERSION_MAX]


# --------------------------------------------------------------------------- the candidate at serving time


def _stored_candidate(store: ReplayStore, version: object) -> StoredSnapshot:
    """The stored snapshot a challenger names; ConfigError naming the problem otherwise."""
    if not isinstance(version, str) or not version.strip():
        raise ConfigError(f"challenger must be a snapshot version, got {version!r}")
    if version == "latest":
        raise ConfigError("challenger must name a snapshot version, not 'latest' (that is what champions follow)")
    return _find_snapshot(store, version, "challenger snapshot", ConfigError)


def _find_snapshot(store: ReplayStore, version: str, label: str, error: type[Exception]) -> StoredSnapshot:
    """The stored snapshot ``version``; ``error`` naming it and the newest versions when it is not there.

    (A challenger that names a missing snapshot is a configuration error, a
    promotion of one is bad input: the caller picks the class.)"""
    stored = store.get_snapshot(version)
    if stored is None:
        known = [v for v, _, _ in store.list_snapshots(5)]
        raise error(f"{label} {version!r} is not in the store (newest: {known or 'none'})")
    return stored


def open_challenger(champion: Selector, version: str, *, seed: int | None = None) -> Selector:
    """A second Selector on the champion's store that serves snapshot ``version`` as the challenger.

    It logs and settles its decisions exactly like the champion (same store,
    its own writer and spill file, reward windows), follows the store's λ but
    never swaps snapshots (``follow="lambda"``), and never learns
    (``learn=False``). Arms, features and store settings are the champion's
    (the decisions share one log); the policy kind and exploration are the
    snapshot's. The caller closes it.
    """
    stored = _stored_candidate(champion.store, version)
    meta = stored.meta
    try:
        config = champion.config.with_(policy=meta.get("policy"),
                                       exploration=exploration_from_config(meta.get("exploration")))
    except ConfigError as exc:
        raise ConfigError(f"challenger snapshot {version!r} cannot be served here: {exc}") from exc
    url = champion.store.engine.url.render_as_string(hide_password=False)  # its own engine, same database
    return Selector.open(url, config=config, seed=seed, snapshot=stored.version, follow="lambda", learn=False)


class Challenger:
    """A stored snapshot loaded for offline use: its policy's probabilities on logged features.

    (Serving goes through :func:`open_challenger`.) The arms and feature
    configuration must be the serving Selector's; the policy kind and
    exploration are the snapshot's.
    """

    def __init__(self, store: ReplayStore, version: str, config: Any) -> None:
        stored = _stored_candidate(store, version)
        self.policy: Policy = unpack(stored.model, stored.meta, stored.checksum, arms=config.arms,
                                     feature_config=config.features.to_dict(), key=snapshot_key())
        self.version = stored.version
        self.extractor = FeatureExtractor(config.features)
        prior = stored.meta.get("extra", {}).get("prior")
        if prior:
            self.extractor.prior.load(prior)

    def close(self) -> None:
        self.policy.close()

    def decide(self, feats: Mapping[str, Any], lam: float) -> list[float]:
        """The candidate's probability vector (K,) for one request's features."""
        probs, _ = self.policy.decide(shared_line(feats), lam)
        return probs


# --------------------------------------------------------------------------- report


def _json_safe(**fields: Any) -> dict[str, Any]:
    """The fields as a JSON-ready dict: non-finite floats (no data yet) become None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()}


@dataclass(frozen=True, slots=True)
class Interval:
    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(value=self.value, low=self.low, high=self.high, n=self.n)


@dataclass(frozen=True, slots=True)
class Difference:
    """challenger − champion, Welch interval and two-sided p-value."""

    value: float
    low: float
    high: float
    z: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(value=self.value, low=self.low, high=self.high, z=self.z, p_value=self.p_value)


METRICS = ("em", "tokens", "reward")


@dataclass(slots=True)
class _Acc:
    n: int = 0
    forced: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))
    sq: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))

    def add(self, em: float, tokens: float, reward: float, forced: bool) -> None:
        self.n += 1
        self.forced += forced
        for k, v in (("em", em), ("tokens", tokens), ("reward", reward)):
            self.sums[k] += v
            self.sq[k] += v * v

    def mean_var(self, metric: str) -> tuple[float, float]:
        if self.n == 0:
            return math.nan, math.nan
        m = self.sums[metric] / self.n
        if self.n < 2:
            return m, math.nan
        return m, max(0.0, (self.sq[metric] - self.n * m * m) / (self.n - 1))

    def interval(self, metric: str, z: float) -> Interval:
        m, v = self.mean_var(metric)
        half = z * math.sqrt(v / self.n) if self.n >= 2 else math.nan
        return Interval(m, m - half, m + half, self.n)


def _difference(a: _Acc, b: _Acc, metric: str, z: float) -> Difference:
    ma, va = a.mean_var(metric)
    mb, vb = b.mean_var(metric)
    if a.n < 2 or b.n < 2:
        return Difference(ma - mb, math.nan, math.nan, math.nan, math.nan)
    se = math.sqrt(va / a.n + vb / b.n)
    d = ma - mb
    zz = d / se if se > 0 else (0.0 if d == 0 else math.copysign(math.inf, d))
    p = 2 * (1 - NormalDist().cdf(abs(zz))) if math.isfinite(zz) else 0.0
    return Difference(d, d - z * se, d + z * se, zz, p)


@dataclass(frozen=True)
class ABReport:
    """Per group (champion, challenger, holdout) and metric an :class:`Interval`; challenger − champion differences."""

    challenger: str
    start: float
    end: float
    lam: float
    lam_source: str
    alpha: float
    groups: dict[str, dict[str, Interval]]
    forced: dict[str, int]
    differences: dict[str, Difference]
    by_domain: dict[str, dict[str, dict[str, Interval]]] | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "challenger": self.challenger, "start": self.start, "end": self.end, "lam": self.lam,
            "lam_source": self.lam_source, "alpha": self.alpha,
            "groups": {g: {m: i.to_dict() for m, i in ms.items()} for g, ms in self.groups.items()},
            "forced": self.forced,
            "differences": {m: d.to_dict() for m, d in self.differences.items()},
            "warnings": list(self.warnings),
        }
        if self.by_domain is not None:
            out["by_domain"] = {dom: {g: {m: i.to_dict() for m, i in ms.items()} for g, ms in gs.items()}
                                for dom, gs in self.by_domain.items()}
        return out


def latest_challenger(store: ReplayStore) -> str | None:
    """The snapshot version of the most recent challenger decision, or None when there is none."""
    v = store.latest_experiment_version("challenger")
    return base_version(v) if v is not None else None


def challenger_period(store: ReplayStore, version: str) -> tuple[float, float, int]:
    """(first ts, last ts, decisions) of the challenger decisions of ``version`` (forced ones included)."""
    return store.experiment_period("challenger", [version, tagged_version(FORCED_PREFIX, version)])


def ab_report(store: ReplayStore, *, challenger: str | None = None, lam: float | None = None,
              alpha: float = 0.05, by_domain: bool = False, include: tuple[str, ...] = ("ok",)) -> ABReport:
    """Compare the groups over the challenger's live period (see the module docstring)."""
    validation.within(alpha, "alpha", low=0, high=1, low_open=True, high_open=True, expected="{range}")
    version = challenger or latest_challenger(store)
    if version is None:
        raise InputError("no challenger decisions in the store: route a share of traffic to a candidate with "
                         "ControlledSelector(challenger=VERSION, challenger_share=...) first")
    start, end, n_ch = challenger_period(store, version)
    if n_ch == 0:
        raise InputError(f"challenger {version!r} has no decisions in the store")
    lam_source = "given"
    if lam is None:
        change = store.current_lambda()
        if change is None:
            raise InputError("no λ in the store to price tokens in the reward: pass lam=... (--lam)")
        lam, lam_source = float(change.value), "store"
    else:
        lam = validation.within(lam, "lam", low=0)
    accs = {g: _Acc() for g in GROUPS}
    doms: dict[str, dict[str, _Acc]] = {}
    for chunk in store.iter_events(since_ts=start):
        for ev in chunk:
            if ev.ts > end or ev.status not in include or ev.experiment not in accs:
                continue
            if ev.experiment == "challenger" and base_version(ev.policy_version) != version:
                continue
            forced = ev.policy_version.startswith(FORCED_PREFIX)
            r = ev.em - lam * ev.tokens / ev.token_scale
            accs[ev.experiment].add(ev.em, ev.tokens, r, forced)
            if by_domain:
                doms.setdefault(ev.domain or "unknown", {g: _Acc() for g in GROUPS})[ev.experiment].add(
                    ev.em, ev.tokens, r, forced)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    groups = {g: {m: a.interval(m, z) for m in METRICS} for g, a in accs.items()}
    diffs = {m: _difference(accs["challenger"], accs["champion"], m, z) for m in METRICS}
    warnings = []
    for g in ("champion", "challenger"):
        if accs[g].n < 100:
            warnings.append(f"only {accs[g].n} {g} outcomes in the period: intervals are wide or undefined")
    forced = {g: a.forced for g, a in accs.items()}
    if forced["champion"] or forced["challenger"]:
        warnings.append(f"the guardrail forced the full arm on {forced['champion']} champion and "
                        f"{forced['challenger']} challenger decisions (domains in fallback): those compare full vs full")
    by = None
    if by_domain:
        by = {d: {g: {m: a.interval(m, z) for m in METRICS} for g, a in gs.items()} for d, gs in sorted(doms.items())}
    return ABReport(version, start, end, float(lam), lam_source, float(alpha), groups, forced, diffs, by,
                    tuple(warnings))


# --------------------------------------------------------------------------- promote


@dataclass(frozen=True, slots=True)
class Promotion:
    challenger: str
    new_version: str
    previous: str | None
    lam: float
    audit_id: int
    ts: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"challenger": self.challenger, "new_version": self.new_version, "previous": self.previous,
                "lam": self.lam, "audit_id": self.audit_id, "ts": self.ts, "reason": self.reason}


def promote(store: ReplayStore, *, version: str | None = None, reason: str, who: str = "ab promote") -> Promotion:
    """Make the challenger snapshot the newest one (serving Selectors hot-swap to it) and audit the switch."""
    if not isinstance(reason, str) or not reason.strip():
        raise InputError("promote needs a non-empty reason (it is stored with the audit record)")
    if not isinstance(who, str) or not who.strip() or len(who) > 128:
        raise InputError(f"who must be a non-empty string of at most 128 characters, got {who!r}")
    version = version or latest_challenger(store)
    if version is None:
        raise InputError("no challenger to promote: no challenger decisions in the store (or pass --version)")
    if version == "latest":
        raise InputError("--version must name a snapshot version, not 'latest'")
    stored = _find_snapshot(store, version, "snapshot", InputError)
    verify(stored.model, stored.meta, stored.checksum)
    previous = store.latest_snapshot_version()
    if previous is not None and previous != version:
        prev = store.get_snapshot(previous)
        if prev is not None and prev.meta.get("extra", {}).get("promoted_from") == version:
            raise InputError(f"snapshot {version!r} is already the serving snapshot (promoted as {previous!r})")
    now = time.time()
    new = new_version("p")
    meta = dict(stored.meta)
    meta["version"] = new
    meta["extra"] = {**dict(meta.get("extra", {})), "promoted_from": version, "promoted_at": now,
                     "promoted_by": who, "promote_reason": reason}
    store.save_snapshot(new, stored.model, meta, compute_checksum(stored.model, meta), ts=now)
    change = store.current_lambda()
    lam = float(change.value) if change is not None else float(stored.meta.get("lam", 0.0))
    text = (f"ab promote: challenger snapshot {version} now serves as {new} (replacing {previous or 'none'}); "
            f"λ unchanged; {reason.strip()}")
    audit = store.add_lambda(lam, text, who, ts=now)
    return Promotion(version, new, previous, lam, audit.id, now, text)


__all__ = [
    "FORCED_PREFIX",
    "GROUPS",
    "HOLDOUT_PREFIX",
    "GUARDRAIL_TAG",
    "HOLDOUT_TAG",
    "ABReport",
    "Challenger",
    "Difference",
    "Interval",
    "Promotion",
    "ab_report",
    "base_version",
    "challenger_period",
    "latest_challenger",
    "open_challenger",
    "promote",
    "tagged_version",
]
