"""``stopbandit decode``: run the early-exit decoder on a prompt file.

The command is a plain ``click.Command`` (register it with
``cli.add_command(decode)``); importing this module does not import torch.

Prompt file: one prompt per line, or JSON Lines with ``prompt`` and optional
``reference`` (exact match is reported when present). The arm is fixed
(``--arm NAME``, from the defaults or ``--config``'s ``[[arms]]``) or chosen
per prompt (``--select``, see :func:`make_selector_chooser`).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from stopbandit.bandit.arms import Arm, ArmSet, arms_from_config
from stopbandit.bandit.trace import em_of
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.result import DecodeResult
from stopbandit.errors import ConfigError, InputError, StopbanditError

Chooser = Callable[[str], Arm]
ResultHook = Callable[["PromptRecord", DecodeResult, "float | None"], None]


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """One line of the prompt file."""

    prompt: str
    reference: str | None = None
    line: int = 0


def read_prompts(path: Path) -> list[PromptRecord]:
    """Plain text (one prompt per non-empty line) or JSON Lines (``prompt``, optional ``reference``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise InputError(f"{path}: no prompts (the file is empty)")
    if not numbered[0][1].lstrip().startswith("{"):
        return [PromptRecord(line, None, n) for n, line in numbered]
    records = []
    for n, line in numbered:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str) or not data["prompt"]:
            raise InputError(f"{path}:{n}: each JSON line needs a non-empty string field 'prompt', got {line[:80]!r}")
        reference = data.get("reference")
        if reference is not None and not isinstance(reference, (str, int, float)):
            raise InputError(f"{path}:{n}: field 'reference' must be a string, got {reference!r}")
        records.append(PromptRecord(data["prompt"], None if reference is None else str(reference), n))
    return records


