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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import ConfigError, InputError
from stopbandit import validation
from stopbandit.replay.options import DEFAULT_CHUNK, PROB_TOL
from stopbandit.replay.store import ReplayStore

ON_ERROR = ("skip", "fail")
IMPORT_BATCH = 10000
EXPERIMENTS_MAX = 32
MAX_REPORTED_ERRORS = 1000
# what an error about a log whose actions are not the configured arms tells the user to do
ARMS_HINT = "; if the log's actions are other arms, pass --config with an [[arms]] table naming them"


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "error": self.message}


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One imported line: a decision row, its outcome row (None: decision only), and how it was mapped."""

    line: int
    decision: dict[str, Any]
    outcome: dict[str, Any] | None
    mapped_from_cost: bool = False
    clipped: bool = False


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
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)
    written: bool = False

    def add_error(self, err: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(err)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "format": self.format, "on_error": self.on_error, "lines": self.lines,
            "valid": self.valid, "inserted": self.inserted, "duplicates": self.duplicates,
            "decisions_only": self.decisions_only, "mapped_from_cost": self.from_cost, "clipped": self.clipped,
            "skipped": self.error_count if self.written else 0, "errors": self.error_count,
            "error_lines": [e.to_dict() for e in self.errors], "written": self.written,
        }


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


def decision_row(arms: ArmSet, *, key: Any, ts: Any, domain: Any, features: Any, arm: Any,
                 probabilities: Mapping[str, Any], propensity: Any, lam: Any, token_scale: Any,
                 policy_version: Any, experiment: Any = "champion") -> dict[str, Any]:
    """A validated decision row (the shape ``ReplayStore.write_batch`` takes); errors name the field."""

    key = validation.identifier(key, "request_id")
    names = arms.names
    if not isinstance(arm, str) or arm not in names:
        raise InputError(f"unknown arm {arm!r}; known arms: {list(names)}{ARMS_HINT}")
    idx = names.index(arm)
    if len(probabilities) != len(names) or sorted(probabilities) != sorted(names):
        raise InputError(f"probabilities must name every arm {list(names)}, got {list(probabilities)}")
    probs = {}
    for name in names:
        p = probabilities[name]
        probs[name] = p if type(p) is float and 0.0 <= p <= 1.0 else validation.number(
            p, f"probability of arm {name!r}", low=0.0, high=1.0, error=InputError)
    total = math.fsum(probs.values())
    if abs(total - 1.0) > PROB_TOL:
        raise InputError(f"probabilities must sum to 1, they sum to {total!r}")
    prop = validation.number(propensity, "propensity", low=0.0, high=1.0, low_open=True, error=InputError)
    if abs(prop - probs[arm]) > PROB_TOL:
        raise InputError(f"propensity {prop!r} differs from the probability of the logged arm {arm!r}: {probs[arm]!r}")
    if domain is not None and (not isinstance(domain, str) or not domain or len(domain) > 64):
        raise InputError(f"domain must be a string of 1-64 characters or absent, got {domain!r}")
    if domain is not None:
        validation.text(domain, "domain")
    if not isinstance(policy_version, str) or not policy_version or len(policy_version) > 64:
        raise InputError(f"policy_version must be a string of 1-64 characters, got {policy_version!r}")
    if not isinstance(experiment, str) or not experiment or len(experiment) > EXPERIMENTS_MAX:
        raise InputError(f"experiment must be a string of 1-{EXPERIMENTS_MAX} characters, got {experiment!r}")
    validation.text(policy_version, "policy_version")
    validation.text(experiment, "experiment")
    return {
        "request_key": key, "ts": validation.number(ts, "ts", error=InputError), "domain": domain,
        "features": check_features(features), "arm": arm, "arm_index": idx, "probabilities": probs,
        "propensity": prop, "lam": validation.number(lam, "lam", low=0.0, error=InputError),
        "token_scale": validation.number(token_scale, "token_scale", low=0.0, low_open=True, error=InputError),
        "policy_version": policy_version, "experiment": experiment,
    }


def outcome_of(key: str, *, em: Any, tokens: Any, ts: Any, latency_ms: Any = None, trace: Any = None,
               reference_key: Any = None, status: Any = "ok") -> dict[str, Any]:
    """A validated outcome row; a trace must parse as a ProbeTrace and is stored in canonical form."""
    from stopbandit.bandit.trace import ProbeTrace
    from stopbandit.replay.store import outcome_row

    if trace is not None:
        if not isinstance(trace, dict):
            raise InputError(f"trace must be a JSON object (a hashed ProbeTrace), got {type(trace).__name__}")
        trace = ProbeTrace.from_json(trace).to_json()
    if reference_key is not None and (not isinstance(reference_key, str) or not reference_key
                                      or len(reference_key) > 32):
        raise InputError(f"reference_key must be a string of 1-32 characters, got {reference_key!r}")
    if reference_key is not None:
        validation.text(reference_key, "reference_key")
    if not isinstance(status, str):
        raise InputError(f"status must be a string, got {status!r}")
    validation.text(status, "status")
    if isinstance(em, bool) or isinstance(tokens, bool):
        raise InputError(f"em and tokens must be numbers, got em={em!r}, tokens={tokens!r}")
    tokens = validation.stored_tokens(tokens)
    return outcome_row(key, em, tokens, latency_ms, validation.number(ts, "outcome ts", error=InputError),
                       trace=trace, reference_key=reference_key, status=status)


def import_events(store: ReplayStore, parse: Callable[[], Iterator[ParsedEvent | LineError]], *, path: str,
                  fmt: str, on_error: str = "skip", batch: int = IMPORT_BATCH) -> ImportReport:
    """Validate and write the lines of ``parse()`` in one pass (see the module docstring).

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
        for p in items:
            key = p.decision["request_key"]
            mine = (p.decision["arm_index"], p.decision["propensity"])
            outcome = None if p.outcome is None else (p.outcome["em"], p.outcome["tokens"])
            problem = None
            if key in seen:
                first_line, first = seen[key]
                if first != (mine, outcome):
                    problem = f"request_id {key!r} also on line {first_line} with a different decision or outcome"
            elif key in dec and (dec[key][0] != mine[0] or abs(dec[key][1] - mine[1]) > PROB_TOL):
                problem = (f"request_id {key!r} is already stored with arm_index {dec[key][0]} and propensity "
                           f"{dec[key][1]!r}; this line has {mine[0]} and {mine[1]!r}")
            elif key in out and outcome is not None and tuple(out[key]) != outcome:
                problem = (f"request_id {key!r} already has an outcome (em {out[key][0]!r}, tokens {out[key][1]!r}); "
                           f"this line has em {outcome[0]!r}, tokens {outcome[1]!r} (outcomes are write-once)")
            if problem is not None:
                report.add_error(LineError(p.line, f"conflict: {problem}"))
                continue
            report.valid += 1
            report.from_cost += p.mapped_from_cost
            report.clipped += p.clipped
            if p.outcome is None:
                report.decisions_only += 1
            if key in seen or (key in dec and (outcome is None or key in out)):
                report.duplicates += 1
                continue
            seen[key] = (p.line, (mine, outcome))
            decisions.append(p.decision)
            if p.outcome is not None:
                outcomes.append(p.outcome)
        session.write(decisions, outcomes)
        return len(decisions)

    with store.importing(atomic=atomic) as session:
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
