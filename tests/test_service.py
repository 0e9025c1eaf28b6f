"""The service end to end: a real redis-server, moto's real HTTP S3, real ``tinct worker`` (Celery) subprocesses."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
import tifffile
from PIL import Image

from tests.media import (
    first_frame_info,
    gray_frames,
    luma_of,
    lumas,
    moving_scene,
    probe,
    read_dpx_fields,
    read_frames,
    write_clip,
    write_frames,
)
from tests.services import (
    JOB_TIMEOUT_S,
    WorkerProcess,
    env_for_workers,
    free_port,
    get_object,
    put_object,
    s3_settings,
    wait_for_job,
    wait_until,
)
from worker import liveness, work
from worker.cli import main
from worker.cli_service import describe
from worker.jobs import JobOptions, JobSpec, JobSpecError, JobStore, film_output_uri
from worker.media.frame_sequences import find_sequence
from worker.media.images import read_provenance, tinct_version
from worker.service import Service

SECRET = "s3cr3t-Tinct-7f3a9"  # the workers' S3 secret key: it must never show up in logs or job state


@pytest.fixture
def service_env(tmp_path, redis_server, s3_server, tiny_checkpoint):  # noqa: F811
    s3_server.make_bucket("scans")
    s3_server.make_bucket("colour")
    workers: list[WorkerProcess] = []

    def start_worker(name: str = "w", **settings: object) -> WorkerProcess:
        values = {"engine": "torch", "device": "cpu", "render_size": 64, "segment_seconds": 0.5,
                  "collection_batch": 2, "retry_backoff_s": 0.5, "s3_max_attempts": 1}
        values.update(settings)
        env = env_for_workers(redis_server, s3_server, work_dir=tmp_path / f"work-{name}", base=os.environ,
                              **values)
        env["OMP_NUM_THREADS"] = "1"
        env["AWS_SECRET_ACCESS_KEY"] = SECRET  # moto takes any key while its auth checks are off
        worker = WorkerProcess(name, env, tmp_path / f"{name}.log")
        workers.append(worker)
        return worker

    client = Service(s3_settings(s3_server, redis_url=redis_server.url))
    yield client, start_worker, s3_server, redis_server, tiny_checkpoint
    for worker in workers:
        worker.stop()


def gray_png(seed: int = 0) -> bytes:
    return png_bytes(next(gray_frames(moving_scene(1, 96, 64, seed=seed))))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def keys(s3, bucket: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def spec(input_uri: str, output: str, model, **options) -> JobSpec:
    return JobSpec.from_dict({"input": input_uri, "output": output, "options": {"model": str(model),
                                                                                 "render_size": 64, **options}})


# --- jobs ----------------------------------------------------------------------------------------------------


def test_photo_job_from_s3_to_s3_and_resubmission_returns_it(service_env):
    client, start_worker, s3, _, model = service_env
    put_object(s3, "s3://scans/scans/a.png", gray_png())
    worker = start_worker()
    job_id, created = client.submit(spec("s3://scans/scans/a.png", "s3://colour/", model))
    assert created
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    assert record.outputs == ["s3://colour/a.png"]
    result = np.asarray(Image.open(io.BytesIO(get_object(s3, "s3://colour/a.png"))).convert("RGB")).astype(int)
    assert result.shape == (64, 96, 3) and np.abs(result - result.mean(axis=-1, keepdims=True)).mean() > 0.5
    again, created = client.submit(spec("s3://scans/scans/a.png", "s3://colour/", model))
    assert (again, created) == (job_id, False)
    assert SECRET not in worker.text() and SECRET not in json.dumps(client.get(job_id).to_dict())
    logged = [json.loads(line) for line in worker.text().splitlines() if line.startswith("{")]
    assert any(entry["job_id"] == job_id for entry in logged)  # structured logs carry the job id


def test_preloaded_model_is_loaded_before_the_first_job_and_reused_by_it(service_env):
    client, start_worker, s3, _, model = service_env
    worker = start_worker(preload_model=str(model))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while "loaded on cpu (torch)" not in worker.text():  # no job submitted yet
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    put_object(s3, "s3://scans/p.png", gray_png())
    job_id, _ = client.submit(spec("s3://scans/p.png", "s3://colour/", model, render_size=None))
    assert wait_for_job(client, job_id).state == "succeeded"
    assert worker.text().count("loaded on cpu (torch)") == 1  # the job used the preloaded engine


def test_collection_fans_out_and_lists_failed_files(service_env):
    client, start_worker, s3, _, model = service_env
    for i in range(5):
        put_object(s3, f"s3://scans/box/{i // 3}/p{i}.png", gray_png(i))
    put_object(s3, "s3://scans/box/broken.png", b"not a png")
    put_object(s3, "s3://scans/box/notes.txt", b"ignored")
    start_worker()
    job_id, _ = client.submit(spec("s3://scans/box/", "s3://colour/box/", model, format="jpg"))
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded" and record.total == 6 and record.done == 5
    assert keys(s3, "colour") == [f"box/{i // 3}/p{i}.jpg" for i in range(5)]
    # Named as stored, not as the worker's copy of it (which it had been: <work dir>/jobs/<job>/<hash>.png).
    assert record.failed_pieces == {"s3://scans/box/broken.png": "s3://scans/box/broken.png: not an image Tinct can "
                                    "read (JPEG, PNG, TIFF, WebP, BMP, JPEG 2000 or GIF)"}
    assert "broken.png" in record.error or "1 of 6" in record.error


def test_a_multi_page_document_is_coloured_page_by_page_or_refused_where_its_copy_would_cut_it(service_env):
    """A TIFF document's every page is coloured into a TIFF of them all, each with its own hints where its job gives
    them page by page; asked for a JPEG, or given one picture's hints, it fails naming its stored name (not the
    worker's copy of it), before any colouring."""
    client, start_worker, s3, _, model = service_env
    document = io.BytesIO()
    with tifffile.TiffWriter(document) as writer:
        for seed in range(2):
            writer.write(next(gray_frames(moving_scene(1, 96, 64, seed=seed))), photometric="minisblack")
    put_object(s3, "s3://scans/album.tif", document.getvalue())
    start_worker()
    job_id, _ = client.submit(spec("s3://scans/album.tif", "s3://colour/", model))
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    with tifffile.TiffFile(io.BytesIO(get_object(s3, "s3://colour/album.tif"))) as copy:
        assert [page.tags["PageNumber"].value for page in copy.pages] == [(0, 2), (1, 2)]
        for page in copy.pages:
            rgb = page.asarray().astype(int)
            assert rgb.shape == (64, 96, 3) and np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean() > 0.5
    cut, _ = client.submit(spec("s3://scans/album.tif", "s3://colour/jpeg/", model, format="jpg"))
    record = wait_for_job(client, cut)
    assert record.state == "failed"
    assert "s3://scans/album.tif: a 2-page TIFF document, whose pages only a TIFF copy keeps: not copied as " \
           "album.jpg" in record.error
    one_picture, _ = client.submit(spec("s3://scans/album.tif", "s3://colour/hinted/", model,
                                        hints={"points": [{"x": 10, "y": 10, "color": "#aa3322"}]}))
    assert "s3://scans/album.tif: options.hints: colour hints place points on one picture, and its photo is a 2-page " \
           "document: give them page by page" in wait_for_job(client, one_picture).error
    assert keys(s3, "colour") == ["album.tif"]
    red = {"points": [{"x": 20, "y": 30, "color": "#c01010", "radius": 5}]}
    by_page, _ = client.submit(spec("s3://scans/album.tif", "s3://colour/hinted/", model, hints={"pages": {"2": red}}))
    assert wait_for_job(client, by_page).state == "succeeded"
    assert s3.client().head_object(Bucket="colour", Key="hinted/album.tif")["Metadata"]["tinct"].endswith(
        ", with 1 colour hint")
    with tifffile.TiffFile(io.BytesIO(get_object(s3, "s3://colour/album.tif"))) as plain, \
            tifffile.TiffFile(io.BytesIO(get_object(s3, "s3://colour/hinted/album.tif"))) as hinted:
        assert np.array_equal(plain.pages[0].asarray(), hinted.pages[0].asarray())  # no hints: as it was
        a_without, a_hinted = (int(cv2.cvtColor(copy.pages[1].asarray()[30:31, 20:21], cv2.COLOR_RGB2LAB)[0, 0, 1])
                               - 128 for copy in (plain, hinted))
        assert a_hinted > 30 > a_without  # red where the hint was put
        assert hinted.pages[1].tags["ImageDescription"].value.endswith(", with 1 colour hint")


