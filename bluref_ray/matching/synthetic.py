"""Self-supervised matching pairs, made on the fly from real photos (no real pairs needed).

A pair is a sharp **reference** crop of a photo and a **query** that sees the same photo through
a random smooth mapping ``g`` (homography, plus thin-plate-spline and elastic displacements),
then degraded BSRGAN-style (motion blur along a random curved path, Gaussian or defocus blur,
noise, JPEG, exposure change), and sometimes partly covered by an occluder cut from another
photo. The true flow is ``g(p) - p`` (query pixel → reference pixel, as the
:class:`~bluref_ray.matching.Matcher` protocol defines it); it is valid where ``g(p)`` falls
inside the reference crop and no occluder covers the query.

Some pairs (``p_object``) also get a foreground object in both images that moves on its own, as
cars and people do in fleet video: its pixels have their own flow, blurred along their own
motion, and the background it hides in the reference is invalid.

Everything runs in torch (kornia for the perspective and TPS maps, the blur filters and JPEG), on
whatever device the photos are on, and is deterministic for a ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import numpy as np
import torch
import torch.nn.functional as F

from bluref_ray.matching.warp import bilinear_sample

#: scikit-image photos used for training (grayscale ones are repeated to RGB). The photos the
#: synthesizer's evaluation scenes come from (hubble_deep_field, immunohistochemistry, retina)
#: are kept out, so pseudo-GT quality is measured on scenes the matcher never saw.
TRAIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "camera",
                "moon", "coins", "text", "page", "clock", "cell", "colorwheel")
HELD_OUT_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina")


@dataclass(frozen=True)
class PairConfig:
    """How hard the synthetic pairs are. Distances are fractions of the crop size."""

    size: int = 192  # crop side in pixels
    shift: float = 0.12  # largest global translation
    corner: float = 0.06  # largest homography corner jitter
    tps: float = 0.02  # thin-plate-spline control point jitter
    elastic_px: float = 1.5  # elastic displacement amplitude, pixels
    p_blur: float = 0.75  # share of queries that get blurred
    motion_px: tuple[float, float] = (3.0, 21.0)  # motion blur path length, pixels
    noise: float = 0.02  # largest Gaussian noise sigma (image in [0, 1])
    p_jpeg: float = 0.4
    p_occluder: float = 0.4
    p_object: float = 0.0  # pairs with a foreground object moving on its own (see make_pair)
    object_shift: float = 0.15  # the object's largest translation
    p_identity: float = 0.05  # pairs with no motion and no degradation (confidence must be 1)


def load_photos(names: tuple[str, ...] = TRAIN_PHOTOS, folder: str | None = None,
                storage_cfg=None, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Photos as ``[3, H, W]`` float tensors in [0, 1]: scikit-image ones, plus a folder's.

    Args:
        names: scikit-image sample photos.
        folder: a local or ``s3://`` folder of images to add (PNG/JPEG/...).
    """
    from bluref_ray.data.camera import load_photo

    imgs = [load_photo(n) for n in names]
    if folder:
        from bluref_ray import storage
        from bluref_ray.data.images import decode_image
        from bluref_ray.data.sources import IMAGE_EXTENSIONS

        for uri in storage.list_files(folder, storage_cfg):
            if uri.lower().endswith(IMAGE_EXTENSIONS):
                imgs.append(decode_image(storage.read_bytes(uri, storage_cfg), uri)[0])
    return [torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1).float().div(255).to(device)
            for i in imgs]


def _u(gen: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=gen)


