"""``stopbandit lambda …`` and ``stopbandit ab …``: read, set and target λ; compare and promote a challenger.

Two plain click groups; register them with ``main.add_command(lambda_group)``
and ``main.add_command(ab)``. Console, tables and error handling come from
:mod:`stopbandit.clikit` (not ``cli.py``), so this module can be imported from
``cli.py`` at any point without an import cycle. User errors print one line
and exit 2.

* ``lambda get`` / ``set VALUE --reason R [--who W]`` / ``history [--limit N]``:
  the ``lambda_changes`` table. Every change is a new row (value, reason, who,
  time); serving Selectors follow the newest row within their
  ``follow_interval`` (0.5 s by default).
* ``lambda target --token-budget B | --em-floor F [--lambdas 0:1:0.05]``:
  offline, from the replay log. The snapshot's heads define one policy per λ
  (played with its exploration rule, as served; ``--greedy`` for greedy); each
  is evaluated off-policy (graph-DR when the log has probe traces, else DR)
  with the streaming sweep of :func:`stopbandit.replay.evaluation.sweep_log`,
  and :func:`stopbandit.replay.sweep.pick_lambda` picks the λ that meets the
  target (``--conservative``: judged by the interval bounds). ``--apply`` sets it,
  with the prediction in the stored reason.
* ``ab report`` / ``ab promote``: :mod:`stopbandit.control.experiment`.
"""

from __future__ import annotations

import getpass
import time
from typing import TYPE_CHECKING, Any

import click

from stopbandit.clikit import DB_HELP, console, table
from stopbandit.clikit import emit_json as _emit_json
from stopbandit.clikit import user_errors as _user_errors
from stopbandit.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.replay.options import ReplayOptions


def _store(url: str | None):
    from stopbandit.replay.store import ReplayStore

    return ReplayStore(url)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _default_who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


def _change_dict(c) -> dict[str, Any]:
    return {"id": c.id, "value": c.value, "reason": c.reason, "who": c.who, "ts": c.ts, "time": _iso(c.ts)}


# --------------------------------------------------------------------------- lambda


@click.group("lambda")
def lambda_group() -> None:
    """Read, set and target λ, the price of a token in the reward em − λ·tokens/token_scale."""


@lambda_group.command("get")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def lambda_get(url: str | None, as_json: bool) -> None:
    """The λ in force (the newest change) and why it was set."""
    store = _store(url)
    try:
        c = store.current_lambda()
    finally:
        store.dispose()
    if c is None:
        raise InputError("no λ has been set in this store yet: `stopbandit lambda set VALUE --reason …` sets one")
    if as_json:
        _emit_json(_change_dict(c))
        return
    click.echo(f"λ = {c.value:g}  (set {_iso(c.ts)} by {c.who}: {c.reason})")


@lambda_group.command("set")
@click.argument("value", type=str)
@click.option("--reason", required=True, help="Why λ changes (stored with the change).")
@click.option("--who", default=None, help="Who changes it (default: cli:$USER).")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def lambda_set(value: str, reason: str, who: str | None, url: str | None, as_json: bool) -> None:
    """Set λ to VALUE now; running Selectors follow within their follow interval (0.5 s)."""
    from stopbandit.bandit.reward import check_lambda

    try:
        lam = check_lambda(float(value))
    except ValueError:
        raise ConfigError(f"VALUE (λ) must be a finite number >= 0, got {value!r}") from None
    if not reason.strip():
        raise InputError("--reason must not be empty (it is stored with the change)")
    who = who or _default_who()
    if not who.strip() or len(who) > 128:
        raise InputError(f"--who must be a non-empty string of at most 128 characters, got {who!r}")
    store = _store(url)
    try:
        before = store.current_lambda()
        change = store.add_lambda(lam, reason.strip(), who)
    finally:
        store.dispose()
    if as_json:
        _emit_json({**_change_dict(change), "previous": before.value if before else None})
        return
    prev = f"{before.value:g}" if before else "unset"
    click.echo(f"λ {prev} -> {change.value:g}  (change #{change.id} by {who}: {change.reason})")


