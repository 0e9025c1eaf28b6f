"""``tinct bulk``: a sweep of a folder or prefix that submits a job for every photo and film under it (:func:`bulk`),
each with its sidecars, and says what it did in a :class:`BulkReport`.

The listing's ETag and size give each job id without a HEAD per object; ids are checked in batches, so a rerun over a
large prefix mostly reads Redis and submits only what is new, failed or cancelled. A transient failure (Redis or S3
hiccup) is retried briefly, then stops the run early with a report that says a rerun resumes.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from worker.errors import BadInputError, TinctError, TransientError, one_line
from worker.hints import HINTS_SUFFIX
from worker.jobs import ENCODER_OPTIONS, JobOptions, JobSpec, check_film_encoding, check_format_name
from worker.media.frame_sequences import LINEAR_LIGHT_SUFFIXES, run_key, stored_run
from worker.media.frame_sink import FRAME_FORMATS
from worker.photos import copy_owners, renamed_copy, shared_copy
from worker.references import REFERENCES_SUFFIX
from worker.settings import GuidanceLimits
from worker.storage import ObjectInfo, Storage, join_uri, normalize_uri, relative_key
from worker.triggers.mapping import Submitter, eligibility, is_transient, is_within, job_spec_for
from worker.triggers.sidecars import picture_film, reference_film, with_sidecars

logger = logging.getLogger(__name__)

#: Job ids checked per ``job_states`` call: one Redis round trip each, and a bounded amount of listing held in memory.
BULK_BATCH = 500
#: Concurrent submissions in a bulk run: each is a few Redis round trips plus a task publish, mostly waiting.
BULK_CONCURRENCY = 8
#: Failure reasons a report keeps (all are counted): a prefix full of bad keys must not make the report unbounded.
MAX_FAILURES_KEPT = 100

_RESUME = "; run again to resume (jobs already submitted are found, not redone)"

_T = TypeVar("_T")


def _retrying(call: Callable[[], _T], what: str, attempts: int = 3, first_delay_s: float = 0.5) -> _T:
    """``call()``, retried with exponential backoff on transient errors: a bulk run should ride out a Redis
    failover of a second or two rather than stop and make an operator rerun it."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or attempt == attempts - 1:
                raise
            delay = first_delay_s * 2**attempt
            logger.warning("%s failed (%s); retrying in %.1f s", what, one_line(error), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the last attempt returns or raises


@dataclass
class BulkReport:
    """What a bulk run did; ``report()`` is the CLI's paragraph. In a dry run ``submitted`` counts the jobs that
    would have been submitted."""

    prefix: str
    output_prefix: str
    dry_run: bool = False
    listed: int = 0
    eligible: int = 0
    already_done: int = 0
    already_queued: int = 0  # queued or running
    submitted: int = 0
    unsupported: int = 0
    own_outputs: int = 0  # keys under the output prefix, never taken as inputs
    failed: int = 0  # keys that could not be submitted, plus the listing itself when it failed
    failures: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason), the first MAX_FAILURES_KEPT
    stopped: str = ""  # why the run ended before the end of the listing; empty when it did not
    seconds: float = 0.0

    @property
    def keys_per_minute(self) -> float:
        """Listed keys per minute of wall time, listing, state checks and submissions included."""
        return self.listed * 60.0 / self.seconds if self.seconds > 0 else 0.0

    def fail(self, uri: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append((uri, one_line(reason)))

    def report(self) -> str:
        verb = "would submit" if self.dry_run else "submitted"
        text = (
            f"{'Dry run: ' if self.dry_run else ''}{self.prefix} -> {self.output_prefix}: listed {self.listed:,} "
            f"objects in {self.seconds:.1f} s ({self.keys_per_minute:,.0f} keys/min); {self.eligible:,} photos and "
            f"films: {verb} {self.submitted:,}, {self.already_done:,} already done, {self.already_queued:,} already "
            f"queued or running; skipped {self.unsupported:,} unsupported and {self.own_outputs:,} under the output "
            f"prefix; {self.failed:,} failed."
        )
        if self.failures:
            shown = "; ".join(f"{uri}: {reason}" for uri, reason in self.failures[:5])
            more = f" (and {self.failed - 5:,} more)" if self.failed > 5 else ""
            text += f" Failures: {shown}{more}."
        if self.stopped:
            text += f" Stopped early: {self.stopped}."
        return text


@dataclass(frozen=True)
class _Candidate:
    info: ObjectInfo
    spec: JobSpec
    job_id: str
    listed_at: float  # when the listing reached this input (epoch seconds): its sidecars were read no earlier


def bulk(
    submitter: Submitter,
    prefix_uri: str,
    output_prefix: str,
    options: JobOptions,
    dry_run: bool = False,
    *,
    batch_size: int = BULK_BATCH,
    concurrency: int = BULK_CONCURRENCY,
    limits: GuidanceLimits | None = None,
    runs_to_frames: bool = False,
) -> BulkReport:
    """Submit a job for every photo and film under ``prefix_uri`` (a run of DPX, Cineon or OpenEXR frames is one
    film, :class:`_Runs`), writing under ``output_prefix``, each photo with the hints and each film file with the
    reference pictures beside it (:class:`_Sidecars`, within ``limits``). ``runs_to_frames``: each run colours into
    frames named as its own, for a conform to take back, instead of a film (a Cineon run, which Tinct does not
    write, into DPX frames of its names).

    The listing is consumed lazily; job ids come from the listing's ETag and size (no HEAD per object) and are
    checked ``batch_size`` at a time with one ``job_states`` call, so a rerun over a prefix of 100,000 objects
    mostly reads Redis and submits only what is new, failed or cancelled. Photos whose copies would share a name
    are sorted out from the listing alone (:class:`_CopyNames`). A dry run checks but submits nothing.
    ``ValueError`` for a bad URI or an input prefix inside the output prefix (every key would be skipped),
    :class:`JobSpecError` for a photo format Tinct does not write.
    """
    if batch_size < 1 or concurrency < 1:
        raise ValueError("batch_size and concurrency must be at least 1")
    prefix = normalize_uri(prefix_uri)
    output = normalize_uri(output_prefix)
    if is_within(prefix, output):
        raise ValueError(f"the input prefix {prefix} is inside the output prefix {output}: nothing would be taken")
    check_format_name(options.format)
    report = BulkReport(prefix, output, dry_run)
    started = time.monotonic()
    listing = iter(submitter.storage.list(prefix))
    pending: list[_Candidate] = []
    sidecars = _Sidecars(submitter.storage, report, limits or GuidanceLimits())
    runs = _Runs(prefix, output, options, report, runs_to_frames)
    copies = _CopyNames(report)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="tinct-bulk") as pool:
        while not report.stopped:
            try:
                info = next(listing, None)
            except Exception as error:
                if not isinstance(error, TinctError):
                    raise
                report.fail(prefix, f"listing failed: {error}")
                report.stopped = f"the listing failed after {report.listed:,} objects ({one_line(error)})"
                if error.retryable:
                    report.stopped += _RESUME
                break
            if info is None:
                sidecars.wait(*copies.release(None))
                pending.extend(sidecars.release(None))
                pending.extend(runs.add(None))
                break
            report.listed += 1
            sidecars.wait(*copies.release(info))
            pending.extend(sidecars.release(info))
            if sidecars.is_sidecar(info):
                continue
            if runs.is_frame(info):
                pending.extend(runs.add(info))
                continue
            candidate = _candidate(info, prefix, output, options, report)
            if candidate is not None and candidate.spec.kind == "image":
                sidecars.wait(*copies.add(candidate))
            elif candidate is not None and candidate.spec.kind == "video":
                sidecars.wait(candidate)
            elif candidate is not None:
                pending.append(candidate)
            if len(pending) >= batch_size:
                _submit_batch(submitter, pending, report, pool)
                pending = []
        if pending and not report.stopped:
            _submit_batch(submitter, pending, report, pool)
    report.seconds = time.monotonic() - started
    logger.debug("%s", report.report())  # the CLI prints it; services log it at debug
    return report


