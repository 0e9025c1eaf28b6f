"""The film pipeline: decode -> batch -> infer -> smooth -> colour -> encode, as concurrent stages.

    stats = colorize_frames(film, colorizer, layout, SmoothingOptions(strength=0.5), writer.write,
                            start=0, stop=film.frames, warmup=0)

Each stage runs in its own thread and hands frames to the next through a bounded queue, so memory holds a
few batches whatever the film's length, and the stages overlap: FFmpeg's decoder and encoder, ONNX
Runtime / torch and OpenCV all release the GIL while they work.

1. decode (``worker.media.video_source``): the source's luma codes and L at chroma resolution (and, for a film too
   small for that to fill the network's render, L at full resolution for the network).
2. infer (``models.colorizer``): ``batch_size`` frames per engine call; ab on the network's output grid.
3. smooth (``worker.smoothing``): scene cuts, motion-compensated smoothing of the grid ab (never of L).
4. colour: guided-filter upsampling of ab to chroma resolution, Lab -> R'G'B' -> Cb, Cr (``models.color``).
   The luma is not recomputed: the output's Y plane is the source's, so lightness is bit-exact. With a
   CUDA engine this runs on the GPU: each frame's L goes up once and its Cb, Cr code values come back
   (``_colour_on_device``); everything else that crosses the bus is at the network's output grid (a few
   KiB a frame: the smoother's ab, whose optical flow is OpenCV's, on the CPU, from the render L it
   already has there).
5. encode: ``sink(frame)``, e.g. ``SegmentWriter.write``; warm-up frames (which only prime the smoother
   for a segment that starts mid-shot) are dropped before it.

The same function serves the CLI, ``tools evaluate``/``bench`` (with an in-memory sink) and, through
``worker.films``' segments, the service's workers.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from models.color import (
    code_dtype,
    lab_to_rgb,
    lab_to_rgb_fast_np,
    rgb_to_chroma,
    rgb_to_chroma_np,
    srgb_to_cineon,
    srgb_to_cineon_np,
    srgb_to_video_rgb,
    srgb_to_video_rgb_np,
)
from models.colorizer import Colorizer, Render
from worker.media.video_sink import OutputLayout
from worker.media.video_source import FilmInfo, SourceFrame, decode_frames
from worker.references import ReferenceField
from worker.smoothing import SmoothingOptions, TemporalSmoother

# Frames each queue holds, in batches: enough to keep every stage busy through another's hiccup, small
# enough that a 4K film's frames in flight stay in the hundreds of MB.
QUEUE_BATCHES = 2
_POLL_S = 0.1  # how often a blocked stage checks whether the pipeline is stopping
_END = object()  # end-of-stream marker passed down the queues


@dataclass
class ColourFrame:
    """One colorized frame, as the encoder takes it: code-value planes at the output's depth."""

    index: int
    pts: int
    luma: np.ndarray
    cb: np.ndarray
    cr: np.ndarray
    light: np.ndarray | None = None  # the source's light, where the layout keeps it (``SourceFrame.light``)
    captions: bytes | None = None  # the source frame's closed captions (``SourceFrame.captions``)