@lambda_group.command("history")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True, help="Newest N changes.")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def lambda_history(limit: int, url: str | None, as_json: bool) -> None:
    """Every λ change, newest first: value, time, who and why (controller moves and promotions included)."""
    store = _store(url)
    try:
        changes = store.lambda_history(limit)
    finally:
        store.dispose()
    if as_json:
        _emit_json([_change_dict(c) for c in changes])
        return
    rows = [[c.id, _iso(c.ts), f"{c.value:g}", c.who, c.reason] for c in changes]
    console.print(table(f"λ history (newest {len(rows)})", ["#", "time", "λ", "who", "reason"], rows))


def _pick_target(token_budget: float | None, em_floor: float | None) -> tuple[str, float]:
    if (token_budget is None) == (em_floor is None):
        raise ConfigError("give exactly one of --token-budget B or --em-floor F")
    if token_budget is not None:
        if not token_budget > 0:
            raise ConfigError(f"--token-budget must be > 0 tokens, got {token_budget!r}")
        return "token_budget", float(token_budget)
    if not 0 < em_floor < 1:  # type: ignore[operator]
        raise ConfigError(f"--em-floor must be in (0, 1), got {em_floor!r}")
    return "em_floor", float(em_floor)  # type: ignore[arg-type]


def target_lambda(store: Any, *, token_budget: float | None = None, em_floor: float | None = None,
                  lambdas: str = "0:1:0.05", snapshot: str = "latest", estimator: str = "auto",
                  explore: bool = True, conservative: bool = False,
                  options: ReplayOptions | None = None) -> dict[str, Any]:
    """The offline λ for a target: sweep the snapshot's policy over ``lambdas`` on the log and pick.

    ``options``: the events swept and the interval level (default: every ``ok``
    event, 95 % intervals; no progress bar). Returns a JSON-ready dict: the
    target, every sweep point (EM, tokens, reward with intervals), the picked
    λ (None when no point meets the target) and its prediction.
    """
    from stopbandit.replay.candidates import HeadsModel, resolve_arms, snapshot_meta
    from stopbandit.replay.evaluation import has_traces, sweep_log
    from stopbandit.replay.options import ReplayOptions
    from stopbandit.replay.ope import ESTIMATORS
    from stopbandit.replay.sweep import parse_lambdas, pick_lambda

    kind, value = _pick_target(token_budget, em_floor)
    lams = parse_lambdas(lambdas)
    est = estimator.strip().lower()
    if est == "auto":
        est = "graph-dr" if has_traces(store) else "dr"
    if est not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {estimator!r}; known estimators: {', '.join(ESTIMATORS)} (or auto)")
    meta = snapshot_meta(store, snapshot)
    if meta is None:
        raise InputError(f"no snapshot {snapshot!r} in the store: `lambda target` needs a policy's EM/token heads "
                         "(save one with Selector.snapshot() or `stopbandit replay train`)")
    arms, _ = resolve_arms(None, meta)
    model = HeadsModel.load(store, snapshot, arms)
    try:
        options = options if options is not None else ReplayOptions(progress=False)
        res = sweep_log(store, arms, model, lams, estimator=est, token_scale=model.token_scale, explore=explore,
                        options=options)
    finally:
        model.close()
    picked = pick_lambda(res.points, token_budget=value if kind == "token_budget" else None,
                         em_floor=value if kind == "em_floor" else None, conservative=conservative)
    point = next((p for p in res.points if p.lam == picked), None)
    return {
        "target": {"kind": kind, "value": value, "conservative": conservative},
        "snapshot": model.version, "estimator": res.estimator, "mode": "explore" if explore else "greedy",
        "events": res.counts.used, "alpha": options.alpha,
        "points": [{"lam": p.lam, "em": p.em.to_dict(), "tokens": p.tokens.to_dict(), "reward": p.reward.to_dict()}
                   for p in res.points],
        "picked": None if point is None else {
            "lam": point.lam, "em": point.em.to_dict(), "tokens": point.tokens.to_dict(),
            "reward": point.reward.to_dict()},
    }


def _target_reason(out: dict[str, Any], extra: str | None) -> str:
    t, p = out["target"], out["picked"]
    what = f"{t['kind']}={t['value']:g}{' (conservative)' if t['conservative'] else ''}"
    em, tok = p["em"], p["tokens"]
    text = (f"lambda target {what}: predicted tokens {tok['value']:.1f} [{tok['ci_low']:.1f}, {tok['ci_high']:.1f}], "
            f"EM {em['value']:.4f} [{em['ci_low']:.4f}, {em['ci_high']:.4f}] ({out['estimator']}, {out['mode']}, "
            f"{out['events']} events, snapshot {out['snapshot']})")
    return text + (f"; {extra.strip()}" if extra and extra.strip() else "")


