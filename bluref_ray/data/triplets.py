"""Ref-NAFNet's data: (blurry, reference, target) triplets, the reference chosen by sharpness.

**The reference** of a blurry frame at index ``t`` is one of its clip's frames within ``±Δ``
(never ``t`` itself), ranked by the frequency sharpness score of Zou et al.
(:func:`~bluref_ray.data.sharpness.fft_score`, the frames table's ``fft_score``), by ``rule``:

- ``sharpest`` (the default; training and inference), ``middle``, ``blurriest`` (the paper's
  Table 5: the top, the middle and the bottom of the ranked list);
- ``random``: any of them;
- ``shuffled``: the sharpest frame near the same index of *another* clip (the next one in
  order): a reference that shows another scene, to check that a gain comes from the reference.

Candidates are the frames a camera recorded: blurry frames, and sharp frames that are not the
ground truth of a blurry frame (in a paired tree of the paper's protocol, where every index is
blurry, the sharp frames of the other indices, as the paper does).

**The target** is the ground truth (``gt_uri``, supervised) or, with no paired data at all,
BluRef's pseudo-sharp frame with its confidence mask (the pseudo-GT shards).

Each training worker holds at most ``max_frames`` triplets in memory as ``[H, W, 10]`` uint8
stacks (blurry, reference, target, mask·255) and cuts random crops from them
(:func:`triplet_crops`): a square of blurry, target and mask, and a larger square of the
reference around the same place (the paper crops one square of both; the camera moves between a
frame and its reference, and a larger crop keeps what the blurry crop shows in view), all
flipped alike.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from bluref_ray import schema, storage
from bluref_ray.config import ConfigError
from bluref_ray.data.images import decode_image
from bluref_ray.data.windows import ClipFrames
from bluref_ray.storage import StorageConfig

#: How a reference is chosen among the frames within ±Δ (see the module docstring).
REFERENCE_RULES = ("sharpest", "middle", "blurriest", "random", "shuffled")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A frame that may serve as a reference."""

    index: int
    key: str  #: frame id (frames table) or file URI
    score: float  #: sharpness (higher is sharper)


def recorded(frames: list[dict]) -> list[dict]:
    """The frames of one clip that may be references: blurry frames, and sharp frames that are
    not a blurry frame's ground truth (unless every index is blurry: a paired tree of the
    paper's protocol, whose other indices' sharp frames are references)."""
    blurry = {f["index"] for f in frames if f["role"] == "blurry"}
    sharp = {f["index"] for f in frames if f["role"] != "blurry"}
    paper = bool(sharp) and sharp <= blurry
    return [f for f in frames if f["role"] == "blurry" or paper or f["index"] not in blurry]


