"""The one seam to Vowpal Wabbit: argument strings, text examples, escaping, save/load.

Nothing else in stopbandit imports ``vowpalwabbit``. VW workspaces are not
thread-safe (VW issues #1350, #1209), so every :class:`VWHead` owns a lock and
holds it across each predict/learn/save. Models round-trip through
``save``/``-i`` with exactly the argument string they were created with; the
tests check that a reloaded model predicts the same and keeps learning (some
reductions stopped learning after reload in some versions: #2943, #3179).

Escaping: VW's text format gives meaning to ``|`` (namespace), ``:``
(value), whitespace (feature separator) and newlines (example separator).
Categorical values are percent-encoded on exactly those characters (and
``%`` itself), which is injective, so a hostile string can neither add a
feature nor change another one's value.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from itertools import repeat

import numpy as np

import pylibvw  # VW's compiled extension, shipped in the vowpalwabbit wheel
import vowpalwabbit

from stopbandit.bandit.arms import Arm
from stopbandit.errors import InputError, SnapshotError

_UNSAFE = {"%": "%25", "|": "%7C", ":": "%3A", " ": "%20", "\t": "%09", "\n": "%0A", "\r": "%0D",
           "\x0b": "%0B", "\x0c": "%0C", "'": "%27"}
_TRANS = str.maketrans(_UNSAFE)


def escape(value: str) -> str:
    """Percent-encode the characters VW's text format treats as syntax (injective)."""
    out = value.translate(_TRANS)
    # any other whitespace (unicode spaces) would also split a feature
    if any(c.isspace() for c in out):
        out = "".join(f"%{ord(c):02X}" if c.isspace() else c for c in out)
    return out or "%00"


def feature_tokens(features: Mapping[str, float | str]) -> str:
    """``name:value`` for numbers, ``name=escaped`` for strings (names are validated upstream)."""
    parts = []
    for name, value in features.items():
        if isinstance(value, str):
            parts.append(f"{name}={escape(value)}")
        else:
            v = float(value)
            if not math.isfinite(v):
                raise InputError(f"feature {name!r} must be finite, got {value!r}")
            parts.append(f"{name}:{v:.6g}")
    return " ".join(parts)


def shared_line(features: Mapping[str, float | str]) -> str:
    """The shared (context) line: features in namespace ``c``, the domain alone in ``d``.

    The domain gets its own namespace so the policy can cross it with
    everything else (``--cubic dca``): each domain then has its own
    context × arm model on top of the shared one, instead of borrowing a
    look-alike domain's estimates for arms it rarely explores.
    """
    domain = features.get("domain")
    rest = {k: v for k, v in features.items() if k != "domain"}
    line = "shared |c " + feature_tokens(rest)
    if domain is not None:
        line += f" |d {escape(str(domain))}"
    return line


def shared_lines(features: Sequence[Mapping[str, float | str]]) -> list[str]:
    """``[shared_line(f) for f in features]``, with the escaping of repeated strings memoised.

    The same strings by construction: the token rules of :func:`feature_tokens`
    and :func:`shared_line` (floats are checked and formatted in place,
    other numbers go through ``float`` first), with :func:`escape` called
    once per distinct string value of the batch.
    """
    esc: dict[str, str] = {}
    isfinite = math.isfinite
    out = []
    for feats in features:
        parts = ["shared |c"]
        domain = None
        for name, value in feats.items():
            if type(value) is float and name != "domain":
                if value - value != 0.0:  # inf or nan
                    raise InputError(f"feature {name!r} must be finite, got {value!r}")
                parts.append(f"{name}:{value:.6g}")
            elif name == "domain":
                domain = value
            elif isinstance(value, str):
                e = esc.get(value)
                if e is None:
                    e = esc[value] = escape(value)
                parts.append(f"{name}={e}")
            else:
                v = float(value)
                if not isfinite(v):
                    raise InputError(f"feature {name!r} must be finite, got {value!r}")
                parts.append(f"{name}:{v:.6g}")
        if len(parts) == 1:
            parts.append("")  # shared_line keeps the separator after an empty namespace
        line = " ".join(parts)
        if domain is not None:
            d = str(domain)
            e = esc.get(d)
            if e is None:
                e = esc[d] = escape(d)
            line += f" |d {e}"
        out.append(line)
    return out


