"""Schemas of the tables bluref-ray writes, and how to read them back.

Tables are folders of Parquet files (one file per clip for ingest, see :mod:`bluref_ray.tables`),
so they can be written in parallel, resumed file by file, and read by Ray Data or pyarrow alike.
Every file read is checked against its schema first: a file that is not Parquet, or is of another
table or version, is a :class:`TableError` that names it, never a table with silent nulls.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from bluref_ray import storage
from bluref_ray.config.core import ConfigError
from bluref_ray.storage import StorageConfig


class TableError(ConfigError):
    """A table file cannot be used: not Parquet, or not of the table and version expected. The
    message names the file."""

#: One row per frame. Blurry rows carry the frame ids of their sharp references, nearest first.
FRAMES = pa.schema([
    pa.field("frame_id", pa.string(), nullable=False),  # "<clip_id>:<role>:<index:06d>"
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_kind", pa.string(), nullable=False),  # video | tree | images
    pa.field("frame_index", pa.int32(), nullable=False),
    pa.field("timestamp", pa.float64()),  # seconds from the clip start
    pa.field("source_uri", pa.string(), nullable=False),  # the video, or the image file
    pa.field("gt_uri", pa.string()),  # ground truth of a blurry tree frame, if known
    pa.field("role", pa.string(), nullable=False),  # blurry | sharp
    pa.field("laplacian_var", pa.float64(), nullable=False),
    pa.field("fft_score", pa.float64(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("pixel_format", pa.string()),  # as stored: rgb8, gray16, yuv420p, ...
    pa.field("blur_threshold", pa.float64()),  # the label threshold (null: none applied)
    pa.field("relative_score", pa.float64()),  # local rule: score / the sharp level around it
    pa.field("label_reason", pa.string()),  # why the frame got its role, in words
    pa.field("protocol", pa.string()),  # reference protocol of the clip: camera | paper
    pa.field("references", pa.list_(pa.string()), nullable=False),
])

#: One row per file (or frame) that could not be used.
REJECTS = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("frame_index", pa.int32()),
    pa.field("stage", pa.string(), nullable=False),  # open | decode | size | empty
    pa.field("reason", pa.string(), nullable=False),
])


#: One row per blurry frame: the pseudo-pair (PNG bytes) and how it was made.
PSEUDO_PAIRS = pa.schema([
    pa.field("row_id", pa.string(), nullable=False),  # hash of clip, frame index, config hash
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("frame_id", pa.string(), nullable=False),
    pa.field("frame_index", pa.int32(), nullable=False),
    pa.field("round", pa.int16(), nullable=False),
    pa.field("matcher", pa.string(), nullable=False),
    pa.field("strategy", pa.string(), nullable=False),
    pa.field("tau", pa.float32(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("blurry_png", pa.binary(), nullable=False),
    pa.field("pseudo_png", pa.binary(), nullable=False),
    pa.field("confidence_png", pa.binary(), nullable=False),  # uint8: round(255 · confidence)
    pa.field("coverage", pa.float32(), nullable=False),  # share of pixels with confidence ≥ τ
    pa.field("confidence_hist", pa.list_(pa.int64()), nullable=False),  # 10 bins over [0, 1]
    pa.field("refs_used", pa.int16(), nullable=False),  # references matched
    pa.field("reference_ids", pa.list_(pa.string()), nullable=False),  # references available
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("gt_uri", pa.string()),
    pa.field("psnr_pseudo", pa.float32()),  # vs ground truth, confident pixels (if known)
    pa.field("psnr_blurry", pa.float32()),  # blurry vs ground truth, same pixels
])

#: One row per blurry frame that got no pseudo-pair, and why.
PSEUDO_REJECTS = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("frame_id", pa.string(), nullable=False),
    pa.field("frame_index", pa.int32(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
])


def frame_id(clip_id: str, role: str, index: int) -> str:
    return f"{clip_id}:{role}:{index:06d}"


def write_table(table: pa.Table, uri: str, cfg: StorageConfig | None = None) -> None:
    """Write one Parquet file atomically (local or object storage)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue(), cfg)


