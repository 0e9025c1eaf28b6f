"""Films scanned as numbered still frames: one file per frame, as film scanners write them.

    sequence = find_sequence("reel1/scan_%07d.dpx")      # scan_0086400.dpx, scan_0086401.dpx, ... in reel1/
    sequence.first, sequence.count, sequence.frame_rate  # 86400, 1440, Fraction(24, 1)
    container = sequence.open()                          # PyAV reads the run as one video stream

A run is named by its folder and the printf pattern of its file names, as FFmpeg names them (``%07d``: seven
digits, zero-padded; ``%d``: unpadded; a literal ``%`` in a name doubled); ``####`` is taken as ``%04d``, as editing
software writes it. That name is the film's path wherever a film is named by its path (the film job, its resume
manifest, its messages). A run must be contiguous and its frames one size: a missing frame would shift every later
frame's time and is refused by number, and a DPX frame cut short or of another size by its file, before any work.
DPX, Cineon and OpenEXR files in folders are always taken as runs (the formats of film scanners and VFX plates,
which Tinct never reads as photos); TIFF and PNG runs are photos until named by their pattern. OpenEXR frames hold
linear light, which is read through the sRGB curve (``worker.media.video_source.VideoFormat.scene_linear``). Cineon
frames, which FFmpeg cannot decode, are read as the DPX frames they are rewritten as, a window at a time, in a
scratch folder (``worker.media.cineon``): a service node's work folder, the system's temp folder (``TMPDIR``) elsewhere.

A DPX frame says its frame rate in its film or television header where the scanner filled them in, an OpenEXR frame
in its framesPerSecond attribute; a run whose frames do not say (and every TIFF or PNG run) plays at
``DEFAULT_FRAME_RATE`` unless a rate is given. Its timecode is its first frame's (DPX's television header, OpenEXR's
timeCode).

The service names a stored run the same way (``s3://scans/reel1/scan_%07d.dpx``): ``stored_frames`` lists its
objects and ``stored_identity`` makes one identity of them, as a job's input needs. A worker reads a stored run
through ``stored_sequence``, whose ``open`` fetches just the frames it reads: a reel is too large to copy whole.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import struct
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av

from models.color import BT709_CHROMATICITIES, same_primaries
from worker.errors import BadInputError, frame_size_error
from worker.media.cineon import as_dpx, check_cineon_frame, cineon_frame_rate
from worker.media.openexr import ExrHeader, damage, exr_frame_rate, exr_head, exr_timecode, read_exr_header
from worker.storage import ObjectInfo, format_uri, parse_uri

logger = logging.getLogger(__name__)

# Suffixes whose numbered files in a folder are frames of a film, never photos.
FOLDER_SEQUENCE_SUFFIXES = (".dpx", ".cin", ".exr")
CINEON_SUFFIX = ".cin"
OPENEXR_SUFFIX = ".exr"
# How much of each OpenEXR frame is read first to check it (more where its headers go on): a plate's headers take a
# few hundred bytes to a few KB, and a feature has some 170,000 frames; its chunk tables are read where they lie.
EXR_FRAME_CHECK_BYTES = 1 << 12
# FFmpeg decodes no deep OpenEXR frame (several samples a pixel): such a run is refused by its frame.
DEEP_REFUSAL = ("a deep OpenEXR frame (several samples a pixel), which cannot be decoded here: flatten the run first "
                "(to one sample a pixel, as compositing packages write a flat plate)")
CINEON_ENCODING = (1, 1)  # printing density, as SMPTE 268M codes it: what every Cineon frame holds
# Suffixes whose frames hold linear light (OpenEXR's floats), never display or log codes.
LINEAR_LIGHT_SUFFIXES = (OPENEXR_SUFFIX,)
# Photo formats whose runs are films only when named by their pattern; a folder walk points out a run this long
# (a second of film), which it colorizes as photos, one by one.
PATTERN_ONLY_SUFFIXES = (".tif", ".tiff", ".png")
FILM_LIKE_RUN = 24
# Film's own rate: what a run plays at when neither its frames nor the user say otherwise.
DEFAULT_FRAME_RATE = Fraction(24)
MAX_FRAME_RATE = 1000  # as worker.media.video_source.MAX_PLAUSIBLE_FPS: high-speed scans run at a few hundred
# NTSC-family rates are written as decimals (23.976, 29.97): they mean these exact fractions.
NTSC_RATES = tuple(Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120))
# SMPTE 268M: the DPX magic number tells the byte order. The generic headers take 1664 bytes; the industry headers
# (film, then television) follow them only where the image data starts at byte 2048 or later (FFmpeg writes none).
# The film header's frame rate (R32) is at byte 1724 and the television header's at 1940; an unset field is all
# ones (a NaN).
DPX_MAGIC = {b"SDPX": ">", b"XPDS": "<"}
DPX_RATE_OFFSETS = {"film header": 1724, "television header": 1940}
DPX_TIMECODE_OFFSET = 1920  # U32 in the television header: SMPTE 12M hh:mm:ss:ff in BCD, bit 30 drop-frame
DPX_GENERIC_HEADER_BYTES = 1664
DPX_HEADER_BYTES = 2048
DPX_DATA_OFFSET = 4  # U32: where the image data starts
DPX_FILE_SIZE_OFFSET = 16  # U32: the whole file's size in bytes
DPX_SIZE_OFFSET = 772  # U32 pixels per line, then U32 lines per image element
DPX_TRANSFER_OFFSET = 801  # U8: image element 1's transfer characteristic, then U8 its colorimetric specification
DPX_LOG_TRANSFERS = {1: "printing density", 3: "logarithmic"}
MISSING_FRAMES_SHOWN = 5

# How a worker reads a run kept in an object store, too large to copy whole to each worker (a 2K reel is some 180 GB):
# given the positions of the frames it will read, a context holding a folder of its own with just those frames,
# named as in the run (``worker.work.Runtime`` copies them there), removed on leaving.
FetchFrames = Callable[[range], AbstractContextManager[Path]]
# Where a Cineon run in a folder has a window of frames rewritten as DPX: a context holding an empty folder of its
# own, removed on leaving (``worker.work.Runtime.frames_folder``, in a service node's work folder).
ScratchFolder = Callable[[], AbstractContextManager[Path]]

_PRINTF = re.compile(r"%(0(?P<digits>[1-9]\d?)|)d")
_HASHES = re.compile(r"#+")
_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<suffix>\.[^.]+)$")


@dataclass(frozen=True)
class FrameSequence:
    folder: Path
    prefix: str  # the file names before the frame number, as on disk
    digits: int  # zero-padded to this many digits; 0 for unpadded numbers
    suffix: str  # the file names after the number (the extension), as on disk
    first: int  # the first frame's number
    count: int
    frame_rate: Fraction
    rate_source: str  # where the rate came from: "given", the DPX header that says it, or "default"
    timecode: str | None = None  # the first frame's, as a DPX television header or OpenEXR timeCode gives it
    # Set for a run kept in an object store: ``folder`` then holds none of its frames, and ``open`` has the frames
    # it reads fetched. Such a run was listed and checked by ``stored_sequence``.
    fetch: FetchFrames | None = field(default=None, compare=False, repr=False)
    # A DPX run's encoding as its first frame's header says it: image element 1's transfer characteristic and
    # colorimetric specification (SMPTE 268M codes: 1 printing density, 2 linear, 6 BT.709, ...); a Cineon run's is
    # printing density. Frames written from the run keep it, as they keep its lightness.
    dpx_encoding: tuple[int, int] | None = None
    # Where a Cineon run in a folder is rewritten, a window at a time (24 frames: some 300 MB at 2K); None for the
    # system's temp folder, often a small RAM disk on a server, hence a service node's work folder there.
    scratch: ScratchFolder | None = field(default=None, compare=False, repr=False)
    # An OpenEXR run's primaries (red, green, blue and white as CIE xy) where its first frame names others than
    # BT.709's, OpenEXR's own: an ACES plate's. None for BT.709 and every other format.
    plate_chromaticities: tuple[float, ...] | None = None
    # A stored DPX or OpenEXR run's frames' headers, read as each window is fetched and let go as each frame's copy
    # takes them (``frame_header``): by the time a copy is written, its window may be gone.
    fetched_headers: dict[int, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def pattern(self) -> str:
        """The run's name: its folder, and the printf pattern of its file names (a literal % in them doubled)."""
        return os.path.join(self.folder, _name_pattern(self.prefix, self.digits, self.suffix))

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def frame_path(self, position: int) -> Path:
        """The file of the run's ``position``-th frame (0 is the first)."""
        number = self.first + position
        return self.folder / frame_name(self.prefix, self.digits, self.suffix, number)

    def frame_header(self, position: int) -> bytes | None:
        """The headers of a DPX or OpenEXR run's frame at ``position`` (``first_bytes``: a DPX frame's first 2048
        bytes, an OpenEXR frame's headers whole), which its copy carries on: a folder's read from its file, a stored
        run's as its window was fetched (once). None for other formats, or a frame not at hand; what they hold is
        the reader's to check (its magic)."""
        if self.suffix.lower() not in _HEADED_SUFFIXES:
            return None
        if self.fetch is not None:
            return self.fetched_headers.pop(position, None)
        return first_bytes(self.suffix, functools.partial(_read_header, self.frame_path(position))) or None

    def describe(self) -> str:
        timecode = f", timecode {self.timecode}" if self.timecode else ""
        return (f"{self.count} frames, {self.first}-{self.last}, at {float(self.frame_rate):g} fps "
                f"({self.rate_source}){timecode}")

    def identity(self) -> dict:
        """What a resume manifest compares: a rerun after a frame was rescanned or the rate changed starts over."""
        size = newest = 0
        for position in range(self.count):
            stat = os.stat(self.frame_path(position))
            size += stat.st_size
            newest = max(newest, stat.st_mtime_ns)
        return {"first": self.first, "frames": self.count, "size": size, "mtime_ns": newest,
                "frame_rate": str(self.frame_rate)}

    def check_frames(self) -> None:
        """Refuse, by file, a DPX, Cineon or OpenEXR frame whose header says it is cut short or of another size than
        the first frame (or a Cineon frame of a layout not read, an OpenEXR frame left unfinished by its writer, deep
        or in other primaries than the first): hours into a film is too late to find a frame copied halfway or
        rescanned at another resolution. Headers only, a few KB per frame (an OpenEXR frame's chunk tables too);
        frames of other formats are checked as they are decoded."""
        if self.suffix.lower() == OPENEXR_SUFFIX:
            first = None
            for position in range(self.count):
                header = check_exr_frame(self.frame_path(position), self.pattern, first)
                first = first or header
            return
        check = FRAME_CHECKS.get(self.suffix.lower())
        if check is None:
            return
        film_size = None
        for position in range(self.count):
            path = self.frame_path(position)
            film_size = check(path, _read_header(path), os.path.getsize(path), film_size, self.pattern)

    @contextmanager
    def open(self, start: int = 0, stop: int | None = None) -> Iterator[av.container.InputContainer]:
        """The run from its frame ``start`` on (a position: 0 is its first frame) as a PyAV container: one video
        stream, a frame per file at the run's frame rate, whose pts count from ``start``. A stored run (``fetch``)
        has its frames ``start .. stop - 1`` fetched for the reading (to its last frame if ``stop`` is None)."""
        positions = range(start, self.count if stop is None else stop)
        if self.fetch is None and self.suffix.lower() != CINEON_SUFFIX:
            with self._open_in(self.folder, start) as container:
                yield container
            return
        with self._frames_at_hand(positions) as folder, self._open_in(folder, start) as container:
            yield container

    @contextmanager
    def _frames_at_hand(self, positions: range) -> Iterator[Path]:
        """A folder holding the frames at ``positions`` as FFmpeg reads them: a stored run's fetched, a Cineon run's
        rewritten as DPX frames beside them (in a scratch folder of its own for a run in a folder), named as the
        run's own with a .dpx suffix."""
        if self.fetch is not None:
            with self.fetch(positions) as folder:
                self._check_fetched(folder, positions)
                if self.suffix.lower() in _HEADED_SUFFIXES:
                    self.fetched_headers.update(
                        (p, first_bytes(self.suffix, functools.partial(_read_header, folder / self.frame_path(p).name)))
                        for p in positions)
                self._as_dpx(folder, folder, positions)
                yield folder
            return
        with self.scratch() if self.scratch is not None else _temp_folder() as scratch:
            self._as_dpx(self.folder, scratch, positions)
            yield scratch

    def _check_fetched(self, folder: Path, positions: range) -> None:
        """Check a stored OpenEXR run's frames as they are fetched, each window's before it is read: whole, and in
        the primaries its first frame names (a different size, the decoder finds). Its DPX and Cineon frames were
        checked by their headers when it was found (``stored_sequence``): their size tells a whole frame, a
        compressed OpenEXR frame's does not, and reading each one's chunk tables from the store first would take an
        hour of requests on a feature."""
        if self.suffix.lower() != OPENEXR_SUFFIX:
            return
        run = ExrHeader(self.plate_chromaticities, parts=(), deep=False)
        for position in positions:
            fetched = folder / frame_name(self.prefix, self.digits, self.suffix, self.first + position)
            try:
                check_exr_frame(fetched, self.pattern, run)
            except BadInputError as exc:  # named as the run's frame, which the worker names as stored
                raise BadInputError(self.frame_path(position), exc.reason) from exc

    def _as_dpx(self, frames: Path, folder: Path, positions: range) -> None:
        if self.suffix.lower() != CINEON_SUFFIX:
            return
        for position in positions:
            name = frame_name(self.prefix, self.digits, self.suffix, self.first + position)
            as_dpx(frames / name, folder / (name[: -len(self.suffix)] + ".dpx"))

    def _open_in(self, folder: Path, start: int) -> av.container.InputContainer:
        # FFmpeg's image demuxer reads from frame ``start_number`` to the first missing number (``start_number_range``
        # 1: that very frame, never one of the next few in its place), and reads the whole path as a pattern.
        options = {"start_number": str(self.first + start), "start_number_range": "1",
                   "framerate": str(self.frame_rate)}
        suffix = ".dpx" if self.suffix.lower() == CINEON_SUFFIX else self.suffix  # read as rewritten
        try:
            ffmpeg_pattern = os.path.join(str(folder).replace("%", "%%"),
                                          _name_pattern(self.prefix, self.digits, suffix))
            return av.open(ffmpeg_pattern, format="image2", options=options, metadata_errors="replace")
        except av.FFmpegError as exc:
            raise BadInputError(self.pattern, f"its frames cannot be read ({exc.strerror or exc})") from exc


