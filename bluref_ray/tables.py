"""Table folders: how the pipelines' Parquet outputs are laid out, listed, compacted and summed.

A table (the frames and rejects of ``bluref ingest``, the shards and rejects of ``bluref
pseudo-gt``) is a folder of Parquet files:

- **unit files**, ``<unit>.parquet``: one per unit of work (a clip, a window of frames), written
  whole by the task that did the unit. Its presence marks the unit done, so a killed job, started
  again, redoes only the units without a file.
- **parts**, ``~part+<hash>.parquet``: many unit files merged by :func:`compact` (``bluref
  compact``), so that a fleet's million clips are not a million small files for every later
  reader. A part's footer lists the units it holds, which therefore stay done; each unit is one
  row group of the part, so a reader of one unit reads only its rows.

Compaction writes a part, then deletes the files it merged. A unit file that a part already lists
is what a compaction killed between those two steps leaves: readers skip it (its rows are in the
part) and the next compaction deletes it. Readers list the live files with :func:`listing`.

Summaries are computed per file (:func:`map_files`): where Ray runs, by Ray tasks on the
cluster's CPUs, so the driver receives one small dict per file, never the tables themselves.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bluref_ray import storage
from bluref_ray.config.core import ConfigError
from bluref_ray.schema import TableError
from bluref_ray.storage import StorageConfig

#: Name prefix of a part. ``+`` and ``~`` never occur in a unit's name (clip ids are slugs), and
#: ``~`` sorts after every character of one: a listing in name order (as S3's) that runs while a
#: compaction deletes the units it merged still sees either those units or the part.
PART = "~part+"
UNITS_KEY = b"bluref.units"  #: footer key of a part: JSON list of the units it holds


def stem(uri: str) -> str:
    """A file's name without ``.parquet``."""
    name = storage.basename(uri)
    return name[:-len(".parquet")] if name.endswith(".parquet") else name


def is_part(uri: str) -> bool:
    return storage.basename(uri).startswith(PART)


@dataclass
class Listing:
    """The files of a table folder and the units they hold."""

    files: list[str] = field(default_factory=list)  #: files to read: parts and live unit files
    units: set[str] = field(default_factory=set)  #: units done (in a unit file or a part)
    leftovers: list[str] = field(default_factory=list)  #: unit files that a part already holds

    @property
    def parts(self) -> list[str]:
        return [f for f in self.files if is_part(f)]


def part_units(uri: str, cfg: StorageConfig | None = None) -> list[str]:
    """The units that the part ``uri`` holds (read from its footer only)."""
    fs, path = storage.resolve(uri, cfg)
    with storage.errors("read", uri, cfg), fs.open_input_file(path) as f:
        meta = pq.read_metadata(f).metadata or {}
    return json.loads(meta.get(UNITS_KEY, b"[]"))


def listing(uri: str, cfg: StorageConfig | None = None) -> Listing:
    """List the table folder ``uri`` (empty if it does not exist): one listing request and one
    footer read per part."""
    try:
        files = [f for f in storage.list_files(uri, cfg, recursive=False)
                 if f.endswith(".parquet")]
    except storage.StorageNotFoundError:
        return Listing()
    merged: dict[str, str] = {}
    for f in files:
        if is_part(f):
            for unit in part_units(f, cfg):
                if unit in merged:
                    raise TableError(
                        f"{uri}: {unit} is in two parts, {merged[unit]} and {f} (two "
                        "compactions ran at once); delete one of the two parts")
                merged[unit] = f
    out = Listing(units=set(merged))
    for f in files:
        if is_part(f):
            out.files.append(f)
        elif stem(f) in merged:
            out.leftovers.append(f)
        else:
            out.files.append(f)
            out.units.add(stem(f))
    return out


def finished(uri: str, cfg: StorageConfig | None = None) -> set[str]:
    """The units done in the table folder ``uri``: what a resumed job skips."""
    return listing(uri, cfg).units


@dataclass
class CompactResult:
    """What :func:`compact` did to one table folder."""

    table: str
    parts_written: int = 0
    files_merged: int = 0
    rows: int = 0
    leftovers_deleted: int = 0
    files_before: int = 0
    files_after: int = 0


