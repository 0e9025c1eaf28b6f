"""The film job: one film in, one colorized film out, in resumable segments.

    outcome = colorize_film(colorizer, "reel1.mkv", "reel1-colour.mkv", FilmOptions(), model_label="...")

1. Probe (``worker.media.video_source``): the film is validated and indexed; a bad film fails here, before any
   work, with a one-line reason naming the file.
2. Plan (``worker.media.segments``): segments of about ``segment_seconds``, starting at keyframes.
3. Colorize each segment (``worker.pipeline``) into a video-only file in a work folder beside the output,
   ``.<output name>.tinct-parts/``, written atomically; a manifest records the source's identity and the
   options. After a crash or Ctrl-C a rerun with the same options keeps every finished segment and redoes
   only the rest; a rerun with other options (or a changed source) starts over.
4. Join (``worker.media.segments.join_segments``): the segments and the source's audio, subtitles, chapters and
   metadata become the output, atomically; then the work folder is removed. Nothing ever appears under the
   output's name until it is complete. An output named by a pattern (``colour/scan_%07d.dpx``) is a run of
   frames instead (``worker.media.frame_sink``): each segment writes its frames into the work folder, and they move into
   their folder at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from models.colorizer import Colorizer
from models.files import atomic_output, atomic_path, changed_since
from worker.errors import BadInputError, TinctError, one_line
from worker.media.frame_sequences import is_pattern
from worker.media.frame_sink import FrameTarget, FrameWriter, frames_layout, is_frame_output, publish
from worker.media.images import provenance_text, tinct_version
from worker.media.segments import Segment, check_output, describe_other_streams, join_segments, plan_segments
from worker.media.video_sink import (
    CODECS,
    EncodeOptions,
    OutputLayout,
    SegmentWriter,
    check_container,
    plan_output,
)
from worker.media.video_source import FilmInfo, copy_warnings, probe_film, with_log_choice
from worker.pipeline import ColourFrame, StageTimes, colorize_frames
from worker.references import (
    REFERENCES_SUFFIX,
    FilmReference,
    ReferenceField,
    ResolvedReference,
    folder_references,
    load_reference_image,
    references_guidance,
    references_provenance,
    resolve_references,
)
from worker.settings import GuidanceLimits
from worker.smoothing import SmoothingOptions

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_SECONDS = 60.0  # a crash loses at most this much work; the join's cost does not depend on it
DEFAULT_MAX_FILM_PIXELS = 8192 * 4352  # 8K DCI: anything larger is a mistake, not a film
PARTS_SUFFIX = ".tinct-parts"
MANIFEST = "manifest.json"
FRAMES_FOLDER = "frames"  # in the work folder: a run of frames being written
# Warm-up frames before a segment that starts mid-shot: enough for the smoother's memory of the frames
# before (which decays geometrically) to fall under 1 % of a colour difference, at most a few dozen.
WARMUP_TOLERANCE = 0.01
MAX_WARMUP_FRAMES = 48


@dataclass(frozen=True)
class FilmOptions:
    smoothing: SmoothingOptions = field(default_factory=SmoothingOptions)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS
    max_pixels: int = DEFAULT_MAX_FILM_PIXELS
    recolor: bool = False
    overwrite: bool = False
    frame_rate: Fraction | None = None  # of runs of numbered frames (worker.media.frame_sequences); None: their own
    log: str = "auto"  # how a run's codes are read (worker.media.video_source.LOG_CHOICES): as its DPX headers say
    # Reference frames (worker.references): colour pictures of frames, carried through their shots.
    references: tuple[FilmReference, ...] = ()
    limits: GuidanceLimits = field(default_factory=GuidanceLimits)  # how many references, how large a picture


@dataclass
class FilmOutcome:
    source: Path
    output: Path
    status: str  # "done", "exists", "colour" (a colour film, left alone) or "failed"
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    resumed_segments: int = 0
    times: StageTimes | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class FilmSummary:
    outcomes: list[FilmOutcome]

    @property
    def failed(self) -> list[FilmOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    def report(self) -> str:
        """One line per film for people: what became of it, and how fast."""
        lines = []
        for outcome in self.outcomes:
            if outcome.status == "done":
                resumed = f", {outcome.resumed_segments} segments resumed" if outcome.resumed_segments else ""
                lines.append(f"film {outcome.source}: {outcome.frames} frames in {outcome.seconds:.1f} s "
                             f"({outcome.fps:.1f} fps{resumed}) -> {outcome.output}")
            elif outcome.status == "exists":
                lines.append(f"film {outcome.source}: skipped, {outcome.output} already exists")
            elif outcome.status == "colour":
                lines.append(f"film {outcome.source}: skipped, it is a colour film (--recolor colorizes it anyway)")
            else:
                lines.append(f"film failed: {outcome.reason}")
        return "\n".join(lines)


def colorize_films(
    colorizer: Colorizer,
    tasks: Sequence[tuple[Path, Path]],
    options: FilmOptions,
    model_label: str,
    progress: bool = False,
) -> FilmSummary:
    """Colorize each ``(source, output)`` in turn; a film that fails is recorded with its one-line reason and
    the job carries on. KeyboardInterrupt propagates (finished segments are kept for the rerun). Unless ``options``
    name references, a film takes those of its sidecar folder, ``<film file name>.references/`` beside it."""
    outcomes = []
    for source, output in tasks:
        bar = tqdm(total=0, unit="frame", desc=Path(source).name, disable=not progress, dynamic_ncols=True,
                   leave=False, smoothing=0.1)

        def advance(done: int, total: int, bar: tqdm = bar) -> None:
            bar.total = total
            bar.update(done - bar.n)

        with bar, logging_redirect_tqdm() if progress else nullcontext():
            try:
                film_options = options
                if not options.references:
                    sidecar = folder_references(source, options.limits.max_references)
                    if sidecar:
                        logger.info("%s: %d reference frame(s) from %s%s/", Path(source).name, len(sidecar),
                                    Path(source).name, REFERENCES_SUFFIX)
                        film_options = replace(options, references=sidecar)
                outcome = colorize_film(colorizer, source, output, film_options, model_label, advance)
            except (TinctError, ValueError) as exc:
                outcome = FilmOutcome(Path(source), Path(output), "failed", one_line(exc))
        if outcome.status == "failed":
            logger.error("%s", outcome.reason)
        outcomes.append(outcome)
    return FilmSummary(outcomes)


# (frames done so far, frames in total) after every encoded frame.
Progress = Callable[[int, int], None]


def warmup_frames(smoothing: SmoothingOptions) -> int:
    """Frames of context a segment needs so that its first frame is smoothed as in a whole-film pass."""
    alpha = smoothing.alpha
    if alpha <= 0:
        return 0
    return min(MAX_WARMUP_FRAMES, math.ceil(math.log(WARMUP_TOLERANCE) / math.log(alpha)))


def colorize_film(
    colorizer: Colorizer,
    source: str | os.PathLike,
    output: str | os.PathLike,
    options: FilmOptions,
    model_label: str,
    progress: Progress | None = None,
) -> FilmOutcome:
    """Colorize one film into ``output`` (see the module docstring). Bad input raises BadInputError;
    KeyboardInterrupt leaves finished segments for a rerun and nothing under ``output``."""
    source, output = Path(source), Path(output)
    started = time.perf_counter()
    frames = FrameTarget.parse(output) if is_frame_output(output) else None  # a run of frames, else a film file
    parts = parts_folder(output)
    if _exists(output, frames, parts) and not options.overwrite:
        made = output if frames is None else min(frames.existing(), key=lambda frame: frame.stat().st_mtime_ns)
        changed = changed_since(made, (*_source_files(source), *(Path(r.image) for r in options.references)))
        if changed is None:
            return FilmOutcome(source, output, "exists")
        logger.info("%s: changed since %s was made; colouring it again", changed, made)
    if frames is None:
        check_container(output, options.encode.codec)
    film = probe_film(source, options.max_pixels, options.frame_rate)
    if options.log != "auto" and film.sequence is None:  # a folder holds film files beside its scans
        logger.warning("%s: a film file is read as it is; --log %s applies to runs of frames", source, options.log)
    elif options.log != "auto" and film.video.scene_linear:  # and VFX plates
        logger.warning("%s: its frames hold linear light, read through the sRGB curve; --log %s applies to runs of "
                       "display or log codes", source, options.log)
    else:
        film = with_log_choice(film, options.log)
    if options.frame_rate is not None and film.sequence is None:
        logger.warning("%s: keeps its own timing; a frame rate applies to runs of frames only", source)
    if film.is_colour and not options.recolor:
        return FilmOutcome(source, output, "colour", frames=film.frames)
    if frames is None:
        options = replace(options, encode=options.encode.for_film(film.video, output))
        check_output(film, output, options.encode.codec)
    elif film.sequence is not None and frames.frame_path(film.sequence.first).resolve() in {
            film.sequence.frame_path(i).resolve() for i in range(film.sequence.count)}:
        raise BadInputError(output, f"would replace the frames of its source, {source}")
    elif film.other_streams:
        logger.warning("%s: its %s %s left out: frames carry no sound or subtitles", source,
                       describe_other_streams(film), "is" if len(film.other_streams) == 1 else "are")
    # Every reference is checked (time, picture) before any work, so a bad one fails the film with nothing written.
    limits = options.limits
    references = resolve_references(
        options.references, film, lambda r: load_reference_image(r.image, max_bytes=limits.max_reference_file_bytes),
        limits.max_references)
    layout = plan_output(film.video, options.encode) if frames is None else frames_layout(film.video, frames)
    for warning in copy_warnings(film, layout.frame.keeps_light, options.encode.codec if frames is None else None,
                                 output):
        logger.warning("%s: %s", source, warning)
    segment_frames = max(1, round(options.segment_seconds * (film.fps or 24)))
    segments = plan_segments(film, segment_frames, warmup_frames(options.smoothing))
    manifest = _manifest(film, colorizer, options, model_label, segments, layout if frames else None)
    if references:
        # A rerun with other references (or changed pictures) must not reuse segments coloured by these.
        manifest["options"]["references"] = [
            {**r.as_dict(), "sha256": hashlib.sha256(Path(r.image).read_bytes()).hexdigest()}
            for r in options.references]
    resumed = _prepare_parts(parts, manifest)
    segment_files = [_segment_file(parts, s, options.encode.codec, frames) for s in segments]
    done = sum(s.frames for s, path in zip(segments, segment_files, strict=True) if path.exists())
    if progress:
        progress(done, film.frames)
    writer = FrameWriter(parts / FRAMES_FOLDER, frames, film, layout, provenance_text(
        model_label, references_guidance(len(references)))) if frames else None
    try:
        times, reused = _colorize_segments(colorizer, film, layout, options, segments, segment_files, done, progress,
                                           references, writer)
    except BadInputError:
        # The film itself is bad (damaged data found while decoding): nothing here is worth resuming.
        shutil.rmtree(parts, ignore_errors=True)
        raise
    if frames is None:
        provenance = dict(manifest["options"], tinct=tinct_version(), source=source.name)
        provenance.update(references_provenance(len(references)))
        join_segments(film, segment_files, output, provenance)
    else:
        publish(parts / FRAMES_FOLDER, frames, writer.first, film.frames)
    shutil.rmtree(parts, ignore_errors=True)
    if resumed and reused:
        logger.info("%s: resumed, %d of %d segments were already done", source, reused, len(segments))
    return FilmOutcome(source, output, "done", frames=film.frames, seconds=time.perf_counter() - started,
                       resumed_segments=reused if resumed else 0, times=times)


def _source_files(source: Path) -> list[Path]:
    """What a film was made from, for telling whether its copy is current: the film file, or for a run of frames
    (a folder, or its pattern) the newest file in the run's folder, of one stat per file (what a rescan of a frame
    changes; ``probe_film`` reads every frame's header, which a rerun that skips the film need not)."""
    folder = source if source.is_dir() else source.parent if is_pattern(str(source)) else None
    if folder is None:
        return [source]
    with os.scandir(folder) as entries:
        files = [entry for entry in entries if entry.is_file(follow_symlinks=False)]
    return [Path(max(files, key=lambda entry: entry.stat().st_mtime_ns).path)] if files else []