@contextmanager
def _temp_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tinct-cineon-") as folder:
        yield Path(folder)


def is_pattern(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a run of frames by a pattern (and is not itself a file so named)."""
    name = os.path.basename(os.fspath(path))
    return bool(_PRINTF.search(name) or _HASHES.search(name)) and not os.path.isfile(path)


def find_sequence(path: str | os.PathLike, frame_rate: Fraction | None = None,
                  scratch: ScratchFolder | None = None) -> FrameSequence:
    """The run named by the pattern ``path``; raises BadInputError if it has no frames or is not contiguous.
    ``scratch`` is where a Cineon run's windows are rewritten (``FrameSequence.scratch``)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    prefix, digits, suffix = split_pattern(path, name)
    try:
        names = os.listdir(folder or ".")
    except OSError as exc:
        raise BadInputError(path, f"cannot list its folder: {exc.strerror or exc}") from exc
    numbers = [number for number, _ in select_frames(path, names)]
    first = Path(folder or ".") / frame_name(prefix, digits, suffix, numbers[0])
    header = first_bytes(suffix, functools.partial(_read_header, first))
    sequence = _sequence(path, Path(folder or "."), prefix, digits, suffix, numbers, frame_rate, header)
    return replace(sequence, scratch=scratch)


def select_frames(path: str, names: Iterable[str]) -> list[tuple[int, str]]:
    """``(number, name)`` of the frames the pattern ``path`` names among the file ``names`` of its folder, in
    order; BadInputError if there are none or they are not contiguous."""
    prefix, digits, suffix = split_pattern(path, os.path.basename(path))
    frames = []
    for name in names:
        number = frame_number(name, prefix, digits, suffix)
        if number is not None:
            frames.append((number, name))
    if not frames:
        raise BadInputError(path, "no frames match this pattern")
    frames.sort()
    _check_contiguous(path, [number for number, _ in frames])
    return frames


def stored_frames(storage, uri: str) -> list[ObjectInfo]:
    """The stored objects of the run the pattern ``uri`` names (an S3 prefix or a folder), in frame order: the
    objects directly in the pattern's folder whose names it matches. BadInputError if none, or with gaps."""
    uri = format_uri(*parse_uri(uri))  # a plain path as the file:// URI the listing gives
    folder_uri = uri.rsplit("/", 1)[0]
    by_name = {info.uri.rsplit("/", 1)[1]: info for info in storage.list(folder_uri)
               if info.uri.rsplit("/", 1)[0] == folder_uri}
    return [by_name[name] for _, name in select_frames(uri, by_name)]


def stored_identity(uri: str, frames: list[ObjectInfo]) -> ObjectInfo:
    """A stored run's identity, as one object's: its frames' total size, and a digest of their names, ETags and sizes
    (a rescanned frame makes another run, and so another job)."""
    digest = hashlib.sha256()
    for info in frames:
        digest.update(f"{info.uri}\0{info.etag}\0{info.size}\n".encode())
    newest = max((info.last_modified for info in frames if info.last_modified is not None), default=None)
    return ObjectInfo(uri, sum(info.size for info in frames), digest.hexdigest(), newest)


def folder_sequences(folder: Path, names: list[str]) -> tuple[list[str | BadInputError], list[str]]:
    """The patterns of the runs of DPX, Cineon or OpenEXR frames among the file ``names`` in ``folder`` (or why a run
    cannot be a film), and the names left over."""
    groups, rest = _numbered_groups(names, FOLDER_SEQUENCE_SUFFIXES)
    runs: list[str | BadInputError] = []
    for (prefix, suffix), numbers in sorted(groups.items()):
        try:
            runs.append(_run_pattern(folder, prefix, suffix, numbers))
        except BadInputError as exc:
            runs.append(exc)
    return runs, rest


def photo_runs(folder: Path, names: list[str]) -> list[tuple[str, int]]:
    """``(pattern, frames)`` of the runs among the file ``names`` in ``folder`` that look like a film's frames though
    in a photo format: at least ``FILM_LIKE_RUN`` contiguous numbers. They are colorized as photos, one by one; the
    caller says how to colorize them as a film instead."""
    groups, _ = _numbered_groups(names, PATTERN_ONLY_SUFFIXES)
    runs = []
    for (prefix, suffix), numbers in sorted(groups.items()):
        if len(numbers) < FILM_LIKE_RUN:
            continue
        try:
            runs.append((_run_pattern(folder, prefix, suffix, numbers), len(numbers)))
        except BadInputError:
            continue  # gaps or mixed padding: a photo collection's numbering, not a scan's
    return runs


def _numbered_groups(names: list[str], suffixes: tuple[str, ...]) -> tuple[dict[tuple[str, str], list[str]], list[str]]:
    """The frame numbers (as spelled) of ``names`` grouped by prefix and suffix, for the ``suffixes`` asked for,
    and the other names."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    rest = []
    for name in names:
        numbered = _numbered(name, suffixes)
        if numbered is None:
            rest.append(name)
        else:
            prefix, number, suffix = numbered
            groups[prefix, suffix].append(number)
    return groups, rest


def run_key(name: str) -> tuple[str, str] | None:
    """The (prefix, suffix) that groups a file ``name`` into a run of DPX, Cineon or OpenEXR frames, or None for any
    other file."""
    numbered = _numbered(name, FOLDER_SEQUENCE_SUFFIXES)
    return None if numbered is None else (numbered[0], numbered[2])


def _numbered(name: str, suffixes: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(prefix, number as spelled, suffix) of a numbered file name with one of ``suffixes``, else None."""
    match = _NUMBERED.match(name)
    if match and match["suffix"].lower() in suffixes:
        return match["prefix"], match["number"], match["suffix"]
    return None


def stored_run(folder_uri: str, frames: list[ObjectInfo]) -> tuple[str, ObjectInfo]:
    """The pattern URI and identity of the stored run made of ``frames`` (one run's objects, in one folder, as a
    listing gives them); BadInputError for mixed padding or a gap."""
    prefix, suffix = run_key(frames[0].uri.rsplit("/", 1)[1])
    numbers = [info.uri.rsplit("/", 1)[1][len(prefix): -len(suffix)] for info in frames]
    pattern = _run_pattern(folder_uri, prefix, suffix, numbers)
    order = sorted(range(len(frames)), key=lambda i: int(numbers[i]))
    return pattern, stored_identity(pattern, [frames[i] for i in order])


def _run_pattern(folder: str | Path, prefix: str, suffix: str, numbers: list[str]) -> str:
    """The pattern of one group of numbered files; BadInputError (naming it) for mixed padding or a gap."""
    lengths = {len(n) for n in numbers}
    padded = len(lengths) == 1 and (len(numbers) > 1 or numbers[0].startswith("0"))
    digits = lengths.pop() if padded else 0
    digits = digits if digits > 1 else 0  # one digit: %d says it plainly
    pattern = os.path.join(folder, _name_pattern(prefix, digits, suffix))
    if not padded and any(n.startswith("0") and n != "0" for n in numbers):
        raise BadInputError(pattern, "its frame numbers mix padded and unpadded lengths "
                            f"({', '.join(sorted({str(len(n)) for n in numbers}))} digits)")
    _check_contiguous(pattern, sorted(int(n) for n in numbers))
    return pattern


def output_stem(sequence_path: str | os.PathLike) -> str:
    """The file name (without suffix) of a run's colour film: the frames' prefix without its separator
    (``scan_%07d.dpx``: ``scan``), or the folder's name for frames named by number alone (``reel1/%07d.dpx``)."""
    folder, name = os.path.split(os.fspath(sequence_path))
    match = _PRINTF.search(name) or _HASHES.search(name)
    stem = name[: match.start()].replace("%%", "%").rstrip(" ._-") if match else ""
    return stem or os.path.basename(os.path.abspath(folder or "."))


def parse_frame_rate(text: str) -> Fraction:
    """A frame rate written as a number or a fraction (24, 23.976, 24000/1001); ValueError if it is none."""
    try:
        rate = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not a frame rate (e.g. 24, 23.976 or 24000/1001)") from None
    if not 0 < rate <= MAX_FRAME_RATE:
        raise ValueError(f"frame rate {text} is outside 0-{MAX_FRAME_RATE} fps")
    return _exact(float(rate)) if rate.denominator not in (1, 1001) else rate


def frame_name(prefix: str, digits: int, suffix: str, number: int) -> str:
    """The file name of frame ``number`` in a run so named (as the printf pattern prints it)."""
    return f"{prefix}{number:0{digits}d}{suffix}"


def _name_pattern(prefix: str, digits: int, suffix: str) -> str:
    number = f"%0{digits}d" if digits else "%d"
    return prefix.replace("%", "%%") + number + suffix.replace("%", "%%")


def split_pattern(path: str, name: str) -> tuple[str, int, str]:
    """A pattern file name's prefix, digits (0: unpadded) and suffix, as on disk; BadInputError naming ``path``
    for a name that is no pattern."""
    match = _PRINTF.search(name)
    if match:
        digits = int(match["digits"] or 0)
    else:
        match = _HASHES.search(name)
        if not match:
            raise BadInputError(path, "not a frame pattern (name the frame number %07d, %d or ####)")
        digits = len(match.group())
    prefix, suffix = name[: match.start()], name[match.end():]
    if "%" in prefix.replace("%%", "") or "%" in suffix.replace("%%", "") or _HASHES.search(prefix + suffix):
        raise BadInputError(path, "names the frame number more than once")
    return prefix.replace("%%", "%"), digits, suffix.replace("%%", "%")


def frame_number(name: str, prefix: str, digits: int, suffix: str) -> int | None:
    """The frame number of the file ``name`` in the run so named (as the printf pattern prints it), else None."""
    if not (name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix)):
        return None
    number = name[len(prefix): len(name) - len(suffix)]
    return int(number) if number.isdigit() and _fits(number, digits) else None