def load_config(path: Path | None) -> tuple[ArmSet, dict[str, Any]]:
    """Arms (``[[arms]]``, defaults when absent) and decoder overrides (``[decoder]``) from a TOML file.

    The ``[decoder]`` table is validated here but returned as given, so it only
    overrides the settings it names (on top of the model directory's).
    """
    if path is None:
        return arms_from_config(None), {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read TOML config ({exc})") from exc
    decoder = data.get("decoder", {})
    if not isinstance(decoder, dict):
        raise ConfigError(f"{path}: [decoder] must be a table, got {type(decoder).__name__}")
    DecoderConfig().replace(**decoder)  # validate now: errors name the setting and the value
    return arms_from_config(data.get("arms")), dict(decoder)


def make_selector_chooser(arms: ArmSet, config_path: Path | None) -> tuple[Chooser, ResultHook | None]:
    """``(choose, on_result)`` for ``--select``: a Selector on the replay store picks and learns.

    The store is ``$STOPBANDIT_DB`` (else ``sqlite:///stopbandit.db``); the Selector serves
    the arms the command resolved (defaults or ``--config``). Each decoded
    prompt is rewarded with its real token count (probe tokens included), its EM when the
    prompt file has a reference, and its probe trace, so every stricter arm is learned too.
    """
    from stopbandit.serving.selector import Selector

    selector = Selector.open(arms=arms, follow=False)
    issued: list[str] = []

    def choose(prompt: str) -> Arm:
        decision = selector.choose(prompt)
        issued.append(decision.decision_id)
        return decision.arm

    def on_result(record: PromptRecord, result: Any, em: float | None) -> None:
        decision_id = issued.pop(0)
        if em is not None:
            selector.reward(decision_id, em=em, tokens=result.total_tokens, trace=result.trace,
                            reference=record.reference)
        if not issued:
            selector.close()

    return choose, on_result


def decode_records(
    decoder: Any,
    records: Sequence[PromptRecord],
    choose: Chooser,
    on_result: ResultHook | None = None,
) -> list[dict[str, Any]]:
    """Decode every record under ``choose(prompt)``; one JSON-ready row per record, in order."""
    arms = [choose(r.prompt) for r in records]
    for r, arm in zip(records, arms):
        if not isinstance(arm, Arm):
            raise InputError(f"the chooser must return an Arm, got {type(arm).__name__} for line {r.line}")
    results = decoder.run([r.prompt for r in records], arms)
    rows = []
    for record, result in zip(records, results):
        em = em_of(result.answer, record.reference)
        if on_result is not None:
            on_result(record, result, em)
        rows.append({"prompt": record.prompt, "reference": record.reference, "em": em, **result.to_json()})
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over the rows: EM (rows with a reference) and tokens."""
    ems = [r["em"] for r in rows if r["em"] is not None]
    return {
        "n": len(rows),
        "em": sum(ems) / len(ems) if ems else None,
        "mean_total_tokens": sum(r["total_tokens"] for r in rows) / len(rows),
        "mean_probe_tokens": sum(r["probe_tokens"] for r in rows) / len(rows),
    }


def _print_table(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="stopbandit decode")
    for name, justify in [("#", "right"), ("arm", "left"), ("answer", "left"), ("reference", "left"), ("EM", "right"),
                          ("think", "right"), ("probe", "right"), ("answer tok", "right"), ("total", "right"), ("stop", "left")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for i, r in enumerate(rows, 1):
        em = "" if r["em"] is None else f"{r['em']:.0f}"
        table.add_row(str(i), r["arm"], r["answer"], r["reference"] or "", em, str(r["think_tokens"]),
                      str(r["probe_tokens"]), str(r["answer_tokens"]), str(r["total_tokens"]), r["stop_reason"])
    console = Console()
    console.print(table)
    em = "n/a" if summary["em"] is None else f"{summary['em']:.3f}"
    console.print(f"{summary['n']} prompts, EM {em}, mean tokens {summary['mean_total_tokens']:.1f} "
                  f"(probes {summary['mean_probe_tokens']:.1f})")


@click.command("decode")
@click.argument("prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Local model directory (from_pretrained; never downloads).")
@click.option("--arm", "arm_name", default=None, help="Run every prompt under this arm (defaults or --config arms).")
@click.option("--select", "select", is_flag=True, help="Choose the arm per prompt with the Selector.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TOML file with [[arms]] and an optional [decoder] table.")
@click.option("--think-end", default=None, help="Reasoning delimiter (default: model dir settings or '</think>').")
@click.option("--answer-prefix", default=None, help="Text appended after the delimiter before the answer.")
@click.option("--answer-end", multiple=True, help="Single-token string that ends an answer (repeatable; EOS always does).")
@click.option("--probe-every", type=click.IntRange(min=0), default=None, help="Probe every N thinking tokens (0 = never).")
@click.option("--probe-marker", multiple=True, help="Also probe after the reasoning ends with this text (repeatable).")
@click.option("--max-answer-tokens", type=click.IntRange(min=1), default=None)
@click.option("--max-think-tokens", type=click.IntRange(min=1), default=None, help="Global thinking cap.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def decode(
    prompts_file: Path,
    model_path: Path,
    arm_name: str | None,
    select: bool,
    config_path: Path | None,
    think_end: str | None,
    answer_prefix: str | None,
    answer_end: tuple[str, ...],
    probe_every: int | None,
    probe_marker: tuple[str, ...],
    max_answer_tokens: int | None,
    max_think_tokens: int | None,
    batch_size: int | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Decode PROMPTS_FILE with early stopping and report answers, tokens and EM."""
    if select == (arm_name is not None):
        raise click.UsageError("give exactly one of --arm NAME or --select")
    try:
        arms, file_settings = load_config(config_path)
        on_result: ResultHook | None = None
        if select:
            choose, on_result = make_selector_chooser(arms, config_path)
        else:
            arm = arms.by_name(arm_name or "")
            choose = lambda _prompt: arm  # noqa: E731
        records = read_prompts(prompts_file)

        from stopbandit.decoder.hf import HFDecoder

        flags = {
            "think_end": think_end,
            "answer_prefix": answer_prefix,
            "answer_end": answer_end or None,
            "probe_every": probe_every,
            "probe_markers": probe_marker or None,
            "max_answer_tokens": max_answer_tokens,
            "max_think_tokens": max_think_tokens,
            "batch_size": batch_size,
        }
        settings = {**file_settings, **{k: v for k, v in flags.items() if v is not None}}
        decoder = HFDecoder.from_pretrained(model_path, device=device, **settings)
        rows = decode_records(decoder, records, choose, on_result)
    except StopbanditError as exc:
        raise click.ClickException(str(exc)) from exc
    summary = summarize(rows)
    if as_json:
        click.echo(json.dumps({"results": rows, "summary": summary}, indent=2))
    else:
        _print_table(rows, summary)


__all__ = ["PromptRecord", "decode", "decode_records", "load_config", "make_selector_chooser", "read_prompts", "summarize"]