def _exists(output: Path, frames: FrameTarget | None, parts: Path) -> bool:
    """Whether the output is already there: the film file, or frames of the run where no unfinished work (a
    publish cut short) remains beside them."""
    if frames is None:
        return output.exists()
    return bool(frames.existing()) and not parts.exists()


def _segment_file(parts: Path, segment: Segment, codec: str, frames: FrameTarget | None) -> Path:
    """A segment's file in ``parts``: its encoded video, or for frames a marker that all of its frames are written."""
    return segment_path(parts, segment, codec) if frames is None else parts / f"segment-{segment.index:05d}.done"


def _colorize_segments(colorizer: Colorizer, film: FilmInfo, layout: OutputLayout, options: FilmOptions,
                       segments: list[Segment], segment_files: list[Path], done: int,
                       progress: Progress | None, references: Sequence[ResolvedReference] = (),
                       frames: FrameWriter | None = None) -> tuple[StageTimes, int]:
    """Colorize every segment whose file is not there yet; returns the stage times and how many were reused."""
    times = StageTimes()
    encoded = [done]  # frames written so far, shared with the sink below
    reused = 0
    for segment, path in zip(segments, segment_files, strict=True):
        if path.exists():
            reused += 1
            continue
        with atomic_path(path) as tmp, \
                SegmentWriter(tmp, film.video, layout, options.encode) if frames is None else nullcontext() as writer:
            def sink(frame: ColourFrame, writer: SegmentWriter | None = writer) -> None:
                if writer is None:
                    frames.write(frame.index, frame.luma, frame.cb, frame.cr, frame.light)
                else:
                    writer.write(frame.pts, frame.luma, frame.cb, frame.cr, frame.captions)
                encoded[0] += 1
                if progress:
                    progress(encoded[0], film.frames)
            field = None
            if references:
                field = ReferenceField(film, layout.frame, colorizer, options.smoothing, references,
                                       segment.start - segment.warmup, segment.stop)
            times.add(colorize_frames(film, colorizer, layout, options.smoothing, sink, segment.start,
                                      segment.stop, segment.warmup, field))
            if frames is not None:
                tmp.touch()  # the marker: every frame of the segment is written
    return times, reused


