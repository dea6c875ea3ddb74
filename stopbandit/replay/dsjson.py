"""Vowpal Wabbit decision-service JSON lines (DSJSON): export the replay log, import ours or a VW pipeline's.

One line per event, the fields VW's ``--dsjson`` reader uses::

    {"_label_cost": -0.62, "_label_probability": 0.7, "_label_Action": 3, "_labelIndex": 2,
     "Timestamp": "2024-05-01T12:00:00.000000Z", "Version": "1", "EventId": "r-17",
     "a": [3, 1, 2, 4],                      # action ids (1-based), the chosen one first
     "c": {"x": {...request features...},    # shared context, one namespace
           "_multi": [{"arm": "full", "threshold": 1.01, "max_think_tokens": 0}, ...]},
     "p": [0.7, 0.1, 0.1, 0.1],              # probabilities, in the order of "a"
     "VWState": {"m": "<policy version>"},
     "_stopbandit": {...}}                   # our own fields: the exact event (see below)

* ``_label_cost`` = −reward at the logged λ: ``−(em − lam·tokens/token_scale)``;
  ``_label_Action`` is the 1-based id of the chosen action and ``_labelIndex``
  its 0-based index in ``_multi``; action ``j`` (1-based) is ``_multi[j − 1]``,
  arm ``j − 1`` of the arm set.
* ``_stopbandit`` holds what DSJSON has no field for — em and tokens separately,
  λ, token_scale, the exact decision time, domain, experiment, latency, the
  outcome's time, probe trace, reference key and status — so that exporting
  and importing into a fresh store gives identical events.

Import of a foreign line (no ``_stopbandit``, e.g. from a VW pipeline):

* actions map to arms by the arm name in ``_multi`` (a string ``arm`` field,
  at the top of the action object or inside one of its namespaces, or else
  its ``_tag``) when every action has one (a line that names only some is
  refused); unnamed actions map by id to numeric plain arms when the
  configured arms are those (action ``j`` is arm ``action_j``), and otherwise
  by position — action ``j`` is arm ``j − 1`` of the configured arms, the line
  must then have exactly K actions, and the import report counts these lines
  and warns, since nothing in the log says that the order is the arms';
* the reward is the only outcome, so it is stored as EM:
  ``em = clip(−_label_cost, 0, 1)``, ``tokens = 0``, ``lam = 0`` (so the stored
  reward ``em − lam·tokens/token_scale`` equals ``−_label_cost`` whenever the
  cost lies in [−1, 0]); costs outside are clipped and counted. Token-based
  metrics of such events are meaningless, and the import report says how many
  events were mapped this way;
* features: the context's scalar fields, namespaces flattened to
  ``<namespace>_<name>`` (names reduced to ``[A-Za-z0-9_]``, prefixed ``f_``
  when they would start with a digit), booleans as 0/1, lists dropped;
  a string field ``domain`` becomes the domain;
* ``Timestamp`` (ISO 8601) is the decision and outcome time; a line without
  one gets its line number as the time (seconds after the epoch: deterministic,
  in file order), and a line without ``EventId`` the key
  ``dsjson-<line>-<digest of the line>``, so re-importing the file adds nothing;
* an action without an ``arm`` field is named by its ``_tag`` (characters an
  arm name cannot hold become ``_``: ``"Cold brew"`` is arm ``Cold_brew``);
* conditional-contextual-bandit and slates lines (``_outcomes``, ``c._slots``)
  are refused with one message, "not supported: CCB";
  ``VWState.m`` the policy version (``dsjson`` when absent); a line without
  ``_label_cost`` (or with ``_skipLearn: true``) is imported as a decision only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import IO, Any

from stopbandit import validation
from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import InputError, StopbanditError
from stopbandit.replay.csvlog import numeric_aliases
from stopbandit.replay.interchange import (
    ARMS_HINT, BAD, LineError, ParsedEvent, Problems, decision_row, outcome_of,
)
from stopbandit.replay.times import iso_time, parse_time
from stopbandit.replay.store import Event

CUSTOM = "_stopbandit"
FORMAT_VERSION = 1
_NAME_BAD = re.compile(r"[^A-Za-z0-9_]")
_ARM_BAD = re.compile(r"[^A-Za-z0-9_.-]")


# --------------------------------------------------------------------------- export


def event_to_dsjson(ev: Event, arms: ArmSet) -> dict[str, Any]:
    """The DSJSON object of one stored event (arms: the arm set the log was written with)."""
    k = len(arms)
    a = ev.arm_index
    if not 0 <= a < k or arms[a].name != ev.arm or sorted(ev.probabilities) != sorted(arms.names):
        raise InputError(
            f"event {ev.request_key!r}: logged arm {ev.arm!r} (index {a}) and probabilities over "
            f"{list(ev.probabilities)} do not fit the arms {list(arms.names)}; pass --config with the arms the log was written with"
        )
    order = [a] + [j for j in range(k) if j != a]
    reward = ev.em - ev.lam * ev.tokens / ev.token_scale
    return {
        "_label_cost": -reward,
        "_label_probability": ev.propensity,
        "_label_Action": a + 1,
        "_labelIndex": a,
        "Timestamp": iso_time(ev.ts),
        "Version": "1",
        "EventId": ev.request_key,
        "a": [j + 1 for j in order],
        "c": {
            "x": ev.features,
            "_multi": [{"arm": arm.name, **{k: v for k, v in arm.to_dict().items() if k != "name"}} for arm in arms],
        },
        "p": [ev.probabilities[arms[j].name] for j in order],
        "VWState": {"m": ev.policy_version},
        CUSTOM: {
            "v": FORMAT_VERSION, "ts": ev.ts, "domain": ev.domain, "em": ev.em, "tokens": ev.tokens,
            "lam": ev.lam, "token_scale": ev.token_scale, "experiment": ev.experiment,
            "latency_ms": ev.latency_ms, "outcome_ts": ev.outcome_ts, "trace": ev.trace,
            "reference_key": ev.reference_key, "status": ev.status,
        },
    }


def write_dsjson(ev: Event, arms: ArmSet, out: IO[str]) -> None:
    out.write(json.dumps(event_to_dsjson(ev, arms), separators=(",", ":"), allow_nan=False))
    out.write("\n")


# --------------------------------------------------------------------------- import


def _field(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj:
        raise InputError(f"missing field {name!r}")
    return obj[name]


def _arm_name(action: Any) -> str | None:
    if not isinstance(action, Mapping):
        return None
    name = action.get("arm")
    if isinstance(name, str):
        return name
    for value in action.values():
        if isinstance(value, Mapping) and isinstance(value.get("arm"), str):
            return value["arm"]
    tag = action.get("_tag")
    if isinstance(tag, str) and tag:
        return _ARM_BAD.sub("_", tag)[:64]
    return None


def _derived_key(text: str, line: int) -> str:
    """The request key of a line without ``EventId``: its line number and a digest of its text (deterministic)."""
    return f"dsjson-{line}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:32]}"


def _unsupported(obj: Mapping[str, Any]) -> str | None:
    """Why a line of another decision kind cannot be imported (None: a contextual-bandit line)."""
    context = obj.get("c")
    slots = isinstance(context, Mapping) and "_slots" in context
    if "_outcomes" in obj or slots:
        return ("not supported: CCB (a conditional contextual bandit or slates line: it has "
                f"{'_outcomes' if '_outcomes' in obj else 'c._slots'}); only contextual-bandit lines "
                "(one decision over 'a' with '_label_*') import")
    return None


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and not k.startswith("_"):
                _flatten(f"{prefix}_{k}" if prefix else k, v, out)
    elif isinstance(value, (str, int, float)):
        name = _NAME_BAD.sub("_", prefix)[:64] or "f"
        if not name[0].isalpha() and name[0] != "_":
            name = f"f_{name}"[:64]
        out[name] = (1.0 if value else 0.0) if isinstance(value, bool) else value


def _has_label(obj: Mapping[str, Any]) -> bool:
    return "_label_cost" in obj and not obj.get("_skipLearn", False)


def _foreign_time(obj: Mapping[str, Any], line: int, pr: Problems) -> Any:
    """A foreign line's time: its ``Timestamp``, or its line number (deterministic, in file order)."""
    if "Timestamp" not in obj:
        return float(line)  # VW's own examples carry no time
    stamp = obj["Timestamp"]
    if not isinstance(stamp, str):
        return pr.add(f"Timestamp must be an ISO 8601 string, got {stamp!r}")
    try:
        return parse_time(stamp, field="Timestamp")
    except StopbanditError as exc:
        return pr.add(str(exc))


