"""``stopbandit replay …``: offline evaluation, training, λ sweeps and log export/import.

The click group :data:`replay` is registered on the main CLI with
``main.add_command(replay)``. The work behind ``evaluate`` and ``sweep`` is in
the library functions :func:`stopbandit.replay.evaluation.evaluate` and
:func:`~stopbandit.replay.evaluation.sweep_log`; the commands only resolve
options, call them and print; the option resolution and printing they share
are in :mod:`stopbandit.replay.cli_support`.

Resolution of what a command evaluates with:

* arms: ``--config``'s ``[[arms]]``, else the store's own arm set (recorded
  when a log is imported), else the snapshot's (the named one, else the
  newest), else the default arms; the log must match them by name;
* λ: ``--lam``, else the λ in force in the store, else the snapshot's, else the config's;
* token_scale: ``--token-scale``, else the config's, else the snapshot's, else 1000.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import replace

import click

from stopbandit.clikit import DB_HELP, console, err_console, table
from stopbandit.clikit import emit_json as _emit_json
from stopbandit.clikit import user_errors as _user_errors
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay.candidates import CandidateContext, HeadsModel, default_model, make_candidate
from stopbandit.replay.cli_support import (
    FEW_ESS,
    HEAVY_WEIGHT,
    ci_cell,
    common_options,
    counts_table,
    exact_reports,
    cell,
    included_statuses,
    print_calibration,
    print_exact,
    print_warnings,
    setup,
    stop_rule,
    window,
)
from stopbandit.replay.evaluation import evaluate, has_traces, parse_estimators, sweep_log
from stopbandit.replay.interchange import export_events, import_events
from stopbandit.replay.logreader import require_events
from stopbandit.replay.accumulator import clip_interval
from stopbandit.replay.ope import ESTIMATORS, Estimate
from stopbandit.replay.options import DEFAULT_CHUNK, ReplayOptions
from stopbandit.replay.store import ReplayStore
from stopbandit.replay.times import iso_time, parse_time

METRIC_TITLES = {"em": "EM", "tokens": "tokens", "reward": "reward"}


# --------------------------------------------------------------------------- the group


@click.group("replay")
def replay() -> None:
    """Evaluate, train and sweep policies offline from the replay log; export/import it (DSJSON, CSV)."""


@replay.command("evaluate")
@common_options
@click.option("--policy", default="latest", show_default=True,
              help="latest | current | <snapshot version> | arm:NAME | uniform | logging.")
@click.option("--estimators", default="auto", show_default=True,
              help="Comma list of ips, snips, dr, dm, switch-dr, graph-ips, graph-dr (auto: ips,snips,dr,dm "
                   "plus the graph-feedback ones when the log has probe traces; all: every one).")
@click.option("--lam", type=float, default=None, help="λ of the reward (and of the candidate's scores).")
@click.option("--token-scale", type=float, default=None, help="token_scale of the reward.")
@click.option("--explore", is_flag=True, help="Play a snapshot with its exploration rule instead of greedily.")
@click.option("--model", "model_version", default=None,
              help="Snapshot whose heads DM/DR use as their model (default: the candidate's, else the newest).")
@click.option("--since", default=None, help="Only events decided at or after this time (ISO 8601 or epoch s).")
@click.option("--until", default=None, help="Only events decided before this time.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.05,
              show_default=True, help="1 − confidence level of the intervals.")
@_user_errors
def evaluate_cmd(url, config_path, include_defaulted, include_late, chunk, no_progress, jobs, as_json, policy,
                 estimators,
                 lam, token_scale, explore, model_version, since, until, alpha) -> None:
    """Off-policy estimates of a candidate policy's EM, tokens and reward, with intervals and diagnostics."""
    s = setup(url, config_path, policy, lam, token_scale)
    since_ts, until_ts = window(since, until)
    names = parse_estimators(estimators, traced=has_traces(s.store))
    cand = make_candidate(policy, CandidateContext(s.store, s.arms, s.lam, explore))
    model = default_model(s.store, s.arms, cand, model_version)
    options = ReplayOptions(include=included_statuses(include_defaulted, include_late), since=since_ts, until=until_ts,
                            alpha=alpha, chunk=chunk, progress=False if no_progress else None, jobs=jobs)
    rule = stop_rule(s.meta)
    ev = evaluate(s.store, s.arms, cand, names, lam=s.lam, token_scale=s.token_scale, model=model, options=options,
                  stop=None if rule is None else (rule, s.lam, s.token_scale))
    ev.notes.update({"arms_from": s.arms_source, "lam_from": s.lam_source})
    exact = exact_reports(s, options, [s.lam])
    if as_json:
        _emit_json({**ev.to_dict(), "exact_stop_rules": exact[0] if exact else None})
        return
    p = ev.policy
    desc = p["policy"] if "snapshot" not in p else (
        f"{p['policy']} = snapshot {p['snapshot']} ({p['kind']}, {p['mode']} at λ={p['lam']:g})")
    from rich.markup import escape

    console.print(f"candidate: {escape(desc)}\nreward = em − {ev.lam:g}·tokens/{ev.token_scale:g} (λ from {s.lam_source}); "
              f"arms {list(s.arms.names)} (from {s.arms_source}); DM/DR model: {ev.model or 'none'}; "
              f"{ev.counts.used:,} events in {ev.seconds:.1f} s ({ev.jobs} process{'es' if ev.jobs > 1 else ''})")
    level = f"{100 * (1 - alpha):g}% CI (normal)"
    for metric in ("em", "tokens", "reward"):
        rows = [["logging policy (on-policy)", cell(metric, ev.logging[metric].value),
                 ci_cell(metric, ev.logging[metric]),
                 f"{ev.logging[metric].ess:,.0f}", "1", "0.0%", ""]]
        for name in names:
            e = ev.estimates.get(name, {}).get(metric)
            if e is None:
                rows.append([name, "skipped", "", "", "", "", ""])
                continue
            rows.append([e.estimator, cell(metric, e.value), ci_cell(metric, e), f"{e.ess:,.1f}", f"{e.max_weight:.3g}",
                         f"{100 * e.unsupported_share:.1f}%",
                         f"{100 * e.fallback_share:.1f}%" if name.startswith("graph") else ""])
        title = METRIC_TITLES[metric] + (f" at λ={ev.lam:g}" if metric == "reward" else "")
        console.print(table(title, ["estimator", "value", level, "ESS", "max weight", "unsupported", "no trace"], rows))
    console.print(counts_table(ev.counts))
    print_exact(exact)
    print_calibration(ev.calibration, f"DM/DR model {ev.model}: P(EM) of the logged arm against the log")
    print_warnings(ev.warnings())