def parts_folder(output: Path) -> Path:
    """The work folder beside an output; for a run of frames, beside the folder the frames go into (which can then
    appear whole, by one rename)."""
    if is_frame_output(output):
        folder = Path(os.path.abspath(output.parent))
        return folder.with_name(f".{folder.name}.{output.name}{PARTS_SUFFIX}")
    return output.with_name(f".{output.name}{PARTS_SUFFIX}")


def segment_path(parts: Path, segment: Segment, codec: str) -> Path:
    return parts / f"segment-{segment.index:05d}-{segment.start}-{segment.stop}{CODECS[codec].segment_suffix}"


def _manifest(film: FilmInfo, colorizer: Colorizer, options: FilmOptions, model_label: str,
              segments: list[Segment], frames_layout: OutputLayout | None = None) -> dict:
    if frames_layout is None:
        written = options.encode.describe()
    else:
        written = {"frames": frames_layout.codec, "bit_depth": frames_layout.bit_depth}
    return {
        "source": film.identity(),
        "options": {
            "model": model_label,
            "render_size": colorizer.render_size,
            "smoothing": options.smoothing.strength,
            "log": film.video.log_encoded,  # read so, coloured so: a rerun read otherwise redoes every segment
            # Linear light has been read through the sRGB curve since the manifest had this key, as display codes
            # before; only its films' manifests name it, so no other film's rerun starts over.
            **({"scene_linear": True} if film.video.scene_linear else {}),
            **written,
        },
        "segments": [s.as_dict() for s in segments],
    }


def _prepare_parts(parts: Path, manifest: dict) -> bool:
    """Keep ``parts`` if it was made for this very job (returns True), else start it afresh."""
    path = parts / MANIFEST
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous == manifest:
            return True
        logger.info("%s: the source or options changed since the last run; starting over", parts)
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    with atomic_output(path) as f:
        f.write(json.dumps(manifest, indent=1).encode())
    return False