def _fits(number: str, digits: int) -> bool:
    """Whether a file's frame number is spelled as the pattern prints it (FFmpeg opens no other spelling)."""
    if digits:
        return len(number) == digits or (len(number) > digits and not number.startswith("0"))
    return number == "0" or not number.startswith("0")


def _sequence(path: str, folder: Path, prefix: str, digits: int, suffix: str, numbers: list[int],
              frame_rate: Fraction | None, first_header: bytes, fetch: FetchFrames | None = None) -> FrameSequence:
    """The run of frames ``numbers``, its rate and timecode read from ``first_header`` (the first frame's first bytes;
    a DPX frame's say them)."""
    is_dpx, is_cineon = suffix.lower() == ".dpx", suffix.lower() == CINEON_SUFFIX
    is_exr = suffix.lower() == OPENEXR_SUFFIX
    declared = dpx_frame_rate(first_header) if is_dpx and frame_rate is None else None
    if is_cineon and frame_rate is None and (cineon_rate := cineon_frame_rate(first_header)) is not None:
        declared = cineon_rate, "its Cineon header"
    if is_exr and frame_rate is None and (exr_rate := exr_frame_rate(first_header)) is not None:
        declared = exr_rate, "its OpenEXR header"
    if frame_rate is not None:
        rate, rate_source = frame_rate, "given"
    elif declared is not None:
        rate, rate_source = declared
    else:
        logger.warning("%s: its frames do not say their frame rate; it plays at %s fps (--frame-rate sets another)",
                       path, DEFAULT_FRAME_RATE)
        rate, rate_source = DEFAULT_FRAME_RATE, "default"
    timecode = dpx_timecode(first_header, rate) if is_dpx else None
    if is_exr and (code := exr_timecode(first_header)) is not None:
        timecode = timecode_label(code[0], rate)
    encoding = None
    if is_dpx and len(first_header) > DPX_TRANSFER_OFFSET + 1:
        encoding = (first_header[DPX_TRANSFER_OFFSET], first_header[DPX_TRANSFER_OFFSET + 1])
    elif is_cineon:
        encoding = CINEON_ENCODING
    plate_chromaticities = None
    if suffix.lower() == OPENEXR_SUFFIX:
        plate_chromaticities = _plate_chromaticities(path, frame_name(prefix, digits, suffix, numbers[0]),
                                                     first_header)
    return FrameSequence(folder, prefix, digits, suffix, numbers[0], len(numbers), rate, rate_source, timecode,
                         fetch, encoding, plate_chromaticities=plate_chromaticities)


