"""Image decoding and encoding: every frame becomes RGB uint8, whatever it was stored as."""

from __future__ import annotations

import cv2
import numpy as np
import torch


class ImageError(ValueError):
    """A frame could not be decoded; the message names the file and the problem."""


def to_rgb8(img: np.ndarray) -> tuple[np.ndarray, str]:
    """Convert a decoded frame (OpenCV channel order) to RGB uint8.

    Grayscale frames are replicated to three channels, alpha is dropped, and 16-bit or float
    frames are scaled to 8 bits.

    Shape:
        ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` (BGR) or ``[H, W, 4]`` (BGRA) → ``[H, W, 3]`` RGB.

    Returns:
        The frame and a short description of the source format, e.g. ``"gray16"``.
    """
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        raise ImageError(f"unsupported channel count {img.shape[2]}")
    channels = "gray" if img.ndim == 2 else ("rgb" if img.shape[2] == 3 else "rgba")
    if img.dtype == np.uint8:
        depth = "8"
    elif img.dtype == np.uint16:
        depth = "16"
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif np.issubdtype(img.dtype, np.floating):
        depth = "f"
        img = (np.clip(np.nan_to_num(img), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ImageError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return rgb, f"{channels}{depth}"


def decode_image(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, str]:
    """Decode PNG/JPEG/TIFF/BMP bytes to RGB uint8 (a JPEG upright by its EXIF orientation).

    Raises:
        ImageError: if the bytes are empty or not a readable image; the message names ``name``.
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    # a JPEG is turned upright by its EXIF orientation (cameras store portrait shots as
    # landscape pixels with a tag); IMREAD_UNCHANGED, which keeps alpha and 16 bits for the
    # other formats, would ignore the tag
    upright = data[:2] == b"\xff\xd8"
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if upright else cv2.IMREAD_UNCHANGED
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise ImageError(f"{name}: not a readable image ({len(data)} bytes)")
    try:
        return to_rgb8(img)
    except ImageError as e:
        raise ImageError(f"{name}: {e}") from None


def encode_png(rgb: np.ndarray, compression: int = 3) -> bytes:
    """Lossless PNG bytes of an RGB (``[H, W, 3]``) or single-channel (``[H, W]``) uint8 image."""
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ImageError("PNG encoding failed")
    return buf.tobytes()


def to_float(pixels: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"
             ) -> torch.Tensor:
    """RGB uint8 pixels → float in [0, 1], channels first, on ``device``.

    Shape:
        ``[H, W, 3]`` or ``[B, H, W, 3]`` (numpy or tensor) → ``[B, 3, H, W]``.
    """
    if isinstance(pixels, np.ndarray):
        if not pixels.flags.writeable:  # Ray hands out read-only views of the object store
            pixels = pixels.copy()
        pixels = torch.from_numpy(np.ascontiguousarray(pixels))
    t = pixels.to(device)
    t = t[None] if t.ndim == 3 else t
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] (clipped) → RGB uint8, rounded, channels last, on the CPU.

    Shape:
        ``[3, H, W]`` → ``[H, W, 3]``; ``[B, 3, H, W]`` → ``[B, H, W, 3]``.
    """
    u8 = (t.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return u8.movedim(-3, -1).cpu().numpy()


def as_saved(t: torch.Tensor) -> torch.Tensor:
    """Float images rounded to the 8-bit levels they are saved with (scores see what is saved)."""
    return (t.clamp(0, 1) * 255).round() / 255


def random_flips(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop ``[H, W, C]`` flipped left-right, then upside down, each with probability 1/2
    (channels, and so any images stacked in them, flip together)."""
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    return crop