def test_film_is_split_over_two_workers_and_joined(service_env, tmp_path):
    client, start_worker, s3, _, model = service_env
    clip = write_clip(tmp_path / "reel.mkv", gray_frames(moving_scene(48, 96, 64)), gop=6, bframes=0,
                      audio="flac", sample_aspect_ratio=Fraction(16, 15))  # DV's non-square pixels
    put_object(s3, "s3://scans/reel.mkv", clip.path.read_bytes())
    first, second = start_worker("a"), start_worker("b")
    job_id, _ = client.submit(spec("s3://scans/reel.mkv", "s3://colour/films/", model, codec="ffv1"))
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    assert record.outputs == ["s3://colour/films/reel.mkv"] and record.done == 48
    assert keys(s3, "colour") == ["films/reel.mkv"]  # the segments' staging area is gone
    head = s3.client().head_object(Bucket="colour", Key="films/reel.mkv")
    assert head["ContentType"] == "video/x-matroska"
    assert head["Metadata"]["tinct"].startswith(f"colorized by Tinct {tinct_version()}, model ")
    (tmp_path / "out.mkv").write_bytes(get_object(s3, "s3://colour/films/reel.mkv"))
    out = probe(tmp_path / "out.mkv")
    assert out.video.frame_count == 48 and out.video.pts == clip.probe.video.pts
    assert [s.payload_sha256 for s in out.of_type("audio")] == [s.payload_sha256 for s in clip.probe.of_type("audio")]
    assert first_frame_info(tmp_path / "out.mkv").aspect == Fraction(16, 15)
    assert "tinct.colorize_segment" in first.text() and "tinct.colorize_segment" in second.text()


def test_a_film_master_job_is_coloured_in_its_own_codec_by_default(service_env, tmp_path):
    client, start_worker, s3, _, model = service_env
    clip = write_clip(tmp_path / "master.mkv", gray_frames(moving_scene(12, 96, 64)), codec="ffv1", pix_fmt="gray")
    put_object(s3, "s3://scans/master.mkv", clip.path.read_bytes())
    start_worker()
    job_id, _ = client.submit(spec("s3://scans/master.mkv", "s3://colour/", model))
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    (tmp_path / "out.mkv").write_bytes(get_object(s3, "s3://colour/master.mkv"))
    assert probe(tmp_path / "out.mkv").video.codec == "ffv1"  # still lossless: the master's lightness to the code
    assert all(np.array_equal(a, b) for a, b in zip(lumas(tmp_path / "out.mkv"), lumas(clip.path), strict=True))


def test_a_copy_carries_its_sources_catalogue_metadata_and_tags_but_not_what_describes_the_sources_bytes(
        service_env, tmp_path):
    """An archive finds a scan by what its ingest wrote into the object's metadata (accession number, rights,
    catalogue id): a photo's, a collection's and a film's copies keep those beside Tinct's provenance sentence, but
    not the source's checksums, size or file times (a fixity check would take the copy for a corrupt file), nor an
    earlier copy's sentence. A key with no room beside the sentence within S3's 2 KB is left out, not the copy.
    Its lifecycle and access rules key on the object's tags (retention, collection): every copy carries its
    source's, as S3's own copies do, a run of frames each of its frames."""
    client, start_worker, s3, _, model = service_env
    catalogue = {"accession": "1987.112.4", "rights": "CC BY 4.0", "catalogue-id": "ark:/12148/btv1b8449691v"}
    about_bytes = {"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==", "sha256": "e3b0c44298fc1c149afbf4c8996fb924",
                   "file-size": "1234", "mtime": "1600000000.5", "s3cmd-attrs": "md5:d41d8cd98f00b204e9800998ecf8427e",
                   "tinct": "colorized by Tinct 0.1.0, model effnet_unet@0000000000"}
    retention = {"retention": "permanent", "collection": "press 1950-1959"}
    put_object(s3, "s3://scans/a.png", gray_png(), metadata={**catalogue, **about_bytes}, tags=retention)
    put_object(s3, "s3://scans/box/p0.png", gray_png(1), metadata={"accession": "1987.113.1"}, tags={"box": "12"})
    put_object(s3, "s3://scans/box/p1.png", gray_png(2), metadata={"accession": "1987.113.2", "notes": "x" * 2000})
    clip = write_clip(tmp_path / "reel.mkv", gray_frames(moving_scene(12, 96, 64)), codec="ffv1", pix_fmt="gray")
    put_object(s3, "s3://scans/reel.mkv", clip.path.read_bytes(), metadata=catalogue, tags=retention)
    worker = start_worker()
    for source, output in [("s3://scans/a.png", "s3://colour/"), ("s3://scans/box/", "s3://colour/box/"),
                           ("s3://scans/reel.mkv", "s3://colour/"), ("s3://scans/reel.mkv",
                                                                    "s3://colour/frames/reel_%04d.png")]:
        job_id, _ = client.submit(spec(source, output, model))
        assert wait_for_job(client, job_id).state == "succeeded", source

    def carried(key: str) -> dict[str, str]:
        metadata = s3.client().head_object(Bucket="colour", Key=key)["Metadata"]
        assert metadata.pop("tinct").startswith(f"colorized by Tinct {tinct_version()}, model "), key
        return metadata

    def tagged(key: str) -> dict[str, str]:
        return {tag["Key"]: tag["Value"] for tag in s3.client().get_object_tagging(Bucket="colour", Key=key)["TagSet"]}

    assert carried("a.png") == catalogue and carried("reel.mkv") == catalogue
    assert carried("box/p0.png") == {"accession": "1987.113.1"}
    assert carried("box/p1.png") == {"accession": "1987.113.2"}
    assert "s3://scans/box/p1.png: metadata notes not carried to its copy: no room beside the provenance within " \
           "S3's 2 KB" in worker.text()
    frames = [key for key in keys(s3, "colour") if key.startswith("frames/")]
    assert len(frames) == 12 and carried(frames[5]) == catalogue
    assert tagged("a.png") == tagged("reel.mkv") == retention and tagged("box/p0.png") == {"box": "12"}
    assert tagged("box/p1.png") == {} and all(tagged(frame) == retention for frame in frames)