def _plate_chromaticities(path: str, first: str, first_header: bytes) -> tuple[float, ...] | None:
    """The primaries of the OpenEXR run ``path``, as its first frame ``first`` names them in ``first_header``, where
    they are not BT.709's; BadInputError for deep frames, which FFmpeg cannot decode, and a warning for multi-part
    ones, of which it reads the first part alone."""
    header = read_exr_header(first_header)
    if header is None:
        return None  # FFmpeg names what is wrong with it
    if header.deep:
        raise BadInputError(os.path.join(os.path.dirname(path), first), DEEP_REFUSAL)
    if header.parts:
        logger.warning("%s: multi-part OpenEXR frames (parts %s): the first part, %s, alone is read and coloured; "
                       "the others are left out of the copy", path, ", ".join(header.parts),
                       header.parts[0] or "unnamed")
    if header.chromaticities is None or same_primaries(header.chromaticities, BT709_CHROMATICITIES):
        return None
    logger.info("%s: its frames name their primaries (red, green, blue and white at %s): their light is read "
                "converted to BT.709, and OpenEXR frames out are in the plate's own primaries and say so", path,
                _xy(header.chromaticities))
    return header.chromaticities


def check_exr_frame(path: Path, film: str, first: ExrHeader | None) -> ExrHeader:
    """The header of the OpenEXR frame ``path`` of the run ``film``. BadInputError naming the frame if it is no
    OpenEXR file, is deep, is cut short or was left unfinished by its writer (FFmpeg decodes its missing chunks as
    black without a word), or, given ``first`` (its run's first frame's header), is of another size (where
    ``first`` says one) or names other primaries. Headers whose chunks cannot be counted (a header longer than the
    bytes read: over EXR_HEADER_LIMIT) are taken as whole."""
    try:
        with open(path, "rb") as f:
            def first_bytes_of_file(size: int) -> bytes:
                f.seek(0)
                return f.read(size)

            _, header = exr_head(first_bytes_of_file, EXR_FRAME_CHECK_BYTES)
            if header is None:
                raise BadInputError(path, "not an OpenEXR file (no OpenEXR header)")
            if header.deep:
                raise BadInputError(path, DEEP_REFUSAL)
            reason = header.chunks and damage(f, header.chunks, os.fstat(f.fileno()).st_size)
    except OSError as exc:
        raise BadInputError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if reason:
        raise BadInputError(path, reason)
    if first is not None:
        if first.size is not None and header.size != first.size:
            raise frame_size_error(path, header.size or (0, 0), first.size)
        primaries = header.chromaticities or BT709_CHROMATICITIES
        if not same_primaries(primaries, first.chromaticities or BT709_CHROMATICITIES):
            raise BadInputError(path, f"its primaries (red, green, blue and white at {_xy(primaries)}) are not its "
                                f"run's first frame's ({_xy(first.chromaticities or BT709_CHROMATICITIES)}): a "
                                "run's frames must all be in one set of primaries")
    return header


