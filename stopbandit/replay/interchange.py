"""DSJSON/CSV interchange: validated rows from foreign lines, a two-pass import, and the export.

Both formats parse a line into a :class:`ParsedEvent` (a decision row and,
when the line carries an outcome, an outcome row, validated like the serving
path validates them) or a :class:`LineError`. :func:`import_events` reads the
file once, in batches: each batch is checked against the store (a key already
stored with a different outcome or arm is a conflict; so is a key repeated
within the batch with other content) and its valid lines are bulk-inserted
(:meth:`ReplayStore.importing`). With ``on_error="fail"`` the whole import is
one transaction, rolled back when any line is bad, so nothing is written;
with ``"skip"`` each batch is committed, and bad lines are counted, listed
with their line numbers and left out. Writes are idempotent by request key,
so importing a file twice adds nothing the second time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any


from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import ConfigError, InputError, StopbanditError
from stopbandit import validation
from stopbandit.replay.options import DEFAULT_CHUNK, PROB_TOL
from stopbandit.replay.store import ReplayStore

ON_ERROR = ("skip", "fail")
IMPORT_BATCH = 10000
EXPERIMENTS_MAX = 32
MAX_REPORTED_ERRORS = 1000
# what an error about a log whose actions are not the configured arms tells the user to do
ARMS_HINT = (" (if the log's actions are other arms, pass --config with an [[arms]] table naming them; actions "
             "that are not stopping rules are plain arms, name = \"item\", plain = true, and a numeric action id N "
             "is the plain arm action_N)")
# what an error about probabilities that do not sum to 1 suggests (a ranking log's per-item propensities)
SUM_HINT = (" (a ranking or slate log that keeps each item's own propensity per position does not carry one "
            "distribution per decision: import one decision per slot with that slot's distribution)")


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "error": self.message}


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One imported line: a decision row, its outcome row (None: decision only), and how it was mapped.

    ``by_position``: the line's actions carry no arm names, and action ``j``
    became the ``j``-th configured arm only by its position (reported).
    """

    line: int
    decision: dict[str, Any]
    outcome: dict[str, Any] | None
    mapped_from_cost: bool = False
    clipped: bool = False
    by_position: bool = False


