"""Table folders: small Parquet files compacted, safe to kill; resumed runs after it."""

from __future__ import annotations

import functools
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet
import pytest

from bluref_ray import schema, storage, tables
from bluref_ray.cli import main
from bluref_ray.config import Config, IngestConfig, PseudoGTConfig, RayConfig
from bluref_ray.pipeline.ingest import _frames_stats, run_ingest
from bluref_ray.pipeline.pseudo_gt import run_pseudo_gt

SCHEMA = pa.schema([pa.field("unit", pa.string()), pa.field("value", pa.int64())])


def _write_units(folder, n: int, rows: int = 50, cfg=None) -> pa.Table:
    parts = []
    for i in range(n):
        t = pa.table({"unit": [f"u{i:03d}"] * rows, "value": list(range(i * rows, (i + 1) * rows))},
                     schema=SCHEMA)
        schema.write_table(t, storage.join(str(folder), f"u{i:03d}.parquet"), cfg)
        parts.append(t)
    return pa.concat_tables(parts)


def _read(folder, cfg=None) -> pa.Table:
    return schema.read_table(str(folder), SCHEMA, cfg).sort_by("value")


def test_compaction_keeps_every_row_once_and_every_unit_done(tmp_path):
    folder = tmp_path / "table"
    full = _write_units(folder, 9)
    units = {f"u{i:03d}" for i in range(9)}
    # parts of 4 files: 9 files → 2 parts + 1 file left (a single file is not rewritten)
    per_file = full.slice(0, 50).nbytes / 2**20
    r = tables.compact(str(folder), part_mib=3.5 * per_file, log=lambda _m: None)
    assert (r.files_before, r.parts_written, r.files_merged, r.files_after) == (9, 2, 8, 3)
    lst = tables.listing(str(folder))
    assert len(lst.parts) == 2 and lst.units == units and not lst.leftovers
    assert _read(folder).equals(full)
    assert "u008.parquet" in os.listdir(folder)
    # each unit is one row group of its part: a reader of one unit reads only its rows
    part = tables.listing(str(folder)).parts[0]
    assert pa.parquet.ParquetFile(part).metadata.num_row_groups == 4
    again = tables.compact(str(folder), part_mib=1.0, log=lambda _m: None)
    assert again.parts_written == 0 and again.files_after == 3  # parts stay as they are
    assert tables.finished(str(folder)) == units and _read(folder).equals(full)


@pytest.mark.faults
def test_a_killed_compaction_leaves_no_duplicate_and_the_next_one_cleans_up(tmp_path):
    folder, saved = tmp_path / "table", tmp_path / "saved"
    full = _write_units(folder, 4)
    shutil.copytree(folder, saved)
    tables.compact(str(folder), log=lambda _m: None)
    # the state of a compaction killed after writing its part, before deleting what it merged
    for name in os.listdir(saved)[:2]:
        shutil.copy(saved / name, folder / name)
    lst = tables.listing(str(folder))
    assert len(lst.leftovers) == 2 and len(lst.files) == 1
    assert _read(folder).equals(full), "a reader skips the files a part already holds"
    r = tables.compact(str(folder), log=lambda _m: None)
    assert r.leftovers_deleted == 2 and r.files_after == 1 and _read(folder).equals(full)


@pytest.mark.faults
def test_two_parts_holding_one_unit_and_a_vanished_file_are_errors(tmp_path):
    folder = tmp_path / "table"
    _write_units(folder, 3)
    saved = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    tables.compact(str(folder), log=lambda _m: None)
    first = tables.listing(str(folder)).parts[0]
    shutil.copy(first, tmp_path / "kept.bin")
    os.remove(first)
    for n, b in saved.items():  # as if a second compaction had listed the same files
        (folder / n).write_bytes(b)
    tables.compact(str(folder), log=lambda _m: None)
    shutil.copy(tmp_path / "kept.bin", first.replace(".parquet", "0.parquet"))
    with pytest.raises(schema.TableError, match="u000 is in two parts"):
        tables.listing(str(folder))
    with pytest.raises(storage.StorageNotFoundError, match="gone.parquet: not found"):
        schema.read_table(str(folder / "gone.parquet"), SCHEMA)
    # a parent folder is not compacted as one table (its tables lie in subfolders)
    with pytest.raises(storage.StorageNotFoundError, match="nor a folder of Parquet files"):
        tables.table_folders(str(tmp_path / "table" / ".."))