def _xy(chromaticities: tuple[float, ...]) -> str:
    """Primaries and white as the messages show them: "(0.7347, 0.2653), (0, 1), ..."."""
    return ", ".join(f"({x:.4g}, {y:.4g})" for x, y in zip(chromaticities[::2], chromaticities[1::2], strict=True))


def stored_sequence(storage, uri: str, frames: list[ObjectInfo], folder: Path, fetch: FetchFrames,
                    frame_rate: Fraction | None = None) -> FrameSequence:
    """The run kept in an object store whose objects ``frames`` are (``stored_frames``), read through ``fetch``; its
    ``folder`` (where the worker's messages place it) holds none of its frames. Its DPX frames are checked as a
    folder's are, by their headers, but without reading every frame's: a frame stored at the size of the first, which
    is whole, is taken as whole too (frames of one scan are one size, and the decoder names any other damage); the
    header of any other is read, to refuse it by name before any work. Its OpenEXR frames, whose stored sizes say
    nothing of that, are checked as they are fetched (``FrameSequence.open``)."""
    prefix, digits, suffix = split_pattern(uri, uri.rsplit("/", 1)[1])
    numbers = [frame_number(info.uri.rsplit("/", 1)[1], prefix, digits, suffix) for info in frames]
    first_header = first_bytes(suffix, functools.partial(storage.get_head, frames[0].uri))
    if (check := FRAME_CHECKS.get(suffix.lower())) is not None:
        film_size = check(frames[0].uri, first_header, frames[0].size, None, uri)
        for info in frames[1:]:
            if info.size != frames[0].size:
                check(info.uri, storage.get_head(info.uri, DPX_HEADER_BYTES), info.size, film_size, uri)
    pattern = os.path.join(folder, _name_pattern(prefix, digits, suffix))
    return _sequence(pattern, folder, prefix, digits, suffix, numbers, frame_rate, first_header, fetch)