def table_name(schema: pa.Schema) -> str:
    """What a table of ``schema`` is called in messages."""
    for known, name in ((FRAMES, "frames table"), (REJECTS, "ingest rejects table"),
                        (PSEUDO_PAIRS, "pseudo-pair shard"),
                        (PSEUDO_REJECTS, "pseudo-GT rejects table")):
        if schema.equals(known):
            return name
    return "table"


def check_schema(uri: str, found: pa.Schema, schema: pa.Schema,
                 columns: list[str] | None = None) -> None:
    """Raise :class:`TableError` unless the file ``uri``, whose Parquet schema is ``found``,
    holds ``columns`` (default: all) of ``schema`` with their types."""
    problems = []
    for name in columns or schema.names:
        want = schema.field(name).type
        i = found.get_field_index(name)
        if i < 0:
            problems.append(f"no column {name}")
        elif not found.field(i).type.equals(want):
            problems.append(f"column {name} is {found.field(i).type}, not {want}")
    if problems:
        raise TableError(f"{uri}: not a {table_name(schema)} of this bluref-ray version "
                         f"({'; '.join(problems[:5])}); remake it with this version, or move it "
                         "out of the folder")


def check_file(uri: str, schema: pa.Schema, cfg: StorageConfig | None = None,
               columns: list[str] | None = None) -> None:
    """Read the footer of the Parquet file ``uri`` and check it (:func:`check_schema`).

    Raises:
        TableError: not a readable Parquet file, or not of ``schema``.
    """
    fs, path = storage.resolve(uri, cfg)
    try:
        with fs.open_input_file(path) as f:
            found = pq.read_schema(f)
    except (pa.ArrowInvalid, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        storage.raise_if_unreachable(e, "read", uri, cfg)
        raise TableError(f"{uri}: not a readable Parquet file ({e})") from None
    check_schema(uri, found, schema, columns)


@storage.outlasts_outages
def read_table(uri: str, schema: pa.Schema, cfg: StorageConfig | None = None,
               columns: list[str] | None = None, where: pads.Expression | None = None
               ) -> pa.Table:
    """Read a table folder (see :mod:`bluref_ray.tables`) or one Parquet file as one table
    (empty, with ``schema``, if there are no files); ``where`` selects rows (a part's row
    groups that cannot match are skipped). Read again from the start while S3 cannot be
    reached (``storage.outage_s``)."""
    from bluref_ray import tables

    if uri.endswith(".parquet"):  # one file: gone is an error, never an empty table
        if not storage.is_file(uri, cfg):
            raise storage.StorageNotFoundError(
                f"{uri}: not found (deleted, or merged by `bluref compact`, while this job "
                "ran); run the job again")
        files = [storage.normalize(uri)]
    else:
        files = tables.listing(uri, cfg).files
    if not files:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    fs, _ = storage.resolve(uri, cfg)
    paths = [storage.resolve(f, cfg)[1] for f in files]
    dataset = pads.dataset(paths, schema=schema, filesystem=fs, format="parquet")
    wanted = schema.names if where is not None else (columns or schema.names)
    for file, fragment in zip(files, dataset.get_fragments()):  # footers, read once
        try:
            found = fragment.physical_schema
        except (pa.ArrowInvalid, OSError) as e:
            storage.raise_if_unreachable(e, "read", file, cfg)
            raise TableError(f"{file}: not a readable Parquet file ({e})") from None
        check_schema(file, found, schema, wanted)
    try:
        return dataset.to_table(columns=columns, filter=where)
    except (pa.ArrowInvalid, OSError) as e:
        storage.raise_if_unreachable(e, "read", uri, cfg)
        raise TableError(f"{uri}: a file of the {table_name(schema)} cannot be read ({e})"
                         ) from None


def sort_frames(table: pa.Table) -> pa.Table:
    """Frames in a stable order: by clip, frame index, role."""
    return table.sort_by([("clip_id", "ascending"), ("frame_index", "ascending"),
                          ("role", "ascending")])
