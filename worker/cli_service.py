"""``tinct`` commands for the service: submit, status, jobs, cancel, worker, bulk, listen, webhook, top.

    tinct worker                                   # a worker for both queues (one per GPU: CUDA_VISIBLE_DEVICES)
    tinct submit s3://scans/reel1.mkv -o s3://colour/ --smoothing 0.5 --wait
    tinct submit s3://scans/p.tif -o s3://colour/ --hints p.tif.hints.json   # a restorer's colour hints (worker.hints)
    tinct submit s3://scans/reel1.mkv -o s3://colour/ --reference 12.5=shot3.png   # film reference frames
    tinct bulk s3://scans/1950s/ -o s3://colour/1950s/ --dry-run
    tinct listen sqs://tinct-events -o s3://colour/
    tinct webhook --port 8080 -o s3://colour/      # MinIO bucket notifications; TINCT_WEBHOOK_SECRET required
    tinct status JOB_ID | tinct jobs | tinct cancel JOB_ID
    tinct top --metrics gpu1:9100 --metrics gpu2:9100  # live queues, workers, throughput, GPUs, jobs (worker.top)
    tinct serve --port 8000                        # the HTTP API and web console (worker.api; a token required)

Settings (Redis, S3 endpoint, limits) come from ``TINCT_*`` environment variables (``worker.settings``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict

from worker.api.serve import add_serve_command
from worker.cli_args import positive_int, reference
from worker.errors import PermanentError
from worker.hints import check_local_bounds, load_hints_file
from worker.jobs import FINISHED, JobOptions, JobRecord, JobSpec, JobSpecError, check_format_name, parse_options
from worker.media.video_source import LOG_CHOICES
from worker.settings import GPU_QUEUE, IO_QUEUE, Settings
from worker.top import add_top_command

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
QUEUE_NAMES = {"colorize": GPU_QUEUE, "io": IO_QUEUE}


def add_service_commands(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser("submit", help="queue one job (a photo, a film, or a folder/prefix of photos)")
    submit.add_argument("input", help="s3://bucket/key, s3://bucket/prefix/ (a collection), a path or file:// URI")
    submit.add_argument("-o", "--output", required=True, help="output URI; ending in '/' means a folder or prefix")
    submit.add_argument("--kind", choices=("image", "video", "collection"), help="default: from the input's name")
    submit.add_argument("--wait", action="store_true", help="wait until the job has finished")
    submit.add_argument("--json", action="store_true", help="print the job as JSON")
    _add_job_options(submit)
    submit.add_argument("--hints", metavar="HINTS.json", help="colour hints for a photo (points and regions with known "
                        "sRGB colours); they enter the job id, so corrected hints make a new job")
    submit.add_argument("--reference", action="append", type=reference, default=[], metavar="TIME=IMAGE",
                        help="a colour picture of a film's frame at TIME (seconds, or frame:N), a path or s3:// URI; "
                        "repeatable. The pictures' bytes enter the job id, so a corrected picture makes a new job")
    submit.set_defaults(run=_submit)

    status = commands.add_parser("status", help="show a job: state, progress, outputs, failures")
    status.add_argument("job_id")
    status.add_argument("--wait", action="store_true", help="wait until the job has finished")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status)

    jobs = commands.add_parser("jobs", help="list recent jobs and the queues' depth")
    jobs.add_argument("--limit", type=positive_int, default=20, help="how many recent jobs (default: %(default)s)")
    jobs.set_defaults(run=_jobs)

    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=_cancel)

    models = commands.add_parser("models", help="list the models a job may name: default and the model store's "
                                                "(TINCT_MODEL_STORE)")
    models.set_defaults(run=_models)

    worker = commands.add_parser("worker", help="run a Celery worker with Tinct's defaults")
    worker.add_argument("--queues", default="colorize,io", help="colorize, io or both (default: %(default)s)")
    worker.add_argument("--concurrency", type=int, help="tasks at once (default: 1 for colorize, 8 for io only)")
    worker.add_argument("--hostname", help="Celery node name (default: tinct-<host>-<pid>)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--gpus", help="one worker process per GPU: 'all' or indices such as 0,1; each process sees "
                        "only its GPU (CUDA_VISIBLE_DEVICES) and is named <hostname>-gpu<N>")
    worker.set_defaults(run=_worker)

    bulk = commands.add_parser("bulk", help="queue a job for every photo and film under a prefix, skipping done ones; "
                               "a photo's <name>.hints.json beside it is sent as its colour hints, a film's "
                               "<name>.references/ folder (12.5.png, frame_300.png) as its reference frames")
    bulk.add_argument("prefix", help="s3://bucket/prefix/ or a folder")
    bulk.add_argument("-o", "--output", required=True, help="output prefix; each input keeps its relative key")
    bulk.add_argument("--dry-run", action="store_true", help="count what would be queued; queue nothing")
    bulk.add_argument("--runs-to-frames", action="store_true",
                      help="colour each run of DPX frames into DPX frames named as its own (in/reel1/scan_%%07d.dpx -> "
                      "out/reel1/scan_%%07d.dpx), for a conform, instead of a film (a Cineon run into DPX frames of "
                      "its names); --codec, --crf and --preset then apply to film files only")
    _add_job_options(bulk)
    bulk.set_defaults(run=_bulk)

    listen = commands.add_parser("listen", help="queue jobs from S3 event notifications in an SQS queue; "
                                 "sidecars (hints, reference folders) go with their inputs as in bulk")
    listen.add_argument("queue", help="sqs://queue-name or the queue's https URL")
    listen.add_argument("-o", "--output", required=True, help="output prefix for every object")
    _add_job_options(listen)
    listen.set_defaults(run=_listen)

    webhook = commands.add_parser("webhook", help="queue jobs from MinIO-style bucket notifications over HTTP; "
                                  "sidecars (hints, reference folders) go with their inputs as in bulk")
    webhook.add_argument("--host", default="0.0.0.0")
    webhook.add_argument("--port", type=int, default=8080)
    webhook.add_argument("-o", "--output", required=True, help="output prefix for every object")
    _add_job_options(webhook)
    webhook.set_defaults(run=_webhook)

    add_top_command(commands)
    add_serve_command(commands)


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("job options")
    defaults = JobOptions()
    group.add_argument("--model", default=defaults.model)
    group.add_argument("--render-size", type=int, default=defaults.render_size)
    group.add_argument("--smoothing", type=float, default=defaults.smoothing)
    group.add_argument("--codec", default=defaults.codec)
    group.add_argument("--crf", type=int, default=defaults.crf)
    group.add_argument("--preset", default=defaults.preset)
    group.add_argument("--recolor", action="store_true")
    group.add_argument("--log", default=defaults.log, choices=LOG_CHOICES,
                       help="how a run of frames' codes are read: auto (as DPX headers say), cineon (Cineon "
                       "log), none (as they look); runs only (bulk and the triggers give it to the runs they find)")
    group.add_argument("--format", default=defaults.format, help="photo output format (default: the source's)")


def _job_options(args: argparse.Namespace) -> dict:
    return {"model": args.model, "render_size": args.render_size, "smoothing": args.smoothing, "codec": args.codec,
            "crf": args.crf, "preset": args.preset, "recolor": args.recolor, "log": args.log, "format": args.format}


def _service():
    from worker.service import Service

    return Service(Settings.from_env())


def _error(parser: argparse.ArgumentParser, message: str) -> int:
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _submit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    raw = {"input": args.input, "output": args.output, "options": _job_options(args)}
    if args.kind:
        raw["kind"] = args.kind
    try:
        service = _service()
        limits = service.settings.guidance_limits
        if args.hints:
            hints = load_hints_file(args.hints, limits.max_hints, limits.max_hint_file_bytes)
            check_local_bounds(hints, args.input, args.hints)  # a local photo is checked now, an object by its worker
            raw["options"]["hints"] = hints.to_dict()
        if args.reference:
            # Local pictures stay where they are, as a local input does: workers read them by absolute path.
            raw["options"]["references"] = [reference.as_dict() for reference in args.reference]
        spec = JobSpec.from_dict(raw, limits)
        job_id, created = service.submit(spec)  # fetches and checks every picture: a bad one queues nothing
    except (JobSpecError, ValueError, PermanentError) as exc:  # the rest (Redis away) is tinct's one line, status 1
        return _error(parser, str(exc))
    if not args.json:
        print(f"{job_id} {'queued' if created else 'already submitted'}")
    return _show(service, job_id, args.wait, args.json)


def _status(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return _show(_service(), args.job_id, args.wait, args.json)


def _show(service, job_id: str, wait: bool, as_json: bool) -> int:
    record = service.get(job_id)
    while wait and record is not None and record.state not in FINISHED:
        time.sleep(0.5)
        record = service.get(job_id)
    if record is None:
        print(f"no job {job_id}", file=sys.stderr)
        return EXIT_FAILED
    pieces, events = _liveness(service, record)
    if as_json:
        print(json.dumps({**record.to_dict(), "pieces": [asdict(piece) for piece in pieces], "requeued": events},
                         indent=1))
    else:
        print(describe(record, pieces, events))
    return EXIT_FAILED if record.state == "failed" else EXIT_OK


def _liveness(service, record: JobRecord) -> tuple[list, list[dict]]:
    """The job's pieces in workers' hands (running or stalled) and its recent re-queues (worker.liveness)."""
    from worker import liveness

    if record.state in FINISHED:
        return [], liveness.requeue_events(service.redis, record.id)
    return (liveness.held_pieces(service.redis, service.settings.liveness_window_s, record.id),
            liveness.requeue_events(service.redis, record.id))


def describe(record: JobRecord, pieces: Sequence = (), events: Sequence[dict] = ()) -> str:
    """A job for people: state (``stalled`` when a piece's worker is silent or its piece makes no progress), progress,
    the pieces in workers' hands, re-queues, outputs and failures."""
    from worker.liveness import describe_piece

    state = f"{record.state}, stalled" if any(piece.stalled for piece in pieces) else record.state
    lines = [f"job {record.id}: {state}  ({record.spec.kind} {record.spec.input} -> {record.spec.output})"]
    if record.total:
        progress = f"  {record.done}/{record.total} {record.unit}"
        if record.fps:
            progress += f", {record.fps:.1f} {record.unit}/s"
        if record.eta_s:
            progress += f", ETA {record.eta_s:.0f} s"
        lines.append(progress)
    lines += [f"  {describe_piece(piece)}" for piece in pieces]
    for event in events[:5]:
        stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
        why = (f"its worker {event['worker']} went silent (death {event['deaths']} in a row)"
               if event["reason"] == "died" else f"its worker {event['worker']} was stopping")
        lines.append(f"  {event['piece']}: {event['outcome']} at {stamp}: {why}")
    first, frames = record.metrics.get("first_frame"), record.metrics.get("frames")
    run = f" (frames {first}-{first + frames - 1})" if first is not None and frames else ""  # a run of frames out
    lines += [f"  output: {uri}{run}" for uri in record.outputs]
    if record.error:
        lines.append(f"  error: {record.error}")
    lines += [f"  failed: {reason}" for reason in record.failed_pieces.values()]
    return "\n".join(lines)


def _jobs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    service = _service()
    for queue, depth in service.queue_depths().items():
        print(f"queue {queue}: {depth} waiting")
    for record in service.recent(args.limit):
        done = f"{record.done}/{record.total} {record.unit}" if record.total else ""
        print(f"{record.id}  {record.state:<9}  {record.spec.kind:<10}  {done:<20}  {record.spec.input}")
    return EXIT_OK


def _models(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from worker.model_store import published_models
    from worker.storage import Storage

    settings = Settings.from_env()
    print("default  the shipped model")
    for model in published_models(settings, Storage(settings)):
        published = time.strftime("%Y-%m-%d %H:%M", time.localtime(model.published)) if model.published else "?"
        print(f"{model.name}  {model.size / 1e6:.1f} MB, published {published}")
    if not settings.model_store:
        print("no model store: set TINCT_MODEL_STORE to a folder or an s3://bucket/prefix/ to name published models",
              file=sys.stderr)
    return EXIT_OK


def _cancel(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    record = _service().cancel(args.job_id)
    if record is None:
        print(f"no job {args.job_id}", file=sys.stderr)
        return EXIT_FAILED
    print(describe(record))
    return EXIT_OK


def _worker(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    names = [name.strip() for name in args.queues.split(",") if name.strip()]
    unknown = [name for name in names if name not in QUEUE_NAMES]
    if unknown or not names:
        return _error(parser, f"--queues takes colorize and/or io, got {args.queues!r}")
    if args.gpus:
        return _worker_per_gpu(args, parser)
    from worker.app import app

    # A colorize worker runs one task at a time in its own process (one model, one GPU); io-only workers are
    # thread pools, since their tasks mostly wait on storage.
    colorize = "colorize" in names
    concurrency = args.concurrency or (1 if colorize else 8)
    pool = "solo" if colorize and concurrency == 1 else ("prefork" if colorize else "threads")
    argv = ["worker", "-Q", ",".join(QUEUE_NAMES[n] for n in names), "--pool", pool, "--concurrency",
            str(concurrency), "--loglevel", args.loglevel, "--events",
            "--hostname", args.hostname or f"tinct-%h-{os.getpid()}"]
    app.worker_main(argv)
    return EXIT_OK


def _gpu_indices(text: str) -> list[int]:
    """``all`` -> every GPU PyTorch sees; ``0,2`` -> [0, 2]. ValueError naming the problem otherwise."""
    if text.strip().lower() == "all":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError("--gpus all: PyTorch sees no CUDA GPU on this machine")
        return list(range(count))
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--gpus takes 'all' or comma-separated GPU indices, got {text!r}") from None
    if not indices or min(indices) < 0 or len(set(indices)) != len(indices):
        raise ValueError(f"--gpus takes distinct non-negative GPU indices, got {text!r}")
    return indices


def _worker_per_gpu(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """One ``tinct worker`` child per GPU, each pinned to its GPU; stops them all when asked to, or when one dies
    (so that an orchestrator restarts the set rather than run a node with a GPU idle)."""
    try:
        indices = _gpu_indices(args.gpus)
    except ValueError as exc:
        return _error(parser, str(exc))
    base = args.hostname or "tinct-%h"
    children: list[subprocess.Popen] = []
    for index in indices:
        command = [sys.executable, "-m", "worker.cli", "worker", "--queues", args.queues, "--loglevel", args.loglevel,
                   "--hostname", f"{base}-gpu{index}"]
        if args.concurrency:
            command += ["--concurrency", str(args.concurrency)]
        children.append(subprocess.Popen(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": str(index)}))

    stopping: set[int] = set()  # a second SIGTERM would turn Celery's warm shutdown into a cold one

    def stop_children(signum: int, _frame: object = None) -> None:
        for child in children:
            if child.poll() is None and child.pid not in stopping:
                stopping.add(child.pid)
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, stop_children) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        stop_children(signal.SIGTERM)  # one is gone (asked to stop, or died): the others follow
        codes = [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK if all(code == 0 for code in codes) else EXIT_FAILED


def _bulk(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from worker.triggers.bulk import bulk

    try:
        options = _trigger_options(args)
        service = _service()
        report = bulk(service, args.prefix, args.output, options, dry_run=args.dry_run,
                      limits=service.settings.guidance_limits, runs_to_frames=args.runs_to_frames)
    except (JobSpecError, ValueError) as exc:
        return _error(parser, str(exc))
    print(report.report())
    return EXIT_FAILED if report.failed else EXIT_OK


def _trigger_options(args: argparse.Namespace) -> JobOptions:
    """The options a trigger gives every job it submits; JobSpecError for one no job could have."""
    options = parse_options(_job_options(args))
    check_format_name(options.format)
    return options


def _listen(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from worker.triggers.sqs import listen_sqs

    try:
        options = _trigger_options(args)
    except JobSpecError as exc:
        return _error(parser, str(exc))
    stop = threading.Event()
    service = _service()
    try:
        counts = listen_sqs(service, args.queue, args.output, options, stop=stop,
                            limits=service.settings.guidance_limits)
    except KeyboardInterrupt:
        stop.set()
        return 130
    print(counts)
    return EXIT_OK


def _webhook(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from worker.triggers.webhook import serve_webhook

    settings = Settings.from_env()
    if not settings.webhook_secret:
        return _error(parser, "set TINCT_WEBHOOK_SECRET: the webhook refuses to run without a shared secret")
    try:
        options = _trigger_options(args)
    except JobSpecError as exc:
        return _error(parser, str(exc))
    from worker.service import Service

    server, thread = serve_webhook(Service(settings), args.host, args.port, settings.webhook_secret, args.output,
                                   options, limits=settings.guidance_limits)
    print(f"webhook listening on {args.host}:{server.server_address[1]}", file=sys.stderr)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
        return 130
    return EXIT_OK
