"""``tinct``, the command line: parse arguments, set up logging, run jobs from :mod:`worker.photos` and
:mod:`worker.films`.

    tinct colorize scans/ -o colorized/              # a folder tree (photos and films), mirrored under colorized/
    tinct colorize old.tif -o old-colour.tif        # one file, written exactly there
    tinct colorize film.mp4 -o film-colour.mkv --smoothing 0.5 --codec h265 --crf 20
    tinct colorize scans/ -o colorized/ --model archive-1950s   # a model published to TINCT_MODEL_STORE
    tinct colorize photo.jpg -o out.jpg --hints hints.json   # a restorer's known colours (worker.hints); in
                                                            # folders, <photo file name>.hints.json beside a photo
    tinct colorize film.mp4 -o out.mkv --reference 12.5=frame.png --reference frame:300=still.jpg
    tinct --version

Exit status: 0 when every photo and film was colorized or skipped, 1 when any failed (or the model store could not
be reached), 2 for usage errors and models that cannot be loaded, 130 when interrupted (finished outputs and film
segments are kept and a rerun resumes), 143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from fractions import Fraction
from types import FrameType

from models.batching import DEFAULT_BATCH_SIZE
from worker.cli_args import positive_int, positive_seconds, reference
from worker.cli_service import add_service_commands
from worker.errors import ModelError, PermanentError, TinctError
from worker.films import DEFAULT_MAX_FILM_PIXELS, DEFAULT_SEGMENT_SECONDS, FilmOptions, colorize_films
from worker.media.frame_sequences import parse_frame_rate
from worker.media.frame_sink import FrameTarget, is_frame_output
from worker.media.images import DEFAULT_MAX_PIXELS, tinct_version
from worker.media.video_sink import (
    DEFAULT_PRESET,
    PRESETS,
    SOURCE_CODEC,
    EncodeOptions,
    available_codecs,
    canonical_codec,
    check_container,
    fallback_container,
)
from worker.media.video_source import LOG_CHOICES
from worker.model_store import resolve_model
from worker.photos import PhotoOptions, colorize_photos, open_colorizer, output_suffix, plan_photos
from worker.settings import Settings
from worker.smoothing import SmoothingOptions
from worker.storage import Storage

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
_KEPT = "finished photos and film segments are kept; run again to resume"


def max_pixels_arg(text: str) -> int:
    """``200000000``, ``200M``, ``200MP`` or ``1.5G`` -> a pixel count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[pP]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a pixel count: {text!r} (e.g. 200000000 or 200M)")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError("the pixel limit must be at least 1")
    return int(value)


def _strength(text: str) -> float:
    if text.lower() in ("off", "none", "no"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a strength: {text!r} (a number from 0 to 1, or 'off')") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 (off) and 1, got {value}")
    return value