@lambda_group.command("target")
@click.option("--token-budget", type=float, default=None, help="Mean tokens per request must stay <= B.")
@click.option("--em-floor", type=float, default=None, help="Mean exact match must stay >= F.")
@click.option("--lambdas", default="0:1:0.05", show_default=True, help="λ grid: start:stop:step or a,b,c.")
@click.option("--snapshot", default="latest", show_default=True, help="Snapshot whose heads define the policy.")
@click.option("--estimator", default="auto", show_default=True,
              help="OPE estimator (auto: graph-dr with probe traces, else dr).")
@click.option("--greedy", is_flag=True, help="Judge the greedy policy (default: with its exploration, as served).")
@click.option("--conservative", is_flag=True, help="Judge by the interval bound (tokens' upper, EM's lower).")
@click.option("--since", default=None, help="Only events decided from this time on (ISO 8601 or epoch seconds).")
@click.option("--until", default=None, help="Only events decided before this time.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Intervals are 1 − alpha.")
@click.option("--apply", "apply_", is_flag=True, help="Set the picked λ (logged with the prediction as reason).")
@click.option("--reason", default=None, help="Extra text for the stored reason (with --apply).")
@click.option("--who", default=None, help="Who applies it (default: cli:$USER).")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def lambda_target(token_budget, em_floor, lambdas, snapshot, estimator, greedy, conservative, since, until, alpha,
                  apply_, reason, who, url, as_json) -> None:
    """Pick, from the replay log, the λ that meets a token budget or an EM floor (offline)."""
    from stopbandit.replay.options import ReplayOptions
    from stopbandit.replay.times import parse_time

    _pick_target(token_budget, em_floor)
    s, u = parse_time(since, field="--since"), parse_time(until, field="--until")
    store = _store(url)
    try:
        out = target_lambda(store, token_budget=token_budget, em_floor=em_floor, lambdas=lambdas, snapshot=snapshot,
                            estimator=estimator, explore=not greedy, conservative=conservative,
                            options=ReplayOptions(since=s, until=u, alpha=alpha, progress=False))
        if out["picked"] is None:
            pts = out["points"]
            t = out["target"]
            if t["kind"] == "token_budget":
                best = min(pts, key=lambda p: p["tokens"]["value"])
                near = f"fewest predicted tokens {best['tokens']['value']:.1f} at λ={best['lam']:g}"
            else:
                best = max(pts, key=lambda p: p["em"]["value"])
                near = f"highest predicted EM {best['em']['value']:.4f} at λ={best['lam']:g}"
            raise InputError(f"no λ in {lambdas} meets {t['kind']}={t['value']:g} ({near}); widen --lambdas")
        applied = None
        if apply_:
            change = store.add_lambda(out["picked"]["lam"], _target_reason(out, reason), who or _default_who())
            applied = _change_dict(change)
    finally:
        store.dispose()
    out["applied"] = applied
    if as_json:
        _emit_json(out)
        return
    p, t = out["picked"], out["target"]
    level = f"{100 * (1 - alpha):g}%"
    rows = []
    for pt in out["points"]:
        mark = "◀" if pt["lam"] == p["lam"] else ""
        rows.append([f"{pt['lam']:g}", f"{pt['em']['value']:.4f}",
                     f"[{pt['em']['ci_low']:.4f}, {pt['em']['ci_high']:.4f}]", f"{pt['tokens']['value']:,.1f}",
                     f"[{pt['tokens']['ci_low']:,.1f}, {pt['tokens']['ci_high']:,.1f}]", mark])
    console.print(table(f"λ sweep ({out['estimator']}, {out['mode']}, {out['events']} events, snapshot {out['snapshot']})",
                        ["λ", "EM", f"{level} CI", "tokens", f"{level} CI", "pick"], rows))
    console.print(f"{t['kind']}={t['value']:g}: λ = {p['lam']:g}; predicted EM {p['em']['value']:.4f} "
              f"[{p['em']['ci_low']:.4f}, {p['em']['ci_high']:.4f}], tokens {p['tokens']['value']:,.1f} "
              f"[{p['tokens']['ci_low']:,.1f}, {p['tokens']['ci_high']:,.1f}] ({level})")
    if applied:
        console.print(f"applied: change #{applied['id']} sets λ = {applied['value']:g}")
    else:
        console.print("not applied (--apply sets it)")


