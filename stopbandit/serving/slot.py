"""The policy slot: the policy a Selector serves, swapped atomically and closed once nobody uses it.

The slot holds one reference to the policy *and* its version, so a decision
never logs the version of a policy it did not use. ``acquire``/``release``
count the calls using a policy; a swapped-out policy is retired and closed
only when no call uses it any more and a grace period has passed (callers
may hold ``Selector.policy``). The slot also admits calls: once closed it
refuses new ones, and ``close`` waits for those in flight.
"""

from __future__ import annotations

import threading
import time

from stopbandit.bandit.policy import Policy
from stopbandit.errors import StopbanditError

RETIRE_GRACE_S = 5.0
"""A swapped-out policy stays open this long for callers holding ``Selector.policy``."""


class Live:
    """The policy in use and its version, swapped as one reference; ``users`` counts calls in flight."""

    __slots__ = ("policy", "version", "users", "retired_at")

    def __init__(self, policy: Policy, version: str) -> None:
        self.policy, self.version, self.users, self.retired_at = policy, version, 0, 0.0


class PolicySlot:
    """Acquire, swap and retire the served policy; admit and drain calls. Thread-safe."""

    def __init__(self, policy: Policy, version: str) -> None:
        self._live = Live(policy, version)
        self._lock = threading.Lock()
        self._retired: list[Live] = []
        self._closed = False
        self._calls = 0

    @property
    def live(self) -> Live:
        return self._live

    def enter(self) -> None:
        """Admit a choose/reward call; a closed slot refuses it (its policy and writer are gone)."""
        with self._lock:
            if self._closed:
                raise StopbanditError("this Selector is closed; open a new one")
            self._calls += 1

    def leave(self) -> None:
        with self._lock:
            self._calls -= 1

    def acquire(self) -> Live:
        with self._lock:
            live = self._live
            live.users += 1
            return live

    def release(self, live: Live) -> None:
        with self._lock:
            live.users -= 1

    def swap(self, policy: Policy, version: str) -> None:
        """Serve ``policy`` from the next call on; the old one retires."""
        with self._lock:
            old, self._live = self._live, Live(policy, version)
            old.retired_at = time.monotonic()
            self._retired.append(old)
        self.sweep()

    def sweep(self, force: bool = False) -> None:
        """Close retired policies nobody uses any more (after the grace period, or all with ``force``)."""
        now = time.monotonic()
        with self._lock:
            done = [r for r in self._retired if force or (r.users == 0 and now - r.retired_at >= RETIRE_GRACE_S)]
            self._retired = [r for r in self._retired if r not in done]
        for r in done:
            r.policy.close()

    def close(self, timeout: float = 10.0) -> bool:
        """Refuse new calls and wait up to ``timeout`` for those in flight; False if already closed."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        deadline = time.monotonic() + timeout
        while self._calls and time.monotonic() < deadline:  # let the calls in flight finish (and log)
            time.sleep(0.005)
        return True

    def retire_all(self) -> None:
        """Retire the served policy too and close every policy (the slot is closed)."""
        with self._lock:
            self._live.retired_at = 0.0
            self._retired.append(self._live)
        self.sweep(force=True)


__all__ = ["RETIRE_GRACE_S", "Live", "PolicySlot"]