@dataclass
class ImportReport:
    """What an import read, wrote and refused (``errors``: line numbers and reasons, in file order)."""

    path: str
    format: str
    on_error: str
    lines: int = 0
    valid: int = 0
    inserted: int = 0
    duplicates: int = 0
    decisions_only: int = 0
    from_cost: int = 0
    clipped: int = 0
    by_position: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)
    written: bool = False

    def add_error(self, err: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(err)

    def warnings(self) -> list[str]:
        """What the user should know about how the valid lines were mapped."""
        out = []
        if self.by_position:
            out.append(f"{self.by_position} line(s) name none of their actions: action j was stored as the j-th "
                       f"configured arm by position alone (nothing in the log says that this order is the arms'; "
                       f"name the actions, an 'arm' field or '_tag', or configure the numeric plain arms "
                       f"action_1 … action_K to map them by id)")
        if self.from_cost:
            out.append(f"{self.from_cost} foreign events carry only a cost: stored as em = clip(−cost, 0, 1), "
                       f"tokens = 0, lam = 0 ({self.clipped} costs were outside [−1, 0] and clipped)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "format": self.format, "on_error": self.on_error, "lines": self.lines,
            "valid": self.valid, "inserted": self.inserted, "duplicates": self.duplicates,
            "decisions_only": self.decisions_only, "mapped_from_cost": self.from_cost, "clipped": self.clipped,
            "mapped_by_position": self.by_position, "skipped": self.error_count if self.written else 0,
            "errors": self.error_count,
            "error_lines": [e.to_dict() for e in self.errors], "written": self.written,
            "warnings": self.warnings(),
        }


_finite = partial(validation.number, error=InputError)
"""A finite number of an imported line, within bounds; a refusal is the line's :class:`InputError`."""


# feature names already checked against FEATURE_NAME (a log repeats the same few names on every line)
_FEATURE_NAMES_SEEN: set[str] = set()
FEATURE_NAMES_REMEMBERED = 4096


def check_features(value: Any, field_: str = "features") -> dict[str, Any]:
    """A flat mapping of name → finite number or string (what the Selector logs).

    Names follow the extractor's rule (``features.extract.FEATURE_NAME``): the
    VW seam escapes values, not names, so a name must not carry VW syntax.
    """
    from stopbandit.features.extract import FEATURE_NAME

    if not isinstance(value, dict):
        raise InputError(f"{field_} must be a JSON object of name -> number or string, got {type(value).__name__}")
    out: dict[str, Any] = {}
    known = _FEATURE_NAMES_SEEN
    isfinite = math.isfinite
    for k, v in value.items():
        if k not in known:
            if not isinstance(k, str) or not FEATURE_NAME.match(k):
                raise InputError(f"{field_}: feature name {k!r} must match {FEATURE_NAME.pattern}")
            if len(known) < FEATURE_NAMES_REMEMBERED:
                known.add(k)
        kind = type(v)
        if kind is float and isfinite(v):  # the common case; everything else through the checks below
            out[k] = v
        elif isinstance(v, str):
            if len(v) > 256:
                raise InputError(f"{field_}: feature {k!r} is a string longer than 256 characters")
            out[k] = validation.text(v, f"{field_}.{k}")
        elif isinstance(v, bool):
            out[k] = 1.0 if v else 0.0
        else:
            out[k] = validation.number(v, f"{field_}.{k}", error=InputError)
    return out


class _Bad:
    """A value whose problem is already reported (the checks that need it are skipped, the others still run)."""

    def __repr__(self) -> str:
        return "BAD"


BAD: Any = _Bad()


class Problems:
    """Every problem of one line, so that fixing one does not reveal the next (joined with ``"; "``)."""

    __slots__ = ("messages",)

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> Any:
        if message not in self.messages:
            self.messages.append(message)
        return BAD

    def run(self, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``check(*args, **kwargs)``, or :data:`BAD` after recording its error."""
        try:
            return check(*args, **kwargs)
        except StopbanditError as exc:
            return self.add(str(exc))

    def raise_any(self) -> None:
        if self.messages:
            raise InputError("; ".join(self.messages))



def decision_row(arms: ArmSet, *, key: Any, ts: Any, domain: Any, features: Any, arm: Any,
                 probabilities: Mapping[str, Any], propensity: Any, lam: Any, token_scale: Any,
                 policy_version: Any, experiment: Any = "champion", problems: Problems | None = None) -> dict[str, Any]:
    """A validated decision row (the shape ``ReplayStore.write_batch`` takes); errors name the field.

    Every problem of the row is reported in one InputError (joined with
    ``"; "``); an argument that is :data:`BAD` was reported by the caller
    (``problems``) and only the checks that need it are skipped.
    """
    own = problems is None
    pr = Problems() if own else problems
    if key is not BAD:
        key = pr.run(validation.identifier, key, "request_id")
    names = arms.names
    idx = -1
    if arm is not BAD:
        if not isinstance(arm, str) or arm not in names:
            arm = pr.add(f"unknown arm {arm!r}; known arms: {list(names)}{ARMS_HINT}")
        else:
            idx = names.index(arm)
    probs: Any = BAD
    if probabilities is not BAD:
        if len(probabilities) != len(names) or sorted(probabilities) != sorted(names):
            pr.add(f"probabilities must name every arm {list(names)}, got {list(probabilities)}")
        else:
            probs = {}
            for name in names:
                p = probabilities[name]
                probs[name] = p if type(p) is float and 0.0 <= p <= 1.0 else pr.run(
                    _finite, p, f"probability of arm {name!r}", low=0.0, high=1.0)
            if any(v is BAD for v in probs.values()):
                probs = BAD
            else:
                total = math.fsum(probs.values())
                if abs(total - 1.0) > PROB_TOL:
                    probs = pr.add(f"probabilities must sum to 1, they sum to {total!r}{SUM_HINT}")
    prop = BAD if propensity is BAD else pr.run(_finite, propensity, "propensity", low=0.0, high=1.0, low_open=True)
    if prop is not BAD and probs is not BAD and arm is not BAD and abs(prop - probs[arm]) > PROB_TOL:
        pr.add(f"propensity {prop!r} differs from the probability of the logged arm {arm!r}: {probs[arm]!r}")
    if domain is not None and domain is not BAD:
        if not isinstance(domain, str) or not domain or len(domain) > 64:
            pr.add(f"domain must be a string of 1-64 characters or absent, got {domain!r}")
        else:
            pr.run(validation.text, domain, "domain")
    if policy_version is not BAD:
        if not isinstance(policy_version, str) or not policy_version or len(policy_version) > 64:
            pr.add(f"policy_version must be a string of 1-64 characters, got {policy_version!r}")
        else:
            pr.run(validation.text, policy_version, "policy_version")
    if experiment is not BAD:
        if not isinstance(experiment, str) or not experiment or len(experiment) > EXPERIMENTS_MAX:
            pr.add(f"experiment must be a string of 1-{EXPERIMENTS_MAX} characters, got {experiment!r}")
        else:
            pr.run(validation.text, experiment, "experiment")
    row = {
        "request_key": key, "ts": BAD if ts is BAD else pr.run(_finite, ts, "ts"), "domain": domain,
        "features": BAD if features is BAD else pr.run(check_features, features),
        "arm": arm, "arm_index": idx, "probabilities": probs, "propensity": prop,
        "lam": BAD if lam is BAD else pr.run(_finite, lam, "lam", low=0.0),
        "token_scale": BAD if token_scale is BAD else pr.run(_finite, token_scale, "token_scale", low=0.0,
                                                               low_open=True),
        "policy_version": policy_version, "experiment": experiment,
    }
    if own:
        pr.raise_any()
    return row


def outcome_of(key: str, *, em: Any, tokens: Any, ts: Any, latency_ms: Any = None, trace: Any = None,
               reference_key: Any = None, status: Any = "ok", problems: Problems | None = None) -> dict[str, Any]:
    """A validated outcome row; a trace must parse as a ProbeTrace and is stored in canonical form.

    Like :func:`decision_row`, every problem is reported and :data:`BAD` arguments are skipped.
    """
    from stopbandit.bandit.trace import ProbeTrace
    from stopbandit.replay.store import outcome_row

    own = problems is None
    pr = Problems() if own else problems
    if trace is not None and trace is not BAD:
        if not isinstance(trace, dict):
            trace = pr.add(f"trace must be a JSON object (a hashed ProbeTrace), got {type(trace).__name__}")
        else:
            parsed = pr.run(ProbeTrace.from_json, trace)
            trace = BAD if parsed is BAD else parsed.to_json()
    if reference_key is not None and reference_key is not BAD:
        if not isinstance(reference_key, str) or not reference_key or len(reference_key) > 32:
            reference_key = pr.add(f"reference_key must be a string of 1-32 characters, got {reference_key!r}")
        else:
            reference_key = pr.run(validation.text, reference_key, "reference_key")
    if status is not BAD:
        if not isinstance(status, str):
            status = pr.add(f"status must be a string, got {status!r}")
        else:
            status = pr.run(validation.text, status, "status")
    if isinstance(em, bool) or isinstance(tokens, bool):
        em = tokens = pr.add(f"em and tokens must be numbers, got em={em!r}, tokens={tokens!r}")
    if tokens is not BAD:
        tokens = pr.run(validation.stored_tokens, tokens)
    if ts is not BAD:
        ts = pr.run(_finite, ts, "outcome ts")
    if em is not BAD:
        em = pr.run(validation.em, em)
    if latency_ms is not BAD:
        latency_ms = pr.run(validation.latency, latency_ms)
    out: dict[str, Any] = {}
    if key is not BAD and not any(v is BAD for v in (em, tokens, latency_ms, ts, trace, reference_key, status)):
        out = pr.run(outcome_row, key, em, tokens, latency_ms, ts, trace=trace, reference_key=reference_key,
                     status=status)
    if own:
        pr.raise_any()
    return out


def import_events(store: ReplayStore, parse: Callable[[], Iterator[ParsedEvent | LineError]], *, path: str,
                  fmt: str, on_error: str = "skip", batch: int = IMPORT_BATCH,
                  arms: ArmSet | None = None) -> ImportReport:
    """Validate and write the lines of ``parse()`` in one pass (see the module docstring).

    ``arms``: the arm set the lines are mapped to; recorded as the store's
    (``store_arms``) before anything is written, and an import into a store
    that has another arm set is refused (InputError).

    Memory is bounded by ``batch``: each batch's keys are looked up in the
    store (which by then holds the file's earlier batches), and only within
    a batch are the lines themselves compared.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    report = ImportReport(path=path, format=fmt, on_error=on_error)
    atomic = on_error == "fail"
    inserted = 0

    def flush(items: list[ParsedEvent], session: Any) -> int:
        dec, out = session.lookup([p.decision["request_key"] for p in items])
        seen: dict[str, tuple] = {}
        decisions: list[dict[str, Any]] = []
        outcomes: list[dict[str, Any]] = []
        valid = from_cost = clipped = by_position = decisions_only = duplicates = 0
        for p in items:
            d, o = p.decision, p.outcome
            key = d["request_key"]
            mine = (d["arm_index"], d["propensity"])
            outcome = None if o is None else (o["em"], o["tokens"])
            problem = None
            first = seen.get(key)
            stored = dec.get(key) if dec else None
            if first is not None:
                if first[1] != (mine, outcome):
                    problem = f"request_id {key!r} also on line {first[0]} with a different decision or outcome"
            elif stored is not None and (stored[0] != mine[0] or abs(stored[1] - mine[1]) > PROB_TOL):
                problem = (f"request_id {key!r} is already stored with arm_index {stored[0]} and propensity "
                           f"{stored[1]!r}; this line has {mine[0]} and {mine[1]!r}")
            elif outcome is not None and out and key in out and tuple(out[key]) != outcome:
                problem = (f"request_id {key!r} already has an outcome (em {out[key][0]!r}, tokens {out[key][1]!r}); "
                           f"this line has em {outcome[0]!r}, tokens {outcome[1]!r} (outcomes are write-once)")
            if problem is not None:
                report.add_error(LineError(p.line, f"conflict: {problem}"))
                continue
            valid += 1
            from_cost += p.mapped_from_cost
            clipped += p.clipped
            by_position += p.by_position
            if o is None:
                decisions_only += 1
            if first is not None or (stored is not None and (outcome is None or key in out)):
                duplicates += 1
                continue
            seen[key] = (p.line, (mine, outcome))
            decisions.append(d)
            if o is not None:
                outcomes.append(o)
        report.valid += valid
        report.from_cost += from_cost
        report.clipped += clipped
        report.by_position += by_position
        report.decisions_only += decisions_only
        report.duplicates += duplicates
        session.write(decisions, outcomes)
        return len(decisions)

    with store.importing(atomic=atomic) as session:
        if arms is not None:
            session.record_arms(arms)
        pending: list[ParsedEvent] = []
        for item in parse():
            report.lines += 1
            if isinstance(item, LineError):
                report.add_error(item)
                continue
            pending.append(item)
            if len(pending) >= batch:
                inserted += flush(pending, session)
                pending = []
        if pending:
            inserted += flush(pending, session)
        if atomic and report.error_count:
            return report  # the session rolls back: a failed import writes nothing
        session.commit()
    report.inserted = inserted
    report.written = True
    return report


def export_events(store: ReplayStore, write: Callable[[Any], None], *, since: float | None = None,
                  chunk: int = DEFAULT_CHUNK) -> int:
    """Call ``write(event)`` for every stored event (every status), in outcome order; returns the count."""
    n = 0
    for events in store.iter_events(chunk=chunk, since_ts=since):
        for ev in events:
            write(ev)
            n += 1
    return n


__all__ = ["ARMS_HINT", "ImportReport", "LineError", "ParsedEvent", "check_features", "decision_row", "export_events",
           "import_events", "outcome_of"]
