"""Film references in the service: ``options.references`` checked at submission (each picture fetched, checked and
hashed into the job id), placed in the film by the planner, laid on by every segment's worker; ``tinct submit
--reference`` and ``tinct bulk`` picking up ``<film>.references/`` folders. Real redis-server, moto's HTTP S3 and
``tinct worker`` subprocesses, on a generated clip with known colours (the scene of ``tests/test_references.py``)."""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.media import decode_rgb, gray_frames, moving_scene, probe, write_clip, write_frames
from tests.services import (
    JOB_TIMEOUT_S,
    WorkerProcess,
    env_for_workers,
    get_object,
    put_object,
    s3_settings,
    wait_for_job,
)
from tests.test_references import CUT, FRAMES, REFERENCE, SIZE, psnr, soft_chroma
from worker.cli import main
from worker.films import FilmOptions, colorize_film
from worker.jobs import JobSpec, JobSpecError
from worker.media.video_sink import EncodeOptions
from worker.photos import open_colorizer
from worker.references import parse_reference_arg
from worker.service import Service
from worker.smoothing import SmoothingOptions
from worker.triggers.events import S3Event, submit_events

SEGMENT_SECONDS = 0.25  # 6 frames: the reference (frame 12) colours frames of segments 0 and 1 from segment 2


