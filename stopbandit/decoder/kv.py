"""KV-cache helpers: the one place that touches transformers' ``Cache`` objects.

Probes are side branches: they must read the main reasoning's cache without
ever changing it. :func:`fork_rows` gives a branch its own cache holding only
the probing rows; cache layers grow by concatenation (new tensors), and the
row selection copies, so nothing a branch does reaches the main cache.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch


def new_cache(model: Any) -> Any:
    """An empty dynamic cache laid out for ``model`` (sliding-window layers included), as ``generate`` makes."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def fork_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A new cache with only ``rows`` (int64 ``[k]``) of ``cache``; ``cache`` itself is untouched."""
    branch = copy.copy(cache)
    branch.layers = [copy.copy(layer) for layer in cache.layers]
    branch.batch_select_indices(rows)
    return branch


def crop(cache: Any, length: int) -> None:
    """Keep only the first ``length`` positions of ``cache`` (in place).

    Written as "drop the last k": transformers accepts a negative count in
    every version, a positive length only in older ones.
    """
    drop = cache.get_seq_length() - length
    if drop > 0:
        cache.crop(-drop)


def keep_rows(cache: Any, rows: torch.Tensor) -> None:
    """Drop every row of ``cache`` but ``rows`` (in place): stopped rows stop costing compute."""
    cache.batch_select_indices(rows)


def cache_keyword(model: Any) -> str:
    """The forward keyword that takes the KV cache: ``cache`` where transformers has the cache API,
    ``past_key_values`` (deprecated there) before it."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


__all__ = ["cache_keyword", "crop", "fork_rows", "keep_rows", "new_cache"]
