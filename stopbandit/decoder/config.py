"""Decoder settings: delimiters, probe schedule and token limits, as one frozen object.

The settings live at the text level (strings such as ``"</think>"``) so the
same object can be written next to a model directory, read back by
``HFDecoder.from_pretrained`` and overridden from the CLI; the tokenizer turns
them into ids once (:mod:`stopbandit.decoder.tokens`).

Default probe spacing: a probe costs at most ``max_answer_tokens`` generated
tokens, so probing every ``N = ceil(max_answer_tokens / 0.10)`` thinking
tokens keeps probe tokens <= 10% of the thinking tokens (and therefore of all
generated tokens) whatever the answers look like:
``probe_tokens <= floor(s / N) * max_answer_tokens <= 0.10 * s``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from stopbandit import validation
from stopbandit.errors import ConfigError

#: Target upper bound on probe tokens / generated tokens for the default spacing.
DEFAULT_PROBE_OVERHEAD = 0.10
#: File that ``HFDecoder.from_pretrained`` reads from a model directory, when present.
CONFIG_FILENAME = "stopbandit-decoder.json"


def default_probe_every(max_answer_tokens: int, overhead: float = DEFAULT_PROBE_OVERHEAD) -> int:
    """Smallest every-N spacing whose worst-case probe cost is <= ``overhead`` of the thinking tokens."""
    if not 0.0 < overhead <= 1.0:
        raise ConfigError(f"overhead must be in (0, 1], got {overhead!r}")
    return max(1, math.ceil(max_answer_tokens / overhead))


def _check_int(name: str, value: Any, minimum: int) -> None:
    validation.within(value, f"decoder {name}", low=minimum, integral=True)


def _check_strings(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"decoder {name} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """How the decoder thinks, probes and answers.

    ``think_start`` is appended to every prompt (e.g. ``"<think>"``);
    ``think_end`` closes the reasoning, and a probe or a stop appends it
    (followed by ``answer_prefix``) to the reasoning so far. An answer ends at
    the tokenizer's EOS, at any single-token string of ``answer_end``, or after
    ``max_answer_tokens``. ``probe_every``: probe every N thinking tokens,
    ``None`` = the default spacing (see module doc), ``0`` = never.
    ``probe_markers``: also probe right after the reasoning ends with one of
    these strings (e.g. ``"\\n\\n"``, ``"Wait"``). ``max_think_tokens`` is the
    global thinking cap that applies whatever the arm says.
    """

    think_end: str = "</think>"
    think_start: str = ""
    answer_prefix: str = ""
    answer_end: tuple[str, ...] = ()
    probe_every: int | None = None
    probe_markers: tuple[str, ...] = ()
    max_answer_tokens: int = 16
    max_think_tokens: int = 1024
    batch_size: int = 16
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        for name in ("think_end", "think_start", "answer_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"decoder {name} must be a string, got {getattr(self, name)!r}")
        if not self.think_end:
            raise ConfigError("decoder think_end must be a non-empty string (the reasoning delimiter), got ''")
        object.__setattr__(self, "answer_end", _check_strings("answer_end", self.answer_end))
        object.__setattr__(self, "probe_markers", _check_strings("probe_markers", self.probe_markers))
        if self.probe_every is not None:
            _check_int("probe_every", self.probe_every, 0)
        _check_int("max_answer_tokens", self.max_answer_tokens, 1)
        _check_int("max_think_tokens", self.max_think_tokens, 1)
        _check_int("batch_size", self.batch_size, 1)
        if not isinstance(self.add_special_tokens, bool):
            raise ConfigError(f"decoder add_special_tokens must be true/false, got {self.add_special_tokens!r}")

    @property
    def probe_spacing(self) -> int:
        """The every-N spacing in effect (0 = no every-N probes)."""
        if self.probe_every is None:
            return default_probe_every(self.max_answer_tokens)
        return self.probe_every

    def replace(self, **changes: Any) -> DecoderConfig:
        """A copy with ``changes`` applied (validated); ``None`` values are ignored, so CLI options pass through."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown decoder setting(s) {unknown}; known: {sorted(known)}")
        data = self.to_dict()
        data.update({k: v for k, v in changes.items() if v is not None})
        return DecoderConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["answer_end"] = list(self.answer_end)
        data["probe_markers"] = list(self.probe_markers)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecoderConfig:
        validation.table(data, (f.name for f in fields(cls)),
                         not_table="decoder config must be a table/object, got {type}",
                         unknown="unknown decoder setting(s) {unknown}; known: {known}")
        values = dict(data)
        for key in ("answer_end", "probe_markers"):
            if key in values and isinstance(values[key], list):
                values[key] = tuple(values[key])
        return cls(**values)

    def save(self, directory: str | Path) -> Path:
        """Write the settings next to a model so ``from_pretrained`` picks them up."""
        path = Path(directory) / CONFIG_FILENAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> DecoderConfig | None:
        """The settings saved in ``directory``, or None when it has none."""
        path = Path(directory) / CONFIG_FILENAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data)


__all__ = ["CONFIG_FILENAME", "DEFAULT_PROBE_OVERHEAD", "DecoderConfig", "default_probe_every"]