@pytest.mark.parametrize("clip_options, output, codec, error", [
    ({"subtitles": "srt"}, "s3://colour/film.mp4", "h264",
     "subtitle stream #1 (srt) cannot be copied into .mp4: 'mp4' format does not support 'srt' codec; try .mkv"),
    ({"sample_aspect_ratio": Fraction(16, 15)}, "s3://colour/", "prores",  # into film.mkv
     "its pixels are not square (16:15, as from DV or DVD) and ProRes in .mkv cannot record it; write .mov"),
])
def test_a_film_its_output_cannot_hold_fails_before_any_segment(service_env, tmp_path, clip_options, output, codec,
                                                                error):
    client, start_worker, s3, _, model = service_env
    clip = write_clip(tmp_path / "film.mkv", gray_frames(moving_scene(12, 96, 64)), **clip_options)
    put_object(s3, "s3://scans/film.mkv", clip.path.read_bytes())
    start_worker()
    job_id, _ = client.submit(spec("s3://scans/film.mkv", output, model, codec=codec))
    record = wait_for_job(client, job_id)
    assert (record.state, record.error) == ("failed", f"s3://scans/film.mkv: {error}")
    assert keys(s3, "colour") == [] and record.done == 0


def test_cancelling_a_running_film_removes_its_staged_segments(service_env, tmp_path):
    client, start_worker, s3, _, model = service_env
    clip = write_clip(tmp_path / "long.mkv", gray_frames(moving_scene(240, 96, 64)), gop=6, bframes=0)
    put_object(s3, "s3://scans/long.mkv", clip.path.read_bytes())
    worker = start_worker()
    job_id, _ = client.submit(spec("s3://scans/long.mkv", "s3://colour/films/", model, codec="ffv1"))
    deadline = time.monotonic() + 120
    while not any(".tinct-parts/" in key for key in keys(s3, "colour")):  # a segment or more staged, the rest to do
        assert time.monotonic() < deadline and client.get(job_id).state in ("queued", "running"), client.get(job_id)
        time.sleep(0.02)
    assert client.cancel(job_id).state == "cancelled"
    # The segment running at the cancel finishes and stages its file; nothing of the job may be left after it.
    deadline = time.monotonic() + 60
    while keys(s3, "colour") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert keys(s3, "colour") == [], keys(s3, "colour")
    time.sleep(2)  # the queued segments arrive at the worker, which skips them: still nothing
    assert keys(s3, "colour") == [] and client.get(job_id).state == "cancelled"
    assert "tinct.join_film" in worker.text()


def test_cancelling_a_film_stops_its_running_segment_at_a_frame_and_keeps_its_progress(service_env, tmp_path):
    """A segment running when its film is cancelled stops within a heartbeat instead of colorizing the rest of it
    for nothing, and the job's progress stays where the cancel left it."""
    client, start_worker, s3, redis_server, model = service_env
    clip = write_clip(tmp_path / "one-segment.mkv", gray_frames(moving_scene(1200, 96, 64)), gop=24, bframes=0)
    put_object(s3, "s3://scans/one-segment.mkv", clip.path.read_bytes())
    # One segment for the whole film, and a heartbeat every 0.5 s (the default's 5 s would only make this slower).
    worker = start_worker(segment_seconds=600, heartbeat_interval_s=0.5, liveness_window_s=2)
    job_id, _ = client.submit(spec("s3://scans/one-segment.mkv", "s3://colour/films/", model, codec="ffv1"))
    redis = redis_server.client()

    def segment_under_way() -> bool:  # held, and its model loaded: past the task's first look at the job's state
        assert client.get(job_id).state in ("queued", "running"), client.get(job_id)
        # (Held alone, the cancel once landed before that look, in CI: the task returned at once, saying nothing.)
        return any(held.piece.startswith("segment-") for held in liveness.held_pieces(redis, 2, job_id)) \
            and "loaded on" in worker.text()

    wait_until(segment_under_way, JOB_TIMEOUT_S, "the segment under way", poll=0.02)
    began = time.monotonic()
    assert client.cancel(job_id).state == "cancelled"
    wait_until(lambda: "the job has ended" in worker.text(), 30, worker.log_tail, poll=0.05)
    print(f"segment stopped {time.monotonic() - began:.1f} s after the cancel")
    stopped = re.search(r"segment-0+ of job \w+ stopped after (\d+) of its (\d+) frames", worker.text())
    assert stopped is not None and int(stopped[1]) < int(stopped[2]) == 1200, worker.log_tail()
    record = client.get(job_id)
    assert record.state == "cancelled" and record.done == 0 and record.total == 1200
    assert keys(s3, "colour") == []


def test_cancelling_a_collection_stops_its_running_batch_at_a_photo(service_env):
    """A batch of photos running when its collection is cancelled writes no more of them once the worker's
    heartbeat has seen the cancel (a batch may be minutes of photos: they are written straight to the output)."""
    client, start_worker, s3, _, model = service_env
    frame = next(gray_frames(moving_scene(1, 1280, 960)))
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    for i in range(40):
        put_object(s3, f"s3://scans/album/p{i:02d}.png", buffer.getvalue())
    worker = start_worker(collection_batch=40, heartbeat_interval_s=0.5, liveness_window_s=2)  # one batch of 40
    job_id, _ = client.submit(spec("s3://scans/album/", "s3://colour/album/", model))

    def writing() -> bool:  # the batch is writing its photos
        assert client.get(job_id).state in ("queued", "running"), client.get(job_id)
        return bool(keys(s3, "colour"))

    wait_until(writing, JOB_TIMEOUT_S, "the batch's first photo", poll=0.02)
    assert client.cancel(job_id).state == "cancelled"
    wait_until(lambda: "the job has ended" in worker.text(), 30, worker.log_tail, poll=0.05)
    stopped = re.search(r"photos-0+ of job \w+ stopped after (\d+) of its (\d+) photos", worker.text())
    assert stopped is not None and 0 < int(stopped[1]) < int(stopped[2]) == 40, worker.log_tail()
    assert len(keys(s3, "colour")) == int(stopped[1])  # the photos written before the stop, and no more
    record = client.get(job_id)
    assert record.state == "cancelled" and record.done == 0