def _candidate(info: ObjectInfo, prefix: str, output: str, options: JobOptions, report: BulkReport
               ) -> _Candidate | None:
    verdict = eligibility(info.uri, output)
    if verdict == "own_output":
        report.own_outputs += 1
        return None
    if verdict == "unsupported":
        report.unsupported += 1
        return None
    report.eligible += 1
    try:
        spec = job_spec_for(info.uri, prefix, output, options)
    except (TinctError, ValueError) as error:
        report.fail(info.uri, str(error))
        return None
    return _Candidate(info, spec, spec.job_id(info.etag, info.size), time.time())


class _Runs:
    """Runs of DPX, Cineon or OpenEXR frames met in a bulk listing (``worker.media.frame_sequences``): each run is one
    film job, its input named by its pattern and its film written in the input's mirrored folder
    (``in/reel1/scan_%07d.dpx`` -> ``out/reel1/scan.mkv``), or with ``to_frames`` its frames, named as the run's own
    (``out/reel1/scan_%07d.dpx``; a Cineon run's as DPX, which Tinct writes and Cineon it does not: ``scan_%07d.cin``
    -> ``scan_%07d.dpx``), with the encoder options left at their defaults: they are the film files'. A listing is in
    key order, so a run's frames come together; a run is complete when a frame of another run (or the end of the
    listing) comes. Its identity is made from the listing, as photos' are."""

    def __init__(self, prefix: str, output: str, options: JobOptions, report: BulkReport, to_frames: bool) -> None:
        self.prefix, self.output, self.options, self.report = prefix, output, options, report
        self.to_frames = to_frames
        self._key: tuple[str, str, str] | None = None  # (folder URI, prefix, suffix) of the run being gathered
        self._frames: list[ObjectInfo] = []

    @staticmethod
    def is_frame(info: ObjectInfo) -> bool:
        return run_key(info.uri.rsplit("/", 1)[1]) is not None

    def add(self, info: ObjectInfo | None) -> list[_Candidate]:
        """Take one frame (None: the listing ended); returns the run it completed, if any, as a candidate."""
        key = None
        if info is not None:
            folder, name = info.uri.rsplit("/", 1)
            key = (folder, *run_key(name))
        done = []
        if self._frames and key != self._key:
            candidate = self._candidate()
            done = [candidate] if candidate is not None else []
            self._frames = []
        if info is not None:
            self._key = key
            self._frames.append(info)
        return done

    def _candidate(self) -> _Candidate | None:
        folder = self._key[0]
        if eligibility(folder + "/", self.output) == "own_output":
            self.report.own_outputs += len(self._frames)
            return None
        self.report.eligible += 1
        try:
            pattern, identity = stored_run(folder, self._frames)
            # The run's folder relative to the input prefix ("" for a run right in it).
            within = "" if folder == self.prefix.rstrip("/") else relative_key(self.prefix, folder)
            output = join_uri(self.output, within) + "/" if within else self.output
            options = self.options
            stem, suffix = posixpath.splitext(pattern.rsplit("/", 1)[1])
            if suffix.lower() in LINEAR_LIGHT_SUFFIXES:  # never log codes: read as they are, whatever the scans' log
                options = replace(options, log=JobOptions().log)
            if self.to_frames:
                output = join_uri(output, stem + (suffix if suffix.lower() in FRAME_FORMATS else ".dpx"))
                defaults = JobOptions()
                options = replace(options, **{name: getattr(defaults, name) for name in ENCODER_OPTIONS})
            spec = JobSpec(pattern, output, "video", options)
            check_film_encoding(spec)
        except (TinctError, ValueError) as error:
            self.report.fail(self._frames[0].uri if not isinstance(error, BadInputError) else error.path, str(error))
            return None
        return _Candidate(identity, spec, spec.job_id(identity.etag, identity.size), time.time())


