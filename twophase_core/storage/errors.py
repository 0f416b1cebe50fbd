"""The errors every layer may raise about where things are kept, in one place below them all.

`StoreError`: the store or a storage root cannot do what was asked (the CLI prints its one line, exit 1).
`StorageSettingError`: a setting or environment value that names where things are kept is wrong (a
storage root that is a file, options that are not JSON, an unknown scheme); it is also a `ConfigError`,
so the CLI answers it like any bad setting (one line, exit 2) before anything is written.
"""

from __future__ import annotations

from twophase_core.settings.spec import ConfigError


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message says why and what to do."""


class StorageSettingError(ConfigError, StoreError):
    """A storage setting ($TWOPHASE_STORAGE_ROOT, its options, the store's folder) is unusable as given.
    Its value is a path or URL: shown whole (up to 300 characters), since the user must find it."""

    def __init__(self, field_name: str, value: str, allowed: str):
        super().__init__(field_name, value, allowed)
        self.args = (f"{field_name}={str(value)[:300]!r} is invalid: {allowed}",)
