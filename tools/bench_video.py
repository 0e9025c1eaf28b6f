"""``python -m tools bench --video``: film frames/s end to end, per stage, beside the decode+encode floor.

For each size (``--sizes 640x360,1920x1080``) a black-and-white test film is generated from the bundled
sample photos (a slow pan and zoom over each, with film grain, hard cuts between photos; H.264), then:

* **floor** - decode the film and encode its luma again with the same encoder and settings (neutral
  chroma): the rate no colorizer can beat, since it must decode and encode every frame too.
* **end to end** - ``worker.films.colorize_film`` from file to file (probe, segments, decode, network,
  smoothing, colour, encode, join): what ``tinct colorize film.mp4`` delivers. Busy seconds per stage come
  from the pipeline; stages run concurrently, so they add up to more than the wall time.
* **with references** (``--reference-frames 0``) - the same end-to-end run with a colour reference picture at each
  of those frames (``worker.references``: the frames around them decoded again, colours carried by flow through
  their shots), alternated with runs without, medians of 3 each: what references add to a film's cost.
* **memory** (``--memory-seconds 10,40``) - peak RSS of the whole film job in a fresh process for two film
  lengths, to show that memory does not grow with the film.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from models.color import code_dtype
from tools.runtime import frame_size, onnx_cache_dir, write_json
from worker.films import FilmOptions, colorize_film
from worker.media.video_sink import EncodeOptions, SegmentWriter, plan_output
from worker.media.video_source import decode_frames, probe_film
from worker.photos import open_colorizer
from worker.references import FilmReference
from worker.smoothing import SmoothingOptions

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
FPS = 24
GRAIN_SIGMA = 4.0  # film grain in 8-bit code values: it is what makes real films expensive to encode
SECONDS_PER_SHOT = 2.5
REFERENCE_ROUNDS = 3  # end-to-end runs with and without references, alternated, when references are measured


def _test_shots(width: int, height: int, frames: int, seed: int) -> Iterator[np.ndarray]:
    """Float gray frames (0-255): pan-and-zoom shots over the sample photos, with grain and hard cuts."""
    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff"))
    if not photos:
        raise FileNotFoundError(f"no sample photos in {SAMPLES}")
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in photos]
    rng = np.random.default_rng(seed)
    shot_frames = round(SECONDS_PER_SHOT * FPS)
    for i in range(frames):
        image = images[(i // shot_frames) % len(images)]
        frame = _pan_zoom(image, width, height, (i % shot_frames) / shot_frames)
        yield frame + rng.normal(0.0, GRAIN_SIGMA, frame.shape)


def make_test_scan(folder: Path, width: int, height: int, frames: int, seed: int = 0) -> list[Path]:
    """The shots of ``make_test_film`` as a film scanner's run: ``scan_0086400.dpx`` on, 10-bit DPX, one a frame."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = str(folder).replace("%", "%%") + "/scan_%07d.dpx"
    with av.open(pattern, "w", format="image2", options={"start_number": "86400"}) as out:
        stream = out.add_stream("dpx", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "gbrp10le"
        for i, shot in enumerate(_test_shots(width, height, frames, seed)):
            gray = np.clip(shot * 257, 0, 65535).astype(np.uint16)
            _encode(out, stream, av.VideoFrame.from_ndarray(gray, format="gray16le").reformat(format="gbrp10le"), i)
        _encode(out, stream, None, 0)
    return sorted(folder.glob("scan_*.dpx"))


def make_test_film(path: Path, width: int, height: int, seconds: float, seed: int = 0) -> Path:
    """A black-and-white H.264 film: pan-and-zoom shots over the sample photos, with grain and hard cuts."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i, shot in enumerate(_test_shots(width, height, round(seconds * FPS), seed)):
            gray = np.clip(shot, 0, 255).astype(np.uint8)
            _encode(out, stream, av.VideoFrame.from_ndarray(gray, format="gray").reformat(format="yuv420p"), i)
        _encode(out, stream, None, 0)
    return path


def _encode(out, stream, frame: av.VideoFrame | None, pts: int) -> None:
    """``frame`` encoded at ``pts`` and muxed; None flushes the encoder."""
    if frame is not None:
        frame.pts = pts
    for packet in stream.encode(frame):
        out.mux(packet)


def _pan_zoom(image: np.ndarray, width: int, height: int, t: float) -> np.ndarray:
    """A crop of ``image`` with the output's aspect, zooming from 100 % to 85 % and panning right over a shot."""
    ih, iw = image.shape
    aspect = width / height
    crop_w = min(iw, ih * aspect) * (1.0 - 0.15 * t)
    crop_h = crop_w / aspect
    x0 = (iw - crop_w) * t
    y0 = (ih - crop_h) * 0.5
    matrix = np.array([[width / crop_w, 0, -x0 * width / crop_w], [0, height / crop_h, -y0 * height / crop_h]])
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR).astype(np.float32)