def test_cancelling_a_long_document_stops_it_at_a_page_and_makes_no_copy(service_env):
    """A multi-page document is coloured a page at a time, each page marked as progress: a cancel seen by the
    heartbeat stops it at a page (it had run to its end), and nothing is written for it."""
    client, start_worker, s3, _, model = service_env
    document = io.BytesIO()
    with tifffile.TiffWriter(document) as writer:
        for seed in range(300):
            writer.write(next(gray_frames(moving_scene(1, 320, 240, seed=seed % 7))), photometric="minisblack",
                         compression="zlib")
    put_object(s3, "s3://scans/book.tif", document.getvalue())
    worker = start_worker(heartbeat_interval_s=0.5, liveness_window_s=2)
    job_id, _ = client.submit(spec("s3://scans/book.tif", "s3://colour/", model))
    # Its pages under way (a cancel that lands while it is still fetched and read stops it before its first page:
    # "stopped after 0 of its 1 photos", seen on a loaded machine when this waited a fixed second instead).
    wait_until(lambda: "s3://scans/book.tif: a 300-page document, coloured a page at a time" in worker.text(),
               JOB_TIMEOUT_S, worker.log_tail, poll=0.05)
    assert client.cancel(job_id).state == "cancelled"
    wait_until(lambda: "the job has ended" in worker.text(), 30, worker.log_tail, poll=0.05)
    assert re.search(r"photos-0+ of job \w+ stopped in s3://scans/book.tif after 0 of its 1 photos", worker.text())
    assert keys(s3, "colour") == []


def test_a_cancel_that_lands_while_a_film_is_planned_stands(service_env, tmp_path):
    """Planning reads the whole film (minutes, for a long one in S3): a cancel that lands meanwhile must stand. The
    plan used to write 'running' over it and queue every segment, colorizing a film its user had cancelled."""
    client, _, s3, _, model = service_env
    clip = write_clip(tmp_path / "reel.mkv", gray_frames(moving_scene(24, 96, 64)), gop=6, bframes=0)
    put_object(s3, "s3://scans/planned.mkv", clip.path.read_bytes())
    job_id, _ = client.submit(spec("s3://scans/planned.mkv", "s3://colour/films/", model))  # no worker: it waits

    class CancelledWhileRead(work.Runtime):
        def film(self, uri: str):
            read = super().film(uri)
            client.cancel(job_id)  # the user's cancel, landing while the plan reads the film
            return read

    queued: list[dict] = []

    class Queues:
        def photos(self, job_id: str, piece: str, inputs: list[str]) -> None:
            raise AssertionError("a film job queued photos")

        def segment(self, job_id: str, segment: dict) -> None:
            queued.append(segment)

        def join(self, job_id: str) -> None:
            raise AssertionError("a plan joined")

    work.plan_job(CancelledWhileRead(client.settings), job_id, Queues())
    record = client.get(job_id)
    assert record.state == "cancelled" and record.error == "cancelled by request"
    assert queued == []  # nothing of the film is colorized


def test_bad_jobs_fail_clearly_and_the_worker_keeps_serving(service_env):
    client, start_worker, s3, _, model = service_env
    put_object(s3, "s3://scans/ok.png", gray_png())
    start_worker()
    unknown, _ = client.submit(spec("s3://scans/ok.png", "s3://colour/", "no-such-model.pt"))
    missing, _ = client.submit(spec("s3://scans/missing.png", "s3://colour/", model))
    escape, _ = client.submit(spec("s3://scans/ok.png", "s3://colour/../other/x.png", model))
    assert "cannot load model" in wait_for_job(client, unknown).error
    assert "no such object" in wait_for_job(client, missing).error
    assert wait_for_job(client, escape).state == "failed"
    good, _ = client.submit(spec("s3://scans/ok.png", "s3://colour/again/", model))
    assert wait_for_job(client, good).state == "succeeded"
    with pytest.raises(JobSpecError, match="options.colour: unknown option"):
        JobSpec.from_dict({"input": "s3://scans/ok.png", "output": "s3://colour/", "options": {"colour": "red"}})


def test_a_collections_gifs_are_coloured_into_pngs_and_a_gif_named_as_a_copy_is_refused(service_env):
    """A collection's GIFs had been left out of its listing (and a GIF photo job could not be submitted: "cannot
    tell the kind"); they are coloured now, each copy a PNG (a GIF holds 256 colours), one beside a PNG of its name
    fails before any work rather than overwrite that PNG's copy, and a photo job whose copy is named .gif is refused
    at submission."""
    client, start_worker, s3, _, model = service_env
    gif = io.BytesIO()
    Image.fromarray(next(gray_frames(moving_scene(1, 96, 64, seed=4)))).save(gif, format="GIF")
    put_object(s3, "s3://scans/web/p0.gif", gif.getvalue())
    put_object(s3, "s3://scans/web/p1.gif", gif.getvalue())  # listed before p1.png, whose copy's name it would take
    put_object(s3, "s3://scans/web/p1.png", gray_png(1))
    put_object(s3, "s3://scans/single.gif", gif.getvalue())
    start_worker()
    jobs = [client.submit(spec("s3://scans/web/", "s3://colour/web/", model))[0],
            client.submit(spec("s3://scans/single.gif", "s3://colour/", model))[0]]
    collection, single = (wait_for_job(client, job_id) for job_id in jobs)
    assert single.state == "succeeded" and not single.error, single.error
    assert collection.state == "succeeded" and collection.error == "1 of 3 files failed (see failed_pieces)"
    assert collection.failed_pieces == {"s3://scans/web/p1.gif": "s3://scans/web/p1.gif: its copy s3://colour/web/"
                                        "p1.png is also the copy of s3://scans/web/p1.png"}
    assert keys(s3, "colour") == ["single.png", "web/p0.png", "web/p1.png"]
    assert Image.open(io.BytesIO(get_object(s3, "s3://colour/web/p0.png"))).format == "PNG"
    with pytest.raises(JobSpecError) as refused:
        JobSpec.from_dict({"input": "s3://scans/single.gif", "output": "s3://colour/single.gif"})
    assert str(refused.value) == ("job spec: output: s3://colour/single.gif: Tinct reads GIF but does not write it (a "
                                  "GIF holds 256 colours); name the copy .png, or give a folder")


@pytest.mark.parametrize("data, error", [
    ({"output": "s3://colour/"}, "output: s3://colour/reel.mp4: ffv1 cannot be stored in .mp4; use .mkv"),
    ({"output": "s3://colour/reel.avi"}, "output: s3://colour/reel.avi: films are written as .mp4, .mov or .mkv, "
                                         "not '.avi'"),
    ({"options": {"codec": "vp9"}},
     "options.codec: unknown codec 'vp9'; choose source or one of h264, h265, ffv1, prores"),
    ({"options": {"codec": "ffv1", "crf": 20}}, "options.crf: crf does not apply to ffv1 (lossless or fixed-quality)"),
])
def test_a_film_job_that_could_not_be_written_is_refused_at_submission(data, error):
    # Found at the join, as it once was, each of these cost the whole film's colour first.
    spec = {"input": "s3://scans/reel.mp4", "output": "s3://colour/reel.mkv", "options": {"codec": "ffv1"}, **data}
    with pytest.raises(JobSpecError) as refused:
        JobSpec.from_dict(spec)
    assert str(refused.value) == f"job spec: {error}"


