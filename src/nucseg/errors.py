"""The package's own exceptions. Each message is one line meant for a person: what went wrong, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class NucsegError(Exception):
    """Base class of every error the package raises on purpose."""


class UnsupportedFileError(NucsegError):
    """A file the readers do not handle at all (napari's reader hook then returns None)."""


class SlideReadError(NucsegError):
    """A file that looks like a slide or tile but cannot be read."""

    def __init__(self, path: str | Path, reason: str, fix: str | None = None):
        self.path = Path(path)
        self.reason = reason
        msg = f"cannot read {self.path}: {reason}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class InvalidInputError(NucsegError):
    """An image, label map or argument of the wrong shape, dtype or value."""


class ConfigError(NucsegError, ValueError):
    """A configuration value that cannot work (raised from a config's ``__post_init__``)."""


class ModelError(NucsegError):
    """A model that cannot be found, loaded, verified or used on this input."""


class StoreError(NucsegError):
    """A corrections store or model version that cannot be written or read."""