def _codec_arg(text: str) -> str:
    try:
        return canonical_codec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _frame_rate_arg(text: str) -> Fraction:
    try:
        return parse_frame_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _format_arg(text: str) -> str:
    try:
        output_suffix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinct", description="Colorize black-and-white photos for archives.")
    parser.add_argument("--version", action="version", version=f"tinct {tinct_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    colorize = commands.add_parser(
        "colorize", help="colorize photos and films (files or folders, searched recursively)",
        description="Colorize photos and films. Outputs mirror each input folder's tree under -o; existing outputs "
        "are skipped, so a rerun resumes (an interrupted film resumes from its last finished segment). Colour "
        "photos and films are skipped unless --recolor is given.",
    )
    colorize.add_argument("inputs", nargs="+", metavar="INPUT", help="photo or film files and/or folders")
    colorize.add_argument("-o", "--output", required=True, help="output folder (or file, for a single input file)")
    colorize.add_argument("--model", default="default", help="'default' (the shipped model), a model name from "
                          "TINCT_MODEL_STORE, a .pt checkpoint or an .onnx export (default: %(default)s)")
    colorize.add_argument("--engine", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"),
                          help="inference backend (default: %(default)s)")
    colorize.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    colorize.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                          help="default: %(default)s (fp16 on CUDA, fp32 on CPU)")
    colorize.add_argument("--render-size", type=positive_int, default=None,
                          help="long side the network sees (never upscaled); colour is applied at full resolution "
                          "(default: the model's own, recorded in its checkpoint; 256 for a model without one)")
    colorize.add_argument("--batch-size", type=positive_int, default=None,
                          help="photos or film frames per network batch (default: as many as fit in GPU memory, "
                          "up to 64; 8 on CPU)")
    colorize.add_argument("--max-pixels", type=max_pixels_arg, default=None,
                          help=f"refuse larger photos (or pages of a multi-page TIFF document) or film frames, "
                          f"e.g. 200M (default: {DEFAULT_MAX_PIXELS // 1_000_000}M for photos, "
                          f"{DEFAULT_MAX_FILM_PIXELS / 1e6:.1f}M for film frames)")
    colorize.add_argument("--format", type=_format_arg, help="output format for every photo: jpg, png, tif, webp, "
                          "bmp or jp2 (default: each source's own; a multi-page TIFF document is refused in any "
                          "other, which would keep one page)")
    colorize.add_argument("--overwrite", action="store_true",
                          help="redo photos and films whose output exists and is current (one older than its source "
                          "or hints is redone anyway)")
    colorize.add_argument("--hints", metavar="HINTS.json",
                          help="colour hints for a single input photo: points and regions with known sRGB colours, "
                          "honoured at their pixels and spread along edges of lightness (in folders, a photo's "
                          "<file name>.hints.json beside it is used)")
    colorize.add_argument("--recolor", action="store_true",
                          help="colorize colour photos and films too (their colour is discarded; only their "
                          "lightness is used)")
    films = colorize.add_argument_group("films")
    films.add_argument("--smoothing", type=_strength, default=SmoothingOptions().strength, metavar="STRENGTH",
                       help="temporal smoothing of colour, 0 (off) to 1 (default: %(default)s)")
    films.add_argument("--codec", type=_codec_arg, default=SOURCE_CODEC,
                       help=f"video codec: {', '.join(available_codecs())}, or {SOURCE_CODEC}: each film's own "
                       "where it is one of those and its output's container holds it (an FFV1 master stays "
                       "lossless), else h264 (default: %(default)s)")
    films.add_argument("--crf", type=int, help="constant quality for h264/h265, lower is better (default: 18 "
                       "for h264, 20 for h265); a film copied as FFV1 or ProRes ignores it")
    films.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS, metavar="PRESET",
                       help="x264/x265 speed preset, ultrafast .. veryslow (default: %(default)s)")
    films.add_argument("--frame-rate", type=_frame_rate_arg, metavar="FPS",
                       help="the rate runs of numbered frames play at: DPX scans in folders, or frames named by a "
                       "pattern such as scans/reel1/scan_%%07d.tif, e.g. 24, 18 or 23.976 (default: the rate DPX "
                       "frames declare, else 24)")
    films.add_argument("--log", default="auto", choices=LOG_CHOICES,
                       help="how a run of frames' codes are read: auto (as DPX headers say: printing density or "
                       "logarithmic is Cineon log), cineon (log scans whose headers do not say so, such as TIFF "
                       "runs), none (as they look) (default: %(default)s)")
    films.add_argument("--reference", action="append", type=reference, default=[], metavar="TIME=IMAGE",
                       help="a colour picture of one frame of a single input film (TIME in seconds, or frame:N), "
                       "carried forward and backward through its shot by motion; repeatable")
    films.add_argument("--segment-seconds", type=positive_seconds, default=DEFAULT_SEGMENT_SECONDS,
                       help="films are colorized in segments of about this length; an interrupted film resumes "
                       "from its last finished segment (default: %(default)s)")
    colorize.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary; only problems")
    colorize.set_defaults(run=_colorize)
    add_service_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tinct`` console script; returns the exit status instead of exiting."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "worker":
        return args.run(args, parser)  # Celery runs the process: its own logging and signal handling
    with _logging(quiet=getattr(args, "quiet", False)), _sigterm_as_exception():
        try:
            return args.run(args, parser)
        except TinctError as exc:  # e.g. Redis or storage out of reach: one line, and a status a script may retry on
            print(f"tinct: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            logging.getLogger("tinct").error("interrupted: %s", _KEPT)
            return EXIT_INTERRUPTED
        except _Terminated:
            logging.getLogger("tinct").error("terminated: %s", _KEPT)
            return EXIT_TERMINATED


def _colorize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        plan = plan_photos(args.inputs, args.output, args.format, args.hints, fallback_container(args.codec))
        if args.reference and (len(plan.films) != 1 or plan.tasks):
            raise ValueError("--reference names frames of one film; give a single film as the input")
    except ValueError as exc:
        print(f"{parser.prog} colorize: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = not args.quiet and sys.stderr.isatty()
    options = PhotoOptions(
        overwrite=args.overwrite, recolor=args.recolor, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        batch_size=args.batch_size or DEFAULT_BATCH_SIZE, progress=progress,
    )
    try:
        settings = Settings.from_env()  # TINCT_MAX_HINTS and its neighbours bound hints and references here too
        options = replace(options, limits=settings.guidance_limits)
        film_options = FilmOptions(
            smoothing=SmoothingOptions(strength=args.smoothing),
            encode=EncodeOptions(codec=args.codec, crf=args.crf, preset=args.preset),
            segment_seconds=args.segment_seconds, max_pixels=args.max_pixels or DEFAULT_MAX_FILM_PIXELS,
            recolor=args.recolor, overwrite=args.overwrite, frame_rate=args.frame_rate, log=args.log,
            references=tuple(args.reference),
            limits=settings.guidance_limits,
        )
        for task in plan.films:
            if is_frame_output(task.output):
                FrameTarget.parse(task.output)  # a name frames can have, in a format Tinct writes
            else:
                check_container(task.output, film_options.encode.codec)
        storage = Storage(settings)
    except ValueError as exc:
        print(f"{parser.prog} colorize: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with storage:  # a model name is looked up in TINCT_MODEL_STORE, as the workers do
            model = resolve_model(args.model, settings, storage)
    except TinctError as exc:  # an unknown name, or a store that refused or could not be reached
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, PermanentError) else EXIT_FAILED
    try:
        with open_colorizer(model, args.engine, args.device, args.precision, args.render_size,
                            args.batch_size, cache_dir=settings.cache_dir / "onnx") as (colorizer, label):
            options = replace(options, batch_size=colorizer.batch_size)  # the batch the model load settled on
            summary = colorize_photos(colorizer, plan, label, options)
            film_summary = colorize_films(colorizer, [(t.source, t.output) for t in plan.films], film_options,
                                          label, progress)
    except ModelError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        if plan.tasks or plan.failures or not plan.films:
            print(summary.report())
        if plan.films:
            print(film_summary.report())
    return EXIT_FAILED if summary.failed or film_summary.failed else EXIT_OK


@contextmanager
def _logging(quiet: bool) -> Iterator[None]:
    """Log to stderr for the duration of one ``main`` call (and no longer: tests call ``main`` many times)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove temp files and finish encodes."""


@contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """The ``tinct`` console script: ``main()``'s status as the process's exit code. After an interrupt or a SIGTERM
    the process leaves with ``os._exit`` once its output is flushed: the work in flight has been stopped and what
    was finished is on disk, and tearing the interpreter down then can abort in a native thread pool's static
    destructors (torch's, OpenCV's: "terminate called without an active exception", status -6 instead of 130)."""
    status = main()
    if status in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