class _CopyNames:
    """Photos met in a bulk listing whose copies could share a name (``a.gif`` beside ``a.png``, whose copies are
    both ``a.png``; with a format asked for, ``a.jpg`` beside ``a.tif``): which one writes each copy is decided as
    in a collection (:func:`worker.photos.copy_owners`: the photo whose copy keeps its own name, else the first
    listed), and each other fails, naming it.

    No request is needed: every photo whose copy could be named ``<stem>.<ext>`` is named ``<stem>.<ext>`` itself,
    and a listing, in key order (a folder's files in sorted order), holds all keys that start with ``<stem>.`` in
    one run. A photo whose copy is renamed waits here until the listing has passed that run (usually the next key);
    a photo whose copy keeps its name goes on at once, its claim kept as long as the run lasts.
    """

    def __init__(self, report: BulkReport) -> None:
        self.report = report
        self.open: dict[str, dict[str, list[_Candidate]]] = {}  # "<stem>." -> output -> photos so named, as listed

    def add(self, candidate: _Candidate) -> list[_Candidate]:
        """A photo met in the listing: ``[candidate]`` if it goes on now, else nothing (it waits for its run)."""
        uri = candidate.info.uri
        run = uri[: len(uri) - len(posixpath.splitext(uri)[1])] + "."
        self.open.setdefault(run, {}).setdefault(candidate.spec.output, []).append(candidate)
        return [] if renamed_copy(uri, candidate.spec.output) else [candidate]

    def release(self, info: ObjectInfo | None) -> list[_Candidate]:
        """The waiting photos that write their copies, of the runs the listing has passed with ``info`` (all of
        them at the end); the others are reported as failed."""
        ready = []
        for run in [run for run in self.open if info is None or not info.uri.startswith(run)]:
            for output, named in self.open.pop(run).items():
                owner = copy_owners({candidate.info.uri: output for candidate in named})[output]
                for candidate in named:
                    if not renamed_copy(candidate.info.uri, output):
                        continue  # went on when listed
                    if candidate.info.uri == owner:
                        ready.append(candidate)
                    else:
                        self.report.fail(candidate.info.uri, str(shared_copy(candidate.info.uri, output, owner)))
        return ready