@dataclass
class VideoRates:
    size: str
    frames: int
    floor_fps: float
    end_to_end_fps: float
    stages: dict[str, float]
    references: int = 0
    with_references_fps: float | None = None  # end to end with ``references`` reference pictures

    @property
    def ratio(self) -> float:
        return self.floor_fps / self.end_to_end_fps if self.end_to_end_fps else float("inf")

    @property
    def reference_cost(self) -> float | None:
        """How much longer a frame takes with the references (0.25 = frames/s down by a fifth, 25 % more time)."""
        if not self.with_references_fps:
            return None
        return self.end_to_end_fps / self.with_references_fps - 1.0


def make_reference_picture(path: Path, width: int, height: int) -> Path:
    """A colour picture of a frame's size (hues across, saturation down): what an artist's colouring costs to carry
    does not depend on its colours."""
    x = np.linspace(0, 179, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    saturation = np.linspace(80, 220, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    hsv = np.stack([x, saturation, np.full_like(x, 180)], axis=-1).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))
    return path


def bench_floor(film_path: Path, encode: EncodeOptions) -> tuple[int, float]:
    """Decode + encode only, through the product's own decoder and segment writer (neutral chroma)."""
    film = probe_film(film_path, 1 << 40)
    layout = plan_output(film.video, encode)
    chroma_w, chroma_h = layout.frame.chroma_size(film.video.width, film.video.height)
    neutral = np.full((chroma_h, chroma_w), 1 << (layout.bit_depth - 1), dtype=code_dtype(layout.bit_depth))
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        with SegmentWriter(Path(tmp) / "floor.nut", film.video, layout, encode) as writer:
            for frame in decode_frames(film, layout.frame, 0, film.frames):
                writer.write(frame.pts, frame.luma, neutral, neutral)
        seconds = time.perf_counter() - began
    return film.frames, seconds


def bench_size(colorizer, label: str, width: int, height: int, seconds: float, encode: EncodeOptions,
               smoothing: SmoothingOptions, reference_frames: Sequence[int] = ()) -> VideoRates:
    """Floor and end-to-end rates on a generated film; with ``reference_frames``, end to end again with a reference
    picture at each of those frames."""
    with tempfile.TemporaryDirectory() as tmp:
        film_path = make_test_film(Path(tmp) / f"film-{width}x{height}.mp4", width, height, seconds)
        frames, floor_s = bench_floor(film_path, encode)
        options = FilmOptions(smoothing=smoothing, encode=encode, overwrite=True)
        outcome = colorize_film(colorizer, film_path, Path(tmp) / "colour.mkv", options, label)
        end_to_end_fps, with_references = outcome.fps, None
        if reference_frames:
            picture = make_reference_picture(Path(tmp) / "reference.png", width, height)
            guided = replace(options, references=tuple(FilmReference(f"frame:{index}", str(picture))
                                                       for index in reference_frames))
            # Alternated, medians of REFERENCE_ROUNDS each: a shared machine's drift hits both alike.
            plain_fps, guided_fps = [outcome.fps], []
            for round_ in range(REFERENCE_ROUNDS):
                guided_fps.append(colorize_film(colorizer, film_path, Path(tmp) / "guided.mkv", guided, label).fps)
                if round_ + 1 < REFERENCE_ROUNDS:
                    plain_fps.append(colorize_film(colorizer, film_path, Path(tmp) / "colour.mkv", options,
                                                   label).fps)
            end_to_end_fps, with_references = float(np.median(plain_fps)), float(np.median(guided_fps))
    times = outcome.times
    stages = {name: getattr(times, name) / frames * 1000 for name in ("decode", "network", "smoothing", "colour",
                                                                      "encode")}
    return VideoRates(f"{width}x{height}", frames, frames / floor_s, end_to_end_fps, stages, len(reference_frames),
                      with_references)