@replay.command("evaluate-parquet")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP + " (only for a snapshot policy or model).")
@click.option("--policy", default="uniform", show_default=True,
              help="arm:NAME | uniform | logging, or with --db: latest | <snapshot version>.")
@click.option("--estimators", default="ips,snips", show_default=True, help="Comma list (as for evaluate).")
@click.option("--lam", type=float, default=0.2, show_default=True, help="λ of the reward.")
@click.option("--token-scale", type=float, default=1000.0, show_default=True, help="token_scale of the reward.")
@click.option("--model", "model_version", default=None, help="With --db: snapshot whose heads DM/DR use.")
@click.option("--engine", type=click.Choice(["ray", "local"]), default="ray", show_default=True,
              help="ray: one task per partition on a Ray cluster (RAY_ADDRESS, else a local one); local: here.")
@click.option("--workers", type=click.IntRange(1, 1024), default=2, show_default=True,
              help="CPUs of the local Ray cluster started when none is running.")
@click.option("--include-defaulted", is_flag=True, help="Count defaulted rewards.")
@click.option("--include-late", is_flag=True, help="Count late rewards.")
@click.option("--chunk", type=int, default=DEFAULT_CHUNK, show_default=True, help="Events per batch.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def evaluate_parquet_cmd(path, url, policy, estimators, lam, token_scale, model_version, engine, workers,
                         include_defaulted, include_late, chunk, as_json) -> None:
    """Off-policy estimates over a Parquet export, its partitions mapped on Ray (the store's floats)."""
    from stopbandit.replay.evaluation import evaluate_parquet
    from stopbandit.replay.parquet import parquet_arms, partitions

    arms = parquet_arms(partitions(path)[0])
    store = ReplayStore(url) if url else None
    needs_store = not (policy in ("uniform", "logging") or policy.startswith("arm:"))
    if store is None and (needs_store or model_version):
        raise ConfigError(f"--policy {policy!r} / --model need --db (the store that holds the snapshot)")
    cand = make_candidate(policy, CandidateContext(store, arms, lam, False))  # type: ignore[arg-type]
    model = default_model(store, arms, cand, model_version) if store is not None else None
    names = parse_estimators(estimators, traced=True)
    options = ReplayOptions(include=included_statuses(include_defaulted, include_late), chunk=chunk, progress=False)
    ev = evaluate_parquet(path, arms, cand, names, lam=lam, token_scale=token_scale, model=model, options=options,
                          engine=engine, workers=workers)
    if as_json:
        _emit_json(ev.to_dict())
        return
    console.print(f"{ev.counts.used:,} events from {ev.notes['partitions']} partitions on {engine} in "
                  f"{ev.seconds:.1f} s")
    for metric in ("em", "tokens", "reward"):
        rows = [["logging policy (on-policy)", cell(metric, ev.logging[metric].value),
                 ci_cell(metric, ev.logging[metric])]]
        for name in names:
            e = ev.estimates.get(name, {}).get(metric)
            rows.append([name, "skipped", ""] if e is None
                        else [e.estimator, cell(metric, e.value), ci_cell(metric, e)])
        console.print(table(METRIC_TITLES[metric], ["estimator", "value", "95% CI"], rows))
    print_warnings(ev.warnings())


