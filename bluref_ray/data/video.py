"""Video decoding and encoding with PyAV (FFmpeg), from local files or object storage."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from bluref_ray import storage
from bluref_ray.storage import StorageConfig

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class VideoError(ValueError):
    """A video could not be read; the message names the file and the problem.

    Attributes:
        frames_decoded: frames delivered before the error (0 if the file did not open).
    """

    def __init__(self, message: str, frames_decoded: int = 0) -> None:
        super().__init__(message)
        self.frames_decoded = frames_decoded


@dataclass
class DecodedFrame:
    """One decoded frame: its index in the stream, time in seconds, and RGB pixels."""

    index: int
    time: float
    rgb: np.ndarray  # [H, W, 3] uint8
    pixel_format: str


def decode_frames(uri: str, storage_cfg: StorageConfig | None = None,
                  max_frames: int | None = None, threads: int = 0) -> Iterator[DecodedFrame]:
    """Decode a video frame by frame (bounded memory), as RGB uint8.

    Works on local paths and on ``s3://`` URIs (read through a seekable stream). Frames of any
    pixel format (grayscale, 10/16-bit) come out as 8-bit RGB. ``threads`` caps FFmpeg's decoder
    threads (0: FFmpeg's choice, about one per core).

    Raises:
        VideoError: the file is empty, is not a video, has no video stream, or breaks mid-way
            (``frames_decoded`` tells how many frames came before the break).
        storage.StorageError: the file cannot be reached.
    """
    f = storage.open_input(uri, storage_cfg)
    n = 0
    try:
        try:
            container = av.open(f, mode="r")
        except (av.FFmpegError, ValueError, OSError) as e:
            _raise_if_outage(e, uri, storage_cfg)
            size = _size(f)
            why = "empty file" if size == 0 else f"not a readable video ({e})"
            raise VideoError(f"{uri}: {why}") from None
        with container:
            fmt = container.format.name
            if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg reads a still image as one
                raise VideoError(f"{uri}: an image ({fmt}), not a video; put the frames of a "
                                 "clip as images in a folder of their own")
            if not container.streams.video:
                raise VideoError(f"{uri}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if threads:
                stream.codec_context.thread_count = threads
            rate = float(stream.average_rate or stream.guessed_rate or 30)
            pix_fmt = stream.codec_context.pix_fmt or "unknown"
            try:
                for frame in container.decode(stream):
                    t = frame.time if frame.time is not None else n / rate
                    yield DecodedFrame(n, float(t), frame.to_ndarray(format="rgb24"), pix_fmt)
                    n += 1
                    if max_frames is not None and n >= max_frames:
                        return
            except (av.FFmpegError, ValueError, OSError) as e:
                _raise_if_outage(e, uri, storage_cfg)
                raise VideoError(f"{uri}: decoding failed after {n} frames ({e})", n) from None
        if n == 0:
            raise VideoError(f"{uri}: the video holds no frames")
    finally:
        f.close()


def _raise_if_outage(e: BaseException, uri: str, storage_cfg: StorageConfig | None) -> None:
    """Raise :class:`storage.StorageUnreachableError` if a failed read of the S3 video ``uri``
    came from the endpoint (down or failing for now), not from the file."""
    storage.raise_if_unreachable(e, "read", uri, storage_cfg)
    if storage.is_s3(uri):
        storage.check_reachable(uri, storage_cfg)


def _size(f) -> int:
    try:
        f.seek(0, 2)
        return f.tell()
    except Exception:  # noqa: BLE001 - best effort for the error message
        return -1


def fps_fraction(fps: float) -> Fraction:
    """A frame rate as the fraction containers want (29.97 → 30000/1001)."""
    if not fps or math.isnan(fps) or fps <= 0:
        raise ValueError(f"invalid frame rate {fps}")
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Encode RGB frames to a local video file: H.264 for mp4/mkv/mov, MPEG-4 Part 2 for avi.

    Args:
        path: local output path; its extension picks the container.
        width, height: frame size.
        fps: frame rate.
        crf: H.264 constant rate factor (0 = lossless, 18 ≈ visually lossless).
    """

    def __init__(self, path: str, width: int, height: int, fps: float, crf: int = 12) -> None:
        self.container = av.open(path, mode="w")
        avi = path.lower().endswith(".avi")
        self.stream = self.container.add_stream("mpeg4" if avi else "libx264",
                                                rate=fps_fraction(fps))
        self.stream.width, self.stream.height = width, height
        even = width % 2 == 0 and height % 2 == 0
        if avi:
            if not even:
                raise ValueError(f"{path}: avi needs an even frame size, got {width}x{height}")
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"qmin": "2", "qmax": "2"}  # mpeg4 at quantizer 2 ("qscale"
            # is no option of the codec: it was dropped, and the default quantizer used)
        else:
            self.stream.pix_fmt = "yuv420p" if even else "yuv444p"
            self.stream.options = {"crf": str(crf), "preset": "medium"}

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``[H, W, 3]`` uint8 RGB frame."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
