"""The package version (one place: the package root and snapshots read it)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