@replay.command("train")
@common_options
@click.option("--since", default=None, help="The held-out part starts at this decision time (ISO 8601 or epoch s).")
@click.option("--test-frac", type=float, default=None,
              help="Hold out the newest fraction of events by decision time (default 0.2).")
@click.option("--importance-weighting", is_flag=True,
              help="Weight training examples by 1/P(arm observed) (clipped): fit the heads for every arm evenly.")
@click.option("--lam", type=float, default=None, help="λ of the reported reward and of the new policy's scores.")
@click.option("--token-scale", type=float, default=None, help="token_scale of the new heads and of the reward.")
@click.option("--dry-run", is_flag=True,
              help="Train and evaluate but do not save the snapshot (serving Selectors pick up saved ones).")
@click.option("--candidate", is_flag=True,
              help="Save as a candidate snapshot: Selectors following the store do not load it; serve it with "
                   "ControlledSelector(challenger=VERSION) and ship it with `stopbandit ab promote`.")
@click.option("--stop-label", type=click.Choice(["auto", "graded", "agreement"]), default="auto", show_default=True,
              help="Labels of the learned stop rule: graded (trial answer vs the stored reference), agreement "
                   "(vs the run's own final answer), auto (graded where the event stores a reference).")
@_user_errors
def train_cmd(url, config_path, include_defaulted, include_late, chunk, no_progress, jobs, as_json, since, test_frac,
              importance_weighting, lam, token_scale, dry_run, candidate, stop_label) -> None:
    """Fit fresh heads on the older part of the log, evaluate them on the newer part, save a snapshot."""
    from stopbandit.bandit.exploration import exploration_from_config
    from stopbandit.features.extract import FeatureConfig
    from stopbandit.replay.training import time_split, train_and_evaluate

    s = setup(url, config_path, "latest", lam, token_scale)
    split = time_split(s.store, since=parse_time(since, field="--since"), test_frac=test_frac)
    if s.config is not None:
        exploration, features = s.config.exploration, s.config.features.to_dict()
    elif s.meta is not None:
        exploration, features = exploration_from_config(s.meta.get("exploration")), dict(s.meta.get("features", {}))
    else:
        exploration, features = exploration_from_config(None), FeatureConfig().to_dict()
    report = train_and_evaluate(
        s.store, s.arms, exploration=exploration, lam=s.lam, token_scale=s.token_scale, feature_config=features,
        split=split, importance_weighting=importance_weighting, save=not dry_run,
        options=ReplayOptions(include=included_statuses(include_defaulted, include_late), chunk=chunk,
                              progress=False if no_progress else None, jobs=jobs),
        role="candidate" if candidate else "serving", stop_label=stop_label,
    )
    if as_json:
        _emit_json(report.to_dict())
        return
    console.print(f"split at {iso_time(split.cutoff)} ({split.how}): train on {split.n_train} events, "
              f"hold out {split.n_test}; learned from {report.train.learned} events "
              f"({report.train.traced} traced, {report.train.revealed_updates} arm updates) in "
              f"{report.train.seconds:.1f} s")
    rows = []
    for metric in ("em", "tokens", "reward"):
        lg = report.logging[metric]
        row = [METRIC_TITLES[metric], cell(metric, lg.value), ci_cell(metric, lg)]
        for name in ("dr", "snips"):
            e = report.candidate[name][metric]
            row += [cell(metric, e.value), ci_cell(metric, e)]
        rows.append(row)
    dr = report.candidate["dr"]["em"]
    console.print(table(f"held-out part: new heads (greedy at λ={report.lam:g}) vs the logging policy",
                        ["metric", "logging (on-policy)", "95% CI", "new: DR", "95% CI", "new: SNIPS", "95% CI"], rows))
    console.print(f"ESS {dr.ess:,.1f} of {dr.n}, max weight {dr.max_weight:.3g}")
    console.print(counts_table(report.test_counts, "held-out events"))
    st = report.stop_training or {}
    if st.get("rows"):
        console.print(f"learned stop rule: {st['rows']:,} probe rows from {st['graded']:,} graded and "
                      f"{st['agreement']:,} agreement-labelled traces that reached the end "
                      f"({st['unused']:,} traced events stopped early: not used); stored with the snapshot")
    else:
        console.print("learned stop rule: no trace of the training part reached the end; none trained")
    if report.exact and report.exact["traced_events"]:
        print_exact([report.exact])
    cal = report.calibration or {}
    if cal.get("fit"):
        console.print(f"EM recalibration (Platt, fitted on {cal['fit']['n']:,} training events): "
                      f"P = sigmoid({cal['fit']['a']:.4g}·logit(P_heads) + {cal['fit']['b']:.4g})")
    print_calibration(cal.get("held_out"), "held-out part: new heads' P(EM) of the logged arm")
    warn = []
    for by_metric in report.candidate.values():
        label = next(iter(by_metric.values())).estimator
        for w in dict.fromkeys(w for e in by_metric.values() for w in e.warnings):
            warn.append(f"[{label}] {w}")
    print_warnings(report.test_counts.warnings() + warn)
    if report.saved and report.role == "candidate":
        console.print(f"saved candidate snapshot [bold]{report.version}[/] (not served until promoted: "
                  f"`stopbandit ab promote --version {report.version}`)")
    elif report.saved:
        console.print(f"saved snapshot [bold]{report.version}[/] (serving Selectors that follow the store will load it)")
    else:
        console.print(f"dry run: snapshot {report.version} not saved")