def random_mapping(h: int, w: int, cfg: PairConfig, gen: torch.Generator) -> torch.Tensor:
    """A smooth random map ``g`` from query pixels to reference pixels.

    Shape:
        → ``[2, H, W]`` absolute reference positions (x, y) of each query pixel.
    """
    size = float(max(h, w))
    src = torch.tensor([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])
    shift = _u(gen, -cfg.shift, cfg.shift, 1, 2) * size
    dst = src + shift + _u(gen, -cfg.corner, cfg.corner, 4, 2) * size
    hom = kornia.geometry.transform.get_perspective_transform(src[None], dst[None])[0]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], 0).reshape(3, -1)
    mapped = hom @ pts
    g = (mapped[:2] / mapped[2:].clamp_min(1e-6)).reshape(2, h, w)
    if cfg.tps > 0:  # thin-plate spline through jittered control points (normalised coords)
        k = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 3),
                                       indexing="xy"), -1).reshape(1, 9, 2)
        moved = k + _u(gen, -2 * cfg.tps, 2 * cfg.tps, 1, 9, 2)
        kernel, affine = kornia.geometry.transform.get_tps_transform(moved, k)
        norm = torch.stack([xs / max(w - 1, 1) * 2 - 1, ys / max(h - 1, 1) * 2 - 1], -1)
        warped = kornia.geometry.transform.warp_points_tps(norm.reshape(1, -1, 2), k, kernel,
                                                           affine).reshape(h, w, 2)
        disp = (warped - norm).permute(2, 0, 1)
        g = g + disp * torch.tensor([(w - 1) / 2, (h - 1) / 2])[:, None, None]
    if cfg.elastic_px > 0:  # smooth random field
        coarse = torch.randn(1, 2, max(2, h // 24), max(2, w // 24), generator=gen)
        g = g + F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0] * \
            cfg.elastic_px
    return g


def motion_kernel(length: float, angle: float, bend: float, ksize: int) -> torch.Tensor:
    """A motion blur kernel along a slightly curved path, centred on its centroid.

    Shape:
        → ``[ksize, ksize]``, sums to 1.
    """
    u = torch.linspace(0, 1, 96)
    d = torch.tensor([math.cos(angle), math.sin(angle)])
    side = torch.tensor([-d[1], d[0]])
    path = length * ((u - 0.5)[:, None] * d + bend * (4 * u * (1 - u) - 2 / 3)[:, None] * side)
    path = path - path.mean(0)
    c = (ksize - 1) / 2
    k = torch.zeros(ksize, ksize)
    for x, y in path + c:  # bilinear splatting
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = float(x - x0), float(y - y0)
        for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                            (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < ksize and 0 <= y0 + dy < ksize:
                k[y0 + dy, x0 + dx] += wgt
    return k / k.sum()


def _disk(radius: float, ksize: int) -> torch.Tensor:
    c = (ksize - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(ksize) - c, torch.arange(ksize) - c, indexing="ij")
    k = (radius + 0.5 - torch.sqrt(xs ** 2 + ys ** 2)).clamp(0, 1)
    return k / k.sum()


def degrade(img: torch.Tensor, cfg: PairConfig, gen: torch.Generator) -> tuple[torch.Tensor,
                                                                                bool]:
    """Blur (motion, Gaussian or defocus), exposure change, noise and JPEG on one image.

    Shape:
        ``[3, H, W]`` → ``[3, H, W]``; also whether it was blurred.
    """
    x = img[None]
    blurred = bool(torch.rand(1, generator=gen) < cfg.p_blur)
    if blurred:
        kind = torch.rand(1, generator=gen).item()
        if kind < 0.6:
            length = _u(gen, *cfg.motion_px, 1).item()
            ksize = int(math.ceil(length)) // 2 * 2 + 3
            k = motion_kernel(length, _u(gen, 0, math.pi, 1).item(),
                              _u(gen, -0.3, 0.3, 1).item(), ksize)
        elif kind < 0.8:
            s = _u(gen, 0.6, 3.0, 1).item()
            k = kornia.filters.get_gaussian_kernel2d((int(6 * s) // 2 * 2 + 1,) * 2, (s, s))[0]
        else:
            r = _u(gen, 1.0, 4.0, 1).item()
            k = _disk(r, int(2 * r) // 2 * 2 + 3)
        x = kornia.filters.filter2d(x, k[None].to(x), border_type="replicate")
    gain, bias = _u(gen, 0.85, 1.15, 1).item(), _u(gen, -0.05, 0.05, 1).item()
    x = (x * gain + bias).clamp(0, 1)
    sigma = _u(gen, 0, cfg.noise, 1).item()
    x = (x + torch.randn(x.shape, generator=gen).to(x) * sigma).clamp(0, 1)
    if torch.rand(1, generator=gen) < cfg.p_jpeg:
        q = torch.tensor([_u(gen, 40, 95, 1).item()], device=x.device)
        h, w = x.shape[-2:]
        ph, pw = (-h) % 16, (-w) % 16  # the codec works on 16×16 blocks
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = kornia.enhance.jpeg_codec_differentiable(xp, q)[..., :h, :w].clamp(0, 1)
    return x[0], blurred


def make_pair(photos: list[torch.Tensor], cfg: PairConfig, gen: torch.Generator,
              blur: bool | None = None) -> dict[str, torch.Tensor]:
    """One training pair.

    Args:
        photos: source photos ``[3, H, W]``.
        blur: force the query blurred (True) or sharp (False); None draws it.

    Returns:
        ``query``, ``reference`` ``[3, S, S]``; ``flow`` ``[2, S, S]`` (query → reference,
        pixels); ``valid`` ``[1, S, S]``; ``blurred`` (scalar bool tensor).
    """
    s = cfg.size
    photo = photos[int(torch.randint(len(photos), (1,), generator=gen))]
    scale = _u(gen, 0.6, 1.4, 1).item() * max(1.0, 1.25 * s / min(photo.shape[-2:]))
    hp, wp = max(s + 2, int(photo.shape[1] * scale)), max(s + 2, int(photo.shape[2] * scale))
    photo = F.interpolate(photo[None], size=(hp, wp), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    y0 = int(torch.randint(0, hp - s + 1, (1,), generator=gen))
    x0 = int(torch.randint(0, wp - s + 1, (1,), generator=gen))
    reference = photo[:, y0:y0 + s, x0:x0 + s]
    identity = bool(torch.rand(1, generator=gen) < cfg.p_identity) and blur is not True
    if identity:
        g = torch.stack(torch.meshgrid(torch.arange(s, dtype=torch.float32),
                                       torch.arange(s, dtype=torch.float32), indexing="xy"))
    else:
        g = random_mapping(s, s, cfg, gen)
    # sample the whole photo, so the query shows real content where g leaves the crop
    query = bilinear_sample(photo[None], (g[0] + x0)[None], (g[1] + y0)[None])[0]
    ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32),
                            torch.arange(s, dtype=torch.float32), indexing="ij")
    flow = g - torch.stack([xs, ys])
    valid = ((g[0] >= 0) & (g[0] <= s - 1) & (g[1] >= 0) & (g[1] <= s - 1)).float()[None]
    if not identity and cfg.p_object > 0 and torch.rand(1, generator=gen) < cfg.p_object:
        reference, query, flow, valid = _moving_object(reference, query, g, flow, valid,
                                                        photos, cfg, gen)
    if not identity and torch.rand(1, generator=gen) < cfg.p_occluder:
        query, covered = _occlude(query, photos, gen)
        valid = valid * (1 - covered)
    blurred = False
    if not identity:
        p_blur = cfg.p_blur if blur is None else float(blur)
        query, blurred = degrade(query, PairConfig(**{**cfg.__dict__, "p_blur": p_blur}), gen)
    return {"query": query, "reference": reference, "flow": flow, "valid": valid,
            "blurred": torch.tensor(blurred)}


def _moving_object(reference: torch.Tensor, query: torch.Tensor, g: torch.Tensor,
                   flow: torch.Tensor, valid: torch.Tensor, photos: list[torch.Tensor],
                   cfg: PairConfig, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Add a foreground object, in both images, that moves on its own (a car, a passer-by).

    An elliptical patch of a photo sits in the reference; in the query it is shifted, turned
    and scaled by its own motion, and blurred along that motion (it moved during the
    exposure). Its pixels take its own flow. Background pixels of the query that the object
    hides in the reference, and the blurred rim where object and background mix, are invalid.
    """
    _, s, _ = query.shape
    src = photos[int(torch.randint(len(photos), (1,), generator=gen))]
    ph = min(int(_u(gen, 0.15, 0.4, 1).item() * s), src.shape[1] - 1, s - 4)
    pw = min(int(_u(gen, 0.15, 0.4, 1).item() * s), src.shape[2] - 1, s - 4)
    zoom = _u(gen, 1.0, 3.0, 1).item()  # cut from a wider region, shrunk: more texture
    ch, cw = min(int(ph * zoom), src.shape[1]), min(int(pw * zoom), src.shape[2])
    sy = int(torch.randint(0, src.shape[1] - ch + 1, (1,), generator=gen))
    sx = int(torch.randint(0, src.shape[2] - cw + 1, (1,), generator=gen))
    patch = F.interpolate(src[None, :, sy:sy + ch, sx:sx + cw], size=(ph, pw), mode="bilinear",
                          align_corners=False, antialias=True)[0]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, ph), torch.linspace(-1, 1, pw), indexing="ij")
    alpha = ((1 - torch.sqrt(xx ** 2 + yy ** 2)) * min(ph, pw) / 2 + 0.5).clamp(0, 1)
    # the object's layer in the reference: premultiplied colour and alpha, 2 px clear of the edge
    ry = int(torch.randint(2, s - ph - 1, (1,), generator=gen))
    rx = int(torch.randint(2, s - pw - 1, (1,), generator=gen))
    layer = torch.zeros(4, s, s, device=query.device)
    layer[:3, ry:ry + ph, rx:rx + pw] = patch * alpha
    layer[3, ry:ry + ph, rx:rx + pw] = alpha
    # its own motion: query position x ↦ reference position c_r + R(-θ)(x - c_t) / σ
    c_r = torch.tensor([rx + (pw - 1) / 2, ry + (ph - 1) / 2])
    shift = _u(gen, -cfg.object_shift, cfg.object_shift, 2) * s
    c_t = c_r + shift
    theta = math.radians(_u(gen, -10, 10, 1).item())
    sigma = _u(gen, 0.9, 1.1, 1).item()
    ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32),
                            torch.arange(s, dtype=torch.float32), indexing="ij")
    dx, dy = xs - c_t[0], ys - c_t[1]
    cos, sin = math.cos(theta), math.sin(theta)
    g_obj = torch.stack([c_r[0] + (cos * dx + sin * dy) / sigma,
                         c_r[1] + (-sin * dx + cos * dy) / sigma])
    moved = bilinear_sample(layer[None], g_obj[0][None], g_obj[1][None])
    inside = moved[0, 3] > 0.5  # the object's extent at the exposure's centre
    if torch.rand(1, generator=gen) < 0.7:  # it moved during the exposure
        length = _u(gen, *cfg.motion_px, 1).item()
        angle = math.atan2(float(shift[1]), float(shift[0])) + _u(gen, -0.3, 0.3, 1).item()
        k = motion_kernel(length, angle, _u(gen, -0.3, 0.3, 1).item(),
                          int(math.ceil(length)) // 2 * 2 + 3)
        moved = kornia.filters.filter2d(moved, k[None].to(moved), border_type="constant")
    a_t = moved[0, 3:]
    query = query * (1 - a_t) + moved[0, :3]
    reference = reference * (1 - layer[3:]) + layer[:3]
    hidden = bilinear_sample(layer[3:][None], g[0][None], g[1][None])[0] > 0.5
    flow = torch.where(inside[None], g_obj - torch.stack([xs, ys]), flow)
    mixed = (a_t > 0.1) & (a_t < 0.9)
    valid = torch.where(inside[None], torch.ones_like(valid), valid * (~hidden).float())
    valid = valid * (~mixed).float()
    return reference, query, flow, valid


def _occlude(query: torch.Tensor, photos: list[torch.Tensor],
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste an elliptical patch of another photo: a foreground object the reference lacks."""
    _, h, w = query.shape
    src = photos[int(torch.randint(len(photos), (1,), generator=gen))]
    ph, pw = int(_u(gen, 0.15, 0.4, 1).item() * h), int(_u(gen, 0.15, 0.4, 1).item() * w)
    sy = int(torch.randint(0, max(1, src.shape[1] - ph), (1,), generator=gen))
    sx = int(torch.randint(0, max(1, src.shape[2] - pw), (1,), generator=gen))
    patch = src[:, sy:sy + ph, sx:sx + pw]
    ty = int(torch.randint(0, h - patch.shape[1] + 1, (1,), generator=gen))
    tx = int(torch.randint(0, w - patch.shape[2] + 1, (1,), generator=gen))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, patch.shape[1]),
                            torch.linspace(-1, 1, patch.shape[2]), indexing="ij")
    alpha = (xx ** 2 + yy ** 2 <= 1).float()
    out, covered = query.clone(), torch.zeros(1, h, w)
    region = (slice(None), slice(ty, ty + patch.shape[1]), slice(tx, tx + patch.shape[2]))
    out[region] = out[region] * (1 - alpha) + patch * alpha
    covered[region] = alpha
    return out, covered[0][None]


def make_batch(photos: list[torch.Tensor], batch: int, cfg: PairConfig, gen: torch.Generator,
               blur: bool | None = None) -> dict[str, torch.Tensor]:
    """``batch`` pairs stacked (see :func:`make_pair`)."""
    pairs = [make_pair(photos, cfg, gen, blur) for _ in range(batch)]
    return {k: torch.stack([p[k] for p in pairs]) for k in pairs[0]}
