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
``%`` itself; other Unicode whitespace as ``%XX`` or ``%uXXXX``), which is
injective, so a hostile string can neither add a feature nor change another
one's value.

Two paths to VW. The fast one parses text once and drives VW's extension
directly (``Workspace._parse``, ``pylibvw.vw.predict_multi``/``learn_multi``,
``_finish_example_multi_ex``): the public ``Workspace.predict``/``learn`` wrap
every line in a Python ``Example``, which costs several times the prediction
on the serving path. Those names are private to VW, so :data:`FAST_PATH` is
decided once at import: if any of them is missing (a VW release that renamed
them), every call takes the public ``Workspace.predict``/``learn`` instead --
the same predictions and the same learning, only slower
(``tests/bandit/test_vw_public_path.py``).
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from itertools import repeat
from typing import Any, TypeVar

import numpy as np

import pylibvw  # VW's compiled extension, shipped in the vowpalwabbit wheel
import vowpalwabbit

from stopbandit.bandit.arms import Arm
from stopbandit.errors import InputError, SnapshotError

_UNSAFE = {"%": "%25", "|": "%7C", ":": "%3A", " ": "%20", "\t": "%09", "\n": "%0A", "\r": "%0D",
           "\x0b": "%0B", "\x0c": "%0C", "'": "%27"}
_TRANS = str.maketrans(_UNSAFE)
_T = TypeVar("_T")

FAST_PATH = (hasattr(vowpalwabbit.Workspace, "_parse")
             and all(hasattr(pylibvw.vw, name) for name in ("predict_multi", "learn_multi",
                                                            "_finish_example_multi_ex")))
"""Whether VW's private parse/predict/finish entry points are there (else the public API serves)."""


@functools.lru_cache(maxsize=4096)
def escape(value: str) -> str:
    """Percent-encode the characters VW's text format treats as syntax (injective).

    Memoised: the serving path escapes the same few categorical values (domain,
    buckets) on every request.
    """
    out = value.translate(_TRANS)
    # any other whitespace (unicode spaces) would also split a feature; str.split() splits on
    # exactly the characters str.isspace() accepts, so one whole piece means there are none
    pieces = out.split()
    if len(pieces) != 1 or len(pieces[0]) != len(out):
        out = "".join(_escape_space(c) if c.isspace() else c for c in out)
    return out or "%00"


def _escape_space(c: str) -> str:
    # %XX up to U+00FF, %uXXXX above (every Unicode space is below U+3001): after a '%'
    # (itself always escaped) the next character says which, so the encoding stays injective
    code = ord(c)
    return f"%{code:02X}" if code <= 0xFF else f"%u{code:04X}"


def feature_tokens(features: Mapping[str, float | str]) -> str:
    """``name:value`` for numbers, ``name=escaped`` for strings (names are validated upstream)."""
    return " ".join(_tokens(features))


def _tokens(features: Mapping[str, float | str], skip: str | None = None) -> list[str]:
    """:func:`feature_tokens`' tokens, leaving out the feature named ``skip``."""
    parts = []
    for name, value in features.items():
        if name == skip:
            continue
        if type(value) is float:  # the common case, checked and formatted in place
            if value - value != 0.0:  # inf or nan
                raise InputError(f"feature {name!r} must be finite, got {value!r}")
            parts.append(f"{name}:{value:.6g}")
        elif isinstance(value, str):
            parts.append(f"{name}={escape(value)}")
        else:
            v = float(value)
            if not math.isfinite(v):
                raise InputError(f"feature {name!r} must be finite, got {value!r}")
            parts.append(f"{name}:{v:.6g}")
    return parts


def shared_line(features: Mapping[str, float | str]) -> str:
    """The shared (context) line: features in namespace ``c``, the domain alone in ``d``.

    The domain gets its own namespace so the policy can cross it with
    everything else (``--cubic dca``): each domain then has its own
    context × arm model on top of the shared one, instead of borrowing a
    look-alike domain's estimates for arms it rarely explores.
    """
    line = "shared |c " + " ".join(_tokens(features, skip="domain"))
    domain = features.get("domain")
    if domain is not None:
        line += f" |d {escape(str(domain))}"
    return line