@replay.command("sweep")
@common_options
@click.option("--lambdas", default="0:1:0.05", show_default=True, help="start:stop:step (inclusive) or a,b,c.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the EM-vs-tokens Pareto plot (PNG) here.")
@click.option("--policy", default=None,
              help="Sweep this snapshot's heads (latest or a version); default: train heads once on the older part.")
@click.option("--estimator", default="dr", show_default=True, help="The estimator of every point.")
@click.option("--since", default=None,
              help="Evaluate on events decided from this time on (when training: train on the ones before).")
@click.option("--test-frac", type=float, default=None, help="When training: hold out this newest fraction (0.2).")
@click.option("--importance-weighting", is_flag=True, help="When training: importance-weighted heads.")
@click.option("--token-scale", type=float, default=None, help="token_scale of the reward.")
@click.option("--explore", is_flag=True, help="Play each λ's policy with the snapshot's exploration rule.")
@_user_errors
def sweep_cmd(url, config_path, include_defaulted, include_late, chunk, no_progress, jobs, as_json, lambdas, plot_path,
              policy, estimator, since, test_frac, importance_weighting, token_scale, explore) -> None:
    """EM and mean tokens of the heads' policy at every λ (with intervals), next to every fixed arm."""
    from stopbandit.bandit.exploration import exploration_from_config
    from stopbandit.replay.sweep import parse_lambdas, plot_pareto
    from stopbandit.replay.training import time_split, train_heads

    lams = parse_lambdas(lambdas)
    if plot_path is not None and importlib.util.find_spec("matplotlib") is None:  # before the sweep's work, not after
        raise ConfigError("--plot needs matplotlib: pip install 'stopbandit[plots]' (or drop --plot)")
    if estimator.strip().lower() not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {estimator!r}; known estimators: {', '.join(ESTIMATORS)}")
    estimator = estimator.strip().lower()
    s = setup(url, config_path, policy or "latest", None, token_scale)
    options = ReplayOptions(include=included_statuses(include_defaulted, include_late), chunk=chunk,
                            progress=False if no_progress else None, jobs=jobs)
    trained = None
    if policy is not None:
        if test_frac is not None or importance_weighting:
            raise ConfigError("--test-frac / --importance-weighting only apply when the sweep trains heads; "
                              "drop them or drop --policy")
        model = HeadsModel.load(s.store, policy, s.arms)
        eval_since = parse_time(since, field="--since")
    else:
        split = time_split(s.store, since=parse_time(since, field="--since"), test_frac=test_frac)
        exploration = s.config.exploration if s.config is not None else exploration_from_config(
            s.meta.get("exploration") if s.meta else None)
        heads, stats = train_heads(s.store, s.arms, exploration=exploration, token_scale=s.token_scale,
                                   options=options.with_(until=split.cutoff, jobs=None),
                                   importance_weighting=importance_weighting)
        if stats.learned == 0:
            heads.close()
            require_events(stats.counts, f"the training part (before {iso_time(split.cutoff)})")
        model = HeadsModel(heads, "trained-for-sweep")
        eval_since = split.cutoff
        trained = {"split": split.to_dict(), "train": stats.to_dict()}
    if policy is None:  # the sweep trains its heads: it trains the stop rule on the same part
        from stopbandit.replay.stop_rules import traced_events, train_stop_rule

        trained_rule = train_stop_rule(traced_events(s.store, options.with_(until=split.cutoff)))
        s.meta = dict(s.meta or {}, stop_rule=trained_rule.rule.to_json())
        trained["stop_rule"] = trained_rule.to_dict()  # type: ignore[index]
    rule = stop_rule(s.meta)
    try:
        res = sweep_log(s.store, s.arms, model, lams, estimator=estimator, token_scale=s.token_scale,
                        explore=explore, options=options.with_(since=eval_since),
                        stop=None if rule is None else (rule, lams[0], s.token_scale))
    finally:
        model.close()
    exact = exact_reports(s, options.with_(since=eval_since), lams)
    # a mean EM lies in [0, 1]: the report clips its EM intervals there (the estimates are left as they are)
    res = replace(res, points=[replace(p, em=replace(p.em, ci_low=lo, ci_high=hi)) for p in res.points
                               for lo, hi in [clip_interval("em", p.em.ci_low, p.em.ci_high)]],
                  fixed={k: (replace(em, ci_low=lo, ci_high=hi), tok) for k, (em, tok) in res.fixed.items()
                         for lo, hi in [clip_interval("em", em.ci_low, em.ci_high)]})
    written = None
    if plot_path:
        written = str(plot_pareto(res.points, res.fixed, plot_path,
                                  title=f"EM vs tokens ({res.estimator}, {res.counts.used} events, "
                                        f"95% intervals)"))
    if as_json:
        out = res.to_dict()
        out.update({"policy": policy or "trained", "token_scale": s.token_scale, "plot": written,
                    "trained": trained, "arms": list(s.arms.names), "exact_stop_rules": exact})
        _emit_json(out)
        return
    if trained:
        console.print(f"heads trained on {trained['train']['learned']} events before "
                  f"{trained['split']['cutoff_iso']}; evaluated on the {res.counts.used} events from then on")
    rows = []
    legend: dict[str, tuple[str, list[str]]] = {}  # flag -> (one full text, the rows it applies to)

    def flags(label: str, *estimates: Estimate) -> str:
        out: list[str] = []
        for e in estimates:
            for w in e.warnings:
                flag = w.split(":", 1)[0]
                if flag not in out:
                    out.append(flag)
                    legend.setdefault(flag, (w, []))[1].append(label)
        mw, ess = estimates[0].max_weight, estimates[0].ess
        if mw >= HEAVY_WEIGHT:
            out.append(f"max weight {mw:.3g}")
        if 0 < ess < FEW_ESS and "LOW ESS" not in out:
            out.append(f"ESS {ess:.1f}")
        return ", ".join(out)

    for p in res.points:
        rows.append([f"{p.lam:g}", cell("em", p.em.value), ci_cell("em", p.em), cell("tokens", p.tokens.value),
                     ci_cell("tokens", p.tokens), cell("reward", p.reward.value), f"{p.em.ess:,.0f}",
                     f"{p.em.max_weight:.3g}", flags(f"λ={p.lam:g}", p.em, p.tokens, p.reward)])
    for label, (em, tok) in res.fixed.items():
        rows.append([f"arm {label}", cell("em", em.value), ci_cell("em", em), cell("tokens", tok.value),
                     ci_cell("tokens", tok), "", f"{em.ess:,.0f}", f"{em.max_weight:.3g}", flags(f"arm {label}", em, tok)])
    lg_em, lg_tok = res.logging["em"], res.logging["tokens"]
    rows.append(["logging policy", cell("em", lg_em.value), ci_cell("em", lg_em), cell("tokens", lg_tok.value),
                 ci_cell("tokens", lg_tok), "", f"{lg_em.n:,}", "1", ""])
    console.print(table(f"λ sweep ({res.estimator}, greedy{' + exploration' if explore else ''})",
                        ["λ", "EM", "95% CI", "tokens", "95% CI", "reward", "ESS", "max weight", "warnings"], rows))
    console.print(counts_table(res.counts))
    print_exact(exact)
    # each kind of warning once, with the rows it applies to (the rows carry their own flags)
    print_warnings(res.counts.warnings() + [
        f"{text} (figures of {where[0]}; flagged rows: {', '.join(where)})" for text, where in legend.values()])
    if written:
        console.print(f"wrote {written}")


