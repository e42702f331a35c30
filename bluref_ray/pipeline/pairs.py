"""The pseudo-pairs of one window: match each blurry frame's references, fuse them, make rows.

:class:`PairMaker` is the work of stage 3 of :mod:`bluref_ray.pipeline.pseudo_gt`, built once
per actor (on the device Ray assigned) and called once per window. It is also what a plain loop
calls (``benchmarks/pseudo_gt.py``), so the pipeline and its baseline run the same code.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import torch

from bluref_ray import schema, storage
from bluref_ray.config import PseudoGTConfig
from bluref_ray.data.images import decode_image, encode_png, to_float, to_uint8
from bluref_ray.data.windows import BlurryFrame, Window
from bluref_ray.fusion import Align, Check, aligner, dis_rematch, fuse, torch_rematch
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
        self.check = Check(pg.check_gain, pg.check_noise) if pg.check else None
        self.deblurrer = None
        if pg.deblurrer:
            from bluref_ray.models import load_checkpoint

            model, _ = load_checkpoint(pg.deblurrer, storage_cfg, map_location=device)
            self.deblurrer = model.to(device).eval()

    @torch.no_grad()
    def __call__(self, window: Window, pixels: np.ndarray) -> tuple[list[dict], list[dict]]:
        """Rows of :data:`schema.PSEUDO_PAIRS` and of :data:`schema.PSEUDO_REJECTS`.

        Args:
            window: the window's blurry frames, with the pool indices of their pixels and of
                their references (:func:`bluref_ray.data.windows.load_windows`), and rejects.
            pixels: the window's frame pool, ``[F, H, W, 3]`` uint8.
        """
        pg = self.pg
        rejects = [{"clip_id": window.clip_id, **r.row()} for r in window.rejects]
        rows: list[dict] = []
        if not window.frames:
            return rows, rejects
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
                         pg.tau, available, self.rematch, blurry, pg.kernel_size, self.check)
            pseudo = to_uint8(fused.image)
            for i, f in enumerate(batch):
                rows.append(self._row(f, window.clip_id, pixels[f.pool], pseudo[i],
                                      fused.confidence[i, 0], float(fused.coverage[i]),
                                      int(fused.refs_used[i])))
        return rows, rejects

    def _match_input(self, blurry: torch.Tensor) -> torch.Tensor:
        """What the references are matched to: the blurry frames, or the deblurrer's output."""
        if self.deblurrer is None:
            return blurry
        from bluref_ray.models.tiling import tiled_forward

        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda"):
            return tiled_forward(self.deblurrer, blurry, tile=512, overlap=32).float()

    def _row(self, f: BlurryFrame, clip_id: str, blurry: np.ndarray, pseudo: np.ndarray,
             conf: torch.Tensor, coverage: float, refs_used: int) -> dict:
        pg = self.pg
        conf_np = conf.float().cpu().numpy()
        conf_u8 = to_uint8(conf[None])[..., 0]  # as stored
        hist = np.histogram(conf_np, bins=HIST_BINS, range=(0.0, 1.0))[0]
        psnr_pseudo = psnr_blurry = None
        if f.gt_uri:
            gt, _ = decode_image(storage.read_bytes(f.gt_uri, self.storage_cfg), f.gt_uri)
            if gt.shape == blurry.shape:
                images = to_float(np.stack([pseudo, blurry]))
                truth = to_float(gt).expand(2, -1, -1, -1)
                mask = torch.from_numpy(conf_u8 >= confidence_level(pg.tau)).expand(2, -1, -1)
                if mask.any():
                    psnr_pseudo, psnr_blurry = masked_psnr(images, truth, mask).tolist()
        return {
            "row_id": row_id(clip_id, f.frame_index, self.chash), "clip_id": clip_id,
            "frame_id": f.frame_id, "frame_index": f.frame_index, "round": pg.round,
            "matcher": pg.matcher, "strategy": pg.strategy, "tau": pg.tau,
            "config_hash": self.chash, "height": blurry.shape[0], "width": blurry.shape[1],
            "blurry_png": encode_png(blurry), "pseudo_png": encode_png(pseudo),
            "confidence_png": encode_png(conf_u8),
            "coverage": coverage, "confidence_hist": hist.tolist(), "refs_used": refs_used,
            "reference_ids": f.ref_ids, "source_uri": f.source_uri, "gt_uri": f.gt_uri,
            "psnr_pseudo": psnr_pseudo, "psnr_blurry": psnr_blurry,
        }


def shard_uri(out: str, name: str) -> str:
    return storage.join(out, "shards", f"{name}.parquet")


def write_window(out: str, shard: str, rows: list[dict], rejects: list[dict],
                 storage_cfg: StorageConfig | None) -> None:
    """Rejects first, then the shard: the shard's presence marks the window done."""
    if rejects:
        schema.write_table(pa.Table.from_pylist(rejects, schema=schema.PSEUDO_REJECTS),
                           storage.join(out, "rejects", f"{shard}.parquet"), storage_cfg)
    schema.write_table(pa.Table.from_pylist(rows, schema=schema.PSEUDO_PAIRS),
                       shard_uri(out, shard), storage_cfg)
