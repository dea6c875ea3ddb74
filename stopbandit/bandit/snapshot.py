"""Policy snapshots: VW model bytes + JSON metadata + a SHA-256 checksum. Never pickle.

The blob is the heads' VW model files concatenated; ``meta["blobs"]`` lists
``[name, length]`` in order. The checksum covers the blob and the canonical
JSON of the metadata, so corruption or tampering of either is refused. A
snapshot is also refused, with the differences spelled out, when its arms or
feature configuration are not the ones the loading Selector was built with.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stopbandit import __version__
from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import Exploration, exploration_from_config
from stopbandit.bandit.policy import Policy, make_policy
from stopbandit.errors import SnapshotError, StopbanditError

FORMAT = 1


@dataclass(frozen=True, slots=True)
class PackedSnapshot:
    version: str
    model: bytes
    meta: dict[str, Any]
    checksum: str


def new_version(prefix: str = "v") -> str:
    return f"{prefix}{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def compute_checksum(model: bytes, meta: Mapping[str, Any]) -> str:
    h = hashlib.sha256(model)
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


def pack(policy: Policy, *, lam: float, feature_config: Mapping[str, Any],
         extra: Mapping[str, Any] | None = None, version: str | None = None) -> PackedSnapshot:
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
    model = b"".join(blobs.values())
    return PackedSnapshot(version, model, meta, compute_checksum(model, meta))


def verify(model: bytes, meta: Mapping[str, Any], checksum: str) -> None:
    actual = compute_checksum(model, meta)
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
           feature_config: Mapping[str, Any] | None = None, exploration: Exploration | None = None) -> Policy:
    """Verify and load a snapshot into a fresh policy (the caller swaps it in)."""
    if not isinstance(meta, Mapping) or meta.get("format") != FORMAT:
        raise SnapshotError(f"unsupported snapshot format {meta.get('format') if isinstance(meta, Mapping) else meta!r}")
    verify(model, meta, checksum)
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
        return policy
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError, StopbanditError) as exc:
        raise SnapshotError(f"snapshot metadata is malformed: {exc}") from exc


__all__ = ["PackedSnapshot", "compute_checksum", "differences", "new_version", "pack", "unpack", "verify"]