def _memory_child(args: tuple[str, str, int, int, int, float, dict, float], result) -> None:
    """Runs in a fresh process: make a film, colorize it, report the job's peak resident memory (MiB)."""
    model, device, render_size, width, height, seconds, encode, strength = args
    with tempfile.TemporaryDirectory() as tmp:
        film_path = make_test_film(Path(tmp) / "film.mp4", width, height, seconds)
        # The peak is the kernel's high-water mark (VmHWM), reset here so that making the test film does not
        # count. Not ru_maxrss: a spawned child inherits the parent's peak through fork + exec.
        Path("/proc/self/clear_refs").write_text("5")
        before = _peak_rss_mib()
        with open_colorizer(model, device=device, render_size=render_size, cache_dir=onnx_cache_dir()) as (
            colorizer, label
        ):
            options = FilmOptions(smoothing=SmoothingOptions(strength=strength), encode=EncodeOptions(**encode))
            colorize_film(colorizer, film_path, Path(tmp) / "colour.mkv", options, label)
        result.put({"seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "rss_before_job_mib": before})


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status (the memory check needs Linux)")


def bench_memory(model: str, device: str, render_size: int, width: int, height: int, lengths: list[float],
                 encode: EncodeOptions, strength: float) -> list[dict[str, float]]:
    context = multiprocessing.get_context("spawn")
    results = []
    for seconds in lengths:
        queue = context.Queue()
        encode_args = {"codec": encode.codec, "crf": encode.crf, "preset": encode.preset}
        child_args = (model, device, render_size, width, height, seconds, encode_args, strength)
        process = context.Process(target=_memory_child, args=(child_args, queue))
        process.start()
        results.append(queue.get())
        process.join()
    return results


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video (--video)")
    group.add_argument("--video", action="store_true", help="benchmark the film pipeline instead of photos")
    group.add_argument("--sizes", default="640x360,1920x1080", help="frame sizes of the generated test films")
    group.add_argument("--seconds", type=float, default=10.0, help="length of each test film")
    group.add_argument("--codec", default="h264", help="output codec (default: h264)")
    group.add_argument("--preset", default="veryfast", help="x264/x265 preset for output and floor")
    group.add_argument("--crf", type=int, default=None, help="constant quality (codec default if omitted)")
    group.add_argument("--smoothing", type=float, default=SmoothingOptions().strength, help="smoothing strength")
    group.add_argument("--reference-frames", default="",
                       help="comma-separated frame numbers: also run end to end with a colour reference picture at "
                       "each (e.g. 0), to measure what references cost")
    group.add_argument("--memory-seconds", default="10,40",
                       help="two film lengths for the peak-memory check at the first size ('' to skip)")


def run_video_bench(args: argparse.Namespace) -> dict[str, Any]:
    encode = EncodeOptions(codec=args.codec, crf=args.crf, preset=args.preset)
    smoothing = SmoothingOptions(strength=args.smoothing)
    sizes = [frame_size(s) for s in args.sizes.split(",") if s]
    reference_frames = [int(f) for f in args.reference_frames.split(",") if f.strip()]
    results: dict[str, Any] = {"encode": encode.describe(), "smoothing": smoothing.strength, "sizes": []}
    with open_colorizer(args.model, device=args.device, render_size=args.render_size,
                        cache_dir=onnx_cache_dir()) as (colorizer, label):
        results["model"] = label
        for width, height in sizes:
            rates = bench_size(colorizer, label, width, height, args.seconds, encode, smoothing, reference_frames)
            row = {"size": rates.size, "frames": rates.frames, "floor_fps": rates.floor_fps,
                   "end_to_end_fps": rates.end_to_end_fps, "floor_over_end_to_end": rates.ratio,
                   "ms_per_frame": rates.stages}
            if reference_frames:
                row.update(reference_frames=reference_frames, with_references_fps=rates.with_references_fps,
                           reference_cost=rates.reference_cost)
            results["sizes"].append(row)
    lengths = [float(s) for s in args.memory_seconds.split(",") if s]
    if lengths:
        width, height = sizes[0]
        results["memory"] = {"size": f"{width}x{height}",
                             "runs": bench_memory(args.model, args.device, args.render_size, width, height, lengths,
                                                  encode, smoothing.strength)}
    return results


def video_table(results: dict[str, Any]) -> str:
    lines = [
        f"model {results['model']}, {results['encode']}, smoothing {results['smoothing']}",
        "",
        "| size | frames | floor fps (decode+encode) | end-to-end fps | floor / end-to-end | ms/frame: decode "
        "| network | smoothing | colour | encode |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["sizes"]:
        ms = row["ms_per_frame"]
        lines.append(f"| {row['size']} | {row['frames']} | {row['floor_fps']:.1f} | {row['end_to_end_fps']:.1f} | "
                     f"{row['floor_over_end_to_end']:.2f}x | {ms['decode']:.1f} | {ms['network']:.1f} | "
                     f"{ms['smoothing']:.1f} | {ms['colour']:.1f} | {ms['encode']:.1f} |")
    for row in results["sizes"]:
        if row.get("with_references_fps"):
            lines.append(f"\n{row['size']} with references at frames {', '.join(map(str, row['reference_frames']))}: "
                         f"{row['with_references_fps']:.1f} fps end to end against {row['end_to_end_fps']:.1f} "
                         f"without ({row['reference_cost']:+.1%} time per frame)")
    if "memory" in results:
        lines += ["", f"peak RSS of the whole job at {results['memory']['size']}:"]
        lines += [f"- {run['seconds']:.0f} s film: {run['peak_rss_mib']:.0f} MiB" for run in results["memory"]["runs"]]
    return "\n".join(lines)


def print_and_save(results: dict[str, Any], json_path: str | None) -> None:
    print(video_table(results))
    if json_path:
        write_json(json_path, results, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Fraction):
        return float(value)
    raise TypeError(type(value).__name__)
