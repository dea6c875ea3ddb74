"""Early-exit decoding: a torch decoder, a Hugging Face adapter and an OpenAI-compatible adapter.

Only this subpackage imports torch/transformers, and only when a name that
needs them is first used: ``import stopbandit.decoder`` (and the CLI command,
the OpenAI client and the settings) work without torch installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stopbandit.decoder.config import CONFIG_FILENAME, DEFAULT_PROBE_OVERHEAD, DecoderConfig, default_probe_every
from stopbandit.decoder.openai_client import OpenAIClient, RemoteResult
from stopbandit.decoder.openai_request import arm_from_request, arm_to_request
from stopbandit.decoder.result import DecodeResult
from stopbandit.decoder.schedule import ProbeSchedule
from stopbandit.decoder.tokens import TokenSpec

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.decoder.chartok import build_char_tokenizer
    from stopbandit.decoder.decoder import EarlyExitDecoder
    from stopbandit.decoder.device import pick_device
    from stopbandit.decoder.hf import HFDecoder
    from stopbandit.decoder.server import DecoderServer, serve
    from stopbandit.decoder.stopping import ArmStoppingCriteria
    from stopbandit.decoder.tiny import tiny_causal_lm

# name -> module for the names whose modules import torch/transformers
_LAZY = {
    "ArmStoppingCriteria": "stopbandit.decoder.stopping",
    "DecoderServer": "stopbandit.decoder.server",
    "EarlyExitDecoder": "stopbandit.decoder.decoder",
    "HFDecoder": "stopbandit.decoder.hf",
    "build_char_tokenizer": "stopbandit.decoder.chartok",
    "pick_device": "stopbandit.decoder.device",
    "serve": "stopbandit.decoder.server",
    "tiny_causal_lm": "stopbandit.decoder.tiny",
}

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_PROBE_OVERHEAD",
    "ArmStoppingCriteria",
    "DecodeResult",
    "DecoderConfig",
    "DecoderServer",
    "EarlyExitDecoder",
    "HFDecoder",
    "OpenAIClient",
    "ProbeSchedule",
    "RemoteResult",
    "TokenSpec",
    "arm_from_request",
    "arm_to_request",
    "build_char_tokenizer",
    "default_probe_every",
    "pick_device",
    "serve",
    "tiny_causal_lm",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stopbandit.decoder' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
