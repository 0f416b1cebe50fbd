"""Where checkpoint files live: a folder, or any filesystem fsspec reaches (s3://, gs://, ...).

The storage root is a URL, from $TWOPHASE_STORAGE_ROOT (default: the store's own `runs/` folder): a
plain path or a file:// URL is a folder (`local_files.py`), any other scheme an fsspec filesystem
(`object_files.py`); both answer the same calls and keep the same format and naming (`layout.py`).
This module is the choice between them, made once from a setting, so every caller names one module;
nothing here imports torch or fsspec at module level.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from twophase_core.storage.errors import StorageSettingError, StoreError
from twophase_core.storage.layout import (
    CKPT_MAGIC,
    ENV_OPTIONS,
    ENV_ROOT,
    KERNEL_MAGIC,
    Entry,
    Scan,
    frame_checkpoint,
    free_bytes,
    has_header,
    iteration_of,
    verify_checkpoint,
)
from twophase_core.storage.local_files import LocalFiles
from twophase_core.storage.object_files import ObjectFiles

# re-exported: callers of storage know one module
__all__ = ["CKPT_MAGIC", "ENV_OPTIONS", "ENV_ROOT", "KERNEL_MAGIC", "CheckpointFiles", "Entry", "LocalFiles",
           "ObjectFiles", "Scan", "StorageSettingError", "StoreError", "frame_checkpoint", "free_bytes", "has_header",
           "iteration_of", "open_storage", "storage_from_env", "verify_checkpoint"]

CheckpointFiles = LocalFiles | ObjectFiles


def open_storage(url: str | Path, options: Mapping[str, object] | None = None,
                 setting: str = ENV_ROOT) -> CheckpointFiles:
    """The checkpoint files at `url`: a path or file:// URL is a folder, any other scheme goes to fsspec."""
    if isinstance(url, Path):
        return LocalFiles(url, setting)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageSettingError(setting, url, "a file URL names no host: write file:///shared/path")
        return LocalFiles(unquote(parsed.path), setting)
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or a Windows drive letter)
        return LocalFiles(url, setting)
    return ObjectFiles(url, options)


def storage_from_env(default: Path) -> CheckpointFiles:
    """$TWOPHASE_STORAGE_ROOT (with $TWOPHASE_STORAGE_OPTIONS), or `default` when it is unset."""
    url = os.environ.get(ENV_ROOT, "").strip()
    raw = os.environ.get(ENV_OPTIONS, "").strip()
    options: dict[str, object] = {}
    if raw:
        try:
            options = json.loads(raw)
        except ValueError as e:
            raise StorageSettingError(ENV_OPTIONS, raw, f"is not JSON ({e}); give an object such as "
                                      '{"endpoint_url": "http://minio:9000"}') from None
        if not isinstance(options, dict):
            raise StorageSettingError(ENV_OPTIONS, raw, "give a JSON object of filesystem options, "
                                      'such as {"endpoint_url": "http://minio:9000"}')
    if not url:
        return LocalFiles(default, "checkpoint folder")
    return open_storage(url, options)