def png(frame: np.ndarray, scale: int = 1) -> bytes:
    image = Image.fromarray(frame)
    if scale != 1:
        image = image.resize((scale * image.width, scale * image.height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[bytes, list[np.ndarray], bytes, bytes]:
    """The black-and-white clip (two shots, cut at frame 24), its colour truth, frame 12 of the truth at twice the
    frame's size (a still is resampled to the frame) and the same frame gray."""
    folder = tmp_path_factory.mktemp("scene")
    truth = [soft_chroma(frame) for frame in moving_scene(FRAMES, *SIZE, cuts_at=(CUT,))]
    clip = write_clip(folder / "reel.mkv", gray_frames(truth), codec="ffv1", gop=6, bframes=0)
    return clip.path.read_bytes(), truth, png(truth[REFERENCE], 2), png(next(gray_frames([truth[REFERENCE]])))


@pytest.fixture
def reference_service(tmp_path, redis_server, s3_server, tiny_checkpoint):  # noqa: F811
    s3_server.make_bucket("scans")
    s3_server.make_bucket("colour")
    workers: list[WorkerProcess] = []

    def start_worker(name: str) -> WorkerProcess:
        env = env_for_workers(redis_server, s3_server, work_dir=tmp_path / f"work-{name}", base=os.environ,
                              engine="torch", device="cpu", render_size=64, segment_seconds=SEGMENT_SECONDS,
                              retry_backoff_s=0.5, s3_max_attempts=1)
        env["OMP_NUM_THREADS"] = "1"
        workers.append(WorkerProcess(name, env, tmp_path / f"{name}.log"))
        return workers[-1]

    yield Service(s3_settings(s3_server, redis_url=redis_server.url)), start_worker, s3_server, redis_server, \
        tiny_checkpoint
    for worker in workers:
        worker.stop()


def spec(input_uri: str, output: str, model, **options) -> JobSpec:
    return JobSpec.from_dict({"input": input_uri, "output": output,
                              "options": {"model": str(model), "render_size": 64, "codec": "ffv1", **options}})


def keys(s3, bucket: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def film_from(s3, uri: str, path: Path) -> list[np.ndarray]:
    path.write_bytes(get_object(s3, uri))
    return decode_rgb(path)


def test_a_film_job_takes_its_references_colours_on_several_workers_as_a_whole_pass_does(reference_service, scene,
                                                                                         tmp_path):
    client, start_worker, s3, _, model = reference_service
    clip, truth, picture, _ = scene
    put_object(s3, "s3://scans/reel.mkv", clip)
    put_object(s3, "s3://scans/stills/frame12.png", picture)
    first, second = start_worker("a"), start_worker("b")
    references = [{"time": 0.5, "image": "s3://scans/stills/frame12.png"}]
    plain_id, _ = client.submit(spec("s3://scans/reel.mkv", "s3://colour/auto/", model))
    guided_spec = spec("s3://scans/reel.mkv", "s3://colour/ref/", model, references=references)
    guided_id, created = client.submit(guided_spec)
    assert created and guided_id != plain_id
    for job_id in (plain_id, guided_id):
        record = wait_for_job(client, job_id)
        assert record.state == "succeeded", record.error
    stored = client.get(guided_id).spec.options.references
    assert stored[0]["time"] == "0.5" and len(stored[0]["sha256"]) == 64  # the picture's bytes are in the job id
    assert "tinct.colorize_segment" in first.text() and "tinct.colorize_segment" in second.text()

    automatic = film_from(s3, "s3://colour/auto/reel.mkv", tmp_path / "auto.mkv")
    guided = film_from(s3, "s3://colour/ref/reel.mkv", tmp_path / "ref.mkv")
    gain = [psnr(g, t) - psnr(a, t) for g, a, t in zip(guided, automatic, truth, strict=True)]
    # The frames near the reference take its colours (the untrained model's own guess is about 25 dB off them)...
    assert psnr(guided[REFERENCE], truth[REFERENCE]) > 31.0 and gain[REFERENCE] > 6.0
    assert min(gain[REFERENCE - 6 : REFERENCE + 7]) > 2.0
    for index in range(CUT, FRAMES):  # ... and the next shot is coloured as without it
        np.testing.assert_array_equal(guided[index], automatic[index])
    provenance = json.loads(probe(tmp_path / "ref.mkv").tag("tinct"))
    assert provenance["references"] == 1 and "references" not in json.loads(probe(tmp_path / "auto.mkv").tag("tinct"))

    # Segments on two workers give what one whole pass gives (the CLI's path), the reference's own segment included.
    (tmp_path / "reel.mkv").write_bytes(clip)
    (tmp_path / "frame12.png").write_bytes(picture)
    with open_colorizer(model, engine="torch", render_size=64, batch_size=4) as (colorizer, label):
        options = FilmOptions(SmoothingOptions(0.5), EncodeOptions("ffv1"), segment_seconds=100.0,
                              references=(parse_reference_arg(f"0.5={tmp_path / 'frame12.png'}"),))
        assert colorize_film(colorizer, tmp_path / "reel.mkv", tmp_path / "whole.mkv", options, label).status == "done"
    whole = np.stack(decode_rgb(tmp_path / "whole.mkv")).astype(np.int32)
    difference = np.abs(whole - np.stack(guided).astype(np.int32))
    assert difference.max() <= 2 and difference.mean() < 0.05

    # The same job again is the same job; a corrected picture under the same name is a new one.
    assert client.submit(guided_spec) == (guided_id, False)
    put_object(s3, "s3://scans/stills/frame12.png", png(truth[REFERENCE]))
    corrected = client.checked_references(guided_spec)
    info = client.storage.stat("s3://scans/reel.mkv")
    assert corrected.job_id(info.etag, info.size) != guided_id


def test_a_reference_colours_a_run_of_frames_kept_in_s3_whose_frames_are_fetched_as_read(reference_service, scene,
                                                                                        tmp_path):
    # The scene scanned as a run of DPX frames: the planner places the reference by the run's own rate, and each
    # segment's worker fetches the reference's frames, as well as its own, from the bucket as it reads them.
    client, start_worker, s3, _, model = reference_service
    _, truth, picture, _ = scene
    frames = [frame.astype(np.uint16) << 8 for frame in gray_frames(truth)]
    for path in write_frames(tmp_path / "scan", frames, rate=24.0):
        put_object(s3, f"s3://scans/reel1/{path.name}", path.read_bytes())
    put_object(s3, "s3://scans/stills/frame12.png", picture)
    start_worker("a")
    references = [{"time": REFERENCE / 24, "image": "s3://scans/stills/frame12.png"}]
    job_id, _ = client.submit(spec("s3://scans/reel1/scan_%07d.dpx", "s3://colour/", model, references=references))
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    guided = film_from(s3, "s3://colour/scan.mkv", tmp_path / "scan.mkv")
    assert psnr(guided[REFERENCE], truth[REFERENCE]) > 31.0  # the untrained model's own guess is about 25 dB off
    assert list((tmp_path / "work-a" / "frames").iterdir()) == []


def test_bad_references_are_refused_at_submission_or_by_the_planner_with_one_line(reference_service, scene, tmp_path,
                                                                                  monkeypatch, capsys):
    client, start_worker, s3, redis, model = reference_service
    clip, truth, picture, gray = scene
    put_object(s3, "s3://scans/reel.mkv", clip)
    put_object(s3, "s3://scans/stills/frame12.png", picture)
    put_object(s3, "s3://scans/stills/gray.png", gray)
    put_object(s3, "s3://scans/stills/broken.png", b"\x89PNG\r\n\x1a\n not really")
    local = tmp_path / "reel.mkv"
    local.write_bytes(clip)
    good = "s3://scans/stills/frame12.png"
    cases = [
        ("s3://scans/reel.mkv", [{"time": 0.5, "image": "s3://scans/stills/missing.png"}],
         "options.references[0].image: s3://scans/stills/missing.png: no such object"),
        ("s3://scans/reel.mkv", [{"time": 0.5, "image": "s3://scans/stills/gray.png"}],
         "options.references[0].image: s3://scans/stills/gray.png: is gray"),
        ("s3://scans/reel.mkv", [{"time": 0.5, "image": good}, {"time": 1, "image": "s3://scans/stills/broken.png"}],
         "options.references[1].image: s3://scans/stills/broken.png: does not decode as a picture"),
        (str(local), [{"time": 9, "image": good}], f"options.references[0].time: {local}: 9 s is outside the film"),
        (str(local), [{"time": "0.5", "image": good}, {"time": "frame:12", "image": good}],
         f"options.references[1].time: {local}: frame:12 is frame 12, which 0.5={good} already colours"),
    ]
    for source, references, expected in cases:
        with pytest.raises(JobSpecError) as caught:
            client.submit(spec(source, "s3://colour/bad/", model, references=references))
        assert str(caught.value).startswith(f"job spec: {expected}") and "\n" not in str(caught.value)
    strict = Service(s3_settings(s3, redis_url=redis.url, max_references=1, max_reference_file_bytes=1000))
    for references, expected in (
        ([{"time": 0.5, "image": good}, {"time": 1, "image": good}], "options.references: 2 references, over the "
         "limit of 1 (TINCT_MAX_REFERENCES)"),
        ([{"time": 0.5, "image": good}], f"options.references[0].image: {good}: {len(picture)} bytes, over the limit "
         "of 1000 for a reference picture (TINCT_MAX_REFERENCE_FILE_BYTES)"),
    ):
        with pytest.raises(JobSpecError, match="^job spec: " + re.escape(expected)):
            strict.submit(spec("s3://scans/reel.mkv", "s3://colour/bad/", model, references=references))
    with pytest.raises(JobSpecError, match="options.references: references belong to one film"):
        spec("s3://scans/stills/frame12.png", "s3://colour/bad/", model, references=[{"time": 0, "image": good}])
    assert not redis.client().keys("tinct:job:*")  # nothing was queued for any of them

    # tinct submit: the same checks, one line, nothing queued.
    for name, value in env_for_workers(redis, s3).items():
        monkeypatch.setenv(name, value)
    job_args = ["--model", str(model), "--render-size", "64", "--codec", "ffv1"]
    assert main(["submit", str(local), "-o", "s3://colour/cli/", "--reference", f"9={good}", *job_args]) == 2
    err = capsys.readouterr().err
    assert f"options.references[0].time: {local}: 9 s is outside the film (1.500 s long)" in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert main(["submit", str(local), "-o", "s3://colour/cli/", "--reference", "soon=x.png", *job_args]) == 2
    assert "--reference: time: not a time in seconds or frame:N: 'soon'" in capsys.readouterr().err

    # A film in an object store is probed by its planner: a time outside it fails the job before any work.
    start_worker("w")
    job_id, _ = client.submit(spec("s3://scans/reel.mkv", "s3://colour/late/", model,
                                   references=[{"time": 9, "image": good}]))
    record = wait_for_job(client, job_id)
    assert record.state == "failed"
    assert record.error == "s3://scans/reel.mkv: options.references[0].time: 9 s is outside the film (1.500 s long)"
    assert keys(s3, "colour") == []  # nothing under the output's name, no staging left


def test_submit_reference_and_bulk_reference_folders(reference_service, scene, tmp_path, monkeypatch, capsys):
    client, start_worker, s3, redis, model = reference_service
    clip, truth, picture, gray = scene
    for name, value in env_for_workers(redis, s3).items():
        monkeypatch.setenv(name, value)
    start_worker("w")
    job_args = ["--model", str(model), "--render-size", "64", "--codec", "ffv1"]
    # tinct submit with a local picture: workers read it where it is, as they read a local input.
    (tmp_path / "still.png").write_bytes(picture)
    put_object(s3, "s3://scans/one/reel.mkv", clip)
    assert main(["submit", "s3://scans/one/reel.mkv", "-o", "s3://colour/one/", "--reference",
                 f"frame:12={tmp_path / 'still.png'}", "--wait", *job_args]) == 0
    assert "succeeded" in capsys.readouterr().out
    (tmp_path / "one.mkv").write_bytes(get_object(s3, "s3://colour/one/reel.mkv"))
    assert json.loads(probe(tmp_path / "one.mkv").tag("tinct"))["references"] == 1

    # bulk: a's folder colours it, b has none, c's picture is gray, d's picture has no time for a name, e's is large.
    for name in "abcde":
        put_object(s3, f"s3://scans/box/{name}.mkv", clip)
    put_object(s3, "s3://scans/box/a.mkv.references/0.5.png", picture)
    put_object(s3, "s3://scans/box/c.mkv.references/frame_12.png", gray)
    put_object(s3, "s3://scans/box/d.mkv.references/soon.png", picture)
    put_object(s3, "s3://scans/box/e.mkv.references/0.5.png", picture + b"\0" * 4000)
    monkeypatch.setenv("TINCT_MAX_REFERENCE_FILE_BYTES", str(len(picture) + 100))
    assert main(["bulk", "s3://scans/box/", "-o", "s3://colour/box/", *job_args]) == 1
    out = capsys.readouterr().out
    assert "submitted 2" in out and "3 failed" in out and "skipped 0 unsupported" in out  # the pictures are no inputs
    assert ("s3://scans/box/c.mkv: job spec: options.references[0].image: "
            "s3://scans/box/c.mkv.references/frame_12.png: is gray") in out
    assert "s3://scans/box/d.mkv: s3://scans/box/d.mkv.references/soon.png: time: the name 'soon.png'" in out
    assert (f"s3://scans/box/e.mkv: s3://scans/box/e.mkv.references/0.5.png: references[0].image: "
            f"{len(picture) + 4000} bytes, over the limit of {len(picture) + 100}") in out
    deadline = time.monotonic() + 2 * JOB_TIMEOUT_S
    while [k for k in keys(s3, "colour") if k.startswith("box/")] != ["box/a.mkv", "box/b.mkv"]:
        assert time.monotonic() < deadline, keys(s3, "colour")
        time.sleep(0.5)
    films = {name: film_from(s3, f"s3://colour/box/{name}.mkv", tmp_path / f"{name}.mkv") for name in "ab"}
    assert psnr(films["a"][REFERENCE], truth[REFERENCE]) > psnr(films["b"][REFERENCE], truth[REFERENCE]) + 6.0
    assert json.loads(probe(tmp_path / "a.mkv").tag("tinct"))["references"] == 1
    # A rerun finds both jobs done: the folder's pictures give the same job id in bulk as at submission.
    assert main(["bulk", "s3://scans/box/", "-o", "s3://colour/box/", *job_args]) == 1
    assert "submitted 0, 2 already done" in capsys.readouterr().out


def test_an_event_sends_a_film_with_its_reference_folder_checked_as_bulk_does(reference_service, scene):
    client, _, s3, _, model = reference_service
    clip, _, picture, gray = scene
    for name in "ab":
        put_object(s3, f"s3://scans/events/{name}.mkv", clip)
    put_object(s3, "s3://scans/events/a.mkv.references/0.5.png", picture)
    put_object(s3, "s3://scans/events/b.mkv.references/frame_12.png", gray)
    events = [S3Event("scans", f"events/{name}.mkv", None, None, "ObjectCreated:Put") for name in "ab"]

    results = submit_events(client, events, "s3://colour/", spec("s3://scans/x.mkv", "s3://colour/", model).options,
                            client.settings.guidance_limits)

    [job] = results.jobs
    references = client.get(job.job_id).spec.options.references
    assert job.input == "s3://scans/events/a.mkv" and references[0]["time"] == "0.5" and len(references) == 1
    [(film, reason)] = results.rejected
    assert film == "s3://scans/events/b.mkv"
    assert reason.startswith("job spec: options.references[0].image: s3://scans/events/b.mkv.references/frame_12.png: "
                             "is gray")
