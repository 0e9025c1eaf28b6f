"""Reference frames for films: a colour picture of one frame, carried through its shot by motion.

    cells = reference_cells(ab, render_size=(126, 224), padded_size=(128, 224), output_stride=4)
    track = ReferenceTrack.start(cells)                    # at the reference frame: the picture's own colours
    track = track.step(flow_cells, visibility, fade)       # one frame further, forward or backward
    ab_grid = blend(ab_grid, *combine([track_a, track_b])) # the film's grid ab with the references laid on

Everything here happens on the network's output grid (a few thousand cells a frame), as the temporal smoothing
does, and only ever with chroma (ab): the film's own L is kept. The motion itself (optical flow between render L
frames, visibility of each cell, scene cuts) is measured by ``worker.smoothing``, which calls these functions; the
maths of carrying colour is here, beside the colorizer, importable without the service.

A track maps each cell to where it came from in the reference frame, with a confidence. At the reference frame the
confidence is 1 everywhere. Each step composes the map with the flow, and multiplies the confidence by the trust
in the cell's motion (from its visibility, the fraction of its pixels the flow explains and that stay inside the
picture: occluded or newly uncovered cells lose the reference) and by a fade per frame, so the reference gives way
to the network's prediction with distance in time. Several tracks reaching one frame (references on both sides of
it) are averaged by confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# A reference's hold halves every this many seconds away from its frame (on top of what occlusion takes): long
# enough to colour a shot of ordinary length from one coloured frame, short enough that colours drifting with a
# flow's small errors fade before they show.
HALF_LIFE_S = 4.0
# A cell whose visibility (the fraction of its pixels the flow explains) is at least TRUSTED keeps the carried
# colour; at most UNTRUSTED, it is taken as occluded and loses it.
TRUSTED = 0.75
UNTRUSTED = 0.25
# Tracks are followed until their best cell's confidence falls below this; beyond, the network's colour is all.
MIN_CONFIDENCE = 0.01


def trust(visibility: np.ndarray) -> np.ndarray:
    """How much of a carried colour a cell keeps for one step, from its visibility: all of it when most of its
    pixels are explained (a few unexplained pixels of grain or of an edge must not wear the reference away frame
    after frame), none when most are not (occlusion, newly uncovered ground), linear between."""
    return np.clip((visibility - UNTRUSTED) / (TRUSTED - UNTRUSTED), 0.0, 1.0).astype(np.float32)


def reference_cells(ab: np.ndarray, render_size: tuple[int, int], padded_size: tuple[int, int],
                    output_stride: int) -> np.ndarray:
    """A reference picture's ab ``(2, H, W)`` at any resolution covering the frame -> ``(2, cells_h, cells_w)`` on the
    network's output grid: area-resampled to the render, reflect-padded as ``models.colorizer`` pads the render L,
    averaged over each output cell."""
    render_h, render_w = render_size
    padded_h, padded_w = padded_size
    channels = np.ascontiguousarray(np.asarray(ab, dtype=np.float32).transpose(1, 2, 0))
    small = cv2.resize(channels, (render_w, render_h), interpolation=cv2.INTER_AREA)
    pad = ((0, padded_h - render_h), (0, padded_w - render_w), (0, 0))
    padded = np.pad(small, pad, mode="reflect") if padded_h > render_h or padded_w > render_w else small
    cells_h, cells_w = padded_h // output_stride, padded_w // output_stride
    cells = padded[: cells_h * output_stride, : cells_w * output_stride]
    cells = cells.reshape(cells_h, output_stride, cells_w, output_stride, 2).mean(axis=(1, 3))
    return np.ascontiguousarray(cells.transpose(2, 0, 1), dtype=np.float32)


def fade_per_frame(fps: float, half_life_s: float = HALF_LIFE_S) -> float:
    """The factor a reference's confidence keeps per frame of distance."""
    return float(0.5 ** (1.0 / max(1.0, half_life_s * (fps or 24.0))))


def warp_cells(field: np.ndarray, flow_cells: np.ndarray) -> np.ndarray:
    """``field`` ``(h, w)`` or ``(h, w, c)`` sampled at ``x + flow(x)`` (bilinear, border replicated): the value each
    cell had in the frame the flow points into. ``flow_cells`` is ``(h, w, 2)`` (x, y) in cells."""
    h, w = flow_cells.shape[:2]
    grid_x = np.arange(w, dtype=np.float32)[None, :] + flow_cells[..., 0]
    grid_y = np.arange(h, dtype=np.float32)[:, None] + flow_cells[..., 1]
    return cv2.remap(np.ascontiguousarray(field, dtype=np.float32), grid_x.astype(np.float32),
                     grid_y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class ReferenceTrack:
    """One reference at one frame: for each cell, where it came from in the reference frame (``positions``
    ``(h, w, 2)``, x and y in the reference's cells) and how far that can be trusted (``confidence`` ``(h, w)``).

    Positions are composed frame by frame and the reference's colours sampled once, at the end: warping the colours
    themselves at every step would blur them a little more each frame (a bilinear resampling per frame), whereas
    composing the motion keeps the reference as sharp at frame 100 as at frame 1.
    """

    cells: np.ndarray  # (2, h, w) the reference picture's ab on the output grid
    positions: np.ndarray
    confidence: np.ndarray

    @classmethod
    def start(cls, cells: np.ndarray) -> ReferenceTrack:
        cells = np.ascontiguousarray(cells, dtype=np.float32)
        h, w = cells.shape[1:]
        grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), axis=-1)
        return cls(cells, grid, np.ones((h, w), np.float32))

    def step(self, flow_cells: np.ndarray, visibility: np.ndarray, fade: float) -> ReferenceTrack:
        """The track one frame on: ``flow_cells`` ``(h, w, 2)`` points from the new frame's cells into this one's;
        ``visibility`` ``(h, w)`` in [0, 1] is how far each new cell's flow can be trusted."""
        positions = warp_cells(self.positions, flow_cells)
        confidence = warp_cells(self.confidence, flow_cells) * trust(visibility) * fade
        return ReferenceTrack(self.cells, positions, confidence.astype(np.float32))

    @property
    def ab(self) -> np.ndarray:
        """The reference's colours carried to this frame, ``(2, h, w)``."""
        colours = cv2.remap(np.ascontiguousarray(self.cells.transpose(1, 2, 0)), self.positions[..., 0],
                            self.positions[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(colours.transpose(2, 0, 1), dtype=np.float32)

    @property
    def alive(self) -> bool:
        return bool(self.confidence.max() >= MIN_CONFIDENCE)


def combine(tracks: Sequence[ReferenceTrack]) -> tuple[np.ndarray, np.ndarray]:
    """Tracks reaching one frame -> one colour field, averaged by confidence, and the confidence that some reference
    holds each cell (``1 - prod(1 - c)``)."""
    if not tracks:
        raise ValueError("combine needs at least one track")
    weights = np.stack([t.confidence for t in tracks])
    total = weights.sum(axis=0)
    colours = np.stack([t.ab for t in tracks])
    ab = (colours * weights[:, None]).sum(axis=0) / np.maximum(total, 1e-12)[None]
    held = 1.0 - np.prod(1.0 - np.clip(weights, 0.0, 1.0), axis=0)
    return ab.astype(np.float32), held.astype(np.float32)


def blend(ab_grid: np.ndarray, reference_ab: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The grid ab ``(2, h, w)`` with the reference's colour laid on where it holds: ``(1 - c) ab + c ref``."""
    return (ab_grid + confidence[None] * (reference_ab - ab_grid)).astype(np.float32)
