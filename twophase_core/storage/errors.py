"""The errors every layer may raise about where things are kept, in one place below them all.

`StoreError`: the store or a storage root cannot do what was asked (the CLI prints its one line, exit 1).
`StoreFull` and `StoreDamaged` are the two kinds a caller acts on (a job reports a full disk as such;
`check` says to repair). `StorageSettingError`: a setting or environment value that names where things
are kept is wrong (a storage root that is a file, options that are not JSON, an unknown scheme); it is
also a `ConfigError`, so the CLI answers it like any bad setting (one line, exit 2) before anything is
written. Its own module so that every storage module, and everything above, can name them without
importing the store.
"""

from __future__ import annotations

from pathlib import Path

from twophase_core.settings.spec import ConfigError


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message says why and what to do."""


class StorageSettingError(ConfigError, StoreError):
    """A storage setting ($TWOPHASE_STORAGE_ROOT, its options, the store's folder) is unusable as given.
    Its value is a path or URL: shown whole (up to 300 characters), since the user must find it."""

    def __init__(self, field_name: str, value: str, allowed: str):
        super().__init__(field_name, value, allowed)
        self.args = (f"{field_name}={str(value)[:300]!r} is invalid: {allowed}",)


class StoreFull(StoreError):
    """The disk holding the store has no room: named with its root and its free space (`free` bytes,
    as measured by whoever raised it: `space.full`)."""

    def __init__(self, root: Path, doing: str, free: int, needed: int | None = None):
        self.root, self.free, self.needed = root, free, needed
        if needed is None:  # the disk said ENOSPC
            what = f"is full ({human(free)} free) {doing}"
        else:  # an estimate said it would not fit
            what = f"has {human(free)} free, too little: {doing} needs about {human(needed)}"
        super().__init__(f"the disk holding the store {root} {what}; free some space (or `twophase cache clear`) "
                         "and try again")


class StoreDamaged(StoreError):
    """The index cannot be read and was not repaired (the store was opened with heal=False)."""


def human(n: float | None) -> str:
    """A byte count as messages print it (decimal units: what `df -H` shows)."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