@dataclass
class StageTimes:
    """Busy seconds per stage (stages overlap, so these add up to more than the wall time) and counts."""

    decode: float = 0.0
    network: float = 0.0
    smoothing: float = 0.0
    colour: float = 0.0
    encode: float = 0.0
    frames: int = 0  # frames handed to the sink
    warmup_frames: int = 0
    cuts: list[int] = field(default_factory=list)  # frame indices that start a new shot
    wall: float = 0.0

    def add(self, other: StageTimes) -> None:
        for name in ("decode", "network", "smoothing", "colour", "encode", "wall"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.frames += other.frames
        self.warmup_frames += other.warmup_frames
        self.cuts.extend(other.cuts)

    def as_dict(self) -> dict:
        return {"decode_s": self.decode, "network_s": self.network, "smoothing_s": self.smoothing,
                "colour_s": self.colour, "encode_s": self.encode, "wall_s": self.wall, "frames": self.frames,
                "warmup_frames": self.warmup_frames, "cuts": list(self.cuts)}


class _Stopped(Exception):
    """Raised inside a stage when another stage failed or the run was cancelled."""


class _Stages:
    """Threads joined by bounded queues; the first error anywhere stops them all and is re-raised."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def run(self, targets: Iterable[tuple[str, Callable[[], None]]]) -> None:
        """Run every target in its own thread and join them all. Ctrl-C (delivered to this, the calling thread)
        stops them all, then propagates. Starting is inside the same guard as joining: an interrupt that lands
        between two starts (a film's next segment starting as the user presses Ctrl-C) must not leave the first
        stages running as daemon threads into interpreter exit, where one inside torch aborts the process
        ("terminate called without an active exception") instead of exiting 130."""
        try:
            for name, target in targets:
                self._start(name, target)
            for thread in self.threads:
                while thread.is_alive():
                    thread.join(_POLL_S)
        except BaseException:
            self.stopping.set()
            for thread in self.threads:
                if thread.is_alive():  # (one interrupted inside Thread.start sees `stopping` at its first queue)
                    thread.join()
            raise
        if self.errors:
            raise self.errors[0]

    def _start(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by run()
                self.errors.append(exc)
                self.stopping.set()

        thread = threading.Thread(target=run, name=f"tinct-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def put(self, channel: queue.Queue, item: object) -> None:
        while True:
            if self.stopping.is_set():
                raise _Stopped
            try:
                channel.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(self, channel: queue.Queue) -> object:
        while True:
            if self.stopping.is_set():
                raise _Stopped
            try:
                return channel.get(timeout=_POLL_S)
            except queue.Empty:
                continue


def colorize_frames(
    film: FilmInfo,
    colorizer: Colorizer,
    layout: OutputLayout,
    smoothing: SmoothingOptions,
    sink: Callable[[ColourFrame], None],
    start: int = 0,
    stop: int | None = None,
    warmup: int = 0,
    references: ReferenceField | None = None,
) -> StageTimes:
    """Colorize frames ``start .. stop - 1`` of ``film`` (after ``warmup`` frames that only prime the
    smoother) and pass each, in order, to ``sink``. ``references`` (``worker.references``) lay reference frames'
    colours on the frames they reach, after the temporal smoothing. Returns the per-stage times."""
    stop = film.frames if stop is None else stop
    batch_size = colorizer.batch_size
    decoded: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES * batch_size)
    predicted: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    coloured: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES * batch_size)
    times = StageTimes()
    stages = _Stages()
    smoother = TemporalSmoother(smoothing, colorizer.output_stride) if smoothing.strength > 0 else None

    def decode() -> None:
        frames = decode_frames(film, layout.frame, start, stop, warmup, colorizer.render_size)
        try:
            while True:
                began = time.perf_counter()
                frame = next(frames, None)
                times.decode += time.perf_counter() - began
                if frame is None:
                    break
                stages.put(decoded, frame)
        finally:
            frames.close()  # closes the file now, also when another stage stopped the run
        stages.put(decoded, _END)

    def infer() -> None:
        for batch in _batches(stages, decoded, batch_size):
            began = time.perf_counter()
            renders = colorizer.predict_grid([frame.network_L for frame in batch])
            smoothed = time.perf_counter()
            times.network += smoothed - began
            if smoother is not None:
                _smooth(smoother, batch, renders, times)
            if references is not None:
                _lay_references(references, batch, renders)
            colorizer.fit(renders)
            times.smoothing += time.perf_counter() - smoothed
            stages.put(predicted, (batch, renders))
        stages.put(predicted, _END)

    def colour() -> None:
        while (item := stages.get(predicted)) is not _END:
            batch, renders = item  # type: ignore[misc]
            for frame, render in zip(batch, renders, strict=True):
                if frame.warmup:
                    continue
                began = time.perf_counter()
                coloured_frame = _colour(colorizer, layout, frame, render)
                times.colour += time.perf_counter() - began
                stages.put(coloured, coloured_frame)
        stages.put(coloured, _END)

    def encode() -> None:
        while (frame := stages.get(coloured)) is not _END:
            began = time.perf_counter()
            sink(frame)  # type: ignore[arg-type]
            times.encode += time.perf_counter() - began
            times.frames += 1

    began = time.perf_counter()
    stages.run((("decode", decode), ("infer", infer), ("colour", colour), ("encode", encode)))
    times.wall = time.perf_counter() - began
    times.warmup_frames = min(warmup, start)
    return times


def _batches(stages: _Stages, channel: queue.Queue, batch_size: int) -> Iterator[list[SourceFrame]]:
    """Frames off ``channel`` in lists of up to ``batch_size``; a short list only at the end."""
    batch: list[SourceFrame] = []
    while (item := stages.get(channel)) is not _END:
        batch.append(item)  # type: ignore[arg-type]
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _smooth(smoother: TemporalSmoother, batch: list[SourceFrame], renders: list[Render], times: StageTimes) -> None:
    """Replace each render's grid ab by its temporally smoothed version; note the scene cuts."""
    L_render = np.stack([render.padded for render in renders])
    ab_grid = np.stack([render.ab_grid.float().cpu().numpy() for render in renders])  # type: ignore[union-attr]
    smoothed, cuts = smoother.smooth(L_render, ab_grid)
    device = renders[0].ab_grid.device  # type: ignore[union-attr]
    for render, ab in zip(renders, smoothed, strict=True):
        render.ab_grid = torch.from_numpy(np.ascontiguousarray(ab)).to(device)
    times.cuts.extend(frame.index for frame, cut in zip(batch, cuts, strict=True) if cut and not frame.warmup)


def _lay_references(references: ReferenceField, batch: list[SourceFrame], renders: list[Render]) -> None:
    """Blend the reference frames' carried colours into the frames they reach (only those cross the bus)."""
    for frame, render in zip(batch, renders, strict=True):
        if frame.index in references.tracks:
            ab = render.ab_grid.float().cpu().numpy()  # type: ignore[union-attr]
            laid = references.lay(frame.index, ab)
            render.ab_grid = torch.from_numpy(laid).to(render.ab_grid.device)  # type: ignore[union-attr]


def _colour(colorizer: Colorizer, layout: OutputLayout, frame: SourceFrame, render: Render) -> ColourFrame:
    """ab at chroma resolution, guided by L there; the chroma of the Lab colour; the source's own luma."""
    if colorizer.device.type == "cuda":
        return _colour_on_device(colorizer, layout, frame, render)
    ab = colorizer.upsample_ab(frame.L, render)
    lab = np.stack((frame.L, ab[0], ab[1]), axis=-1)
    rgb = lab_to_rgb_fast_np(lab)
    if layout.frame.log_encoded:  # the colour as the log scan holds it, channel by channel
        rgb = srgb_to_cineon_np(rgb)
    else:  # and as HDR or BT.2020 video holds it
        rgb = srgb_to_video_rgb_np(rgb, layout.frame.transfer, layout.frame.bt2020)
    cb, cr = rgb_to_chroma_np(rgb, layout.matrix, layout.bit_depth, layout.full_range)
    return ColourFrame(frame.index, frame.pts, frame.luma, cb, cr, frame.light, frame.captions)


def _colour_on_device(colorizer: Colorizer, layout: OutputLayout, frame: SourceFrame, render: Render) -> ColourFrame:
    """``_colour`` with torch's colour maths on the colorizer's device (on a CPU, OpenCV's is 60x faster)."""
    L = colorizer.to_device(frame.L)
    ab = colorizer.upsample_ab_tensor(L, render)
    rgb = lab_to_rgb(torch.cat((L[None], ab)))
    if layout.frame.log_encoded:
        rgb = srgb_to_cineon(rgb)
    else:
        rgb = srgb_to_video_rgb(rgb, layout.frame.transfer, layout.frame.bt2020).to(rgb.dtype)
    cb, cr = rgb_to_chroma(rgb, layout.matrix, layout.bit_depth, layout.full_range)
    dtype = code_dtype(layout.bit_depth)
    return ColourFrame(frame.index, frame.pts, frame.luma, cb.cpu().numpy().astype(dtype, copy=False),
                       cr.cpu().numpy().astype(dtype, copy=False), frame.light, frame.captions)
