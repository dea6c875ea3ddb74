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
        ``tests/bandit/test_vw.py`` checks both paths agree.
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


__all__ = ["VWHead", "arm_line", "escape", "feature_tokens", "labeled", "shared_line"]
