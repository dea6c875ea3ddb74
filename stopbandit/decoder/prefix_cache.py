"""Reuse of computed keys/values across requests: the longest previously seen prefix wins.

A chunked client (the gateway's probe driver) sends ``prompt``, then
``prompt + chunk``, then ``prompt + chunk + probe suffix``, ...: each request
repeats everything before it. :class:`PrefixCache` keeps up to ``max_entries``
token sequences with their KV cache; a request takes the entry sharing the
longest prefix with it, the entry is cropped to that prefix, and only the rest
is computed. At least one token is always left to compute, because the next
token's logits come from the last position.

An entry is cropped in place (not copied): a probe that branches off a
reasoning takes the reasoning's entry, and the next reasoning chunk crops the
probe away again and recomputes one token. Entries are evicted least recently
used first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stopbandit import validation


@dataclass(slots=True, eq=False)  # entries are compared by identity
class CacheEntry:
    """A KV cache and the token ids it holds, position by position."""

    ids: list[int]
    kv: Any
    last_used: int = field(default=0)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Up to ``max_entries`` KV caches keyed by the token ids they hold.

    ``new_kv`` makes an empty cache (``kv.new_cache(model)``), ``crop(kv, n)``
    keeps its first ``n`` positions (``kv.crop``). The caller
    serializes access (the server decodes one request at a time).
    """

    def __init__(self, new_kv: Callable[[], Any], crop: Callable[[Any, int], None], max_entries: int = 16) -> None:
        validation.positive_ints("prefix cache ", max_entries=max_entries)
        self._new_kv = new_kv
        self._crop = crop
        self.max_entries = max_entries
        self._entries: list[CacheEntry] = []
        self._clock = 0
        self.hits = 0  # requests that reused at least one token
        self.reused_tokens = 0  # prompt tokens served from the cache, summed

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, ids: Sequence[int]) -> tuple[CacheEntry, int]:
        """The entry to extend for ``ids`` and how many leading tokens it already holds.

        The entry is cropped to that many tokens (at most ``len(ids) - 1``);
        the caller feeds ``ids[reused:]`` and keeps ``entry.ids`` in step
        with what it feeds.
        """
        self._clock += 1
        best, best_len = None, 0
        for entry in self._entries:
            n = common_prefix(entry.ids, ids)
            if n > best_len:
                best, best_len = entry, n
        reused = min(best_len, len(ids) - 1)
        if best is None or reused == 0:
            if len(self._entries) >= self.max_entries:
                self.discard(min(self._entries, key=lambda e: e.last_used))
            best = CacheEntry([], self._new_kv())
            self._entries.append(best)
            reused = 0
        elif reused < len(best.ids):
            self._crop(best.kv, reused)
            del best.ids[reused:]
        best.last_used = self._clock
        if reused:
            self.hits += 1
            self.reused_tokens += reused
        return best, reused

    def discard(self, entry: CacheEntry) -> None:
        """Forget ``entry`` (its KV no longer matches its ids, e.g. after a failed forward pass)."""
        self._entries = [e for e in self._entries if e is not entry]

    def clear(self) -> None:
        self._entries.clear()


__all__ = ["CacheEntry", "PrefixCache", "common_prefix"]