@pytest.mark.parametrize("data, error", [
    ({"output": "s3://colour/reel/f_%05d.jpg", "options": {}},
     "output: s3://colour/reel/f_%05d.jpg: frames are written as .dpx, .exr, .png, .tif, .tiff, not '.jpg'"),
    ({"output": "s3://colour/reel/f_%05d.dpx"},
     "options.codec: applies to film files; s3://colour/reel/f_%05d.dpx is a run of frames, written in the format "
     "its extension names"),
    ({"options": {"codec": "ffv1", "log": "cineon"}},
     "options.log: applies to a scan kept as a run of frames, named by its pattern (s3://scans/reel1/scan_%07d.dpx)"),
    ({"input": "s3://scans/reel1/scan_%07d.dpx", "options": {"codec": "ffv1", "log": "yes"}},
     "options.log: expected auto or cineon or none, got 'yes'"),
    ({"input": "s3://scans/reel1/scan_%07d.dpx", "output": "s3://scans/reel1/scan_%04d.dpx", "options": {}},
     "output: s3://scans/reel1/scan_%04d.dpx: would replace the frames of its source, s3://scans/reel1/scan_%07d.dpx"),
])
def test_a_film_job_into_frames_that_could_not_be_written_is_refused_at_submission(data, error):
    spec = {"input": "s3://scans/reel.mp4", "output": "s3://colour/reel.mkv", "options": {"codec": "ffv1"}, **data}
    with pytest.raises(JobSpecError) as refused:
        JobSpec.from_dict(spec)
    assert str(refused.value) == f"job spec: {error}"


@pytest.mark.parametrize("data, error", [
    ({"options": {"format": "png"}}, "options.format: format png contradicts the output file name p.jpg"),
    ({"output": "s3://colour/", "options": {"format": "gif"}},
     "options.format: unknown output format 'gif'; choose one of bmp, j2c, j2k, jfif, jp2, jpc, jpe, jpeg, jpf, jpg, "
     "jpx, png, tif, tiff, webp"),
])
def test_a_photo_job_whose_format_could_not_be_written_is_refused_at_submission(data, error):
    # A copy named p.jpg asked for as PNG had been written as a JPEG, the format silently ignored.
    spec = {"input": "s3://scans/p.tif", "output": "s3://colour/p.jpg", **data}
    with pytest.raises(JobSpecError) as refused:
        JobSpec.from_dict(spec)
    assert str(refused.value) == f"job spec: {error}"
    same_format = JobSpec.from_dict({**spec, "output": "s3://colour/p.jpeg", "options": {"format": "jpg"}})
    assert same_format.options.format == "jpg"


@pytest.mark.parametrize("source, codec, written", [
    ("s3://scans/tape.mxf", "prores", "s3://colour/tape.mov"), ("s3://scans/tape.avi", "h264", "s3://colour/tape.mkv"),
    ("s3://scans/REEL.MP4", "h265", "s3://colour/REEL.mp4"),
])
def test_a_film_in_a_container_tinct_does_not_write_gets_its_codecs_own(source, codec, written):
    # ProRes belongs in QuickTime, where editing software looks for it; in Matroska a DV or IMX capture's
    # non-square pixels could not even be kept, and the job was refused.
    spec = JobSpec.from_dict({"input": source, "output": "s3://colour/", "options": {"codec": codec}})
    assert film_output_uri(spec) == written


def test_a_job_taken_before_a_check_was_added_stays_readable(service_env):
    client, _, _, redis_server, _ = service_env
    stored = JobSpec("s3://scans/reel.mp4", "s3://colour/", "video", JobOptions(codec="ffv1"))  # refused today
    JobStore(redis.Redis.from_url(redis_server.url)).create("old-job", stored, {"etag": "e", "size": 1})
    assert client.get("old-job").spec == stored  # the job list and its page must still show it


def test_a_run_in_a_bucket_colours_into_a_run_of_dpx_frames_exactly_as_tinct_colorize_makes_it(service_env,
                                                                                                   tmp_path):
    client, start_worker, s3, _, model = service_env
    frames = [f.astype(np.uint16) << 8 for f in gray_frames(moving_scene(24, 96, 64))]
    for path in write_frames(tmp_path / "reel1", frames, rate=18.0, timecode=0x01001005, scanner=True):
        put_object(s3, f"s3://scans/reel1/{path.name}", path.read_bytes())
    put_object(s3, "s3://colour/reel1/colour_0099999.dpx", b"a frame of another run, left alone")
    start_worker()
    run, output = "s3://scans/reel1/scan_%07d.dpx", "s3://colour/reel1/colour_%07d.dpx"
    job_id, _ = client.submit(spec(run, output, model, log="cineon"))  # a log scan whose headers do not say so
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    names = [f"colour_{86400 + i:07d}.dpx" for i in range(24)]
    assert record.outputs == [output] and record.done == 24
    assert {k: record.metrics[k] for k in ("frames", "first_frame")} == {"frames": 24, "first_frame": 86400}
    assert record.metrics["output_size"] == sum(len(get_object(s3, f"s3://colour/reel1/{n}")) for n in names)
    assert f"  output: {output} (frames 86400-86423)" in describe(record).splitlines()  # tinct status
    # Every frame in place under its scan's number, the staged segments gone, and nothing kept by the worker.
    assert keys(s3, "colour") == [f"reel1/{name}" for name in [*names, "colour_0099999.dpx"]]
    placed = s3.client().head_object(Bucket="colour", Key=f"reel1/{names[5]}")  # (CopyObject keeps what was staged)
    assert placed["ContentType"] == "image/dpx" and placed["Metadata"]["tinct"].startswith("colorized by Tinct")
    assert [p for p in (tmp_path / "work-w" / "jobs").rglob("*") if p.is_file()] == []
    # The same run coloured by the CLI in segments as long: the service's 3 segments, from 3 workers' worth of
    # pieces, joined into the same frames, headers (rate, timecode) and all.
    assert main(["colorize", str(tmp_path / "reel1" / "scan_%07d.dpx"), "-o", str(tmp_path / "cli" / "colour_%07d.dpx"),
                 "--model", str(model), "--engine", "torch", "--render-size", "64", "--segment-seconds", "0.5",
                 "--log", "cineon"]) == 0
    local = tmp_path / "service"
    local.mkdir()
    for name in names:
        (local / name).write_bytes(get_object(s3, f"s3://colour/reel1/{name}"))
    for served, made, written in zip(read_frames(local, names), read_frames(tmp_path / "cli", names), frames,
                                     strict=True):
        assert np.abs(served - made).max() <= 1  # the service and the CLI coloured with torch at other thread counts
        assert np.percentile(np.abs(luma_of(served) - (written >> 6)), 99) <= 1.0  # the scan's 10-bit lightness
    assert (local / names[5]).read_bytes()[:2048] == (tmp_path / "cli" / names[5]).read_bytes()[:2048]
    # Each frame's copy carries its own scan frame's keycode and position, fetched a window at a time as it was.
    assert [read_dpx_fields(local / name)["frame position"] for name in names] == list(range(1, 25))
    assert read_dpx_fields(local / names[20])["perforation offset"] == b"16" and read_dpx_fields(
        local / names[20])["count"] == b"1001"
    assert (local / names[5]).read_bytes()[801:803] == b"\x01\x01"  # read as log, and its frames say so
    assert find_sequence(local / "colour_%07d.dpx").timecode == "01:00:10:05"