def _cost(obj: Mapping[str, Any], pr: Problems) -> Any:
    """A foreign line's ``_label_cost`` as a float (BAD, recorded, when it is not a finite number)."""
    return pr.run(validation.real, obj["_label_cost"], "_label_cost")


def _stop(obj: Mapping[str, Any], line: int, pr: Problems) -> None:
    """Raise the problems of a line whose ``a`` or ``c`` leaves the rest without meaning, with those of the
    fields that need neither (the propensity, a foreign line's time and cost), so that none waits for a
    second attempt."""
    propensity = pr.run(_field, obj, "_label_probability")
    if propensity is not BAD:
        pr.run(validation.number, propensity, "propensity", low=0.0, high=1.0, low_open=True, error=InputError)
    if not isinstance(obj.get(CUSTOM), dict):
        _foreign_time(obj, line, pr)
        if _has_label(obj):
            _cost(obj, pr)
    pr.raise_any()


def _map_actions(names: list[str | None], arms: ArmSet, pr: Problems) -> tuple[list[str] | None, bool]:
    """The arm of each action id (``[j − 1]`` is action ``j``'s) and whether that came from positions alone.

    Named actions map by name. Unnamed ones map by id when the configured
    arms are numeric plain arms (action ``j`` is arm ``action_j``), and
    otherwise by position (action ``j`` is the ``j``-th configured arm),
    which the import reports as a warning: nothing in the log says that
    this order is the arms'. None (with the problem recorded): no mapping.
    """
    n = len(names)
    if any(x is not None for x in names):
        if any(x is None for x in names):
            missing = [j + 1 for j, x in enumerate(names) if x is None]
            pr.add(f"c._multi names some actions but not action(s) {missing}: name every action "
                   f"(an 'arm' field or '_tag') or none{ARMS_HINT}")
            return None, False
        unknown = [x for x in names if x not in arms.names]
        if unknown:
            pr.add(f"unknown arm {unknown[0]!r} in c._multi; known arms: {list(arms.names)}{ARMS_HINT}")
        elif sorted(names) != sorted(arms.names):  # type: ignore[type-var]
            pr.add(f"c._multi names arms {names}, expected each of {list(arms.names)} once{ARMS_HINT}")
        else:
            return list(names), False  # type: ignore[arg-type]
        return None, False
    by_id = numeric_aliases(arms)
    if by_id:
        ids = [str(j) for j in range(1, n + 1)]
        missing = [j for j in ids if j not in by_id]
        if missing or n != len(arms):
            pr.add(f"the line's action ids 1..{n} map to the arms action_1..action_{n}, but the configured arms "
                   f"are {list(arms.names)} (no arm for id(s) {[int(j) for j in missing]}; DSJSON action ids "
                   f"are 1-based){ARMS_HINT}")
            return None, False
        return [by_id[j] for j in ids], False
    if n != len(arms):
        pr.add(f"the line has {n} actions without arm names; mapping by index needs exactly "
               f"the {len(arms)} configured arms {list(arms.names)}{ARMS_HINT}")
        return None, False
    return list(arms.names), True