def shared_lines(features: Sequence[Mapping[str, float | str]]) -> list[str]:
    """``[shared_line(f) for f in features]`` (offline scoring; repeated strings hit :func:`escape`'s memo)."""
    return [shared_line(f) for f in features]


def arm_line(arm: Arm) -> str:
    """Action features: the arm's identity and its parameters (so the policy generalises across arms)."""
    cap = arm.max_think_tokens
    capf = f"cap:{math.log1p(cap) / 8:.6g}" if cap else "nocap"
    line = f"|a arm={escape(arm.name)} thr:{min(arm.threshold, 1.05):.6g} {capf}"
    return f"{line} agree:{1.0 / arm.agreement:.6g}" if arm.agreement else line


def cb_label(cost: float, prob: float) -> str:
    """VW's cb label ``0:cost:probability`` (the action index is implied by the line it prefixes)."""
    return f"0:{cost:.6g}:{max(prob, 1e-6):.6g}"


def labeled(lines: Sequence[str], action: int, cost: float, prob: float) -> list[str]:
    """The multiline example with a cb label on ``action`` (0-based; line 0 is the shared line)."""
    return with_label(lines, action, cb_label(cost, prob))


def with_label(lines: Sequence[str], action: int, label: str) -> list[str]:
    """``lines`` with ``label`` (a :func:`cb_label`) in front of action ``action``'s line."""
    out = list(lines)
    out[action + 1] = f"{label} {out[action + 1]}"
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
        if not FAST_PATH:
            return self.predict_slow(lines)
        return self._multi(pylibvw.vw.predict_multi, lines, scores=True)

    def learn(self, lines: list[str]) -> None:
        if not FAST_PATH:
            with self._lock:
                self._ws.learn(list(lines))
            return
        self._multi(pylibvw.vw.learn_multi, lines, scores=False)

    def _multi(self, step: Callable[[Any, Any], None], lines: list[str], *, scores: bool) -> list[float]:
        """Parse ``lines`` as one multiline example, run ``step`` (predict or learn) on it, and give the
        example back to VW; the action scores when ``scores`` (else [])."""
        text = "\n".join(lines)
        with self._lock:
            ws = self._ws
            raw = ws._parse(text)
            try:
                step(ws, raw)
                return raw[0].get_action_scores() if scores else []
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
            return list(self._ws.predict(list(lines)))

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