# --------------------------------------------------------------------------- ab


@click.group("ab")
def ab() -> None:
    """Champion/challenger: compare the challenger's decisions with the champion's, and promote it."""


def _fmt_metric(metric: str, v: float | None) -> str:
    if v is None or v != v:
        return "n/a"
    return f"{v:,.1f}" if metric == "tokens" else f"{v:.4f}"


@ab.command("report")
@click.option("--challenger", default=None, help="Challenger snapshot version (default: the most recent one).")
@click.option("--lam", type=float, default=None, help="λ of the reward column (default: the λ in force).")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Intervals are 1 − alpha.")
@click.option("--by-domain", is_flag=True, help="Also break the groups down by domain.")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def ab_report_cmd(challenger, lam, alpha, by_domain, url, as_json) -> None:
    """EM, tokens and reward of champion, challenger (and holdout), with intervals and differences."""
    from stopbandit.control.experiment import METRICS, ab_report

    if lam is not None and not (lam >= 0 and lam == lam and lam != float("inf")):
        raise ConfigError(f"--lam must be a finite number >= 0, got {lam!r}")
    store = _store(url)
    try:
        rep = ab_report(store, challenger=challenger, lam=lam, alpha=alpha, by_domain=by_domain)
    finally:
        store.dispose()
    if as_json:
        _emit_json(rep.to_dict())
        return
    level = f"{100 * (1 - alpha):g}%"

    def cell(metric: str, value: float, low: float, high: float) -> str:
        return f"{_fmt_metric(metric, value)} [{_fmt_metric(metric, low)}, {_fmt_metric(metric, high)}]"

    rows = []
    for g, ms in rep.groups.items():
        rows.append([g, ms["em"].n] + [cell(m, ms[m].value, ms[m].low, ms[m].high) for m in METRICS])
    diff = ["challenger−champion", ""]
    for m in METRICS:
        d = rep.differences[m]
        diff.append(("+" if d.value >= 0 else "") + cell(m, d.value, d.low, d.high) + f" p={_fmt_metric('em', d.p_value)}")
    rows.append(diff)
    console.print(table(f"challenger {rep.challenger} ({_iso(rep.start)} – {_iso(rep.end)}), reward at λ={rep.lam:g}",
                        ["group", "n", f"EM [{level} CI]", f"tokens [{level} CI]", f"reward [{level} CI]"], rows))
    if rep.by_domain:
        drows = []
        for dom, gs in rep.by_domain.items():
            for g, ms in gs.items():
                if ms["em"].n:
                    drows.append([dom, g, ms["em"].n, _fmt_metric("em", ms["em"].value),
                                  _fmt_metric("tokens", ms["tokens"].value), _fmt_metric("reward", ms["reward"].value)])
        console.print(table("by domain", ["domain", "group", "n", "EM", "tokens", "reward"], drows))
    for w in rep.warnings:
        console.print(f"[bold yellow]WARNING[/] {w}")


@ab.command("promote")
@click.option("--version", "version", default=None, help="Snapshot to promote (default: the latest challenger).")
@click.option("--reason", required=True, help="Why (stored with the audit record).")
@click.option("--who", default=None, help="Who promotes (default: cli:$USER).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def ab_promote_cmd(version, reason, who, yes, url, as_json) -> None:
    """Make the challenger the serving snapshot; following Selectors hot-swap to it."""
    from stopbandit.control.experiment import latest_challenger, promote

    store = _store(url)
    try:
        target = version or latest_challenger(store)
        if target is None:
            raise InputError("no challenger to promote: no challenger decisions in the store (or pass --version)")
        if not yes:
            click.confirm(f"Promote snapshot {target} to serve all traffic?", abort=True)
        p = promote(store, version=target, reason=reason, who=who or _default_who())
    finally:
        store.dispose()
    if as_json:
        _emit_json(p.to_dict())
        return
    click.echo(f"promoted {p.challenger}: now serving as snapshot {p.new_version} (was {p.previous or 'none'}); "
               f"audit record #{p.audit_id} in the λ history")


__all__ = ["ab", "lambda_group", "target_lambda"]