def arm_line(arm: Arm) -> str:
    """Action features: the arm's identity and its parameters (so the policy generalises across arms)."""
    cap = arm.max_think_tokens
    capf = f"cap:{math.log1p(cap) / 8:.6g}" if cap else "nocap"
    return f"|a arm={escape(arm.name)} thr:{min(arm.threshold, 1.05):.6g} {capf}"


def labeled(lines: Sequence[str], action: int, cost: float, prob: float) -> list[str]:
    """The multiline example with a cb label on ``action`` (0-based; line 0 is the shared line)."""
    out = list(lines)
    out[action + 1] = f"0:{cost:.6g}:{max(prob, 1e-6):.6g} {out[action + 1]}"
    return out


class VWHead:
    """One VW workspace behind a lock."""

    def __init__(self, args: str, model: bytes | None = None) -> None:
        self.args = args
        self._lock = threading.Lock()
        if model is None:
            self._ws = vowpalwabbit.Workspace(args + " --quiet")
        else:
            self._ws = _load(args, model)

    def predict(self, lines: list[str]) -> list[float]:
        """Per-action outputs (scores or probabilities) in action order.

        Goes straight to VW's extension: parse → predict_multi → finish. This is
        what ``Workspace.predict`` does, minus its per-line Python ``Example``
        wrappers, which cost ~4× the prediction itself on the serving path;
        ``tests/bandit/test_policy.py`` checks both paths agree.
        """
        text = "\n".join(lines)
        with self._lock:
            ws = self._ws
            raw = ws._parse(text)
            try:
                pylibvw.vw.predict_multi(ws, raw)
                return raw[0].get_action_scores()
            finally:
                pylibvw.vw._finish_example_multi_ex(ws, raw)

    def learn(self, lines: list[str]) -> None:
        text = "\n".join(lines)
        with self._lock:
            ws = self._ws
            raw = ws._parse(text)
            try:
                pylibvw.vw.learn_multi(ws, raw)
            finally:
                pylibvw.vw._finish_example_multi_ex(ws, raw)

    def parse_key(self) -> str:
        """The arguments that decide how text becomes features (all but the loss function).

        Heads with equal keys hash a line into the same example, so one parsed
        example can be predicted by each of them (:func:`predict_batch`).
        """
        words = self.args.split()
        keep: list[str] = []
        skip = False
        for w in words:
            if skip:
                skip = False
            elif w == "--loss_function":
                skip = True
            elif not w.startswith("--loss_function="):
                keep.append(w)
        return " ".join(keep)

    def predict_slow(self, lines: list[str]) -> list[float]:
        """The same prediction through VW's public ``Workspace.predict`` (reference path)."""
        with self._lock:
            return self._ws.predict(lines)

    def to_bytes(self) -> bytes:
        fd, path = tempfile.mkstemp(suffix=".vw")
        os.close(fd)
        try:
            with self._lock:
                self._ws.save(path)
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            os.unlink(path)

    def close(self) -> None:
        with self._lock:
            if self._ws is not None:
                self._ws.finish()
                self._ws = None


PREDICT_BATCH_LOCKED = 2048
"""Shared lines scored per lock hold in :func:`predict_batch` (a serving thread waits at most that long)."""


