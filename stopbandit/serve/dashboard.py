"""The operator dashboard: one server-rendered page over the replay store, read-only.

Served by the gateway at ``/dashboard`` and, for deployments that embed the
Selector in their own processes, by ``stopbandit dashboard --db URL``. Every
number comes from the store through :class:`~stopbandit.replay.store.ReplayStore`
queries (``activity``, ``lambda_history``, ``latest_decision_time``); the
writer's health comes from the serving process when there is one (the
gateway's Selector). Charts are drawn on the server by matplotlib as inline
SVG, so the page needs no script, no frontend build and no network access.

Routes: ``GET /dashboard`` (HTML), ``GET /dashboard/data.json`` (the same
numbers as JSON), ``GET /dashboard/sweep.png`` (the newest ``replay sweep
--plot`` image, when a path to it is configured and the file exists). When
a key is set, each route wants it as ``Authorization: Bearer KEY`` or as the
password of HTTP basic authentication (what a browser can send).
"""

from __future__ import annotations

import base64
import hmac
import html
import io
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from stopbandit._version import __version__
from stopbandit.errors import StoreError
from stopbandit.serving.decision import flat

BUCKETS = 24
"""Time slices of the charts (equal widths between the first and the newest decision)."""


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def collect(store: Any, *, health: Callable[[], Any] | None = None, sweep_plot: Path | None = None,
            buckets: int = BUCKETS, history: int = 50) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data (raises StoreError when the store is unreachable)."""
    t0, width, rows = store.activity(buckets=buckets)
    changes = store.lambda_history(limit=history)
    newest = store.latest_decision_time()
    totals = {"decisions": 0, "rewarded": 0, "em": 0.0, "tokens": 0.0, "reward": 0.0}
    per_arm: dict[str, dict[str, float]] = {}
    per_group: dict[str, dict[str, float]] = {}
    mix: dict[str, dict[str, list[int]]] = {}          # domain -> arm -> decisions per bucket
    series = {k: [0.0] * buckets for k in ("n", "k", "em", "tokens", "reward")}
    arm_series: dict[str, dict[str, list[float]]] = {}
    for b, dom, arm, exp, n, k, em, tok, rew in rows:
        totals["decisions"] += n
        totals["rewarded"] += k
        totals["em"] += em
        totals["tokens"] += tok
        totals["reward"] += rew
        for table, key in ((per_arm, arm), (per_group, exp)):
            acc = table.setdefault(key, {"decisions": 0, "rewarded": 0, "em": 0.0, "tokens": 0.0, "reward": 0.0})
            acc["decisions"] += n
            acc["rewarded"] += k
            acc["em"] += em
            acc["tokens"] += tok
            acc["reward"] += rew
        mix.setdefault(dom or "unknown", {}).setdefault(arm, [0] * buckets)[b] += n
        for key, v in (("n", n), ("k", k), ("em", em), ("tokens", tok), ("reward", rew)):
            series[key][b] += v
        a = arm_series.setdefault(arm, {"k": [0.0] * buckets, "reward": [0.0] * buckets})
        a["k"][b] += k
        a["reward"][b] += rew

    def summary(acc: Mapping[str, float]) -> dict[str, Any]:
        k = int(acc["rewarded"])
        return {"decisions": int(acc["decisions"]), "rewarded": k, "mean_em": _mean(acc["em"], k),
                "mean_tokens": _mean(acc["tokens"], k), "mean_reward": _mean(acc["reward"], k)}

    arms = {name: summary(acc) for name, acc in sorted(per_arm.items())}
    scored = [(s["mean_reward"], name) for name, s in arms.items() if s["mean_reward"] is not None]
    best = max(scored)[1] if scored else None
    times = [t0 + (i + 0.5) * width for i in range(buckets)] if rows else []
    k = series["k"]
    over_time = {
        "t": times,
        "decisions": [int(x) for x in series["n"]],
        "mean_em": [_mean(series["em"][i], int(k[i])) for i in range(len(times))],
        "mean_tokens": [_mean(series["tokens"][i], int(k[i])) for i in range(len(times))],
        "mean_reward": [_mean(series["reward"][i], int(k[i])) for i in range(len(times))],
        "best_static_reward": ([_mean(arm_series[best]["reward"][i], int(arm_series[best]["k"][i]))
                                for i in range(len(times))] if best else []),
    }
    writer: dict[str, Any] | None = None
    if health is not None:
        h = health()
        writer = flat(h) if is_dataclass(h) else dict(h)
    return {
        "version": __version__,
        "generated_at": time.time(),
        "totals": summary(totals),
        "lambda": {"current": changes[0].value if changes else None,
                   "history": [{"ts": c.ts, "value": c.value, "reason": c.reason, "who": c.who} for c in changes]},
        "arms": arms,
        "best_static_arm": best,
        "experiments": {name: summary(acc) for name, acc in sorted(per_group.items())},
        "mix": {dom: {arm: counts for arm, counts in sorted(arms_.items())} for dom, arms_ in sorted(mix.items())},
        "over_time": over_time,
        "writer": writer,
        "log_age_s": (time.time() - newest) if newest is not None else None,
        "sweep_plot": bool(sweep_plot is not None and Path(sweep_plot).is_file()),
    }


# -- rendering -------------------------------------------------------------------------------

def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return html.escape(str(v))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"


def _svg(draw: Callable[[Any], None], *, height: float = 2.6) -> str:
    """A matplotlib figure drawn by ``draw(ax)`` as inline SVG (no pyplot: thread-safe)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return '<p class="note">Charts need matplotlib: <code>pip install "stopbandit[dashboard]"</code>.</p>'
    fig = Figure(figsize=(7.2, height), dpi=96)
    ax = fig.add_subplot()
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _axis(t: list[float]) -> tuple[list[float], str]:
    """Times as offsets from the first, in seconds, minutes or hours by the span, and the axis label."""
    span = (t[-1] - t[0]) if t else 0.0
    unit, name = (1.0, "seconds") if span < 120 else (60.0, "minutes") if span < 7200 else (3600.0, "hours")
    return [(x - t[0]) / unit for x in t], f"{name} since the first slice shown"