def check_dpx_frame(name: str | os.PathLike, header: bytes, size: int, film_size: tuple[int, int] | None,
                    film: str) -> tuple[int, int]:
    """The (width, height) of the DPX frame ``name`` from its ``header`` (its first bytes) and stored ``size``.
    BadInputError naming the frame if it is no DPX file, is cut short of the size its header declares, or is not
    ``film_size``; the first frame of the run ``film`` (``film_size`` None) says if its frames are log-encoded."""
    order = _dpx_order(header)
    if order is None:
        raise BadInputError(name, "not a DPX file (no DPX header)")
    (declared_size,) = struct.unpack_from(f"{order}I", header, DPX_FILE_SIZE_OFFSET)
    if size < declared_size:
        raise BadInputError(name, f"truncated: {size} bytes of the {declared_size} its header declares")
    frame_size = struct.unpack_from(f"{order}II", header, DPX_SIZE_OFFSET)
    if film_size is None:
        if header[DPX_TRANSFER_OFFSET] in DPX_LOG_TRANSFERS:
            logger.info("%s: its frames are log-encoded (%s), as scans for grading are: read as Cineon log (white at "
                        "code 685 of 1023, black at 95), and the copy keeps the log encoding, its colour too", film,
                        DPX_LOG_TRANSFERS[header[DPX_TRANSFER_OFFSET]])
    elif frame_size != film_size:
        raise frame_size_error(name, frame_size, film_size)
    return frame_size