class _Sidecars:
    """Sidecars met in a bulk listing: photos' hint files (``<name>.hints.json``, ``worker.hints``) and films' folders
    of reference pictures (``<name>.references/12.5.png``, ``worker.references``).

    A listing is in key order and a sidecar's key is its input's key plus a suffix, so sidecars come after their
    input, usually right after it. An input waits here until the listing has passed where its sidecars would be (or
    has ended); it then goes on with them in its options (so they enter its job id: a reference picture by the
    sha256 of its bytes), or as it is. A sidecar that cannot be read or is invalid fails its input, with the
    sidecar's name and field, and the run goes on. Reference pictures are only hashed here; whether they decode and
    show colour is checked when the film's job is submitted (``Service.submit``), so a rerun decodes none of them.
    """

    def __init__(self, storage: Storage, report: BulkReport, limits: GuidanceLimits) -> None:
        self.storage = storage
        self.report = report
        self.limits = limits
        self.waiting: deque[_Candidate] = deque()
        self.hints: set[str] = set()
        self.pictures: dict[str, list[str]] = {}  # a film's URI -> the pictures in its reference folder

    @staticmethod
    def is_sidecar(info: ObjectInfo) -> bool:
        return info.uri.endswith(HINTS_SUFFIX) or reference_film(info.uri) is not None

    def wait(self, *candidates: _Candidate) -> None:
        self.waiting.extend(candidates)

    def release(self, info: ObjectInfo | None) -> list[_Candidate]:
        """The waiting inputs whose sidecars' place the listing has passed with ``info`` (all of them at the end)."""
        if info is not None:
            film = picture_film(info.uri)
            if info.uri.endswith(HINTS_SUFFIX):
                self.hints.add(info.uri)
            elif film is not None:
                self.pictures.setdefault(film, []).append(info.uri)
        ready = []
        while self.waiting and (info is None or _past_sidecars(self.waiting[0], info.uri)):
            candidate = self._with_sidecars(self.waiting.popleft())
            if candidate is not None:
                ready.append(candidate)
        return ready

    def _with_sidecars(self, candidate: _Candidate) -> _Candidate | None:
        uri = candidate.info.uri
        has_hints = uri + HINTS_SUFFIX in self.hints
        self.hints.discard(uri + HINTS_SUFFIX)
        try:
            spec = with_sidecars(candidate.spec, self.storage, self.limits, has_hints, self.pictures.pop(uri, []))
        except TinctError as error:
            if error.retryable:
                raise
            self.report.fail(uri, str(error))
            return None
        if spec is candidate.spec:
            return candidate
        return replace(candidate, spec=spec, job_id=spec.job_id(candidate.info.etag, candidate.info.size))


