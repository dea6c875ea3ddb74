"""Policy snapshots: VW model bytes + JSON metadata + a SHA-256 checksum. Never pickle.

The blob is the heads' VW model files concatenated; ``meta["blobs"]`` lists
``[name, length]`` in order. The checksum covers the blob and the canonical
JSON of the metadata, so corruption or tampering of either is refused. A
snapshot is also refused, with the differences spelled out, when its arms or
feature configuration are not the ones the loading Selector was built with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stopbandit._version import __version__
from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import Exploration, exploration_from_config
from stopbandit.bandit.learned_stop import LearnedStop
from stopbandit.bandit.policy import EM_ARGS, NATIVE_ARGS, TOKEN_ARGS, Policy, make_policy
from stopbandit.errors import SnapshotError, StopbanditError

FORMAT = 1


@dataclass(frozen=True, slots=True)
class PackedSnapshot:
    version: str
    model: bytes
    meta: dict[str, Any]
    checksum: str


# VW options a stored snapshot may ask for: those our policies use. The checksum is not a
# signature (whoever can write the snapshots table can recompute it), and VW obeys options such
# as ``-f``/``--readable_model`` (write files), ``--data`` (read files) or ``--daemon`` (listen).
_SAFE_VW_OPTIONS = frozenset(t for a in (EM_ARGS, TOKEN_ARGS, NATIVE_ARGS) for t in a.split() if t.startswith("-"))
_SAFE_VW_VALUE = re.compile(r"^[A-Za-z0-9_.]{1,32}$")


def _value_options() -> frozenset[str]:
    """The options of our own VW lines that take a value (the token after them is that value)."""
    takes = set()
    for line in (EM_ARGS, TOKEN_ARGS, NATIVE_ARGS):
        toks = line.split()
        for tok, nxt in zip(toks, toks[1:]):
            if tok.startswith("-") and not nxt.startswith("-"):
                takes.add(tok)
    return frozenset(takes)


_VALUE_OPTIONS = _value_options()
SIGNATURE_FIELD = "hmac"
"""Metadata field holding the HMAC-SHA256 of a signed snapshot (over the model and the rest of the metadata)."""


def check_vw_args(meta: Mapping[str, Any]) -> None:
    """Refuse VW arguments other than the options our own policies use (and plain values)."""
    version = meta.get("version", "?") if isinstance(meta, Mapping) else "?"
    args = meta.get("vw_args") if isinstance(meta, Mapping) else None
    if not isinstance(args, Mapping) or not args:
        raise SnapshotError(f"snapshot {version!r}: vw_args must be a table of head -> VW arguments, got {args!r}")
    for head, line in args.items():
        if not isinstance(line, str):
            raise SnapshotError(f"snapshot {version!r}: vw_args[{head!r}] must be a string, got {line!r}")
        expect_value = False
        for tok in line.split():
            if tok.startswith("-"):
                if expect_value or tok not in _SAFE_VW_OPTIONS:
                    raise SnapshotError(f"snapshot {version!r}: VW option {tok!r} (head {head!r}) is not allowed in "
                                        f"a stored snapshot; allowed: {sorted(_SAFE_VW_OPTIONS)}; refused")
                expect_value = tok in _VALUE_OPTIONS
                continue
            if not expect_value:  # VW reads a bare argument as a data file to open
                raise SnapshotError(f"snapshot {version!r}: positional VW argument {tok!r} (head {head!r}) is not "
                                    f"allowed in a stored snapshot (VW would open it as a file); refused")
            if not _SAFE_VW_VALUE.match(tok):
                raise SnapshotError(f"snapshot {version!r}: VW argument value {tok!r} (head {head!r}) is not "
                                    f"allowed in a stored snapshot; refused")
            expect_value = False
        if expect_value:
            raise SnapshotError(f"snapshot {version!r}: VW arguments of head {head!r} end in an option without "
                                f"its value: {line!r}; refused")


def _finite(meta: Mapping[str, Any], key: str, version: object, *, low: float | None = None,
            high: float | None = None, low_open: bool = False) -> float:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (low is not None and (v <= low if low_open else v < low)) or (high is not None and v > high):
        bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}]" if low is not None and high is not None else ""
        raise SnapshotError(f"snapshot {version!r}: metadata field {key!r} must be a finite number{bounds}, got {v!r}")
    return float(v)


def check_meta_fields(meta: object) -> None:
    """Refuse metadata whose fields do not have the types and ranges :func:`pack` writes (every field)."""
    if not isinstance(meta, Mapping):
        raise SnapshotError(f"snapshot metadata must be a JSON object, got {type(meta).__name__}")
    version = meta.get("version")
    if not isinstance(version, str) or not version:
        raise SnapshotError(f"snapshot metadata field 'version' must be a non-empty string, got {version!r}")
    for key in ("stopbandit", "policy"):
        if not isinstance(meta.get(key), str):
            raise SnapshotError(f"snapshot {version!r}: metadata field {key!r} must be a string, got {meta.get(key)!r}")
    if meta.get(SIGNATURE_FIELD) is not None and not isinstance(meta.get(SIGNATURE_FIELD), str):
        raise SnapshotError(f"snapshot {version!r}: metadata field 'hmac' must be a hex string")
    _finite(meta, "created", version, low=0)
    _finite(meta, "lam", version, low=0, high=1e6)
    _finite(meta, "token_scale", version, low=0, high=1e12, low_open=True)
    t = meta.get("t", 0)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 2**62:
        raise SnapshotError(f"snapshot {version!r}: metadata field 't' must be an integer >= 0, got {t!r}")
    for key in ("arms",):
        if not isinstance(meta.get(key), list):
            raise SnapshotError(f"snapshot {version!r}: metadata field {key!r} must be a list, got {meta.get(key)!r}")
    for key in ("features", "exploration", "extra"):
        if not isinstance(meta.get(key), Mapping):
            raise SnapshotError(f"snapshot {version!r}: metadata field {key!r} must be an object, got "
                                f"{meta.get(key)!r}")
    blobs = meta.get("blobs")
    if not isinstance(blobs, list) or not blobs or not all(
            isinstance(b, list) and len(b) == 2 and isinstance(b[0], str) and isinstance(b[1], int)
            and not isinstance(b[1], bool) and b[1] > 0 for b in blobs):
        raise SnapshotError(f"snapshot {version!r}: metadata field 'blobs' must list [name, length > 0] pairs, "
                            f"got {blobs!r}")
    prior = meta["extra"].get("prior")
    if prior is not None:
        if not isinstance(prior, Mapping):
            raise SnapshotError(f"snapshot {version!r}: metadata field 'extra.prior' must be an object of "
                                f"domain -> miss rate, got {type(prior).__name__}")
        for dom, rate in prior.items():
            if not isinstance(dom, str) or isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                    or not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
                raise SnapshotError(f"snapshot {version!r}: metadata field 'extra.prior' maps domain {dom!r} to "
                                    f"{rate!r}; a miss rate is a finite number in [0, 1]")


def check_snapshot_meta(meta: Mapping[str, Any], token_scale: float) -> None:
    """Refuse stored metadata that would make VW do more than load a model, or that does not fit."""
    version = meta.get("version", "?") if isinstance(meta, Mapping) else "?"
    check_meta_fields(meta)
    check_vw_args(meta)
    stored_scale = meta.get("token_scale")
    if isinstance(stored_scale, bool) or not isinstance(stored_scale, (int, float)) or stored_scale != token_scale:
        raise SnapshotError(f"snapshot {version!r} does not fit this selector: token_scale: snapshot has "
                            f"{stored_scale!r}, selector has {token_scale!r}")


def new_version(prefix: str = "v") -> str:
    return f"{prefix}{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def compute_checksum(model: bytes, meta: Mapping[str, Any]) -> str:
    h = hashlib.sha256(model)
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


def signature(model: bytes, meta: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 with ``key`` over the model and the canonical JSON of the metadata without its signature."""
    unsigned = {k: v for k, v in meta.items() if k != SIGNATURE_FIELD}
    mac = hmac.new(key, bytes(model), hashlib.sha256)
    mac.update(json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return mac.hexdigest()


def check_signature(model: bytes, meta: Mapping[str, Any], key: bytes | None) -> None:
    """With a key, refuse a snapshot that is unsigned or signed with another key; without one, accept any."""
    if not key:
        return
    stored = meta.get(SIGNATURE_FIELD)
    version = meta.get("version", "?")
    if not isinstance(stored, str) or not stored:
        raise SnapshotError(f"snapshot {version!r} is not signed, and a signing key is set "
                            f"(STOPBANDIT_SNAPSHOT_KEY): refused")
    if not hmac.compare_digest(stored, signature(model, meta, key)):
        raise SnapshotError(f"snapshot {version!r}: its signature does not match the signing key "
                            f"(STOPBANDIT_SNAPSHOT_KEY): signed with another key, or tampered; refused")


def pack(policy: Policy, *, lam: float, feature_config: Mapping[str, Any],
         extra: Mapping[str, Any] | None = None, version: str | None = None,
         stop_rule: LearnedStop | None = None, key: bytes | None = None) -> PackedSnapshot:
    """Pack ``policy``; ``stop_rule`` (the learned stop rule) rides in the metadata as JSON, under the same
    checksum; with ``key``, the metadata carries an HMAC signature :func:`unpack` verifies."""
    blobs = policy.blobs()
    version = version or new_version()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": version,
        "created": time.time(),
        "stopbandit": __version__,
        "policy": policy.name,
        "arms": policy.arms.to_list(),
        "features": dict(feature_config),
        "vw_args": policy.vw_args(),
        "exploration": policy.exploration.to_dict(),
        "lam": lam,
        "token_scale": policy.token_scale,
        "t": policy.t,
        "blobs": [[name, len(b)] for name, b in blobs.items()],
        "extra": dict(extra or {}),
    }
    if stop_rule is not None:
        meta["stop_rule"] = stop_rule.to_json()
    model = b"".join(blobs.values())
    if key:
        meta[SIGNATURE_FIELD] = signature(model, meta, key)
    return PackedSnapshot(version, model, meta, compute_checksum(model, meta))