class ContextScorer:
    """Predicts and learns one context at a time for heads that parse alike, over fixed action lines.

    Why: parsing VW's text is most of the cost of a predict or a learn on the
    serving path (a ``learn`` of 8 arms costs about one parse + one predict).
    Through :class:`VWHead` each ``choose`` parsed the shared line and every
    action line once per head, and each reward did it again per label. Here the
    action lines are parsed once (when first used) and kept. A prediction
    parses only the shared line, once for every head; a learn parses the shared
    line and one labeled copy of each learned action line, once for all the
    labels of a reward.

    Exact: predicting does not change an example's features (as in
    :func:`predict_batch`), and a learn updates the weights from the labeled
    example while the others are only predicted, so predictions and weights are
    those of ``head.predict/learn`` on the full text (``tests/bandit/test_vw.py``
    checks it over interleaved learning, for several labels per reward and
    across a save/load). Only VW's running statistics in the model header
    (examples and features counted by ``finish_example``) differ; they report,
    they do not learn. The kept action examples belong to the first head's
    workspace and go back to its pool in :meth:`close`, which must run before
    the heads are closed.
    """

    def __init__(self, heads: Sequence[VWHead], actions: Sequence[str]) -> None:
        keys = {h.parse_key() for h in heads}
        if len(keys) != 1:
            raise InputError(f"ContextScorer needs heads that parse alike, got parse keys {sorted(keys)}")
        for line in actions:
            if not line.strip() or line.startswith("shared") or "\n" in line or "\r" in line:
                raise InputError(f"each action line must be one non-empty, non-shared line, got {line[:80]!r}")
        if not actions:
            raise InputError("ContextScorer needs at least one action line")
        self.heads = list(heads)
        self.actions = list(actions)
        self._ordered = sorted({id(h): h for h in heads}.values(), key=id)  # one lock order: no deadlock
        self._acts: list | None = None
        self._closed = False

    def predict(self, shared: str) -> list[list[float]]:
        """Per head, the per-action outputs of ``[shared, *actions]``."""
        _check_shared(shared)
        predict = pylibvw.vw.predict_multi

        def work(exs: list, acts: list) -> list[list[float]]:
            multi, out = [exs[0], *acts], []
            for head in self.heads:
                predict(head._ws, multi)
                out.append(exs[0].get_action_scores())
            return out

        return self._with_parsed(shared, "predict", work)

    def learn(self, shared: str, labels: Sequence[tuple[int, int, str]]) -> None:
        """Learn ``(head index, action index, cb label)`` in order, all from one parse of ``shared``.

        Each entry is the full multiline example ``[shared, *actions]`` with the
        label on that action, learned by that head, as ``head.learn(labeled(…))``.
        """
        _check_shared(shared)
        k = len(self.actions)
        for h, a, label in labels:
            if not (0 <= h < len(self.heads) and 0 <= a < k) or "\n" in label or "\r" in label:
                raise InputError(f"bad learn entry (head {h}, action {a}, label {label[:40]!r})")
        if not labels:
            return
        learn = pylibvw.vw.learn_multi

        def work(exs: list, acts: list) -> None:
            if len(exs) != len(labels) + 1:  # pragma: no cover - one line per example by the checks above
                raise SnapshotError(f"VW parsed {len(labels) + 1} lines into {len(exs)} examples")
            for (h, a, _), ex in zip(labels, exs[1:]):
                learn(self.heads[h]._ws, [exs[0], *acts[:a], ex, *acts[a + 1:]])

        text = "\n".join([shared, *(f"{label} {self.actions[a]}" for _, a, label in labels)])
        self._with_parsed(text, "learn", work)

    def _with_parsed(self, text: str, what: str, work: Callable[[list, list], _T]) -> _T:
        """``work(examples of text, kept action examples)`` holding every head's lock; the examples then go back."""
        locks = [h._lock for h in self._ordered]  # read now: a head's lock is its own business
        for lock in locks:
            lock.__enter__()
        try:
            ws = self.heads[0]._ws
            if self._closed or any(h._ws is None for h in self.heads):
                raise SnapshotError(f"{what} on a closed VW head")
            acts = self._acts
            if acts is None:
                acts = self._acts = ws._parse("\n".join(self.actions))
            exs = ws._parse(text)
            try:
                return work(exs, acts)
            finally:
                pylibvw.vw._finish_example_multi_ex(ws, exs)
        finally:
            for lock in reversed(locks):
                lock.__exit__(None, None, None)

    def close(self) -> None:
        """Return the kept action examples to VW's pool (after one prediction, as cb_adf finishes a sequence)."""
        with ExitStack() as stack:
            for head in self._ordered:
                stack.enter_context(head._lock)
            acts, self._acts, self._closed = self._acts, None, True
            ws = self.heads[0]._ws
            if acts is None or ws is None:
                return
            exs = ws._parse("shared |c")
            seq = [exs[0], *acts]
            pylibvw.vw.predict_multi(ws, seq)
            pylibvw.vw._finish_example_multi_ex(ws, seq)


def _check_shared(shared: str) -> None:
    if "\n" in shared or "\r" in shared or not shared.startswith("shared"):
        raise InputError(f"the shared line must be one line starting with 'shared', got {shared[:80]!r}")


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
    if not FAST_PATH:  # the public API, one example at a time
        for j, head in enumerate(heads):
            for i, line in enumerate(shared):
                _check_shared(line)
                outs[j][i] = head.predict([line, *actions])
        return outs
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


__all__ = ["ContextScorer", "VWHead", "arm_line", "cb_label", "escape", "feature_tokens", "labeled", "predict_batch",
           "shared_line", "shared_lines", "with_label"]
