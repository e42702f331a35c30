"""Helpers shared by the pipelines: output folders that resume, and listing finished parts."""

from __future__ import annotations

import json
from collections.abc import Callable

from bluref_ray import storage
from bluref_ray.config import ConfigError
from bluref_ray.storage import StorageConfig


def prepare_out(out: str, marker: str, want: dict, overwrite: bool, parts: tuple[str, ...],
                storage_cfg: StorageConfig, log: Callable[[str], None], what: str) -> None:
    """Make ``out`` ready for a run described by ``want``, keeping finished parts to resume.

    ``out/<marker>`` records ``want`` (settings hash and inputs). A folder holding a run of
    other settings is refused, unless ``overwrite``, which deletes ``parts`` first.

    Raises:
        ConfigError: ``out`` holds a run with other settings and ``overwrite`` is off.
    """
    marker_uri = storage.join(out, marker)
    if storage.exists(marker_uri, storage_cfg):
        have = json.loads(storage.read_text(marker_uri, storage_cfg))
        if have == want and not overwrite:
            return
        if have != want and not overwrite:
            raise ConfigError(
                f"{out} holds a {what} run with other settings or inputs "
                f"(config {have.get('config_hash')}, inputs {have.get('inputs')}); use another "
                "--out, or --overwrite to replace it")
    if overwrite:
        log(f"[{what}] --overwrite: deleting earlier results in {out}")
        for part in parts:
            storage.delete(storage.join(out, part), storage_cfg)
    storage.makedirs(out, storage_cfg)
    storage.write_text(marker_uri, json.dumps(want, indent=1), storage_cfg)


def finished(uri: str, storage_cfg: StorageConfig, suffix: str = ".parquet") -> set[str]:
    """Names (without ``suffix``) of the files in ``uri``; empty if it does not exist."""
    try:
        files = storage.list_files(uri, storage_cfg)
    except storage.StorageNotFoundError:
        return set()
    return {storage.basename(f)[:-len(suffix)] for f in files if f.endswith(suffix)}