def test_a_film_into_frames_in_a_folder_leaves_the_folder_holding_its_frames_alone(service_env, tmp_path):
    client, start_worker, s3, _, model = service_env
    clip = write_clip(tmp_path / "reel.mkv", gray_frames(moving_scene(12, 96, 64)), gop=6, bframes=0)
    put_object(s3, "s3://scans/reel.mkv", clip.path.read_bytes(), metadata={"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg=="})
    worker = start_worker(segment_seconds=0.25)  # two segments of 6 frames
    folder = tmp_path / "conform" / "reel"
    job_id, _ = client.submit(spec("s3://scans/reel.mkv", f"{folder}/reel_%04d.tif", model))
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    assert sorted(os.listdir(folder)) == [f"reel_{i:04d}.tif" for i in range(12)]  # no staging folder left beside
    assert all((folder / f"reel_{i:04d}.tif").stat().st_nlink == 1 for i in range(12))  # placed, and staged no more
    # Each of its two segments reads the film's metadata; what is not carried is said once.
    assert client.store.pieces_done(job_id) == 2
    assert worker.text().count("s3://scans/reel.mkv: metadata content-md5 not carried to its copy") == 1


def test_a_join_that_fails_midway_through_placing_frames_takes_back_those_it_placed(service_env, tmp_path):
    """A run of frames is never left partly placed, looking whole: a join that fails after it began placing (here
    a folder squats on frame 7's name, which is no frame to replace) takes the frames it placed back out."""
    client, start_worker, s3, _, model = service_env
    clip = write_clip(tmp_path / "reel.mkv", gray_frames(moving_scene(12, 96, 64)), gop=6, bframes=0)
    put_object(s3, "s3://scans/reel.mkv", clip.path.read_bytes())
    folder = tmp_path / "conform" / "reel"
    (folder / "reel_0007.tif").mkdir(parents=True)
    (folder / "reel_0007.tif" / "notes.txt").write_text("not a frame")
    worker = start_worker()
    job_id, _ = client.submit(spec("s3://scans/reel.mkv", f"{folder}/reel_%04d.tif", model))
    record = wait_for_job(client, job_id)
    assert record.state == "failed" and record.error.startswith(f"file://{folder}/reel_0007.tif: Is a directory")
    # Frames 0-6 were placed before it; they go, and the staged frames, and the folder in the way stays.
    wait_until(lambda: sorted(os.listdir(folder)) == ["reel_0007.tif"], 10, lambda: sorted(os.listdir(folder)))
    assert (folder / "reel_0007.tif" / "notes.txt").read_text() == "not a frame"
    wait_until(lambda: "were not all taken back out" in worker.text(), 10, lambda: worker.text()[-3000:])


def test_a_cancelled_film_into_frames_leaves_no_frame_staged_or_placed(service_env, tmp_path):
    """A segment's frames are staged as they are made; cancelled mid-segment, it removes those it staged after the
    cancel's cleanup ran, so nothing of the job is left, staged or in place."""
    client, start_worker, s3, _, model = service_env
    clip = write_clip(tmp_path / "one-segment.mkv", gray_frames(moving_scene(1200, 96, 64)), gop=24, bframes=0)
    put_object(s3, "s3://scans/one-segment.mkv", clip.path.read_bytes())
    # Two workers: one colours the segment while the other runs the cancel's cleanup at once.
    workers = [start_worker(name, segment_seconds=600, heartbeat_interval_s=0.5, liveness_window_s=2)
               for name in ("w", "w2")]

    def logs() -> str:
        return "\n".join(worker.text() for worker in workers)

    job_id, _ = client.submit(spec("s3://scans/one-segment.mkv", "s3://colour/reel/frame_%05d.png", model))
    wait_until(lambda: sum(".tinct-parts/" in key for key in keys(s3, "colour")) >= 24, JOB_TIMEOUT_S,
               lambda: f"{client.get(job_id)}\n{logs()[-3000:]}", poll=0.02)
    assert client.cancel(job_id).state == "cancelled"
    wait_until(lambda: "the job has ended" in logs(), 30, lambda: logs()[-3000:], poll=0.05)
    stopped = re.search(r"segment-0+ of job \w+ stopped after (\d+) of its (\d+) frames", logs())
    assert stopped is not None and int(stopped[1]) < int(stopped[2]) == 1200, logs()[-3000:]
    time.sleep(1)  # the cancel's cleanup has run, and the segment's own
    assert keys(s3, "colour") == [] and client.get(job_id).state == "cancelled"
    assert [p for name in ("w", "w2") for p in (tmp_path / f"work-{name}").rglob("jobs/**/*") if p.is_file()] == []


def test_oversized_input_fails_at_submission_but_a_run_of_frames_is_no_one_download(service_env, tmp_path):
    client, _, s3, redis, model = service_env
    put_object(s3, "s3://scans/big.png", gray_png())
    small = Service(s3_settings(s3, redis_url=redis.url, max_input_bytes=10))
    job_id, _ = small.submit(spec("s3://scans/big.png", "s3://colour/", model))
    record = small.get(job_id)
    assert record.state == "failed" and "over the limit" in record.error
    for path in write_frames(tmp_path / "reel1", [np.zeros((16, 16), np.uint16)] * 2):
        put_object(s3, f"s3://scans/reel1/{path.name}", path.read_bytes())
    job_id, _ = small.submit(spec("s3://scans/reel1/scan_%07d.dpx", "s3://colour/", model, codec="ffv1"))
    assert small.get(job_id).state == "queued"  # its workers fetch a segment's frames at a time


def test_a_collection_larger_than_the_input_limit_runs_and_refuses_only_its_photos_over_it(service_env):
    client, start_worker, s3, _, model = service_env
    small, large = gray_png(1), gray_png(2)  # two photos of about one size...
    put_object(s3, "s3://scans/box/a.png", small)
    put_object(s3, "s3://scans/box/b.png", large)
    big = io.BytesIO()
    Image.new("L", (400, 300)).save(big, format="PNG", compress_level=0)  # ... and one far larger
    put_object(s3, "s3://scans/box/c.png", big.getvalue())
    limit = max(len(small), len(large)) + 100  # each small photo fits, the collection as a whole does not
    limited = Service(s3_settings(s3, redis_url=client.settings.redis_url, max_input_bytes=limit))
    start_worker(max_input_bytes=limit)
    record = wait_for_job(limited, limited.submit(spec("s3://scans/box/", "s3://colour/box/", model))[0])
    assert (record.state, record.done, record.total) == ("succeeded", 2, 3)
    assert keys(s3, "colour") == ["box/a.png", "box/b.png"]
    assert record.failed_pieces == {"s3://scans/box/c.png": f"s3://scans/box/c.png: {len(big.getvalue())} bytes, "
                                    f"over the limit of {limit} (TINCT_MAX_INPUT_BYTES)"}