FORMATS = ("dsjson", "csv")
EXPORT_FORMATS = (*FORMATS, "parquet")


@replay.command("export")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Selector TOML config ([[arms]]).")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="dsjson", show_default=True,
              help="parquet: a directory of partitions, one per range of outcome ids (needs pyarrow).")
@click.option("--out", "out_path", required=True, help="Output file ('-' = stdout; a new directory for parquet).")
@click.option("--since", default=None, help="Only events decided at or after this time.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary (on stderr when --out -).")
@_user_errors
def export_cmd(url, config_path, fmt, out_path, since, as_json) -> None:
    """Write every event (decision + outcome, every status) as DSJSON lines, CSV or partitioned Parquet."""
    from stopbandit.replay.csvlog import CsvWriter
    from stopbandit.replay.dsjson import write_dsjson

    s = setup(url, config_path, "latest", None, None)
    since_ts = parse_time(since, field="--since")
    t0 = time.perf_counter()
    if fmt == "parquet":
        from stopbandit.replay.parquet import export_parquet

        if since_ts is not None:
            raise ConfigError("--since does not apply to --format parquet (partitions hold the whole log; "
                              "evaluate-parquet takes --since/--until)")
        if out_path == "-":
            raise ConfigError("--format parquet writes a directory: give --out DIR")
        summary = export_parquet(s.store, out_path, s.arms)
        summary.update({"format": fmt, "arms": list(s.arms.names), "seconds": round(time.perf_counter() - t0, 3)})
        if as_json:
            _emit_json(summary)
        else:
            click.echo(f"wrote {summary['events']} events to {out_path} ({len(summary['files'])} Parquet partitions)")
        return
    to_stdout = out_path == "-"
    tmp = f"{out_path}.partial"
    try:
        fh = sys.stdout if to_stdout else open(tmp, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"--out {out_path!r}: cannot write: {exc.strerror}") from None
    done = False
    try:
        if fmt == "csv":
            w = CsvWriter(fh)
            n = export_events(s.store, w.write, since=since_ts)
        else:
            n = export_events(s.store, lambda ev: write_dsjson(ev, s.arms, fh), since=since_ts)
        done = True
    finally:
        if not to_stdout:
            fh.close()
            if done:
                os.replace(tmp, out_path)  # the file appears whole or not at all
            else:
                os.unlink(tmp)
    summary = {"format": fmt, "out": out_path, "events": n, "arms": list(s.arms.names),
               "seconds": round(time.perf_counter() - t0, 3)}
    if as_json:
        if to_stdout:
            import json

            click.echo(json.dumps(summary), err=True)
        else:
            _emit_json(summary)
    elif not to_stdout:
        click.echo(f"wrote {n} events to {out_path} ({fmt})")