def _past_sidecars(candidate: _Candidate, uri: str) -> bool:
    """Whether the listing, at ``uri``, has passed every key that could be a sidecar of ``candidate``."""
    if candidate.spec.kind == "image":
        return candidate.info.uri + HINTS_SUFFIX <= uri
    folder = candidate.info.uri + REFERENCES_SUFFIX + "/"
    return uri > folder and not uri.startswith(folder)


def _submit_batch(submitter: Submitter, batch: list[_Candidate], report: BulkReport, pool: ThreadPoolExecutor) -> None:
    """Check one batch's states with a single call, then submit what is not already done, queued or running."""
    ids = [candidate.job_id for candidate in batch]
    try:
        states = _retrying(lambda: submitter.job_states(ids), "checking job states")
    except Exception as error:
        if not is_transient(error):
            raise
        for candidate in batch:
            report.fail(candidate.info.uri, f"could not check its job: {error}")
        report.stopped = f"job states could not be read ({one_line(error)}){_RESUME}"
        return
    if len(states) != len(ids):
        raise RuntimeError(f"job_states returned {len(states)} states for {len(ids)} ids")
    todo: list[_Candidate] = []
    for candidate, state in zip(batch, states, strict=True):
        if state == "succeeded":
            report.already_done += 1
        elif state in ("queued", "running"):
            report.already_queued += 1
        else:  # new, failed or cancelled: submitting runs it (again)
            todo.append(candidate)
    if report.dry_run:
        report.submitted += len(todo)
        return
    outage = threading.Event()
    outcomes = pool.map(lambda candidate: _submit_one(submitter, candidate, outage), todo)
    for candidate, outcome in zip(todo, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            report.fail(candidate.info.uri, str(outcome))
            if is_transient(outcome) and not report.stopped:
                report.stopped = f"submitting failed ({one_line(outcome)}){_RESUME}"
            continue
        job_id, created = outcome
        if job_id != candidate.job_id:
            logger.debug(
                "submit gave job %s for %s, the listing's identity gave %s: already-done checks will miss it",
                job_id,
                candidate.info.uri,
                candidate.job_id,
            )
        if created:
            report.submitted += 1
        else:  # submitted by someone else between the state check and now
            report.already_queued += 1


def _submit_one(submitter: Submitter, candidate: _Candidate, outage: threading.Event) -> tuple[str, bool] | Exception:
    """One submission, transient errors retried; a failure is returned, not raised, so one bad key does not
    abandon the rest of its batch in the pool. Once a submission has failed through all its retries (``outage``),
    the rest of the batch is not attempted: each would wait out the same retries against the same outage."""
    if outage.is_set():
        return TransientError("not attempted: submitting stopped after an outage")
    try:
        return _retrying(lambda: submitter.submit(candidate.spec, candidate.info,
                                                    supersede_as_of=candidate.listed_at),
                         f"submitting {candidate.info.uri}")
    except Exception as error:
        if is_transient(error):
            outage.set()
            return error
        if isinstance(error, TinctError):
            return error
        raise
