"""Colour hints in the service: ``options.hints`` validated up front and entering the job id, ``tinct submit --hints``,
``tinct bulk`` picking up ``<name>.hints.json`` sidecars, and a real worker honouring them (real redis-server, moto's
HTTP S3, ``tinct worker`` subprocesses)."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from models.color import delta_e_ciede2000_np, rgb_to_lab_np
from tests.services import (
    JOB_TIMEOUT_S,
    WorkerProcess,
    env_for_workers,
    get_object,
    put_object,
    s3_settings,
    wait_for_job,
)
from worker.cli import main
from worker.jobs import JobSpec, JobSpecError
from worker.media.images import read_provenance
from worker.service import Service

RED = "#b03a3a"
HINTS = {"points": [{"x": 20, "y": 30, "color": RED, "radius": 4}]}


def scene_png() -> bytes:
    """A dark object left of a bright one (L about 34 and 77), 128x64: a hint on the left must stay there."""
    gray = np.where(np.arange(128)[None, :] < 64, 80, 190).astype(np.uint8).repeat(64, axis=0)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def red_ab() -> np.ndarray:
    rgb = np.array([[[int(RED[i : i + 2], 16) / 255 for i in (1, 3, 5)]]])
    return rgb_to_lab_np(rgb)[0, 0, 1:]


def spec(input_uri: str, output: str, model, **options) -> JobSpec:
    return JobSpec.from_dict({"input": input_uri, "output": output,
                              "options": {"model": str(model), "render_size": 64, **options}})


@pytest.fixture
def hint_service(tmp_path, redis_server, s3_server, tiny_checkpoint):  # noqa: F811
    s3_server.make_bucket("scans")
    s3_server.make_bucket("colour")
    env = env_for_workers(redis_server, s3_server, work_dir=tmp_path / "work", base=os.environ, engine="torch",
                          device="cpu", render_size=64, retry_backoff_s=0.5, s3_max_attempts=1)
    env["OMP_NUM_THREADS"] = "1"
    worker = WorkerProcess("hints", env, tmp_path / "worker.log")
    yield Service(s3_settings(s3_server, redis_url=redis_server.url)), s3_server, redis_server, tiny_checkpoint
    worker.stop()


def test_hint_options_are_validated_up_front_and_enter_the_job_id(tiny_checkpoint):
    plain = spec("s3://scans/a.png", "s3://colour/", tiny_checkpoint)
    hinted = spec("s3://scans/a.png", "s3://colour/", tiny_checkpoint, hints=HINTS)
    moved = spec("s3://scans/a.png", "s3://colour/", tiny_checkpoint,
                 hints={"points": [{"x": 21, "y": 30, "color": RED, "radius": 4}]})
    ids = {s.job_id("etag", 10) for s in (plain, hinted, moved)}
    assert len(ids) == 3  # a corrected resubmission is a new job
    assert JobSpec.from_dict(hinted.to_dict()) == hinted  # stored and read back from Redis unchanged
    assert spec("s3://scans/a.png", "s3://colour/", tiny_checkpoint, hints={"points": []}).options.hints is None
    cases = {
        "options.hints.points[0].color: not an sRGB hex colour": {"points": [{"x": 1, "y": 1, "color": "blue"}]},
        "options.hints.regions[0].polygon: self-intersecting": {"regions": [
            {"polygon": [[0, 0], [20, 0], [0, 10], [20, 20]], "color": RED}]},
        "options.hints.points: 1001 hints, over the limit of 1000": {"points": [
            {"x": 1, "y": 1, "color": RED}] * 1001},
        "options.hints.labels: unknown field": {"labels": []},
    }
    for expected, hints in cases.items():
        with pytest.raises(JobSpecError, match="^job spec: " + expected.replace("[", r"\[").replace("]", r"\]")):
            spec("s3://scans/a.png", "s3://colour/", tiny_checkpoint, hints=hints)
    with pytest.raises(JobSpecError, match="options.hints: hints belong to one photo"):
        spec("s3://scans/box/", "s3://colour/", tiny_checkpoint, hints=HINTS)


def test_a_worker_honours_job_hints_and_fails_a_point_outside_the_photo(hint_service):
    client, s3, _, model = hint_service
    put_object(s3, "s3://scans/a.png", scene_png())
    job_id, _ = client.submit(spec("s3://scans/a.png", "s3://colour/", model, hints=HINTS))
    record = wait_for_job(client, job_id)
    assert record.state == "succeeded", record.error
    data = get_object(s3, "s3://colour/a.png")
    lab = rgb_to_lab_np(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255)
    assert delta_e_ciede2000_np(lab[28:33, 18:23], np.array([lab[30, 20, 0], *red_ab()])).max() < 3.0
    with Image.open(io.BytesIO(data)) as image:
        assert "with 1 colour hint" in image.text["Description"]

    outside = {"points": [{"x": 20, "y": 64, "color": RED}]}  # y = 64 is one row below the 64-row photo
    job_id, _ = client.submit(spec("s3://scans/a.png", "s3://colour/b/", model, hints=outside))
    record = wait_for_job(client, job_id)
    assert record.state == "failed"
    assert "s3://scans/a.png: options.hints.points[0].y: 64 is outside the photo (128x64" in \
        " ".join([record.error, *record.failed_pieces.values()])
    assert not any(key.startswith("b/") for key in _keys(s3, "colour"))


def _keys(s3, bucket: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_submit_hints_and_bulk_sidecars(hint_service, tmp_path, monkeypatch, capsys):
    client, s3, redis, model = hint_service
    for name, value in env_for_workers(redis, s3).items():
        monkeypatch.setenv(name, value)
    local = tmp_path / "p.png"
    local.write_bytes(scene_png())
    (tmp_path / "h.json").write_text(json.dumps({"points": [{"x": 200, "y": 5, "color": RED}]}))
    job_args = ["--model", str(model), "--render-size", "64"]
    # A local photo is checked at once: nothing is queued for hints that cannot fit it.
    assert main(["submit", str(local), "-o", "s3://colour/local/", "--hints", str(tmp_path / "h.json"), *job_args]) == 2
    assert f"{tmp_path / 'h.json'}: points[0].x: 200 is outside the photo (128x64" in capsys.readouterr().err
    (tmp_path / "h.json").write_text(json.dumps(HINTS))
    assert main(["submit", str(local), "-o", "s3://colour/local/", "--hints", str(tmp_path / "h.json"), "--wait",
                 *job_args]) == 0
    assert "succeeded" in capsys.readouterr().out
    with Image.open(io.BytesIO(get_object(s3, "s3://colour/local/p.png"))) as image:
        assert "with 1 colour hint" in image.text["Description"]

    for name in ("a", "b", "c"):
        put_object(s3, f"s3://scans/box/{name}.png", scene_png())
    put_object(s3, "s3://scans/box/a.png.hints.json", json.dumps(HINTS).encode())
    put_object(s3, "s3://scans/box/b.png.hints.json", b'{"points": [{"x": 1, "y": 1, "color": "#12"}]}')
    assert main(["bulk", "s3://scans/box/", "-o", "s3://colour/box/", *job_args]) == 1  # b's sidecar failed it
    out = capsys.readouterr().out
    assert "submitted 2" in out and "1 failed" in out and "skipped 0 unsupported" in out
    assert "s3://scans/box/b.png.hints.json: points[0].color: not an sRGB hex colour" in out
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while [k for k in _keys(s3, "colour") if k.startswith("box/")] != ["box/a.png", "box/c.png"]:
        assert time.monotonic() < deadline, _keys(s3, "colour")
        time.sleep(0.2)
    descriptions = {}
    for name in ("a", "c"):
        path = tmp_path / f"{name}.png"
        path.write_bytes(get_object(s3, f"s3://colour/box/{name}.png"))
        descriptions[name] = read_provenance(path)
    assert descriptions["a"].guidance == "1 colour hint" and descriptions["c"].guidance is None
    # A rerun finds both jobs done; a corrected sidecar makes b's job new.
    put_object(s3, "s3://scans/box/b.png.hints.json", json.dumps(HINTS).encode())
    assert main(["bulk", "s3://scans/box/", "-o", "s3://colour/box/", *job_args]) == 0
    assert "submitted 1, 2 already done" in capsys.readouterr().out