# The frames whose headers say their size, checked before any work (``FrameSequence.check_frames``).
FRAME_CHECKS = {".dpx": check_dpx_frame, CINEON_SUFFIX: check_cineon_frame}


def first_bytes(suffix: str, read: Callable[[int], bytes]) -> bytes:
    """The first bytes of a run's first frame, of the format ``suffix``, that its header says what it says in (rate,
    timecode, encoding, primaries): a DPX or Cineon frame's first 2048, an OpenEXR frame's headers whole, nothing of
    other formats. ``read(n)`` gives the frame's first ``n`` bytes."""
    if suffix.lower() == OPENEXR_SUFFIX:
        return exr_head(read)[0]
    return read(DPX_HEADER_BYTES) if suffix.lower() in FRAME_CHECKS else b""


def _check_contiguous(path: str, numbers: list[int]) -> None:
    """Refuse a run with gaps (``numbers`` ascending), naming the first missing frames."""
    first, last = numbers[0], numbers[-1]
    if last - first + 1 != len(numbers):
        present = set(numbers)
        missing = [n for n in range(first, last + 1) if n not in present]
        shown = ", ".join(str(n) for n in missing[:MISSING_FRAMES_SHOWN])
        more = f" and {len(missing) - MISSING_FRAMES_SHOWN} more" if len(missing) > MISSING_FRAMES_SHOWN else ""
        raise BadInputError(path, f"{len(missing)} of frames {first}-{last} are missing ({shown}{more}); a film's "
                            "frames must be contiguous, as a gap would move every later frame's time")


