"""The pseudo-pairs of one window: match each blurry frame's references, fuse them, make rows.

:meth:`PairMaker.make` is the work of stage 3 of :mod:`bluref_ray.pipeline.pseudo_gt` (built
once per actor, on the device Ray assigned, and called once per window), :func:`encode_pairs`
and :func:`write_window` that of stage 4. A plain loop calls the same functions
(``benchmarks/pseudo_gt.py``), so the pipeline and its baseline run the same code.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pyarrow as pa
import torch

from bluref_ray import schema, storage
from bluref_ray.config import PseudoGTConfig
from bluref_ray.config.data import PROTOCOLS
from bluref_ray.data.images import ImageError, decode_image, encode_png, to_float, to_uint8
from bluref_ray.data.windows import Window
from bluref_ray.fusion import (
    Align,
    Check,
    aligner,
    dis_rematch,
    fuse,
    load_selector,
    torch_rematch,
)
from bluref_ray.losses import confidence_level
from bluref_ray.matching import matcher_from_config
from bluref_ray.metrics import masked_psnr
from bluref_ray.storage import StorageConfig

#: bins of the confidence histogram of each row
HIST_BINS = 10


def row_id(clip_id: str, frame_index: int, chash: str) -> str:
    """A pair's id: the same blurry frame under the same settings always gets the same id."""
    return hashlib.sha1(f"{clip_id}:{frame_index}:{chash}".encode()).hexdigest()[:16]


def build_align(pg: PseudoGTConfig, device: torch.device,
                storage_cfg: StorageConfig | None = None) -> Align:
    """The configured matcher, on ``device``, wrapped to align references."""
    return aligner(matcher_from_config(pg, pg.matcher, storage_cfg).to(device))


class PairMaker:
    """Matches and fuses the blurry frames of windows into rows of :data:`schema.PSEUDO_PAIRS`.

    Built once, where it runs: the matcher (and the ``reblur`` strategy's second matching, and
    the optional deblurrer whose output is matched instead of the blurry frame) load on
    ``device`` in the constructor.

    Args:
        pg: strategy, τ, batch size, round, matcher and its settings, deblurrer.
        chash: the settings hash recorded in each row (and part of its id).
        device: where the tensors go.
        storage_cfg: where checkpoints and ground truth (for the quality figures) are read.
    """

    def __init__(self, pg: PseudoGTConfig, chash: str, device: torch.device,
                 storage_cfg: StorageConfig | None = None) -> None:
        self.pg, self.chash, self.device, self.storage_cfg = pg, chash, device, storage_cfg
        self.align = build_align(pg, device, storage_cfg)
        self.rematch = None
        if pg.strategy == "reblur":
            self.rematch = torch_rematch() if pg.refiner == "torch" else dis_rematch(pg.dis_preset)
        self.checks: dict[str, Check] = {}  # per reference protocol
        if pg.check:
            selector = None
            if pg.selector_uri():
                selector = load_selector(pg.selector_uri(), storage_cfg).to(device)
            self.checks = {protocol: Check(pg.check_gain, pg.check_noise,
                                           pg.sharp_level(protocol), tile=pg.check_tile,
                                           selector=selector, selector_p=pg.selector_p(protocol))
                           for protocol in PROTOCOLS}
        self.deblurrer = None
        if pg.deblurrer:
            from bluref_ray.models import load_checkpoint

            model, _ = load_checkpoint(pg.deblurrer, storage_cfg, map_location=device)
            self.deblurrer = model.to(device).eval()

    def __call__(self, window: Window, pixels: np.ndarray) -> tuple[list[dict], list[dict]]:
        """Rows of :data:`schema.PSEUDO_PAIRS` and of :data:`schema.PSEUDO_REJECTS`: the window's
        pairs made (:meth:`make`) and encoded (:func:`encode_pairs`), as a plain loop does."""
        return encode_pairs(self.make(window, pixels), self.pg, self.chash, self.storage_cfg)

    @torch.no_grad()
    def make(self, window: Window, pixels: np.ndarray) -> WindowPairs:
        """The window's pseudo-pairs as pixels: matched and fused on the device, copied back as
        uint8 (what is stored), not yet encoded.

        Args:
            window: the window's blurry frames, with the pool indices of their pixels and of
                their references (:func:`bluref_ray.data.windows.load_windows`), and rejects.
            pixels: the window's frame pool, ``[F, H, W, 3]`` uint8.
        """
        pg = self.pg
        made = WindowPairs(window, pixels[[f.pool for f in window.frames]])
        if not window.frames:
            return made
        pool = to_float(pixels, self.device)
        for start in range(0, len(window.frames), pg.batch_size):
            batch = window.frames[start:start + pg.batch_size]
            n = max(len(f.refs) for f in batch)
            ref_idx = torch.tensor([f.refs + [0] * (n - len(f.refs)) for f in batch],
                                   device=self.device)
            available = torch.tensor([[k < len(f.refs) for k in range(n)] for f in batch],
                                     device=self.device)
            blurry = pool[[f.pool for f in batch]]
            fused = fuse(pg.strategy, self._match_input(blurry), pool[ref_idx], self.align,
                         pg.tau, available, self.rematch, blurry, pg.kernel_size,
                         self.checks.get(window.protocol))
            made.pseudo.append(to_uint8(fused.image))
            conf = fused.confidence[:, 0]
            made.confidence.append(to_uint8(conf[:, None])[..., 0])  # as stored
            made.confidence_hist += [np.histogram(c, bins=HIST_BINS, range=(0.0, 1.0))[0]
                                     .tolist() for c in conf.float().cpu().numpy()]
            made.coverage += fused.coverage.float().cpu().tolist()
            made.refs_used += [int(r) for r in fused.refs_used.cpu().tolist()]
        return made

    def _match_input(self, blurry: torch.Tensor) -> torch.Tensor:
        """What the references are matched to: the blurry frames, or the deblurrer's output."""
        if self.deblurrer is None:
            return blurry
        from bluref_ray.models.tiling import tiled_forward

        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda"):
            return tiled_forward(self.deblurrer, blurry, tile=512, overlap=32).float()


