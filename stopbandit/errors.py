"""One error hierarchy for the whole package.

Every error a user can cause is a :class:`StopbanditError`; each subclass also
inherits the builtin a caller would naturally catch (``ValueError`` for bad
input, ``RuntimeError`` for an unavailable store), so ``except ValueError``
keeps working for code that does not know about stopbandit.
"""

from __future__ import annotations


class StopbanditError(Exception):
    """Base class of every error raised on purpose by stopbandit."""


class ConfigError(StopbanditError, ValueError):
    """A configuration value (TOML, constructor argument, CLI option) is invalid."""


def require_positive_ints(prefix: str, **values: object) -> None:
    """:class:`ConfigError` naming the first of ``values`` (in order) that is not an int >= 1.

    ``True`` is not a count, although Python calls it an int. ``prefix`` goes
    before the name in the message (``"store."`` → ``store.batch_size``).
    """
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{prefix}{name} must be a positive integer, got {v!r}")


class InputError(StopbanditError, ValueError):
    """A request, feature, reward or imported record is malformed."""


class UnknownDecisionError(InputError, KeyError):
    """A reward names a decision the store has never seen."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConflictError(InputError):
    """A second, different outcome was reported for one decision."""


class SnapshotError(StopbanditError, ValueError):
    """A policy snapshot is corrupt, tampered with, or does not fit this Selector."""


class StoreError(StopbanditError, RuntimeError):
    """The replay store cannot be reached or its schema is not at the expected revision."""