@replay.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Selector TOML config ([[arms]] to map actions to; token_scale for foreign DSJSON).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="File format (default: csv for *.csv, else dsjson).")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
              help="skip: leave malformed lines out and list them; fail: write nothing if any line is malformed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@_user_errors
def import_cmd(path, url, config_path, fmt, on_error, as_json) -> None:
    """Import DSJSON lines or CSV rows into the store (idempotent: a re-import adds nothing).

    Exit status: 0 when every line was imported (or was already stored); 3 for a
    partial import (--on-error skip left malformed lines out and wrote the rest);
    2 when nothing could be imported (every line was rejected, or --on-error fail
    found a malformed line). The report's "status" says the same: imported,
    partial, nothing or failed.
    """
    from stopbandit.replay import migrate
    from stopbandit.replay.csvlog import read_csv
    from stopbandit.replay.dsjson import read_dsjson

    fmt = fmt or ("csv" if path.lower().endswith(".csv") else "dsjson")
    migrate.upgrade(url)  # a fresh database gets the schema first
    s = setup(url, config_path, "latest", None, None)
    scale = s.token_scale
    now = time.time()
    if fmt == "csv":
        def parse():
            return read_csv(path, s.arms, token_scale=scale, now=now)
    else:
        def parse():
            return read_dsjson(path, s.arms, token_scale=scale)
    report = import_events(s.store, parse, path=path, fmt=fmt, on_error=on_error, arms=s.arms)
    failed = on_error == "fail" and report.error_count > 0
    nothing = not failed and report.error_count > 0 and report.valid == 0
    partial = not failed and report.error_count > 0 and report.valid > 0
    status = "failed" if failed else "nothing" if nothing else "partial" if partial else "imported"
    if as_json:
        _emit_json({**report.to_dict(), "status": status})
    else:
        r = report
        console.print(table(f"import {path} ({fmt}, --on-error {on_error})",
                            ["lines", "valid", "imported", "already stored", "decision only", "malformed"],
                            [[r.lines, r.valid, r.inserted, r.duplicates, r.decisions_only, r.error_count]]))
        if r.errors:
            shown = r.errors[:20]
            from rich.markup import escape

            console.print(table("malformed lines" + (" (skipped)" if not failed else ""), ["line", "problem"],
                                [[e.line, escape(e.message)] for e in shown]))
            if r.error_count > len(shown):
                console.print(f"… and {r.error_count - len(shown)} more (--json lists up to 1000)")
        print_warnings(r.warnings())
    if failed or nothing:
        first = report.errors[0]
        why = "--on-error fail" if failed else "every line was rejected"
        raise InputError(f"{path}: {report.error_count} malformed line(s) (first: line {first.line}: "
                         f"{first.message}); {why}: nothing was written")
    if partial:
        err_console.print(f"[yellow]partial import:[/] {report.valid} of {report.lines} line(s) imported, "
                          f"{report.error_count} malformed line(s) left out", highlight=False)
        sys.exit(3)


__all__ = ["replay"]
