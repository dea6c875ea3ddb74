"""The store follower: a background thread that keeps a Selector in step with its store.

Every ``interval`` seconds it (re)creates the schema while the store was
unreachable at open, picks up λ changes made by any process, and hot-swaps
to a newer *serving* snapshot (a stored candidate is never swapped to: it has
to be promoted). A snapshot that is refused (tampered, malformed, does not
fit, fails to load for any reason) is recorded in ``snapshot_error`` and never
retried; serving continues on the policy it had. When checkpoints are due
(``checkpoint_every`` outcomes, ``checkpoint_interval_s`` seconds) the follower
stores one, so the request path never writes a model. The thread never dies: every failure is recorded as a
fault for ``health()``. Migrations on open live here too
(:func:`prepare_store`), so the facade never touches the schema itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from stopbandit.errors import InputError, SnapshotError, StoreError
from stopbandit.replay import migrate
from stopbandit.replay.store import ReplayStore

log = logging.getLogger("stopbandit.selector")


def prepare_store(store: ReplayStore) -> StoreError | None:
    """Migrate the store to the newest schema; the error when it is unreachable (the follower retries)."""
    try:
        migrate.upgrade(engine=store.engine)
        return None
    except StoreError as exc:
        return exc


class Followed(Protocol):
    """What the follower keeps in step: the Selector's side of the conversation."""

    def sync_lambda(self) -> None: ...

    def load_snapshot(self, version: str = "latest", *, missing_ok: bool = False) -> bool: ...

    def checkpoint_due(self) -> bool: ...

    def checkpoint(self) -> str | None: ...

    def record_fault(self, exc: BaseException) -> None: ...

    def clear_fault(self) -> None: ...


class StoreFollower:
    """Follows λ (always) and serving snapshots (``snapshots=True``) of ``store`` for ``target``."""

    def __init__(self, store: ReplayStore, target: Followed, *, interval: float, snapshots: bool,
                 store_ok: bool, writer_ok: Callable[[], bool], after_tick: Callable[[], None]) -> None:
        self.store = store
        self.target = target
        self.interval = interval
        self.snapshots = snapshots
        self.store_ok = store_ok  # the schema is in place (False: the store was down at open)
        self.follow_ok = True  # the last tick reached the store
        self.snapshot_error: str | None = None
        self.known: set[str] = set()  # versions loaded, saved or refused here: never swapped to again
        self._writer_ok = writer_ok
        self._after_tick = after_tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stopbandit-follow", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def tick(self) -> bool:
        """One round; True when the store answered and its writer is healthy (the fault can be cleared)."""
        latest = None
        try:
            if not self.store_ok:
                exc = prepare_store(self.store)
                self.store_ok = exc is None
                if exc is not None:
                    self.target.record_fault(exc)
                    self.follow_ok = False
                    return False
            self.target.sync_lambda()
            latest = self.store.latest_snapshot_version() if self.snapshots else None
            if latest is not None and latest not in self.known:
                try:
                    self.target.load_snapshot(latest)
                except (StoreError, SnapshotError, InputError):
                    raise
                except Exception as exc:  # noqa: BLE001 - whatever breaks a load, the snapshot is refused once
                    raise SnapshotError(f"{type(exc).__name__}: {exc}") from exc
                log.info("hot-swapped to snapshot %s", latest)
            latest = None
            if self.target.checkpoint_due():
                version = self.target.checkpoint()
                if version is not None:
                    self.known.add(version)
            self.follow_ok = True
            return self._writer_ok()
        except StoreError as exc:
            self.follow_ok = False
            self.target.record_fault(exc)
        except (SnapshotError, InputError) as exc:  # refused (tampered, does not fit): do not retry every tick
            log.error("refused snapshot %s: %s", latest, exc)
            self.snapshot_error = f"{latest}: {exc}"
            if latest is not None:
                self.known.add(latest)
        except Exception as exc:  # noqa: BLE001 - the follower must never die
            self.target.record_fault(exc)
        finally:
            self._after_tick()
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.tick():
                self.target.clear_fault()


__all__ = ["Followed", "StoreFollower", "prepare_store"]
