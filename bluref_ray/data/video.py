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
    """One decoded frame: its index in the stream, time in seconds from the first frame, and RGB
    pixels, turned upright as the video is meant to be shown (its display rotation applied).

    ``colour``: the stream's colour tags (matrix, range, primaries, transfer) as FFmpeg numbers;
    :class:`VideoWriter` encodes and tags its output with them, so that a player shows the
    output in the colours it shows the input.
    """

    index: int
    time: float
    rgb: np.ndarray  # [H, W, 3] uint8
    pixel_format: str
    colour: tuple[int, int, int, int] | None = None


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame's RGB pixels (converted with the frame's own colour matrix and range),
    rotated by its display matrix (phones and body cameras record portrait video as landscape
    frames with a rotation to show them by)."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


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
                start = None  # seconds from the first frame: a stream may start at any time
                for frame in container.decode(stream):
                    t = frame.time if frame.time is not None else n / rate
                    start = t if start is None else start
                    t -= start
                    colour = (frame.colorspace, frame.color_range, frame.color_primaries,
                              frame.color_trc)
                    yield DecodedFrame(n, float(t), _upright(frame), pix_fmt, colour)
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


#: BT.601 (SMPTE 170M) matrix, primaries and transfer, limited range: what FFmpeg converts RGB
#: by when no colour is given.
BT601 = (6, 1, 6, 6)


class VideoWriter:
    """Encode RGB frames to a local video file: H.264 for mp4/mkv/mov, MPEG-4 Part 2 for avi.

    Args:
        path: local output path; its extension picks the container.
        width, height: frame size.
        fps: frame rate.
        crf: H.264 constant rate factor (0 = lossless, 18 ≈ visually lossless).
        colour: colour tags (matrix, range, primaries, transfer as FFmpeg numbers): the frames
            are turned into YUV with this matrix and range, and the output is tagged with all
            four. By default BT.601 in limited range, tagged as such (a player that guesses
            would take BT.709 for HD sizes). A source's tags (:attr:`DecodedFrame.colour`) keep
            a video's colours; an untagged source (or None) gives an untagged output, converted
            as FFmpeg does by default (BT.601), so that a player guesses alike for both.
    """

    def __init__(self, path: str, width: int, height: int, fps: float, crf: int = 12,
                 colour: tuple[int, int, int, int] | None = BT601) -> None:
        avi = path.lower().endswith(".avi")
        even = width % 2 == 0 and height % 2 == 0
        if avi and not even:  # before the file is opened (the caller names the output)
            raise ValueError(f"avi needs an even frame size, got {width}x{height}; use mp4, mkv "
                             "or mov")
        self.container = av.open(path, mode="w")
        self.stream = self.container.add_stream("mpeg4" if avi else "libx264",
                                                rate=fps_fraction(fps))
        self.stream.width, self.stream.height = width, height
        if avi:
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"qmin": "2", "qmax": "2"}  # mpeg4 at quantizer 2 ("qscale"
            # is no option of the codec: it was dropped, and the default quantizer used)
        else:
            self.stream.pix_fmt = "yuv420p" if even else "yuv444p"
            self.stream.options = {"crf": str(crf), "preset": "medium"}
        self.matrix = self.range = None
        if colour is not None and (colour[1] or any(v not in (0, 2) for v in colour)):
            cc = self.stream.codec_context  # (0 and 2 stand for unspecified, but range 2: full)
            cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = colour
            self.matrix = colour[0] if colour[0] not in (0, 2) else None
            self.range = colour[1] or None

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``[H, W, 3]`` uint8 RGB frame."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self.matrix is not None or self.range is not None:
            frame = frame.reformat(format=self.stream.pix_fmt, dst_colorspace=self.matrix,
                                   dst_color_range=self.range)
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