def verify(model: bytes, meta: Mapping[str, Any], checksum: str) -> None:
    if not isinstance(model, (bytes, bytearray)) or not isinstance(checksum, str) or not isinstance(meta, Mapping):
        raise SnapshotError(f"a snapshot is model bytes, JSON metadata and a hex checksum; got "
                            f"{type(model).__name__}, {type(meta).__name__}, {type(checksum).__name__}")
    try:
        actual = compute_checksum(bytes(model), meta)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot metadata is not JSON-serialisable: {exc}") from exc
    if actual != checksum:
        raise SnapshotError(
            f"snapshot {meta.get('version', '?')!r} failed its checksum (stored {checksum[:12]}…, "
            f"computed {actual[:12]}…): corrupt or tampered, refused"
        )


def differences(meta: Mapping[str, Any], arms: ArmSet, feature_config: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a snapshot and what the Selector expects."""
    diffs = []
    if meta.get("arms") != arms.to_list():
        diffs.append(f"arms: snapshot has {meta.get('arms')}, selector has {arms.to_list()}")
    if meta.get("features") != dict(feature_config):
        diffs.append(f"feature config: snapshot has {meta.get('features')}, selector has {dict(feature_config)}")
    return diffs


def unpack(model: bytes, meta: Mapping[str, Any], checksum: str, *, arms: ArmSet | None = None,
           feature_config: Mapping[str, Any] | None = None, exploration: Exploration | None = None,
           key: bytes | None = None) -> Policy:
    """Verify and load a snapshot into a fresh policy (the caller swaps it in).

    Checked before VW sees anything: the checksum, the signature when ``key`` is
    given, every metadata field, and the VW arguments; after loading, that each
    head re-serialises to the bytes it was loaded from (a cut model is refused).
    """
    if not isinstance(meta, Mapping) or meta.get("format") != FORMAT:
        raise SnapshotError(f"unsupported snapshot format {meta.get('format') if isinstance(meta, Mapping) else meta!r}")
    verify(model, meta, checksum)
    check_signature(model, meta, key)
    check_meta_fields(meta)
    check_vw_args(meta)
    try:
        snap_arms = ArmSet.of(meta["arms"])
        if arms is not None or feature_config is not None:
            diffs = differences(meta, arms or snap_arms, feature_config if feature_config is not None else meta["features"])
            if diffs:
                raise SnapshotError(f"snapshot {meta['version']!r} does not fit this selector: " + "; ".join(diffs))
        blobs: dict[str, bytes] = {}
        offset = 0
        for name, length in meta["blobs"]:
            blobs[name] = model[offset: offset + length]
            offset += length
        if offset != len(model):
            raise SnapshotError(f"snapshot {meta['version']!r}: blob lengths {meta['blobs']} do not add up to {len(model)}")
        explore = exploration or exploration_from_config(meta["exploration"])
        policy = make_policy(meta["policy"], snap_arms, explore, float(meta["token_scale"]), blobs, meta["vw_args"])
        policy.t = int(meta.get("t", 0))
        reloaded = policy.blobs()
        for name, blob in blobs.items():
            if len(reloaded.get(name, b"")) != len(blob):
                policy.close()
                raise SnapshotError(f"snapshot {meta['version']!r}: model {name!r} is truncated or corrupt "
                                    f"({len(blob)} bytes stored, VW rebuilt {len(reloaded.get(name, b''))}); refused")
        return policy
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError, StopbanditError) as exc:
        raise SnapshotError(f"snapshot metadata is malformed: {exc}") from exc


def stop_rule_of(meta: Mapping[str, Any]) -> LearnedStop | None:
    """The learned stop rule stored in a snapshot's metadata, None when it has none."""
    data = meta.get("stop_rule") if isinstance(meta, Mapping) else None
    if data is None:
        return None
    try:
        return LearnedStop.from_json(data)
    except StopbanditError as exc:
        raise SnapshotError(f"snapshot {meta.get('version', '?')!r}: stop_rule is malformed: {exc}") from exc


__all__ = ["SIGNATURE_FIELD", "PackedSnapshot", "check_meta_fields", "check_signature", "check_snapshot_meta",
           "check_vw_args", "compute_checksum", "differences", "new_version", "pack", "signature", "stop_rule_of",
           "unpack", "verify"]