def predict_batch(heads: Sequence[VWHead], shared: Sequence[str], actions: Sequence[str]) -> list[np.ndarray]:
    """Per head, (n, K) per-action outputs of the n examples ``[shared[i], *actions]``.

    Equal, float for float, to ``head.predict([shared[i], *actions])`` for every
    ``i``. The work per example is one parse of the shared line (for all heads
    with the same :meth:`VWHead.parse_key`), one ``predict_multi`` per head and
    returning the shared example to the pool; the K action examples are parsed
    once per batch and reused, since predicting does not change an example's
    features. Each ``shared[i]`` must be a single ``shared …`` line.
    """
    n, k = len(shared), len(actions)
    outs = [np.empty((n, k), dtype=np.float64) for _ in heads]
    if n == 0 or not heads:
        return outs
    if k == 0:
        raise InputError("predict_batch needs at least one action line")
    groups: dict[str, list[int]] = {}
    for j, head in enumerate(heads):
        groups.setdefault(head.parse_key(), []).append(j)
    ordered = sorted({id(h): h for h in heads}.values(), key=id)  # one lock order: no deadlock
    for start in range(0, n, PREDICT_BATCH_LOCKED):
        part = shared[start:start + PREDICT_BATCH_LOCKED]
        with ExitStack() as stack:
            for head in ordered:
                stack.enter_context(head._lock)
            for members in groups.values():
                rows = _predict_group([heads[j] for j in members], part, actions)
                for j, flat in zip(members, rows):
                    block = np.fromiter(flat, dtype=np.float64, count=len(flat))
                    outs[j][start:start + len(part)] = block.reshape(len(part), k)
    return outs


def _predict_group(heads: Sequence[VWHead], shared: Sequence[str], actions: Sequence[str]) -> list[list[float]]:
    """:func:`predict_batch` for heads that parse alike (their locks held): flat per-head outputs.

    The shared lines are parsed in one call, one example per line (each line
    is checked to be a single ``shared`` line first, the count after). VW's
    ``cb_adf`` finishes a sequence by reading the prediction of its first
    example, so every sequence handed back starts with a predicted shared
    example: all but the last shared example together, then the last one
    with the action examples (the sequence the one-at-a-time path finishes).
    """
    wss = [h._ws for h in heads]
    if any(ws is None for ws in wss):
        raise SnapshotError("predict on a closed VW head")
    text = "\n".join(shared)
    if text.count("\n") != len(shared) - 1 or "\r" in text or not all(map(str.startswith, shared, repeat("shared"))):
        bad = next(line for line in shared if not line.startswith("shared") or "\n" in line or "\r" in line)
        raise InputError(f"each shared line must be one line starting with 'shared', got {bad[:80]!r}")
    for line in actions:
        if not line.strip() or line.startswith("shared") or "\n" in line or "\r" in line:
            raise InputError(f"each action line must be one non-empty, non-shared line, got {line[:80]!r}")
    ws = wss[0]
    parse, predict, finish = ws._parse, pylibvw.vw.predict_multi, pylibvw.vw._finish_example_multi_ex
    k = len(actions)
    acts = parse("\n".join(actions))
    exs = parse(text)
    if len(acts) != k or len(exs) != len(shared):  # pragma: no cover - the checks above make it impossible
        raise SnapshotError(f"VW parsed {len(shared)} shared and {k} action lines into {len(exs)} and {len(acts)} "
                            "examples (they are not returned to VW's pool)")
    flats: list[list[float]] = [[] for _ in heads]
    pairs = list(zip(wss, [f.extend for f in flats]))
    done = 0
    try:
        for ex in exs:
            multi = [ex, *acts]
            for w, add in pairs:
                predict(w, multi)
                add(ex.get_action_scores())
            done += 1
    finally:
        if done < len(exs):  # interrupted: predict the rest once so that each can be finished safely
            for ex in exs[done:]:
                predict(ws, [ex, *acts])
        if len(exs) > 1:
            finish(ws, exs[:-1])
        finish(ws, [exs[-1], *acts])
    for f in flats:
        if len(f) != len(shared) * k:
            raise SnapshotError(f"VW returned {len(f)} scores for {len(shared)} examples of {k} actions")
    return flats


def _load(args: str, model: bytes) -> vowpalwabbit.Workspace:
    fd, path = tempfile.mkstemp(suffix=".vw")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model)
        try:
            return vowpalwabbit.Workspace(f"{args} --quiet -i {path}")
        except Exception as exc:  # VW raises plain RuntimeError/Exception on a bad model
            raise SnapshotError(f"VW could not load the model with args {args!r}: {exc}") from exc
    finally:
        os.unlink(path)


__all__ = ["VWHead", "arm_line", "escape", "feature_tokens", "labeled", "predict_batch", "shared_line", "shared_lines"]