def parse_dsjson(obj: Any, line: int, arms: ArmSet, *, token_scale: float, text: str | None = None) -> ParsedEvent:
    """Validate and map one DSJSON object; raises InputError naming every bad field and value.

    ``text``: the line as read, from which a foreign line without ``EventId`` gets its key.
    A problem that leaves the actions without meaning (no ``a``, no ``c``,
    ids that are not 1..K) stops the checks that need them, and the fields
    that need neither (propensity, time, cost) are still checked: every
    problem of the line is reported at once.
    """
    if not isinstance(obj, dict):
        raise InputError(f"a DSJSON line must be a JSON object, got {type(obj).__name__}")
    why = _unsupported(obj)
    if why is not None:
        raise InputError(why)
    pr = Problems()
    if "EventId" in obj or CUSTOM in obj or text is None:
        key = pr.run(_field, obj, "EventId")
    else:
        key = _derived_key(text, line)
    actions = pr.run(_field, obj, "a")
    probs = pr.run(_field, obj, "p")
    context = pr.run(_field, obj, "c")
    if context is not BAD and not isinstance(context, dict):
        context = pr.add(f"field 'c' must be an object, got {type(context).__name__}")
    if actions is not BAD and (not isinstance(actions, list) or not actions or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in actions)):
        actions = pr.add(f"field 'a' must be a list of 1-based action ids, got {actions!r}")
    if actions is not BAD and probs is not BAD and (not isinstance(probs, list) or len(probs) != len(actions)):
        probs = pr.add(f"field 'p' must be a list of {len(actions)} probabilities (one per entry of 'a'), "
                       f"got {probs!r}")
    if actions is BAD or context is BAD:
        _stop(obj, line, pr)
    multi = context.get("_multi")
    n_actions = len(multi) if isinstance(multi, list) else len(actions)
    if sorted(actions) != list(range(1, n_actions + 1)):
        pr.add(f"field 'a' must list every action id 1..{n_actions} once, got {actions!r}")
        _stop(obj, line, pr)
    names = [_arm_name(x) for x in multi] if isinstance(multi, list) else [None] * n_actions
    arm_of, by_position = _map_actions(names, arms, pr)
    prob_of: Any = {} if arm_of is not None and probs is not BAD else BAD
    if probs is not BAD:
        for aid, p in zip(actions, probs):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:  # exact for any int
                prob_of = pr.add(f"probability {p!r} of action {aid} is not a number in [0, 1]")
            elif prob_of is not BAD:
                prob_of[arm_of[aid - 1]] = p  # type: ignore[index]
    chosen = obj["_label_Action"] if "_label_Action" in obj else None
    index = obj.get("_labelIndex")
    if chosen is None:
        if index is None:
            chosen = pr.add("missing field '_label_Action' (or '_labelIndex')")
        else:
            chosen = index + 1 if isinstance(index, int) and not isinstance(index, bool) else index
    if chosen is not BAD and (isinstance(chosen, bool) or not isinstance(chosen, int) or not 1 <= chosen <= n_actions):
        chosen = pr.add(f"_label_Action must be an action id in 1..{n_actions}, got {chosen!r}")
    if chosen is not BAD and index is not None and index != chosen - 1:
        pr.add(f"_labelIndex {index!r} disagrees with _label_Action {chosen} (expected {chosen - 1})")
    arm = BAD if chosen is BAD or arm_of is None else arm_of[chosen - 1]
    propensity = pr.run(_field, obj, "_label_probability")
    custom = obj.get(CUSTOM)
    state = obj.get("VWState")
    version = state.get("m") if isinstance(state, Mapping) and isinstance(state.get("m"), str) else "dsjson"
    has_label = _has_label(obj)
    if isinstance(custom, dict):
        ts = custom.get("ts")
        decision = decision_row(
            arms, key=key, ts=ts, domain=custom.get("domain"), features=context.get("x", {}), arm=arm,
            probabilities=prob_of, propensity=propensity, lam=custom.get("lam"),
            token_scale=custom.get("token_scale"), policy_version=version,
            experiment=custom.get("experiment", "champion"), problems=pr,
        )
        outcome = None
        if has_label:
            outcome = outcome_of(decision["request_key"], em=custom.get("em"), tokens=custom.get("tokens"),
                                 ts=custom.get("outcome_ts", ts), latency_ms=custom.get("latency_ms"),
                                 trace=custom.get("trace"), reference_key=custom.get("reference_key"),
                                 status=custom.get("status", "ok"), problems=pr)
        pr.raise_any()
        return ParsedEvent(line, decision, outcome, by_position=by_position)
    # a foreign line
    ts = _foreign_time(obj, line, pr)
    features: dict[str, Any] = {}
    _flatten("", {k: v for k, v in context.items() if k != "_multi"}, features)
    domain = context.get("domain") if isinstance(context.get("domain"), str) else None
    decision = decision_row(arms, key=key, ts=ts, domain=domain, features=features, arm=arm,
                            probabilities=prob_of, propensity=propensity, lam=0.0, token_scale=token_scale,
                            policy_version=version[:64] or "dsjson", problems=pr)
    if not has_label:
        pr.raise_any()
        return ParsedEvent(line, decision, None, by_position=by_position)
    cost = _cost(obj, pr)
    if cost is BAD:
        pr.raise_any()
    em = min(1.0, max(0.0, -cost))
    outcome = outcome_of(decision["request_key"], em=em, tokens=0, ts=ts, problems=pr)
    pr.raise_any()
    return ParsedEvent(line, decision, outcome, mapped_from_cost=True, clipped=em != -cost,
                       by_position=by_position)


def read_dsjson(path: str, arms: ArmSet, *, token_scale: float) -> Iterator[ParsedEvent | LineError]:
    """Each non-blank line of ``path`` as a ParsedEvent or a LineError (1-based line numbers)."""
    with open(path, encoding="utf-8") as fh:
        for n, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield LineError(n, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            except ValueError as exc:  # a number beyond the interpreter's integer-conversion limit
                yield LineError(n, f"not valid JSON here ({str(exc).split(';')[0]})")
                continue
            except RecursionError:
                yield LineError(n, "not valid JSON (nested too deeply)")
                continue
            try:
                yield parse_dsjson(obj, n, arms, token_scale=token_scale, text=text.strip())
            except StopbanditError as exc:
                yield LineError(n, str(exc))


__all__ = ["CUSTOM", "event_to_dsjson", "parse_dsjson", "read_dsjson", "write_dsjson"]