@dataclasses.dataclass
class WindowPairs:
    """A window's pseudo-pairs as uint8 pixels (:meth:`PairMaker.make`), before encoding: what
    a matching actor hands to the tasks that encode and write shards (:func:`encode_pairs`)."""

    window: Window
    blurry: np.ndarray  #: ``[B, H, W, 3]``, the window's blurry frames in order
    pseudo: list[np.ndarray] = dataclasses.field(default_factory=list)  #: ``[b, H, W, 3]`` each
    confidence: list[np.ndarray] = dataclasses.field(default_factory=list)  #: ``[b, H, W]``
    confidence_hist: list[list[int]] = dataclasses.field(default_factory=list)
    coverage: list[float] = dataclasses.field(default_factory=list)
    refs_used: list[int] = dataclasses.field(default_factory=list)


def encode_pairs(made: WindowPairs, pg: PseudoGTConfig, chash: str,
                 storage_cfg: StorageConfig | None = None) -> tuple[list[dict], list[dict]]:
    """Rows of :data:`schema.PSEUDO_PAIRS` (PNG bytes; PSNR against the ground truth where a
    frame has one) and of :data:`schema.PSEUDO_REJECTS` of a window's pairs."""
    w = made.window
    rejects = [{"clip_id": w.clip_id, **r.row()} for r in w.rejects]
    pseudo = np.concatenate(made.pseudo) if made.pseudo else made.blurry[:0]
    conf = np.concatenate(made.confidence) if made.confidence else made.blurry[:0, ..., 0]
    rows = []
    for i, f in enumerate(w.frames):
        psnr_pseudo = psnr_blurry = None
        if f.gt_uri:
            psnr_pseudo, psnr_blurry = _psnr_on_confident(f.gt_uri, made.blurry[i], pseudo[i],
                                                          conf[i], pg.tau, storage_cfg)
        rows.append({
            "row_id": row_id(w.clip_id, f.frame_index, chash), "clip_id": w.clip_id,
            "frame_id": f.frame_id, "frame_index": f.frame_index, "round": pg.round,
            "matcher": pg.matcher, "strategy": pg.strategy, "tau": pg.tau,
            "config_hash": chash, "height": pseudo.shape[1], "width": pseudo.shape[2],
            "blurry_png": encode_png(made.blurry[i]), "pseudo_png": encode_png(pseudo[i]),
            "confidence_png": encode_png(conf[i]),
            "coverage": made.coverage[i], "confidence_hist": made.confidence_hist[i],
            "refs_used": made.refs_used[i], "reference_ids": f.ref_ids,
            "source_uri": f.source_uri, "gt_uri": f.gt_uri,
            "psnr_pseudo": psnr_pseudo, "psnr_blurry": psnr_blurry,
        })
    return rows, rejects


def _psnr_on_confident(gt_uri: str, blurry: np.ndarray, pseudo: np.ndarray, conf_u8: np.ndarray,
                       tau: float, storage_cfg: StorageConfig | None
                       ) -> tuple[float | None, float | None]:
    """PSNR of the pseudo-sharp image and of the blurry frame against the ground truth, over
    the pixels stored as confident; ``None`` where the truth has another size, cannot be read
    (a figure only: the pair is made all the same) or no pixel is."""
    try:
        gt, _ = decode_image(storage.read_bytes(gt_uri, storage_cfg), gt_uri)
    except (storage.StorageNotFoundError, ImageError):
        return None, None
    mask = torch.from_numpy(conf_u8 >= confidence_level(tau))
    if gt.shape != blurry.shape or not mask.any():
        return None, None
    images = to_float(np.stack([pseudo, blurry]))
    return tuple(masked_psnr(images, to_float(gt).expand(2, -1, -1, -1),
                             mask.expand(2, -1, -1)).tolist())


def shard_uri(out: str, name: str) -> str:
    return storage.join(out, "shards", f"{name}.parquet")


def write_window(out: str, shard: str, rows: list[dict], rejects: list[dict],
                 storage_cfg: StorageConfig | None) -> None:
    """Rejects first, then the shard: the shard's presence marks the window done. A window
    redone without rejects deletes those of an earlier, killed try (its cause since fixed)."""
    uri = storage.join(out, "rejects", f"{shard}.parquet")
    if rejects:
        schema.write_table(pa.Table.from_pylist(rejects, schema=schema.PSEUDO_REJECTS), uri,
                           storage_cfg)
    else:
        storage.delete(uri, storage_cfg)
    schema.write_table(pa.Table.from_pylist(rows, schema=schema.PSEUDO_PAIRS),
                       shard_uri(out, shard), storage_cfg)