# --- reliability ---------------------------------------------------------------------------------------------


def test_queued_jobs_survive_a_redis_restart(service_env):
    client, start_worker, s3, redis, model = service_env
    put_object(s3, "s3://scans/a.png", gray_png(1))
    put_object(s3, "s3://scans/b.png", gray_png(2))
    jobs = [client.submit(spec(f"s3://scans/{name}.png", "s3://colour/", model))[0] for name in "ab"]
    redis.stop()  # no worker has seen them: they exist only in Redis (AOF on)
    redis.start()
    start_worker()
    assert [wait_for_job(client, job_id).state for job_id in jobs] == ["succeeded", "succeeded"]


def test_storage_outage_is_retried_then_succeeds(service_env):
    client, start_worker, s3, _, model = service_env
    put_object(s3, "s3://scans/a.png", gray_png())
    job_id, _ = client.submit(spec("s3://scans/a.png", "s3://colour/", model))
    s3.stop()
    worker = start_worker(retry_backoff_s=1.0, task_retries=6)
    deadline = time.monotonic() + 60
    while "retry" not in worker.text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "retry" in worker.text()
    s3.start()
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    assert SECRET not in worker.text()


def test_metrics_endpoint_and_json_only(service_env):
    client, start_worker, s3, redis, model = service_env
    port = free_port()
    start_worker(metrics_port=port)
    # A pickled task is refused (JSON only) and the worker goes on serving.
    from kombu import Connection

    with Connection(redis.url) as connection:
        connection.SimpleQueue("tinct.io").put({"evil": True}, serializer="pickle")
    put_object(s3, "s3://scans/a.png", gray_png())
    job_id, _ = client.submit(spec("s3://scans/a.png", "s3://colour/", model))
    assert wait_for_job(client, job_id).state == "succeeded"
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "tinct_images_total 1.0" in text and 'tinct_jobs_total{state="succeeded"} 1.0' in text
    assert 'tinct_queue_depth{queue="tinct.colorize"}' in text
    assert re.search(r'tinct_batch_size\{engine="torch",model="effnet_unet@\w+",precision="\w+"\} 8\.0', text)  # CPU: 8


def test_a_collection_piece_colours_its_photos_together_each_as_it_would_be_alone(service_env, tmp_path):
    """A piece of a collection colours its photos in one call of the colorizer (the network batches those of a
    shape), not one photo at a time, which had given a GPU node batches of one; each photo's colour is still its
    own: what it gets coloured alone, within a code of rounding."""
    from worker.media.images import read_photo, write_photo
    from worker.photos import open_colorizer

    client, start_worker, s3, _, model = service_env
    portrait = next(gray_frames(moving_scene(1, 64, 96, seed=9)))  # a shape of its own among the landscapes
    photos = {f"p{i}.png": gray_png(i) for i in range(4)} | {"p4.png": png_bytes(portrait)}
    for name, data in photos.items():
        put_object(s3, f"s3://scans/shelf/{name}", data)
    port = free_port()
    start_worker(collection_batch=5, metrics_port=port)
    job_id, _ = client.submit(spec("s3://scans/shelf/", "s3://colour/shelf/", model))
    assert wait_for_job(client, job_id).state == "succeeded"
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "tinct_photo_batch_photos_count 1.0" in text and "tinct_photo_batch_photos_sum 5.0" in text, text
    assert "tinct_images_total 5.0" in text
    with open_colorizer(model, engine="torch", device="cpu", render_size=64) as (colorizer, label):
        for name, data in photos.items():
            (tmp_path / name).write_bytes(data)
            photo = read_photo(tmp_path / name)
            write_photo(tmp_path / f"alone-{name}", colorizer.colorize([photo.L])[0], photo, label)
            alone = np.asarray(Image.open(tmp_path / f"alone-{name}"), np.int16)
            together = np.asarray(Image.open(io.BytesIO(get_object(s3, f"s3://colour/shelf/{name}"))), np.int16)
            assert alone.shape == together.shape and np.abs(alone - together).max() <= 1, name


# --- triggers, through the real service ------------------------------------------------------------------------


def test_bulk_and_sqs_events_reach_the_workers(service_env, monkeypatch, capsys, tmp_path):
    import threading

    from worker.cli import main
    from worker.jobs import JobOptions
    from worker.triggers.sqs import listen_sqs

    client, start_worker, s3, redis, model = service_env
    for name in ("a", "b"):
        put_object(s3, f"s3://scans/bulk/{name}.png", gray_png())
    put_object(s3, "s3://scans/bulk/readme.txt", b"not a photo")
    start_worker()
    for name, value in env_for_workers(redis, s3).items():
        monkeypatch.setenv(name, value)
    args = ["bulk", "s3://scans/bulk/", "-o", "s3://colour/bulk/", "--model", str(model), "--render-size", "64"]
    assert main([*args, "--dry-run"]) == 0 and "would" in capsys.readouterr().out.lower()
    assert main(args) == 0
    capsys.readouterr()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while keys(s3, "colour") != ["bulk/a.png", "bulk/b.png"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert keys(s3, "colour") == ["bulk/a.png", "bulk/b.png"]
    head = s3.client().head_object(Bucket="colour", Key="bulk/a.png")
    assert head["ContentType"] == "image/png"
    (tmp_path / "a.png").write_bytes(get_object(s3, "s3://colour/bulk/a.png"))
    assert head["Metadata"] == {"tinct": read_provenance(tmp_path / "a.png").description}  # the file's own words
    assert main(args) == 0 and "submitted 0" in capsys.readouterr().out.lower()

    # An S3 event notification in SQS, delivered twice (S3 delivers at least once): one job, done once.
    sqs = s3.client("sqs")
    queue_url = sqs.create_queue(QueueName="tinct-events")["QueueUrl"]
    put_object(s3, "s3://scans/new arrivals/c 1.png", gray_png(3))
    head = s3.client().head_object(Bucket="scans", Key="new arrivals/c 1.png")
    event = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "scans"}, "object": {
        "key": "new+arrivals/c+1.png", "size": head["ContentLength"], "eTag": head["ETag"].strip('"')}}}]}
    for _ in range(2):
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
    stop = threading.Event()
    listener = threading.Thread(target=listen_sqs, args=(client, queue_url, "s3://colour/events/",
                                                         JobOptions(model=str(model), render_size=64)),
                                kwargs={"stop": stop, "wait_s": 1, "sqs_client": sqs}, daemon=True)
    listener.start()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while "events/new arrivals/c 1.png" not in keys(s3, "colour") and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    listener.join(timeout=10)
    assert "events/new arrivals/c 1.png" in keys(s3, "colour")
    assert sum(r.spec.input.endswith("c 1.png") for r in client.recent(50)) == 1