def compact(uri: str, cfg: StorageConfig | None = None, part_mib: float = 128,
            log: Callable[[str], None] = print, threads: int = 16) -> CompactResult:
    """Merge the unit files of the table folder ``uri`` into parts of about ``part_mib`` MiB of
    decoded data each (whole units, in name order; memory holds about two parts: the tables and
    the encoded part). Parts already written are kept as they are. Files are read and deleted
    ``threads`` at a time.

    Safe to kill at any point and to run again. Readers see every row once throughout: a part
    is written whole before the files it merged are deleted, and a reader skips unit files that
    a part lists. Run it when no job writes or reads the table (``bluref compact`` holds the
    output folder, so it waits for no one and no writer starts meanwhile); a job that reads the
    table while it runs can find a file gone, and stops with an error (run it again).
    """
    from concurrent.futures import ThreadPoolExecutor

    lst = listing(uri, cfg)
    res = CompactResult(uri, files_before=len(lst.files) + len(lst.leftovers))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda f: storage.delete(f, cfg), lst.leftovers))  # a killed compaction's
        res.leftovers_deleted = len(lst.leftovers)
        group: list[tuple[str, pa.Table]] = []
        size = 0.0

        def flush() -> None:
            nonlocal group, size
            if len(group) > 1:
                n = _write_part(uri, group, cfg)
                list(pool.map(lambda g: storage.delete(g[0], cfg), group))  # after: no loss
                res.parts_written += 1
                res.files_merged += len(group)
                res.rows += n
                log(f"[compact] {uri}: {len(group)} files, {n} rows → one part")
            group, size = [], 0.0

        units = [f for f in lst.files if not is_part(f)]
        step = 2 * threads  # files read ahead: memory stays a part and this many files
        for i in range(0, len(units), step):
            chunk = units[i:i + step]
            for f, t in zip(chunk, pool.map(lambda f: _read_file(f, cfg), chunk)):
                if group and not t.schema.equals(group[0][1].schema):
                    log(f"[compact] {f}: its columns differ from those of {group[0][0]}; it "
                        "starts a part of its own")
                    flush()
                group.append((f, t))
                size += t.nbytes
                if size >= part_mib * (1 << 20):
                    flush()
        flush()
    res.files_after = res.files_before - res.leftovers_deleted - res.files_merged + \
        res.parts_written
    return res


TABLE_FOLDERS = ("frames", "rejects", "shards")  #: the tables of ingest and pseudo-GT outputs


def table_folders(uri: str, cfg: StorageConfig | None = None) -> list[str]:
    """The table folders of an ingest or pseudo-GT output ``uri`` (its ``frames/``,
    ``rejects/``, ``shards/``), or ``[uri]`` if Parquet files lie directly in it (a table
    folder itself).

    Raises:
        StorageNotFoundError: ``uri`` does not exist, or holds neither.
    """
    uri = storage.normalize(uri)
    if not storage.exists(uri, cfg):
        raise storage.StorageNotFoundError(f"{uri}: does not exist")
    found = [storage.join(uri, t) for t in TABLE_FOLDERS
             if storage.exists(storage.join(uri, t), cfg)]
    if found:
        return found
    if any(f.endswith(".parquet") for f in storage.list_files(uri, cfg, recursive=False)):
        return [uri]
    raise storage.StorageNotFoundError(
        f"{uri}: neither an ingest or pseudo-GT output ({', '.join(TABLE_FOLDERS)}) nor a folder "
        "of Parquet files")


@storage.outlasts_outages
def _read_file(uri: str, cfg: StorageConfig | None) -> pa.Table:
    fs, path = storage.resolve(uri, cfg)
    with storage.errors("read", uri, cfg), fs.open_input_file(path) as f:
        return pq.read_table(f)


def _write_part(uri: str, group: list[tuple[str, pa.Table]], cfg: StorageConfig | None) -> int:
    """Write the part of ``group``'s units, one row group each; returns its rows."""
    names = [stem(f) for f, _ in group]
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]
    meta = dict(group[0][1].schema.metadata or {})
    meta[UNITS_KEY] = json.dumps(names).encode()
    schema = group[0][1].schema.with_metadata(meta)
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, compression="zstd") as w:
        for _, t in group:
            w.write_table(t.replace_schema_metadata(meta), row_group_size=max(1, t.num_rows))
    storage.write_bytes(storage.join(uri, f"{PART}{digest}.parquet"), buf.getvalue(), cfg)
    return sum(t.num_rows for _, t in group)


def map_files(files: list[str], fn: Callable[[str], Any], local_below: int = 64,
              files_per_task: int = 64) -> list[Any]:
    """``[fn(f) for f in files]``: with Ray running and at least ``local_below`` files, in Ray
    tasks of ``files_per_task`` files each (1 CPU; the cluster's CPUs read the files, the driver
    gets only the results); else here. ``fn`` must return something small.

    Raises:
        What ``fn`` raised, as it raised it (a user's error such as a
        :class:`~bluref_ray.schema.TableError` is not wrapped in Ray's task error).
    """
    import ray

    if len(files) < local_below or not ray.is_initialized():
        return [fn(f) for f in files]

    @ray.remote(num_cpus=1)
    def run(chunk: list[str]) -> list[Any]:
        return [fn(f) for f in chunk]

    chunks = [files[i:i + files_per_task] for i in range(0, len(files), files_per_task)]
    try:
        parts = ray.get([run.remote(c) for c in chunks])
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, (ConfigError, storage.StorageError)):
            raise e.cause from None
        raise
    return [r for part in parts for r in part]


def sum_dicts(dicts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add dicts of numbers (and of lists of numbers, element-wise) key by key."""
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, list):
                have = out.setdefault(k, [0] * len(v))
                out[k] = [a + b for a, b in zip(have, v)]
            else:
                out[k] = out.get(k, 0) + v
    return out
