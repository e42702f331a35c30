"""A virtual hand-held camera over real photos: the synthesizer's high-frame-rate sharp stream.

Time is counted in *sub-frames* (one sub-frame is one frame of the high-rate stream, e.g. 1/240 s).
The camera pose is a continuous function of time made of

* a smooth random drift of the view centre (a sum of slow sinusoids), a smooth roll and a smooth
  zoom;
* hand-held shake: during each blurry exposure the camera jerks along a slightly curved path of
  a few pixels, and stays where the jerk left it (the shake walk is kept near its origin);
* independently moving foreground objects (patches of other photos with soft masks) that follow
  their own paths across the view and occlude the background;
* optionally (a dashcam's look), blur that varies across the frame: a forward surge during each
  exposure (the view scales about its centre, so the corners move and the centre does not) and
  the parallax of a ground plane (the camera's motion moves the bottom rows further than the top
  rows).

:meth:`PhotoCamera.frame` renders the sharp frame at any sub-frame index; it is deterministic for a
given random generator state at construction.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Colour photos shipped with scikit-image that make good scenes.
BACKGROUNDS = ("coffee", "rocket", "astronaut", "chelsea", "hubble_deep_field",
               "immunohistochemistry", "retina")
#: Photos cut into foreground objects.
OBJECTS = ("astronaut", "chelsea", "coffee", "rocket", "colorwheel", "immunohistochemistry")


@functools.lru_cache(maxsize=32)
def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as RGB uint8 (``[H, W, 3]``)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


@dataclass(frozen=True)
class Jerk:
    """One shake movement, during the exposure ``[start, end]`` (sub-frames)."""

    start: float
    end: float
    origin: np.ndarray  # offset before the jerk, pixels
    step: np.ndarray  # travel during the jerk, pixels
    bend: float  # sideways bulge of the path, as a share of its length


class ShakePath:
    """Piecewise camera shake: jerks during given exposures, still in between.

    Args:
        windows: ``(start, end)`` sub-frame intervals of the blurry exposures, in time order and
            not overlapping.
        lengths: travel of each jerk in pixels.
        rng: random generator for the directions and bends.
        axis_deg: if given, jerks run along this axis (degrees from horizontal, either way),
            as a camera on a vehicle mount shakes, give or take ``spread_deg``; otherwise in
            any direction, as a hand-held camera does.
        spread_deg: largest deviation of a jerk from ``axis_deg``.
    """

    def __init__(self, windows: list[tuple[float, float]], lengths: np.ndarray,
                 rng: np.random.Generator, axis_deg: float | None = None,
                 spread_deg: float = 15.0) -> None:
        pos = np.zeros(2)
        self.jerks: list[Jerk] = []
        for (a, b), length in zip(windows, lengths):
            if axis_deg is None:
                angle = rng.uniform(0, 2 * math.pi)
            else:
                angle = math.radians(axis_deg + rng.uniform(-spread_deg, spread_deg))
            d = np.array([math.cos(angle), math.sin(angle)])
            if d @ pos > 0:  # walk back towards the origin so the shake stays bounded
                d = -d
            step = d * float(length)
            self.jerks.append(Jerk(a, b, pos.copy(), step, float(rng.uniform(-0.3, 0.3))))
            pos = pos + step
        self.starts = np.array([j.start for j in self.jerks])

    def __call__(self, t: float) -> np.ndarray:
        """Camera offset in pixels at sub-frame time ``t``.

        Shape:
            scalar → ``[2]`` (x, y).
        """
        i = int(np.searchsorted(self.starts, t, side="right")) - 1
        if i < 0:
            return np.zeros(2)
        j = self.jerks[i]
        if t >= j.end:
            return j.origin + j.step
        u = (t - j.start) / (j.end - j.start)  # 0..1 through the exposure
        side = np.array([-j.step[1], j.step[0]])
        return j.origin + u * j.step + j.bend * 4 * u * (1 - u) * side


class Smooth:
    """A smooth random scalar signal: a sum of two sinusoids, amplitude at most ``amp``."""

    def __init__(self, rng: np.random.Generator, amp: float, period: tuple[float, float]) -> None:
        self.amp = amp
        self.w = rng.dirichlet([2.0, 2.0])
        self.freq = 2 * math.pi / rng.uniform(*period, size=2)
        self.phase = rng.uniform(0, 2 * math.pi, size=2)

    def __call__(self, t: float) -> float:
        return float(self.amp * np.sum(self.w * np.sin(self.freq * t + self.phase)))


def _rotation(deg: float, scale: float) -> np.ndarray:
    r = math.radians(deg)
    return scale * np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])


class _Object:
    """A foreground patch with a soft elliptical mask, moving on its own path across the view."""

    def __init__(self, rng: np.random.Generator, height: int, width: int,
                 slot: float) -> None:
        photo = load_photo(OBJECTS[rng.integers(len(OBJECTS))])
        side = int(rng.uniform(0.25, 0.4) * min(height, width))
        aspect = rng.uniform(0.6, 1.6)
        ph, pw = max(8, int(side / math.sqrt(aspect))), max(8, int(side * math.sqrt(aspect)))
        scale = rng.uniform(0.3, 0.8) * min(photo.shape[0] / ph, photo.shape[1] / pw)
        ch, cw = int(ph * scale), int(pw * scale)
        y0 = rng.integers(0, photo.shape[0] - ch + 1)
        x0 = rng.integers(0, photo.shape[1] - cw + 1)
        crop = photo[y0:y0 + ch, x0:x0 + cw]
        self.rgb = cv2.resize(crop, (pw, ph), interpolation=cv2.INTER_AREA).astype(np.float32)
        yy, xx = np.mgrid[0:ph, 0:pw]
        r = np.sqrt(((yy - (ph - 1) / 2) / (ph / 2)) ** 2 + ((xx - (pw - 1) / 2) / (pw / 2)) ** 2)
        self.alpha = np.clip((1.0 - r) / 0.15, 0.0, 1.0).astype(np.float32)
        self.size = np.array([pw, ph], np.float64)
        # Paths in output-frame units; objects wander within the view at a few px per frame.
        self.x = Smooth(rng, 0.35 * width, (40 * slot, 120 * slot))
        self.y = Smooth(rng, 0.30 * height, (40 * slot, 120 * slot))
        self.spin = Smooth(rng, 25.0, (60 * slot, 200 * slot))
        self.centre = np.array([width / 2, height / 2])

    def affine(self, t: float, offset: np.ndarray) -> np.ndarray:
        """2×3 map from patch pixels to view pixels at time ``t``."""
        pos = self.centre + np.array([self.x(t), self.y(t)]) + offset
        a = _rotation(self.spin(t), 1.0)
        return np.hstack([a, (pos - a @ (self.size - 1) / 2)[:, None]])


class PhotoCamera:
    """The sharp stream of one clip: a virtual camera moving over a real photo.

    Args:
        rng: random generator (consumed at construction only).
        height, width: output frame size.
        subframes: sub-frames per output frame (sets the time scale of the drift).
        drift_px: typical drift speed, pixels per output frame.
        rotation_deg, zoom: largest smooth roll (degrees) and relative zoom change.
        n_objects: number of foreground objects.
        shake: the clip's shake path.
        shake_reach: largest shake offset in pixels (to size the background margin).
        surge: forward surges (its x offset is the travel at the frame's corner, pixels), or None.
        depth: ground-plane parallax: the camera's drift and shake move row ``y`` by
            ``1 + depth · (2y / (H − 1) − 1)`` times as much as the centre row.
    """

    def __init__(self, rng: np.random.Generator, height: int, width: int, subframes: int,
                 drift_px: float, rotation_deg: float, zoom: float, n_objects: int,
                 shake: ShakePath, shake_reach: float,
                 scenes: tuple[str, ...] = BACKGROUNDS, surge: ShakePath | None = None,
                 depth: float = 0.0) -> None:
        self.height, self.width = height, width
        self.shake = shake
        self.surge, self.depth = surge, depth
        self.background_name = scenes[rng.integers(len(scenes))]
        photo = load_photo(self.background_name)
        period = (60.0 * subframes, 180.0 * subframes)
        # A drift of `drift_px` per output frame on a sinusoid of period P has amplitude v·P/2π.
        travel = drift_px * 120.0 / (2 * math.pi)
        self.drift_x = Smooth(rng, travel, period)
        self.drift_y = Smooth(rng, 0.6 * travel, period)
        self.roll = Smooth(rng, rotation_deg, period)
        self.zoom = Smooth(rng, zoom, period)
        sin = math.sin(math.radians(rotation_deg))
        reach = 1.0 + depth
        need_w = (width + height * sin) * (1 + zoom) + 2 * reach * (travel + shake_reach) + 8
        need_h = (height + width * sin) * (1 + zoom) + 2 * reach * (0.6 * travel + shake_reach) + 8
        f = max(1.0, need_w / photo.shape[1], need_h / photo.shape[0])
        if f > 1.0:
            size = (math.ceil(photo.shape[1] * f), math.ceil(photo.shape[0] * f))
            photo = cv2.resize(photo, size, interpolation=cv2.INTER_CUBIC)
        self.background = photo
        self.bg_centre = np.array([photo.shape[1] / 2, photo.shape[0] / 2])
        self.view_centre = np.array([(width - 1) / 2, (height - 1) / 2])
        self.objects = [_Object(rng, height, width, subframes) for _ in range(n_objects)]
        self.half_diagonal = math.hypot(width - 1, height - 1) / 2
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self.grid = (xs - np.float32(self.view_centre[0]), ys - np.float32(self.view_centre[1]))
        self.row_gain = (depth * (2 * ys / max(1, height - 1) - 1)).astype(np.float32)

    def frame(self, j: float) -> np.ndarray:
        """The sharp frame at sub-frame time ``j``.

        Shape:
            → ``[H, W, 3]`` uint8 RGB.
        """
        shake = self.shake(j)
        motion = np.array([self.drift_x(j), self.drift_y(j)]) + shake
        centre = self.bg_centre + motion
        scale = 1.0 + self.zoom(j)
        if self.surge is not None:  # moving forward shows a smaller part of the scene
            scale *= math.exp(-self.surge(j)[0] / self.half_diagonal)
        a = _rotation(self.roll(j), scale)
        if self.depth or self.surge is not None:
            out = self._remap(a, centre, motion)
        else:
            view_to_bg = np.hstack([a, (centre - a @ self.view_centre)[:, None]])
            out = cv2.warpAffine(self.background, view_to_bg, (self.width, self.height),
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REFLECT101).astype(np.float32)
        for obj in self.objects:
            m = obj.affine(j, -shake)
            rgb = cv2.warpAffine(obj.rgb, m, (self.width, self.height), flags=cv2.INTER_LINEAR)
            alpha = cv2.warpAffine(obj.alpha, m, (self.width, self.height),
                                   flags=cv2.INTER_LINEAR)[..., None]
            out = out * (1.0 - alpha) + rgb * alpha
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def _remap(self, a: np.ndarray, centre: np.ndarray, motion: np.ndarray) -> np.ndarray:
        """The background through the affine view ``a`` about ``centre``, each row moved by
        the parallax share of ``motion`` (pixels of the background)."""
        x, y = self.grid
        map_x = a[0, 0] * x + a[0, 1] * y + np.float32(centre[0]) \
            + self.row_gain * np.float32(motion[0])
        map_y = a[1, 0] * x + a[1, 1] * y + np.float32(centre[1]) \
            + self.row_gain * np.float32(motion[1])
        return cv2.remap(self.background, map_x.astype(np.float32), map_y.astype(np.float32),
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101).astype(np.float32)


class FrameListStream:
    """A sharp stream taken from the frames of a real video (already decoded and resized)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames

    def frame(self, j: float) -> np.ndarray:
        return self.frames[int(round(j))]