def _line_chart(t: list[float], lines: Mapping[str, list[float | None]], ylabel: str) -> str:
    x, xlabel = _axis(t)

    def draw(ax: Any) -> None:
        for label, ys in lines.items():
            if ys:
                ax.plot(x, [math.nan if y is None else y for y in ys], marker="o", markersize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    return _svg(draw)


def _mix_chart(t: list[float], arms: Mapping[str, list[int]], domain: str) -> str:
    x, xlabel = _axis(t)

    def draw(ax: Any) -> None:
        totals = [sum(col) for col in zip(*arms.values())]
        shares = [[c / n if n else 0.0 for c, n in zip(counts, totals)] for counts in arms.values()]
        ax.stackplot(x, *shares, labels=list(arms))
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of decisions")
        ax.set_xlabel(xlabel)
        ax.set_title(f"domain: {domain}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    return _svg(draw, height=2.2)


def _lambda_chart(history: list[Mapping[str, Any]]) -> str:
    pts = sorted((h["ts"], h["value"]) for h in history)

    times = [ts for ts, _ in pts]
    x, xlabel = _axis(times + [max(times[-1], time.time())])

    def draw(ax: Any) -> None:
        ax.step(x, [v for _, v in pts] + [pts[-1][1]], where="post", marker="o", markersize=3)
        ax.set_xlabel(xlabel.replace("slice", "change"))
        ax.set_ylabel("λ")
    return _svg(draw, height=2.0)


def _table(head: list[str], rows: list[list[str]], ident: str | None = None) -> str:
    attr = f' id="{ident}"' if ident else ""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{attr}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;max-width:80rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #ddd}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem}
.card b{display:block;font-size:1.3rem}table{border-collapse:collapse;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:right}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:.9rem}.bad{color:#b00020}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(30rem,1fr))}
svg{max-width:100%;height:auto}
"""


def render(data: Mapping[str, Any], *, error: str | None = None) -> str:
    """The page's HTML for ``collect()``'s data (or for the store error that prevented it)."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>stopbandit dashboard</title>"
             f"<link rel='icon' href='data:,'><style>{_CSS}</style></head><body>",
             f"<h1>stopbandit dashboard <small class='note'>v{html.escape(__version__)}</small></h1>"]
    if error is not None:
        parts.append(f"<p class='bad' id='store-error'>The replay store is unreachable: {html.escape(error)}</p>")
        parts.append("</body></html>")
        return "".join(parts)
    tot, lam = data["totals"], data["lambda"]
    cards = [("decisions", tot["decisions"], 0), ("rewarded", tot["rewarded"], 0), ("mean-em", tot["mean_em"], 3),
             ("mean-tokens", tot["mean_tokens"], 1), ("mean-reward", tot["mean_reward"], 3),
             ("lambda", lam["current"], 3)]
    labels = {"mean-em": "mean EM", "mean-tokens": "mean tokens", "mean-reward": "mean reward", "lambda": "λ now"}
    parts.append("<div class='cards'>" + "".join(
        f"<div class='card'>{labels.get(k, k)}<b id='{k}'>{_fmt(v, d)}</b></div>" for k, v, d in cards) + "</div>")
    parts.append(f"<p class='note'>Generated {_when(data['generated_at'])}; newest decision "
                 f"{_fmt(data['log_age_s'], 1)} s old. EM, tokens and reward count rewarded decisions with "
                 "status ok (defaulted and late outcomes excluded); reward = EM − λ·tokens/token_scale with "
                 "each decision's own λ.</p>")

    ot = data["over_time"]
    parts.append("<h2>Reward, EM and tokens over time</h2>")
    if ot["t"]:
        best = data["best_static_arm"]
        lines = {"all decisions": ot["mean_reward"]}
        if best:
            lines[f"best static arm ({best})"] = ot["best_static_reward"]
        parts.append("<div class='grid'>" + _line_chart(ot["t"], lines, "mean reward")
                     + _line_chart(ot["t"], {"mean EM": ot["mean_em"]}, "mean EM")
                     + _line_chart(ot["t"], {"mean tokens": ot["mean_tokens"]}, "mean tokens") + "</div>")
        parts.append(f"<p class='note'>Best static arm: <b id='best-arm'>{_fmt(best)}</b> — the arm with the "
                     "highest mean logged reward among the decisions that chose it. A logged mean, not an "
                     "off-policy estimate: use <code>stopbandit replay evaluate --policy arm:NAME</code> "
                     "for that.</p>")
    else:
        parts.append("<p class='note' id='empty'>No decisions in the store yet.</p>")
    parts.append("<h2>Arms</h2>")
    parts.append(_table(["arm", "decisions", "rewarded", "mean EM", "mean tokens", "mean reward"],
                        [[html.escape(a), _fmt(s["decisions"]), _fmt(s["rewarded"]), _fmt(s["mean_em"]),
                          _fmt(s["mean_tokens"], 1), _fmt(s["mean_reward"])] for a, s in data["arms"].items()],
                        "arms"))

    parts.append("<h2>Arm mix per domain</h2>")
    if data["mix"]:
        parts.append("<div class='grid'>" + "".join(_mix_chart(ot["t"], arms, dom)
                                                    for dom, arms in data["mix"].items()) + "</div>")

    parts.append("<h2>λ and its history</h2>")
    hist = lam["history"]
    if hist:
        parts.append(_lambda_chart(hist))
    parts.append(_table(["when", "λ", "reason", "who"],
                        [[_when(h["ts"]), _fmt(h["value"]), html.escape(h["reason"]), html.escape(h["who"])]
                         for h in hist], "lambda-history"))

    parts.append("<h2>Guardrail and A/B groups</h2>")
    parts.append("<p class='note'>Decisions by experiment group: <code>champion</code> (the policy), "
                 "<code>challenger</code> (a candidate snapshot under A/B), <code>holdout</code> (the guardrail's "
                 "full-reasoning control group). <code>stopbandit ab report</code> has the test statistics.</p>")
    parts.append(_table(["group", "decisions", "rewarded", "mean EM", "mean tokens", "mean reward"],
                        [[html.escape(g), _fmt(s["decisions"]), _fmt(s["rewarded"]), _fmt(s["mean_em"]),
                          _fmt(s["mean_tokens"], 1), _fmt(s["mean_reward"])]
                         for g, s in data["experiments"].items()], "experiments"))
    writer = data["writer"]
    guard = writer.get("guardrail") if writer else None
    if guard:
        parts.append(_table(["domain", "state"], [[html.escape(str(d)), html.escape(str(
            s.get("state") if isinstance(s, Mapping) else s))] for d, s in guard.items()], "guardrail"))

    parts.append("<h2>Writer health</h2>")
    if writer is None:
        parts.append("<p class='note' id='writer'>No serving process in this server: each serving process "
                     "reports its writer in <code>Selector.health()</code> (and the gateway's "
                     "<code>/healthz</code>). The log's newest decision is shown above.</p>")
    else:
        keys = ["store_ok", "last_error", "down_since", "outages", "spill_backlog", "max_spill_backlog", "spilled",
                "replayed", "dropped", "rejected", "conflicts", "queue_depth", "write_lag_s", "pending_rewards",
                "defaulted", "late", "policy_version", "snapshot_error"]
        parts.append(_table(["field", "value"], [[k, _fmt(writer.get(k))] for k in keys if k in writer],
                            "writer"))

    parts.append("<h2>Latest λ sweep</h2>")
    if data["sweep_plot"]:
        parts.append("<img id='sweep' alt='replay sweep Pareto plot' src='dashboard/sweep.png' "
                     "style='max-width:100%'>")
    else:
        parts.append("<p class='note'>No sweep plot: run <code>stopbandit replay sweep --plot PATH</code> and "
                     "give the path with <code>--sweep-plot</code> (or <code>STOPBANDIT_SWEEP_PLOT</code>).</p>")
    parts.append("</body></html>")
    return "".join(parts)


# -- HTTP --------------------------------------------------------------------------------------

def _authorized(headers: Mapping[str, str], key: str | None) -> bool:
    if key is None:
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "basic":
        try:
            token = base64.b64decode(token, validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.encode(), key.encode())


def _denied() -> Response:
    return JSONResponse({"error": {"message": "missing or wrong API key: send the gateway's key as "
                                              "'Authorization: Bearer <key>' or as the basic-auth password",
                                   "type": "authentication_error", "param": None, "code": 401}},
                        status_code=401, headers={"WWW-Authenticate": 'Basic realm="stopbandit"'})


def router(store: Callable[[], Any], *, key: str | None = None, health: Callable[[], Any] | None = None,
           sweep_plot: str | Path | None = None) -> APIRouter:
    """The dashboard's routes over ``store()`` (a ReplayStore); ``health()`` gives the writer's state."""
    r = APIRouter()
    plot = Path(sweep_plot) if sweep_plot else None

    def data() -> dict[str, Any]:
        return collect(store(), health=health, sweep_plot=plot)

    @r.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> Response:
        if not _authorized(request.headers, key):
            return _denied()
        try:
            return HTMLResponse(render(data()))
        except StoreError as exc:
            return HTMLResponse(render({}, error=str(exc)), status_code=503)

    @r.get("/dashboard/data.json", responses={200: {"description": "The dashboard's numbers"}})
    def data_json(request: Request) -> Response:
        """The operator dashboard's numbers: totals, per arm, per group, over time, λ history, writer health."""
        if not _authorized(request.headers, key):
            return _denied()
        try:
            return JSONResponse(data())
        except StoreError as exc:
            return JSONResponse({"error": {"message": f"replay store unreachable: {exc}", "type": "store_error",
                                           "param": None, "code": 503}}, status_code=503)

    @r.get("/dashboard/sweep.png", include_in_schema=False)
    def sweep(request: Request) -> Response:
        if not _authorized(request.headers, key):
            return _denied()
        if plot is None or not plot.is_file():
            return JSONResponse({"error": {"message": "no sweep plot", "type": "not_found", "param": None,
                                           "code": 404}}, status_code=404)
        return FileResponse(plot, media_type="image/png")

    return r


def create_dashboard_app(store: Any, *, key: str | None = None, sweep_plot: str | Path | None = None) -> FastAPI:
    """A server with the dashboard only, over ``store`` (``stopbandit dashboard``)."""
    app = FastAPI(title="stopbandit dashboard", version=__version__, docs_url=None, redoc_url=None)
    app.include_router(router(lambda: store, key=key, sweep_plot=sweep_plot))
    return app


__all__ = ["BUCKETS", "collect", "create_dashboard_app", "render", "router"]