def choose(candidates: list[Candidate], index: int, delta: int, rule: str,
           rng: np.random.Generator | None = None) -> Candidate | None:
    """The reference of the frame at ``index`` by ``rule`` (not ``shuffled``: the caller passes
    another clip's candidates for that), or None when no candidate is within ±Δ."""
    near = [c for c in candidates if c.index != index and abs(c.index - index) <= delta]
    if not near:
        return None
    near.sort(key=lambda c: (-c.score, abs(c.index - index), c.index))  # sharpest first
    if rule == "random":
        return near[int((rng or np.random.default_rng()).integers(len(near)))]
    return near[{"sharpest": 0, "middle": len(near) // 2, "blurriest": -1}[rule]]


def reference_for(clips: dict[str, list[Candidate]], clip_id: str, index: int, delta: int,
                  rule: str, rng: np.random.Generator | None = None) -> Candidate | None:
    """:func:`choose` over the frame's own clip, or for ``shuffled`` the sharpest candidate near
    the same index of the next clip (the index moved inside that clip's range)."""
    if rule not in REFERENCE_RULES:
        raise ConfigError(f"reference rule {rule!r}: use one of {', '.join(REFERENCE_RULES)}")
    if rule != "shuffled":
        return choose(clips.get(clip_id, []), index, delta, rule, rng)
    others = [c for c in sorted(clips) if c != clip_id and clips[c]]
    if not others:
        raise ConfigError("reference=shuffled needs a second clip to take references from")
    nxt = next((c for c in others if c > clip_id), others[0])
    lo = min(c.index for c in clips[nxt])
    hi = max(c.index for c in clips[nxt])
    at = min(max(index, lo), hi)
    return choose(clips[nxt], at, delta, "sharpest") or choose(clips[nxt], at, 10**9,
                                                               "sharpest")


def candidates_from_table(table) -> dict[str, list[Candidate]]:
    """Per clip, the reference candidates of a frames table (``fft_score`` as sharpness)."""
    by_clip: dict[str, list[dict]] = defaultdict(list)
    cols = ["frame_id", "clip_id", "frame_index", "role", "fft_score"]
    for r in table.select(cols).to_pylist():
        by_clip[r["clip_id"]].append({"index": r["frame_index"], "role": r["role"],
                                      "key": r["frame_id"], "score": r["fft_score"]})
    return {c: [Candidate(f["index"], f["key"], f["score"]) for f in recorded(rows)]
            for c, rows in by_clip.items()}


def read_frames(frames: str, storage_cfg: StorageConfig | None):
    """The frames table of a ``bluref ingest`` output (or of its ``frames/`` folder).

    Raises:
        ConfigError: no frames there.
    """
    root = storage.normalize(frames)
    sub = storage.join(root, "frames")
    table = schema.read_table(sub if storage.exists(sub, storage_cfg) else root, schema.FRAMES,
                              storage_cfg)
    if not table.num_rows:
        raise ConfigError(f"{frames}: no frames table (run `bluref ingest` on the video first)")
    return schema.sort_frames(table)


@dataclasses.dataclass
class Triplet:
    """One blurry frame's training example (ids, for logs and errors)."""

    frame_id: str
    clip_id: str
    index: int
    reference: str  #: frame id
    target: str  #: ``gt_uri``, or ``pseudo`` for a pseudo-pair


def plan_triplets(table, rule: str, delta: int, pairs_table=None, max_frames: int = 0,
                  seed: int = 0) -> list[Triplet]:
    """The blurry frames that have a target and a reference, with both chosen (evenly picked,
    at most ``max_frames``; 0: all).

    Args:
        table: the frames table.
        pairs_table: pseudo-GT rows (``frame_id``); None: supervised, targets are ``gt_uri``.

    Raises:
        ConfigError: no blurry frame has both.
    """
    from bluref_ray.data.domains import evenly

    clips = candidates_from_table(table)
    rng = np.random.default_rng(seed)
    pseudo = set(pairs_table.column("frame_id").to_pylist()) if pairs_table is not None else None
    out = []
    for r in table.select(["frame_id", "clip_id", "frame_index", "role", "gt_uri"]).to_pylist():
        if r["role"] != "blurry":
            continue
        target = ("pseudo" if r["frame_id"] in pseudo else None) if pseudo is not None \
            else r["gt_uri"]
        if not target:
            continue
        ref = reference_for(clips, r["clip_id"], r["frame_index"], delta, rule, rng)
        if ref is not None:
            out.append(Triplet(r["frame_id"], r["clip_id"], r["frame_index"], ref.key, target))
    if not out:
        what = "a pseudo-pair" if pseudo is not None else "ground truth (gt_uri)"
        raise ConfigError(f"no blurry frame has {what} and a reference within ±{delta} frames")
    return evenly(out, max_frames) if max_frames else out


def load_triplets(triplets: list[Triplet], table, storage_cfg: StorageConfig | None,
                  pairs_table=None, tau: float = 0.7,
                  log: Callable[[str], None] | None = None) -> list[np.ndarray]:
    """Decode triplets into ``[H, W, 10]`` uint8 stacks: blurry, reference, target, and the
    mask ×255 (confidence ≥ τ of a pseudo-pair; all 255 with ground truth). Frames that cannot
    be read are skipped (and logged); references are resized to the blurry frame's size.
    """
    import cv2

    from bluref_ray.losses import confidence_level

    rows = {r["frame_id"]: r for r in table.to_pylist()}
    pseudo = {}
    if pairs_table is not None:
        for r in pairs_table.select(["frame_id", "pseudo_png", "confidence_png"]).to_pylist():
            pseudo[r["frame_id"]] = r
    by_clip: dict[str, list[Triplet]] = defaultdict(list)
    for t in triplets:
        by_clip[t.clip_id].append(t)
    stacks = []
    level = confidence_level(tau)
    for clip_id, items in by_clip.items():
        wanted = {t.frame_id for t in items} | {t.reference for t in items}
        # one reader per source clip: a shuffled reference is a frame of another clip's video
        readers: dict[str, ClipFrames] = {}

        def frames_of(fid: str) -> ClipFrames:
            clip = rows[fid]["clip_id"] if fid in rows else clip_id
            if clip not in readers:
                readers[clip] = ClipFrames({k: rows[k] for k in wanted
                                            if k in rows and rows[k]["clip_id"] == clip},
                                           storage_cfg)
            return readers[clip]

        for t in sorted(items, key=lambda t: t.index):
            try:
                blurry = frames_of(t.frame_id).get(t.frame_id, wanted)
                ref = frames_of(t.reference).get(t.reference, wanted)
                if t.target == "pseudo":
                    p = pseudo[t.frame_id]
                    target = decode_image(p["pseudo_png"], "pseudo_png")[0]
                    conf = decode_image(p["confidence_png"], "confidence_png")[0][..., :1]
                    mask = np.where(conf >= level, 255, 0).astype(np.uint8)
                else:
                    target = decode_image(storage.read_bytes(t.target, storage_cfg), t.target)[0]
                    mask = np.full(blurry.shape[:2] + (1,), 255, np.uint8)
            except (LookupError, ValueError, storage.StorageNotFoundError) as e:
                if log:
                    log(f"[triplets] skipped {t.frame_id}: {e}")
                continue
            if target.shape != blurry.shape:
                raise ValueError(f"{t.target}: size {target.shape[:2]} differs from the blurry "
                                 f"frame {t.frame_id} ({blurry.shape[:2]})")
            if ref.shape != blurry.shape:
                ref = cv2.resize(ref, blurry.shape[1::-1], interpolation=cv2.INTER_AREA)
            stacks.append(np.concatenate([blurry, ref, target, mask], 2))
        for frames in readers.values():
            frames.keep_only(set())
    return stacks


def file_references(data: list[str], frames: list[dict], rule: str, delta: int,
                    storage_cfg: StorageConfig | None, max_side: int = 0,
                    seed: int = 0) -> dict[str, str | None]:
    """The reference file of each frame to deblur (``{"uri", "clip_id", "index"}``) among the
    image files of its clip in ``data`` (frame trees or image folders), by ``rule``; the
    candidates' sharpness is computed here. None where no frame is within ±Δ.
    """
    from bluref_ray.data.sharpness import fft_score, to_gray
    from bluref_ray.data.sources import discover

    wanted = {f["clip_id"] for f in frames}
    if rule == "shuffled":
        wanted = None  # any clip may give the reference
    clips: dict[str, list[Candidate]] = {}
    for source in data:
        for clip in discover(source, storage_cfg):
            if wanted is not None and clip.clip_id not in wanted:
                continue
            files = [{"index": f.index, "role": f.role or "blurry", "uri": f.uri}
                     for f in clip.files]
            cands = []
            for f in recorded(files):
                rgb = decode_image(storage.read_bytes(f["uri"], storage_cfg), f["uri"])[0]
                cands.append(Candidate(f["index"], f["uri"], fft_score(to_gray(rgb, max_side))))
            clips[clip.clip_id] = cands
    rng = np.random.default_rng(seed)
    out = {}
    for f in frames:
        ref = reference_for(clips, f["clip_id"], f["index"], delta, rule, rng)
        out[f["uri"]] = ref.key if ref else None
    return out


def triplet_crops(stacks: list[np.ndarray], n: int, size: int, ref_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random crops of triplet stacks: ``size``² of blurry, target and mask, and the
    ``ref_size``² square of the reference centred on it (moved inside the frame), flipped
    alike. Frames smaller than a crop are padded by repeating their edges.

    Shape:
        → ``([n, size, size, 7]`` blurry, target, mask; ``[n, ref_size, ref_size, 3]``
        reference), uint8.
    """
    from bluref_ray.data.domains import pad_edges

    side = max(size, ref_size)
    out, refs = [], []
    for i in rng.integers(0, len(stacks), size=n):
        img = pad_edges(stacks[i], side)
        h, w = img.shape[:2]
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        ry = min(max(0, y + size // 2 - ref_size // 2), h - ref_size)
        rx = min(max(0, x + size // 2 - ref_size // 2), w - ref_size)
        crop = img[y:y + size, x:x + size][..., np.r_[0:3, 6:10]]
        ref = img[ry:ry + ref_size, rx:rx + ref_size, 3:6]
        if rng.random() < 0.5:
            crop, ref = crop[:, ::-1], ref[:, ::-1]
        if rng.random() < 0.5:
            crop, ref = crop[::-1], ref[::-1]
        out.append(crop)
        refs.append(ref)
    return np.ascontiguousarray(np.stack(out)), np.ascontiguousarray(np.stack(refs))