def test_compaction_on_s3(s3_cfg, s3_bucket):
    folder = f"{s3_bucket}/t/frames"
    full = _write_units(folder, 5, cfg=s3_cfg)
    r = tables.compact(folder, s3_cfg, log=lambda _m: None)
    assert r.parts_written == 1 and r.files_after == 1
    assert len(storage.list_files(folder, s3_cfg)) == 1
    assert _read(folder, s3_cfg).equals(full)
    assert tables.finished(folder, s3_cfg) == {f"u{i:03d}" for i in range(5)}


def test_resumed_runs_skip_what_compacted_parts_hold(ray_cluster, tiny_data, tiny_frames,
                                                     tiny_pairs, tmp_path, capsys):
    """`bluref compact` on an ingest and a pseudo-GT output: the same tables, the same summaries,
    and the same commands started again redo nothing."""
    frames, pairs = str(tmp_path / "ingest"), str(tmp_path / "pairs")
    shutil.copytree(tiny_frames, frames)
    shutil.copytree(tiny_pairs, pairs)
    before_frames = schema.sort_frames(schema.read_table(f"{frames}/frames", schema.FRAMES))
    before_pairs = schema.read_table(f"{pairs}/shards", schema.PSEUDO_PAIRS).sort_by("row_id")
    summary = json.load(open(f"{frames}/summary.json"))
    n_shards = len(os.listdir(f"{pairs}/shards"))
    assert main(["compact", frames, pairs, "--quiet"]) == 0
    assert "frames: 2 → 1 files" in capsys.readouterr().out
    assert len(os.listdir(f"{frames}/frames")) == 1 and len(os.listdir(f"{pairs}/shards")) == 1

    cfg = Config(ray=RayConfig(progress_bars=False), ingest=IngestConfig(max_refs=4, delta=4))
    s = run_ingest([f"{tiny_data}/train"], frames, cfg, log=lambda _m: None)
    assert s["this_run"] == {"clips": 0, "skipped": 2}
    paths = ("seconds", "this_run", "out", "frames_table", "rejects_table")
    assert {k: v for k, v in s.items() if k not in paths} == \
        {k: v for k, v in summary.items() if k not in paths}
    assert schema.sort_frames(schema.read_table(f"{frames}/frames", schema.FRAMES)).equals(
        before_frames)

    pg = Config(ray=RayConfig(progress_bars=False),
                pseudo_gt=PseudoGTConfig(max_refs=2, concurrency=1, limit=6))
    s = run_pseudo_gt(tiny_frames, pairs, pg, log=lambda _m: None)  # its compacted shards
    assert (s.this_run.shards, s.this_run.skipped) == (0, n_shards)
    assert schema.read_table(f"{pairs}/shards", schema.PSEUDO_PAIRS).sort_by("row_id").equals(
        before_pairs)
    # a new run reads the compacted frames table as it read the per-clip files
    fresh = str(tmp_path / "fresh")
    run_pseudo_gt(frames, fresh, pg, log=lambda _m: None)
    assert schema.read_table(f"{fresh}/shards", schema.PSEUDO_PAIRS).sort_by("row_id").equals(
        before_pairs)


def test_summaries_are_summed_by_ray_tasks_as_by_the_driver(ray_cluster, tiny_frames):
    files = tables.listing(f"{tiny_frames}/frames").files
    fn = functools.partial(_frames_stats, storage_cfg=None)
    by_ray = tables.map_files(files, fn, local_below=0, files_per_task=1)
    assert by_ray == [fn(f) for f in files]
    total = tables.sum_dicts(by_ray)
    assert total["frames"] == schema.read_table(f"{tiny_frames}/frames", schema.FRAMES).num_rows
    assert total["clips"] == 2