def dpx_timecode(header: bytes, rate: Fraction) -> str | None:
    """The SMPTE timecode a DPX frame's television header gives it, as FFmpeg writes timecodes (``;`` before the
    frames for drop-frame); None where it gives none, or one that cannot count at ``rate``."""
    order = _dpx_order(header)
    if order is None or len(header) < DPX_HEADER_BYTES:
        return None
    (data_offset,) = struct.unpack_from(f"{order}I", header, DPX_DATA_OFFSET)
    (code,) = struct.unpack_from(f"{order}I", header, DPX_TIMECODE_OFFSET)
    if data_offset < DPX_HEADER_BYTES or code == 0xFFFFFFFF:
        return None
    return timecode_label(code, rate)


def timecode_label(code: int, rate: Fraction) -> str | None:
    """SMPTE 12M BCD ``code`` (drop-frame flagged at bit 30, as FFmpeg reads DPX headers) as FFmpeg writes a
    timecode (``;`` before the frames for drop-frame); None where it is not BCD or cannot count at ``rate``."""
    digits = [(code >> shift) & mask for shift, mask in ((24, 0x3F), (16, 0x7F), (8, 0x7F), (0, 0x3F))]
    if any((d >> 4) > 9 or (d & 0xF) > 9 for d in digits):
        return None  # not BCD: an unset or garbled field
    hours, minutes, seconds, frames = ((d >> 4) * 10 + (d & 0xF) for d in digits)
    if hours > 23 or minutes > 59 or seconds > 59 or frames >= math.ceil(rate):
        return None
    separator = ";" if code & (1 << 30) else ":"
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{frames:02d}"


def dpx_frame_rate(header: bytes) -> tuple[Fraction, str] | None:
    """The frame rate a DPX frame declares, and the header that declares it; None if neither header does (or the
    file is too short to tell: the decoder names a broken frame later)."""
    order = _dpx_order(header)
    if order is None:
        return None
    (data_offset,) = struct.unpack_from(f"{order}I", header, DPX_DATA_OFFSET)
    if data_offset < DPX_HEADER_BYTES or len(header) < DPX_HEADER_BYTES:  # no industry headers: 1664 on are pixels
        return None
    for where, offset in DPX_RATE_OFFSETS.items():
        (rate,) = struct.unpack_from(f"{order}f", header, offset)
        if math.isfinite(rate) and 1 <= rate <= MAX_FRAME_RATE:
            return _exact(rate), f"its DPX {where}"
    return None


# Runs whose frames' headers go with their copies (``FrameSequence.frame_header``).
_HEADED_SUFFIXES = (".dpx", OPENEXR_SUFFIX)


def _read_header(path: Path, size: int = DPX_HEADER_BYTES) -> bytes:
    """A frame's first ``size`` bytes (b"" if unreadable): a DPX or Cineon file's first 2048 are its generic headers,
    then its industry headers or pixels."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _dpx_order(header: bytes) -> str | None:
    """The byte order (a struct prefix) of the DPX file whose first bytes are ``header``; None if they hold no
    generic headers."""
    order = DPX_MAGIC.get(header[:4])
    return order if order is not None and len(header) >= DPX_GENERIC_HEADER_BYTES else None


def _exact(rate: float) -> Fraction:
    """A rate read as a decimal, as the fraction it stands for: 23.976 is 24000/1001, 16.0 is 16."""
    for ntsc in NTSC_RATES:
        if abs(rate - ntsc) < 0.005:
            return ntsc
    return Fraction(rate).limit_denominator(1000)