def test_webhook_event_becomes_a_job_and_cancel_stops_a_queued_one(service_env):
    from worker.jobs import JobOptions
    from worker.triggers.webhook import serve_webhook

    client, start_worker, s3, _, model = service_env
    put_object(s3, "s3://scans/hook/d.png", gray_png(4))
    put_object(s3, "s3://scans/hook/e.png", gray_png(5))
    # Cancelled while queued (no worker yet): the worker skips it when it arrives.
    cancelled, _ = client.submit(spec("s3://scans/hook/e.png", "s3://colour/cancelled/", model))
    assert client.cancel(cancelled).state == "cancelled"
    server, thread = serve_webhook(client, "127.0.0.1", 0, "hook-secret", "s3://colour/hook/",
                                   JobOptions(model=str(model), render_size=64))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        event = json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": "scans/hook/d.png", "Records": [
            {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "scans"}, "object": {"key": "hook/d.png"}}}
        ]}).encode()
        refused = urllib.request.Request(url, data=event, method="POST")
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(refused, timeout=10)
        assert denied.value.code == 401
        accepted = urllib.request.Request(url, data=event, method="POST",
                                          headers={"Authorization": "Bearer hook-secret"})
        reply = json.loads(urllib.request.urlopen(accepted, timeout=10).read())
    finally:
        server.shutdown()
    (job,) = reply["jobs"]
    start_worker()
    assert wait_for_job(client, job["id"]).state == "succeeded"
    assert "hook/hook/d.png" in keys(s3, "colour")
    time.sleep(1)
    assert client.get(cancelled).state == "cancelled"
    assert not any(key.startswith("cancelled/") for key in keys(s3, "colour"))


def test_access_denied_output_fails_at_once_without_retries(service_env):
    client, start_worker, s3, _, model = service_env
    put_object(s3, "s3://scans/a.png", gray_png())
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "arn:aws:s3:::colour/denied/*"}]}
    s3.client().put_bucket_policy(Bucket="colour", Policy=json.dumps(policy))
    worker = start_worker()
    job_id, _ = client.submit(spec("s3://scans/a.png", "s3://colour/denied/", model))
    record = wait_for_job(client, job_id)
    assert record.state == "failed" and "access denied" in record.error, record.error
    assert "retry" not in worker.text()


# --- one worker process per GPU ----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_worker_per_gpu_starts_one_pinned_process_per_gpu_and_stops_them_together(tmp_path, redis_server, s3_server):  # noqa: F811
    env = env_for_workers(redis_server, s3_server, work_dir=tmp_path / "work", base=os.environ)
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "worker.cli", "worker", "--queues", "io", "--gpus", "0,1", "--hostname", "node"]
    log = tmp_path / "gpus.log"
    with log.open("wb") as output:
        supervisor = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        # Each child logs "celery@<name> ready." once it consumes from Redis. (Not Celery's ping from this process:
        # kombu pools broker connections process-wide, and later tests restart Redis under them.)
        while not all(f"celery@node-gpu{index} ready." in log.read_text() for index in (0, 1)):
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        pinned = sorted(
            entry.split(b"=", 1)[1].decode() for child in _children(supervisor.pid)
            for entry in Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            if entry.startswith(b"CUDA_VISIBLE_DEVICES=")
        )
        assert pinned == ["0", "1"]
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        assert _children(supervisor.pid) == []
        assert log.read_text().count("Warm shutdown") == 2
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)


def test_worker_per_gpu_rejects_bad_gpu_lists(capsys):
    assert main(["worker", "--gpus", "0,zero"]) == 2
    assert "--gpus takes 'all' or comma-separated GPU indices" in capsys.readouterr().err
    assert main(["worker", "--gpus", "1,1"]) == 2
    assert "distinct" in capsys.readouterr().err


def test_a_run_of_dpx_frames_in_a_bucket_is_one_film_job(service_env, tmp_path):
    client, start_worker, s3, redis_server, model = service_env
    frames = [f.astype(np.uint16) << 8 for f in gray_frames(moving_scene(24, 96, 64))]
    for path in write_frames(tmp_path / "reel1", frames, rate=18.0):
        data = bytearray(path.read_bytes())
        data[801] = 1  # a log scan (printing density), as scans for grading are
        put_object(s3, f"s3://scans/reel1/{path.name}", bytes(data))
    put_object(s3, "s3://scans/reel1/scanner-log.txt", b"a scanner's notes beside its frames")
    start_worker()
    run = "s3://scans/reel1/scan_%07d.dpx"
    job_id, _ = client.submit(spec(run, "s3://colour/films/", model, codec="ffv1"))
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    assert record.outputs == ["s3://colour/films/scan.mkv"] and record.done == 24
    assert record.metrics["log_encoded"] is True  # its copy's codes are log too: previews show it through them
    assert len(json.loads(redis_server.client().get(f"tinct:job:{job_id}:segments"))) == 3  # of 0.5 s at 18 fps
    (tmp_path / "out.mkv").write_bytes(get_object(s3, "s3://colour/films/scan.mkv"))
    video = probe(tmp_path / "out.mkv").video
    assert np.allclose([float(p * video.time_base) for p in video.pts], [i / 18 for i in range(24)], atol=1e-3)
    for written, kept in zip(frames, lumas(tmp_path / "out.mkv"), strict=True):
        np.testing.assert_array_equal(kept, written >> 6)  # the scan's 10-bit values, bit for bit
    # Each segment's frames were fetched as it was coloured, and are gone: the worker keeps no copy of the reel.
    assert list((tmp_path / "work-w" / "frames").iterdir()) == []
    assert not (tmp_path / "work-w" / "inputs").exists()
    assert client.submit(spec(run, "s3://colour/films/", model, codec="ffv1")) == (job_id, False)  # the same run
    damaged = bytearray(get_object(s3, "s3://scans/reel1/scan_0086409.dpx"))
    damaged[:4] = b"JUNK"  # the size of a whole frame, so found only when its segment decodes it
    put_object(s3, "s3://scans/reel1/scan_0086409.dpx", bytes(damaged))
    record = wait_for_job(client, client.submit(spec(run, "s3://colour/films/", model, codec="ffv1"))[0])
    assert record.state == "failed" and record.error.startswith(
        f"{run}: video stops decoding at frame 9 (scan_0086409.dpx) (damaged video data"), record.error
    s3.client().delete_object(Bucket="scans", Key="reel1/scan_0086403.dpx")  # a frame lost
    lost, created = client.submit(spec(run, "s3://colour/films/", model, codec="ffv1"))
    assert created and client.get(lost).state == "failed"
    assert client.get(lost).error == (f"{run}: 1 of frames 86400-86423 are missing (86403); a film's frames must be "
                                      "contiguous, as a gap would move every later frame's time")

