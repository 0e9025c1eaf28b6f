"""``tinct serve`` end to end: a real redis-server, moto's HTTP S3, a real ``tinct worker`` and the API in its own
process, driven over HTTP with named tokens (tests.api_services). Submit, events, success, outputs, previews,
cancel, resubmission, uploads, folder results; then what must be refused, and what must never be shown."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api_services import MAX_UPLOAD_BYTES, S3_SECRET, ApiStack, api_stack, gray_png
from tests.media import gray_frames, moving_scene, write_clip
from tests.services import JOB_TIMEOUT_S, put_object


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_checkpoint) -> Iterator[ApiStack]:
    with api_stack(tmp_path_factory.mktemp("api"), tiny_checkpoint) as running:
        yield running


def job_spec(stack: ApiStack, input_uri: str, output: str, **options: object) -> dict:
    return {"input": input_uri, "output": output,
            "options": {"model": str(stack.model), "render_size": 64, **options}}


def events(client: httpx.Client, job_id: str) -> list[tuple[str, dict]]:
    """Every event of the job's stream, until the server ends it (when the job has finished)."""
    seen: list[tuple[str, dict]] = []
    name = "message"
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=JOB_TIMEOUT_S) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                seen.append((name, json.loads(line[5:])))
    return seen


def wait_finished(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")


def detail(response: httpx.Response) -> str:
    text = response.json()["detail"]
    assert isinstance(text, str) and "\n" not in text, text
    return text


def jpeg(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB")).astype(int)


def chroma(rgb: np.ndarray) -> float:
    return float(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean())


# ------------------------------------------------------------------------------------------------------ basics


def test_health_openapi_and_console_are_public_and_every_other_route_needs_a_token(stack):
    anonymous = stack.client(None)
    assert anonymous.get("/api/v1/health").json() == {"status": "ok", "redis": "ok"}
    spec = anonymous.get("/api/v1/openapi.json").json()
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events", "/api/v1/uploads",
            "/api/v1/jobs/{job_id}/previews"} <= set(spec["paths"])
    page = anonymous.get("/")
    assert page.status_code == 200 and "<title>Tinct console</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert anonymous.get("/static/console.js").status_code == 200
    for method, path in (("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/metrics"),
                         ("POST", "/api/v1/uploads?name=a.png"), ("GET", "/api/v1/jobs/" + "0" * 24)):
        response = anonymous.request(method, path)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", path
        assert detail(response) == "authorization: missing bearer token"
    wrong = httpx.get(f"{stack.url}/api/v1/jobs", headers={"Authorization": "Bearer " + "x" * 32})
    assert wrong.status_code == 401 and detail(wrong) == "authorization: invalid bearer token"
    basic = httpx.get(f"{stack.url}/api/v1/jobs", headers={"Authorization": "Basic " + stack.tokens["alice"]})
    assert basic.status_code == 401
    metrics = stack.client("alice").get("/api/v1/metrics")
    assert metrics.status_code == 200
    assert 'tinct_api_requests_total{method="GET",route="/api/v1/jobs",status="401"}' in metrics.text
    me = stack.client("alice").get("/api/v1/whoami").json()
    assert me["name"] == "alice" and me["results"] == "s3://colour/results/alice/" and me["uploads"] is True


# -------------------------------------------------------------------------------------------------------- jobs


def test_photo_job_submitted_followed_finished_with_outputs_previews_and_resubmission(stack):
    alice, bob, admin = stack.client("alice"), stack.client("bob"), stack.client("admin")
    put_object(stack.s3, "s3://scans/alice/a.png", gray_png(1, 240, 160))
    body = job_spec(stack, "s3://scans/alice/a.png", "s3://colour/alice/")
    submitted = alice.post("/api/v1/jobs", json=body)
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["created"] is True and job["state"] == "queued" and re.fullmatch(r"[0-9a-f]{24}", job["id"])

    stream = events(alice, job["id"])
    assert stream and all(name == "job" for name, _ in stream)
    assert stream[-1][1]["state"] == "succeeded"
    final = alice.get(f"/api/v1/jobs/{job['id']}").json()
    assert final["outputs"] == ["s3://colour/alice/a.png"] and final["progress"]["done"] == 1

    results = alice.get(f"/api/v1/jobs/{job['id']}/results").json()["results"]
    assert [(r["uri"], r["input"]) for r in results] == [("s3://colour/alice/a.png", "s3://scans/alice/a.png")]
    signed = httpx.get(results[0]["url"])  # a signed S3 URL: no token, no S3 credentials needed
    assert signed.status_code == 200 and chroma(np.asarray(Image.open(io.BytesIO(signed.content)).convert("RGB"))
                                                .astype(int)) > 0.5
    redirect = alice.get(f"/api/v1/jobs/{job['id']}/results/0")
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(stack.s3.endpoint_url)

    previews = alice.get(f"/api/v1/jobs/{job['id']}/previews").json()
    assert previews["kind"] == "image" and len(previews["previews"]) == 1
    pair = previews["previews"][0]
    before, after = jpeg(alice.get(pair["before"]).content), jpeg(alice.get(pair["after"]).content)
    assert before.shape == after.shape == (160, 240, 3)
    assert chroma(before) < 1.0 < chroma(after)  # before is the gray source, after has colour

    again = alice.post("/api/v1/jobs", json=body)
    assert again.status_code == 200 and again.json()["id"] == job["id"] and again.json()["created"] is False

    # Another token sees nothing of it; the admin token sees everything.
    for method, path in (("GET", ""), ("GET", "/events"), ("GET", "/previews"), ("GET", "/results"), ("DELETE", "")):
        refused = bob.request(method, f"/api/v1/jobs/{job['id']}{path}")
        assert refused.status_code == 403 and detail(refused).startswith("job:"), path
    assert job["id"] not in [j["id"] for j in bob.get("/api/v1/jobs").json()["jobs"]]
    assert job["id"] in [j["id"] for j in alice.get("/api/v1/jobs?state=succeeded").json()["jobs"]]
    assert job["id"] not in [j["id"] for j in alice.get("/api/v1/jobs?state=failed").json()["jobs"]]
    assert admin.get(f"/api/v1/jobs/{job['id']}").status_code == 200


def test_film_job_gives_a_strip_of_frames_and_a_queued_film_can_be_cancelled(stack, tmp_path):
    alice = stack.client("alice")
    clip = write_clip(tmp_path / "reel.mkv", gray_frames(moving_scene(24, 96, 64)), gop=6, bframes=0)
    put_object(stack.s3, "s3://scans/alice/reel.mkv", clip.path.read_bytes())
    job = alice.post("/api/v1/jobs", json=job_spec(stack, "s3://scans/alice/reel.mkv", "s3://colour/alice/films/",
                                                   codec="ffv1")).json()
    # A second film job, cancelled at once: whatever the worker had begun, it never completes.
    other = alice.post("/api/v1/jobs", json=job_spec(stack, "s3://scans/alice/reel.mkv", "s3://colour/alice/other/",
                                                     codec="ffv1")).json()
    cancelled = alice.delete(f"/api/v1/jobs/{other['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert events(alice, other["id"])[-1][1]["state"] == "cancelled"

    final = wait_finished(alice, job["id"])
    assert final["state"] == "succeeded", final["error"]
    assert final["progress"] == {**final["progress"], "unit": "frames", "done": 24, "total": 24}
    # The console asks for the list and every frame at once: concurrent requests must not trip over each other's
    # downloads of the film (a shared scratch file, deleted by one while another read it, failed frames at random).
    with ThreadPoolExecutor(16) as pool:
        lists = list(pool.map(lambda _: alice.get(f"/api/v1/jobs/{job['id']}/previews"), range(48)))
        assert [r.status_code for r in lists] == [200] * 48, [r.text for r in lists if r.status_code != 200]
        strip = lists[0].json()["previews"]
        sides = list(pool.map(alice.get, [pair[side] for pair in strip for side in ("before", "after")] * 2))
        assert [r.status_code for r in sides] == [200] * len(sides), [r.text for r in sides if r.status_code != 200]
    assert len(strip) == 6 and [p["time"] for p in strip] == sorted(p["time"] for p in strip)
    for pair in strip[:2]:
        before, after = jpeg(alice.get(pair["before"]).content), jpeg(alice.get(pair["after"]).content)
        assert before.shape == after.shape == (64, 96, 3) and chroma(before) < 1.0 < chroma(after)
    assert wait_finished(alice, other["id"])["state"] == "cancelled"
    assert alice.delete(f"/api/v1/jobs/{job['id']}").json()["state"] == "succeeded"  # a finished job is kept


def test_a_film_coloured_into_frames_lists_its_own_frames_and_previews_six_of_them(stack, tmp_path):
    alice = stack.client("alice")
    clip = write_clip(tmp_path / "reel.mkv", gray_frames(moving_scene(24, 96, 64)), gop=6, bframes=0)
    put_object(stack.s3, "s3://scans/alice/frames-reel.mkv", clip.path.read_bytes())
    put_object(stack.s3, "s3://colour/alice/frames/reel_0099.png", gray_png(1))  # another run's frame, left alone
    output = "s3://colour/alice/frames/reel_%04d.png"
    job = alice.post("/api/v1/jobs", json=job_spec(stack, "s3://scans/alice/frames-reel.mkv", output)).json()
    final = wait_finished(alice, job["id"])
    assert final["state"] == "succeeded", final["error"]
    assert final["outputs"] == [output] and final["metrics"]["frames"] == 24
    results = alice.get(f"/api/v1/jobs/{job['id']}/results").json()["results"]
    assert [r["name"] for r in results] == [f"reel_{i:04d}.png" for i in range(24)]
    assert not any("input" in r for r in results)  # a film's frames: no photo of their own to correct
    frame = np.asarray(Image.open(io.BytesIO(httpx.get(results[12]["url"]).content)).convert("RGB")).astype(int)
    assert frame.shape == (64, 96, 3) and chroma(frame) > 1.0
    strip = alice.get(f"/api/v1/jobs/{job['id']}/previews").json()["previews"]
    assert [pair["label"] for pair in strip] == [f"reel_{i:04d}.png" for i in (2, 6, 10, 14, 18, 22)]
    for pair in strip[:2]:
        before, after = jpeg(alice.get(pair["before"]).content), jpeg(alice.get(pair["after"]).content)
        assert before.shape == after.shape == (64, 96, 3) and chroma(before) < 1.0 < chroma(after)
        assert np.abs(before.mean(axis=-1) - after.mean(axis=-1)).mean() < 12  # the frame's own lightness, in gray


def test_the_models_a_job_may_name_are_the_shipped_one_and_the_stores(stack):
    models = stack.client("bob").get("/api/v1/models")
    assert models.status_code == 200
    assert [(m["name"], m["size"]) for m in models.json()["models"]] == [
        ("default", None), ("archive-1950s", stack.model.stat().st_size)]  # not the store's notes.txt
    assert stack.client(None).get("/api/v1/models").status_code == 401


# ----------------------------------------------------------------------------------------------------- uploads


def test_upload_lands_in_the_tokens_inbox_and_runs_into_its_results_folder(stack):
    alice, bob = stack.client("alice"), stack.client("bob")
    uploaded = alice.post("/api/v1/uploads", params={"name": "scan 01.png"}, content=gray_png(2))
    assert uploaded.status_code == 201, uploaded.text
    uri = uploaded.json()["uri"]
    assert re.fullmatch(r"s3://inbox/alice/[0-9-]+-[0-9a-f]{8}/scan 01\.png", uri)
    assert uploaded.json()["size"] == len(gray_png(2))
    job = alice.post("/api/v1/jobs", json=job_spec(stack, uri, "s3://colour/results/alice/")).json()
    final = wait_finished(alice, job["id"])
    assert final["state"] == "succeeded" and final["outputs"] == ["s3://colour/results/alice/scan 01.png"]
    refused = bob.post("/api/v1/jobs", json=job_spec(stack, uri, "s3://colour/bob/"))
    assert refused.status_code == 403 and detail(refused).startswith("input:")


def test_uploads_refuse_oversized_bodies_and_unsafe_names(stack):
    alice = stack.client("alice")
    too_big = b"\0" * (MAX_UPLOAD_BYTES + 1)
    declared = alice.post("/api/v1/uploads", params={"name": "big.png"}, content=too_big)
    assert declared.status_code == 413 and detail(declared).startswith("body:")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        for _ in range(8):
            yield b"\0" * (MAX_UPLOAD_BYTES // 4)

    streamed = alice.post("/api/v1/uploads", params={"name": "big.png"}, content=chunks())
    assert streamed.status_code == 413 and detail(streamed).startswith("body:")
    for name in ("../escape.png", "a/b.png", "..\\x.png", ".hidden.png", "notes.txt", "x" * 201 + ".png"):
        response = alice.post("/api/v1/uploads", params={"name": name}, content=gray_png())
        assert response.status_code == 422 and detail(response).startswith("name:"), name
    empty = alice.post("/api/v1/uploads", params={"name": "empty.png"}, content=b"")
    assert empty.status_code == 422 and detail(empty).startswith("body:")
    listed = stack.s3.client().list_objects_v2(Bucket="inbox").get("Contents", [])
    assert all(".." not in item["Key"] and item["Key"].startswith("alice/") for item in listed)


def test_folder_results_are_streamed_through_the_api(stack):
    carol = stack.client("carol")
    source = stack.folders["in"] / "c.png"
    source.write_bytes(gray_png(3))
    job = carol.post("/api/v1/jobs", json=job_spec(stack, str(source), str(stack.folders["out"]) + "/")).json()
    final = wait_finished(carol, job["id"])
    assert final["state"] == "succeeded", final["error"]
    result = carol.get(f"/api/v1/jobs/{job['id']}/results").json()["results"][0]
    assert result["url"] == f"/api/v1/jobs/{job['id']}/results/0"
    streamed = carol.get(result["url"])
    assert streamed.status_code == 200 and streamed.content == (stack.folders["out"] / "c.png").read_bytes()
    assert carol.get(f"/api/v1/jobs/{job['id']}/results/5").status_code == 404


def test_a_collections_results_are_its_own_photos_not_the_rest_of_its_output_folder(stack):
    alice = stack.client("alice")
    for name in ("b.png", "a.png", "notes.txt"):
        put_object(stack.s3, f"s3://scans/alice/batch/{name}", gray_png(7) if name.endswith(".png") else b"notes")
    put_object(stack.s3, "s3://scans/alice/batch/broken.png", b"not a PNG")
    put_object(stack.s3, "s3://colour/alice/shared/earlier.png", gray_png(8))  # another job's result, same folder
    job = alice.post("/api/v1/jobs", json=job_spec(stack, "s3://scans/alice/batch/", "s3://colour/alice/shared/"))
    final = wait_finished(alice, job.json()["id"])
    assert final["state"] == "succeeded" and final["failures"][0]["item"] == "s3://scans/alice/batch/broken.png"
    results = alice.get(f"/api/v1/jobs/{final['id']}/results").json()["results"]
    assert [r["uri"] for r in results] == ["s3://colour/alice/shared/a.png", "s3://colour/alice/shared/b.png"]
    assert [r["input"] for r in results] == ["s3://scans/alice/batch/a.png", "s3://scans/alice/batch/b.png"]
    previews = alice.get(f"/api/v1/jobs/{final['id']}/previews").json()["previews"]
    assert [p["label"] for p in previews] == ["a.png", "b.png"]


def test_a_collections_previews_come_a_page_at_a_time(stack):
    alice = stack.client("alice")
    for i in range(26):
        put_object(stack.s3, f"s3://scans/alice/paged/p{i:02d}.png", gray_png(20 + i, 32, 24))
    job = alice.post("/api/v1/jobs", json=job_spec(stack, "s3://scans/alice/paged/", "s3://colour/alice/paged/"))
    assert wait_finished(alice, job.json()["id"])["state"] == "succeeded"
    base = f"/api/v1/jobs/{job.json()['id']}/previews"
    first = alice.get(base).json()
    assert [p["index"] for p in first["previews"]] == list(range(24)) and first["next"] == 24
    second = alice.get(base, params={"start": first["next"]}).json()
    assert [(p["index"], p["label"]) for p in second["previews"]] == [(24, "p24.png"), (25, "p25.png")]
    assert (second["previews"][1]["input"], second["previews"][1]["output"]) == (  # the hint editor's target
        "s3://scans/alice/paged/p25.png", "s3://colour/alice/paged/p25.png")
    assert second["next"] is None
    after = alice.get(second["previews"][1]["after"])  # a later page's picture, by its own index
    assert after.status_code == 200 and jpeg(after.content).shape == (24, 32, 3)
    assert alice.get(f"{base}/26/after.jpg").status_code == 404


def test_a_jobs_results_download_as_one_zip_from_a_link_that_needs_no_token(stack):
    """The console's "download all": a collection's every result, its sub-folders kept, streamed as one ZIP from a
    link a browser follows without the token (a ticket: who, until when, and its HMAC)."""
    alice, anonymous = stack.client("alice"), stack.client(None)
    for name, body in (("a.png", gray_png(11)), ("sub/b.png", gray_png(12)), ("broken.png", b"not a PNG")):
        put_object(stack.s3, f"s3://scans/alice/zipped/{name}", body)
    job = alice.post("/api/v1/jobs", json=job_spec(stack, "s3://scans/alice/zipped/", "s3://colour/alice/zipped/"))
    assert wait_finished(alice, job.json()["id"])["state"] == "succeeded"
    link = alice.post(f"/api/v1/jobs/{job.json()['id']}/archive").json()
    assert link["expires_in_s"] > 0 and link["url"].startswith(f"/api/v1/jobs/{job.json()['id']}/archive.zip?")
    download = anonymous.get(link["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    assert download.headers["content-disposition"] == "attachment; filename*=UTF-8''zipped-colour.zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert archive.testzip() is None and archive.namelist() == ["a.png", "sub/b.png"]  # not the broken one
        for name in archive.namelist():
            assert archive.read(name) == stack.s3.client().get_object(
                Bucket="colour", Key=f"alice/zipped/{name}")["Body"].read(), name

    query = dict(parse_qsl(urlsplit(link["url"]).query))
    path = f"/api/v1/jobs/{job.json()['id']}/archive.zip"
    expired = int(time.time()) - 10
    signed_expired = hmac.new(hashlib.sha256(stack.tokens["alice"].encode()).digest(),
                              f"archive:{job.json()['id']}:{expired}".encode(), hashlib.sha256).hexdigest()
    for altered in ({**query, "sig": query["sig"][:-1] + ("0" if query["sig"][-1] != "0" else "1")},
                    {**query, "who": "bob"}, {**query, "expires": str(int(query["expires"]) + 1)},
                    {**query, "expires": str(expired), "sig": signed_expired}):
        refused = anonymous.get(path, params=altered)
        assert refused.status_code == 403 and detail(refused).startswith("sig: not a valid link"), altered
    assert stack.client("bob").post(f"/api/v1/jobs/{job.json()['id']}/archive").status_code == 403
    put_object(stack.s3, "s3://scans/alice/lone-broken.png", b"not a PNG")
    failed = alice.post("/api/v1/jobs", json=job_spec(stack, "s3://scans/alice/lone-broken.png", "s3://colour/alice/"))
    assert wait_finished(alice, failed.json()["id"])["state"] == "failed"
    nothing = alice.post(f"/api/v1/jobs/{failed.json()['id']}/archive")
    assert nothing.status_code == 409 and detail(nothing).startswith("job: ")


# ---------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("token", "input_uri", "output", "field"), [
    ("alice", "s3://scans/bob/x.png", "s3://colour/alice/", "input"),
    ("alice", "s3://scans/alice/x.png", "s3://colour/bob/", "output"),
    ("alice", "s3://scans/alice/../bob/x.png", "s3://colour/alice/", "input"),
    ("alice", "s3://scans/alice/x.png", "s3://colour/alice/../bob/", "output"),
    ("alice", "s3://scans/alice-evil/x.png", "s3://colour/alice/", "input"),
    ("alice", "/etc/passwd.png", "s3://colour/alice/", "input"),
    ("carol", "{in}/../out/c.png", "{out}/", "input"),
    ("carol", "{in}/c.png", "{out}/../in/", "output"),
    ("carol", "file://{in}/./c.png", "{out}/", "input"),
])
def test_inputs_and_outputs_outside_the_tokens_prefixes_are_forbidden(stack, token, input_uri, output, field):
    folders = {"in": str(stack.folders["in"]), "out": str(stack.folders["out"])}
    body = job_spec(stack, input_uri.format(**folders), output.format(**folders))
    response = stack.client(token).post("/api/v1/jobs", json=body)
    assert response.status_code == 403 and detail(response).startswith(f"{field}:"), response.text


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "body"),
    (b'["a", "list"]', "spec"),
    (b'{"output": "s3://colour/alice/"}', "input"),
    (b'{"input": "s3://scans/alice/a.png", "output": "s3://colour/alice/", "priority": 1}', "priority"),
    (b'{"input": "s3://scans/alice/a.png", "output": "s3://colour/alice/", "options": {"speed": 2}}',
     "options.speed"),
    (b'{"input": "s3://scans/alice/a.png", "output": "s3://colour/alice/", "options": {"smoothing": "x"}}',
     "options.smoothing"),
    (b'{"input": "s3://scans/alice/a.png", "output": "s3://colour/alice/", "kind": "audio"}', "kind"),
    (b'{"input": "s3://scans/alice/a.png", "output": "s3://colour/alice/", "options": {"format": "gif"}}',
     "options.format"),
    (b'{"input": "s3://scans/alice/a.png", "output": "s3://colour/alice/a.png", "options": {"format": "jpg"}}',
     "options.format"),
])
def test_malformed_and_unknown_fields_get_a_one_line_422_naming_the_field(stack, body, field):
    response = stack.client("alice").post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and detail(response).startswith(f"{field}:"), response.text


def test_bad_paths_and_queries_are_422_or_404(stack):
    alice = stack.client("alice")
    assert detail(alice.get("/api/v1/jobs/../../etc/passwd")).startswith(("job_id:", "Not Found"))
    bad_id = alice.get("/api/v1/jobs/not-a-job-id")
    assert bad_id.status_code == 422 and detail(bad_id).startswith("job_id:")
    missing = alice.get("/api/v1/jobs/" + "0" * 24)
    assert missing.status_code == 404 and detail(missing).startswith("job:")
    for query, field in (("state=bogus", "state"), ("limit=0", "limit"), ("limit=x", "limit"), ("cursor=-1", "cursor")):
        response = alice.get("/api/v1/jobs?" + query)
        assert response.status_code == 422 and detail(response).startswith(f"{field}:"), query
    side = alice.get("/api/v1/jobs/" + "0" * 24 + "/previews/0/secret.jpg")
    assert side.status_code == 422 and detail(side).startswith("side:")


def test_an_idle_connection_stays_open_longer_than_clients_keep_theirs(stack):
    """A client's pool keeps an idle connection for a while (httpx 5 s, proxies a minute); if the server closed it
    first, a request sent on it as it closes would be reset (a burst of hint previews over alice's pooled
    connections met that while both sides used 5 s). The same connection answers again after 6 s idle."""
    address = urlsplit(stack.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request("GET", "/api/v1/health")
        with connection.getresponse() as first:
            assert first.status == 200 and not first.will_close
            first.read()
        first_socket = connection.sock
        time.sleep(6)
        connection.request("GET", "/api/v1/health")
        with connection.getresponse() as again:
            assert again.status == 200 and connection.sock is first_socket  # not closed by the server, not reopened
    finally:
        connection.close()


# ----------------------------------------------------------------------------------------------- hint previews


def test_hint_preview_honours_a_colour_point_and_refuses_bad_hints_other_prefixes_and_floods(stack):
    alice = stack.client("alice")
    put_object(stack.s3, "s3://scans/alice/hinted.png", gray_png(5, 800, 600))
    options = {"model": str(stack.model), "render_size": 64}

    def preview(hints: dict, client: httpx.Client = alice, source: str = "s3://scans/alice/hinted.png"):
        return client.post("/api/v1/preview", json={"input": source, "hints": hints, "options": options})

    plain = preview({})
    assert plain.status_code == 200 and plain.headers["content-type"] == "image/jpeg"
    assert (plain.headers["x-photo-width"], plain.headers["x-photo-height"]) == ("800", "600")
    red = preview({"points": [{"x": 400, "y": 300, "color": "#d02010", "radius": 40}]})
    assert red.status_code == 200
    before, after = jpeg(plain.content), jpeg(red.content)
    assert before.shape == after.shape == (384, 512, 3)  # downscaled to 512 on the long side
    spot = after[182:202, 246:266].mean(axis=(0, 1))  # around the point, scaled by 512/800
    assert spot[0] - spot[1] > 20 and spot[0] - spot[2] > 20, spot  # red where the hint said red
    assert np.abs(before - after).mean() > 0.5  # and the preview changed

    outside = preview({"points": [{"x": 900, "y": 10, "color": "#d02010"}]})
    assert outside.status_code == 422 and detail(outside).startswith("hints.points[0].x:")
    bad_colour = preview({"points": [{"x": 9, "y": 10, "color": "red"}]})
    assert bad_colour.status_code == 422 and detail(bad_colour).startswith("hints.points[0].color:")
    elsewhere = preview({}, source="s3://scans/bob/x.png")
    assert elsewhere.status_code == 403 and detail(elsewhere).startswith("input:")
    unknown = alice.post("/api/v1/preview", json={"input": "s3://scans/alice/hinted.png", "size": 9})
    assert unknown.status_code == 422 and detail(unknown).startswith("size:")
    lightness = alice.get("/api/v1/preview/lightness", params={"input": "s3://scans/alice/hinted.png"})
    assert lightness.status_code == 200 and lightness.headers["x-photo-pages"] == "1"
    assert (lightness.headers["x-photo-width"], lightness.headers["x-photo-height"]) == ("800", "600")
    gray = jpeg(lightness.content)  # the picture the points are placed on: the same size as its preview, in gray
    assert gray.shape == before.shape and np.abs(gray[..., 0].astype(int) - gray[..., 2]).max() <= 2
    second = alice.get("/api/v1/preview/lightness", params={"input": "s3://scans/alice/hinted.png", "page": 2})
    assert second.status_code == 422 and detail(second) == (
        "input: s3://scans/alice/hinted.png: page 2: the photo is one picture, not a multi-page document")
    assert alice.get("/api/v1/preview/lightness", params={"input": "s3://scans/bob/x.png"}).status_code == 403
    bad_page = alice.get("/api/v1/preview/lightness", params={"input": "s3://scans/alice/hinted.png", "page": 0})
    assert bad_page.status_code == 422 and detail(bad_page).startswith("page: ")
    # A flood from one token is turned away at once (burst 5, then about one a second); another token is not.
    # (Sent together, they reach the limiter within milliseconds; the admitted ones then take turns at the model.)
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: preview({}), range(10)))
    codes = [response.status_code for response in responses]
    assert codes.count(429) >= 3 and set(codes) <= {200, 429}, codes
    refused = next(response for response in responses if response.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1 and detail(refused).startswith("preview: too many previews")
    carol_photo = stack.folders["in"] / "hinted.png"
    carol_photo.write_bytes(gray_png(6))
    assert preview({}, client=stack.client("carol"), source=str(carol_photo)).status_code == 200


def test_a_documents_pages_are_previewed_and_hinted_one_at_a_time_each_in_its_own_pixels(stack):
    bob = stack.client("bob")

    def admitted(send: Callable[[], httpx.Response]) -> httpx.Response:
        """``send``'s answer once the preview rate limit lets it through (the limit is tested above)."""
        while (response := send()).status_code == 429:
            time.sleep(float(response.headers["retry-after"]))
        return response

    def lightness(**params) -> httpx.Response:
        return admitted(lambda: bob.get("/api/v1/preview/lightness", params={"input": album, **params}))

    def preview(**body) -> httpx.Response:
        return admitted(lambda: bob.post("/api/v1/preview", json={"input": album, "options": options, **body}))

    album, options = "s3://scans/bob/album.tif", {"model": str(stack.model), "render_size": 64}
    pages_of = io.BytesIO()  # page 1 60x40 and lighter, page 2 50x64
    Image.fromarray(np.full((40, 60), 120, np.uint8)).save(
        pages_of, format="TIFF", save_all=True, append_images=[Image.fromarray(np.full((64, 50), 90, np.uint8))])
    put_object(stack.s3, album, pages_of.getvalue())
    first, second = lightness(), lightness(page=2)
    assert first.status_code == second.status_code == 200
    assert [(r.headers["x-photo-width"], r.headers["x-photo-height"], r.headers["x-photo-pages"])
            for r in (first, second)] == [("60", "40", "2"), ("50", "64", "2")]
    assert jpeg(first.content).shape == (40, 60, 3) and jpeg(second.content).shape == (64, 50, 3)
    assert jpeg(first.content).mean() - jpeg(second.content).mean() > 10  # each page's own lightness

    hinted = preview(page=2, hints={"points": [{"x": 25, "y": 50, "color": "#2040d0", "radius": 20}]})
    assert hinted.status_code == 200 and hinted.headers["x-photo-pages"] == "2"
    blue = jpeg(hinted.content)[40:60, 15:35].astype(int).mean(axis=(0, 1))
    assert blue[2] - blue[0] > 20 and blue[2] - blue[1] > 10, blue  # page 2's own pixels: blue where hinted
    for body, expected in (
            ({"page": 3}, f"input: {album}: page 3: the document has 2 pages"),
            ({"page": 1, "hints": {"points": [{"x": 25, "y": 50, "color": "#2040d0"}]}},  # page 1 is 40 high
             "hints.points[0].y: 50 is outside the photo (60x40: y from 0 to 39)"),
            ({"hints": {"pages": {"2": {"points": [{"x": 1, "y": 1, "color": "#2040d0"}]}}}},
             "hints.pages: a preview shows one page: give the points and regions of the page it shows, and that "
             "page's number as page"),
            ({"page": "2"}, 'page: a page number from 1, got "2"'),
            ({"page": 0}, "page: a page number from 1, got 0")):
        refused = preview(**body)
        assert refused.status_code == 422 and detail(refused) == expected, refused.text
    beyond = lightness(page=3)
    assert beyond.status_code == 422 and detail(beyond) == f"input: {album}: page 3: the document has 2 pages"


def test_a_job_resubmitted_with_hints_from_the_editor_is_a_new_job_that_honours_them(stack):
    alice = stack.client("alice")
    put_object(stack.s3, "s3://scans/alice/corrected.png", gray_png(7, 320, 240))
    body = job_spec(stack, "s3://scans/alice/corrected.png", "s3://colour/alice/corrected/")
    plain = alice.post("/api/v1/jobs", json=body).json()
    assert wait_finished(alice, plain["id"])["state"] == "succeeded"  # before the next job writes the same key
    hints = {"points": [{"x": 160, "y": 120, "color": "#d02010", "radius": 30}]}
    hinted = alice.post("/api/v1/jobs", json={**body, "options": {**body["options"], "hints": hints}})
    assert hinted.status_code == 201 and hinted.json()["id"] != plain["id"]
    assert hinted.json()["options"]["hints"]["points"][0] == {"x": 160, "y": 120, "color": "#d02010", "radius": 30}
    final = wait_finished(alice, hinted.json()["id"])
    assert final["state"] == "succeeded", final["error"]
    result = np.asarray(Image.open(io.BytesIO(httpx.get(
        alice.get(f"/api/v1/jobs/{final['id']}/results").json()["results"][0]["url"]).content)).convert("RGB"))
    spot = result[110:130, 150:170].astype(int).mean(axis=(0, 1))
    assert spot[0] - spot[1] > 20 and spot[0] - spot[2] > 20, spot
    outside = alice.post("/api/v1/jobs", json={**body, "options": {**body["options"], "hints": {"points": [
        {"x": 1, "y": 2, "color": "blue"}]}}})
    assert outside.status_code == 422 and detail(outside).startswith("options.hints.points[0].color:")


def test_a_film_job_with_references_is_a_new_job_and_bad_references_are_refused_naming_the_field(stack, tmp_path):
    alice = stack.client("alice")
    colour = list(moving_scene(12, 96, 64))
    clip = write_clip(tmp_path / "guided.mkv", gray_frames(colour), gop=6, bframes=0)
    put_object(stack.s3, "s3://scans/alice/guided.mkv", clip.path.read_bytes())
    still = io.BytesIO()
    Image.fromarray(colour[6]).save(still, format="PNG")
    put_object(stack.s3, "s3://scans/alice/stills/6.png", still.getvalue())
    put_object(stack.s3, "s3://scans/alice/stills/gray.png", gray_png(8))
    body = job_spec(stack, "s3://scans/alice/guided.mkv", "s3://colour/alice/guided/", codec="ffv1")

    def with_references(references: list) -> dict:
        return {**body, "options": {**body["options"], "references": references}}

    guided = alice.post("/api/v1/jobs", json=with_references([{"time": "frame:6",
                                                                "image": "s3://scans/alice/stills/6.png"}]))
    assert guided.status_code == 201, guided.text
    reference = guided.json()["options"]["references"][0]
    assert reference["time"] == "frame:6" and len(reference["sha256"]) == 64  # the picture's bytes: in the job id
    plain = alice.post("/api/v1/jobs", json=body)
    assert plain.status_code == 201 and plain.json()["id"] != guided.json()["id"]
    alice.delete(f"/api/v1/jobs/{plain.json()['id']}")
    final = wait_finished(alice, guided.json()["id"])
    assert final["state"] == "succeeded", final["error"]

    refused = {
        "s3://scans/bob/6.png": (403, "options.references[0].image: s3://scans/bob/6.png is outside the input"),
        "s3://scans/alice/stills/gray.png": (422, "options.references[0].image: s3://scans/alice/stills/gray.png: "
                                             "is gray"),
        "s3://scans/alice/stills/none.png": (422, "options.references[0].image: s3://scans/alice/stills/none.png: "
                                             "no such object"),
    }
    for image, (status, expected) in refused.items():
        response = alice.post("/api/v1/jobs", json=with_references([{"time": 0.25, "image": image}]))
        assert response.status_code == status and detail(response).startswith(expected), response.text
    late = alice.post("/api/v1/jobs", json=with_references([{"time": "soon", "image": "s3://scans/alice/stills/6.png"}]))
    assert late.status_code == 422 and detail(late).startswith("options.references[0].time: not a time"), late.text


def test_no_token_or_s3_secret_in_any_response_log_line_or_page(stack):
    """Runs last in this module, after every route above has answered and logged."""
    alice, anonymous = stack.client("alice"), stack.client(None)
    jobs = alice.get("/api/v1/jobs?limit=200").json()["jobs"]
    bodies = [anonymous.get(path).text for path in ("/", "/static/console.js", "/static/console.css",
                                                    "/api/v1/openapi.json", "/api/v1/health")]
    bodies += [alice.get(path).text for path in ("/api/v1/jobs", "/api/v1/whoami", "/api/v1/metrics")]
    for job in jobs:
        for suffix in ("", "/results", "/previews"):
            bodies.append(alice.get(f"/api/v1/jobs/{job['id']}{suffix}").text)
    logs = stack.logs()
    assert "GET /api/v1/jobs" in logs  # the access log was on, so request lines were there to leak
    for secret in [*stack.tokens.values(), S3_SECRET]:
        assert all(secret not in body for body in bodies)
        assert secret not in logs


# ------------------------------------------------------------------------------------------------- tinct serve


def test_serve_refuses_to_start_without_a_token_unless_loopback_and_insecure_local(monkeypatch, capsys, tmp_path):
    from worker.cli import main

    for name in ("TINCT_API_TOKEN", "TINCT_API_TOKENS_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--port", "1"]) == 2
    assert "no token: set TINCT_API_TOKEN or TINCT_API_TOKENS_FILE" in capsys.readouterr().err
    assert main(["serve", "--insecure-local", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "only on a loopback address, not 0.0.0.0" in capsys.readouterr().err
    broken = tmp_path / "tokens.json"
    broken.write_text(json.dumps({"tokens": [{"name": "x", "token": "short", "inputs": []}]}))
    monkeypatch.setenv("TINCT_API_TOKENS_FILE", str(broken))
    assert main(["serve", "--port", "1"]) == 2
    error = capsys.readouterr().err
    assert "tokens[0].token: a string of at least 16 characters" in error and "short" not in error  # no value shown
    assert main(["serve", "--insecure-local", "--keep-alive", "0", "--port", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: --keep-alive: expected seconds above 0, got 0")


def test_without_redis_the_api_answers_503_and_the_cli_one_line_naming_the_queue(monkeypatch, capsys, tmp_path):
    """Redis down or restarting: every route that needs it says so (503, the queue named, never its password, and
    when to retry) instead of a bare 500, and ``tinct status/jobs/cancel`` print one line, status 1."""
    from tools.local_services import env_for_workers, free_port
    from tools.serve_local import ApiServer
    from worker.cli import main

    port = free_port()  # nothing listens there
    token = "t0ken-for-a-missing-redis-1234"
    env = env_for_workers(base=os.environ, cache_dir=tmp_path / "cache", work_dir=tmp_path / "work")
    env |= {"TINCT_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0", "TINCT_API_TOKEN": token}
    reason = f"job queue 127.0.0.1:{port}/0: Error 111 connecting to 127.0.0.1:{port}. Connection refused."
    server = ApiServer(env, tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:  # health is 503 without Redis, so wait for any answer rather than wait_ready's 200
                try:
                    assert client.get("/api/v1/health").status_code == 503
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and server.process.poll() is None, server.log_tail()
                    time.sleep(0.2)
            job_id = "0123456789abcdef01234567"
            for method, path in (("GET", "/api/v1/jobs"), ("GET", f"/api/v1/jobs/{job_id}"),
                                 ("DELETE", f"/api/v1/jobs/{job_id}"), ("GET", f"/api/v1/jobs/{job_id}/events")):
                response = client.request(method, path)
                assert response.status_code == 503, (path, response.text)
                assert response.json() == {"detail": f"queue: {reason}; retry later"}
                assert response.headers["retry-after"] == "5"
    finally:
        server.stop()
    assert "hunter2" not in server.text() and "Traceback" not in server.text()

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for argv in (["status", job_id], ["jobs"], ["cancel", job_id]):
        assert main(argv) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"tinct: error: {reason}"]


def test_a_job_event_stream_outlives_a_redis_restart(tmp_path):
    """A console following a job keeps its stream while Redis restarts from its append-only file: one comment says
    the queue is away, and the events carry on (here: the job cancelled once Redis is back ends the stream)."""
    from tools.local_services import RedisServer, env_for_workers
    from tools.serve_local import ApiServer

    token = "t0ken-for-a-restarting-redis-1"
    photo = tmp_path / "in" / "a.png"
    photo.parent.mkdir()
    photo.write_bytes(gray_png(seed=3))
    with RedisServer(tmp_path / "redis") as redis_server:
        env = env_for_workers(redis_server, base=os.environ, cache_dir=tmp_path / "cache", work_dir=tmp_path / "work")
        server = ApiServer(env | {"TINCT_API_TOKEN": token}, tmp_path / "serve.log")
        try:
            server.wait_ready()
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                              timeout=60) as client:
                job = client.post("/api/v1/jobs", json={"input": str(photo), "output": str(tmp_path / "out.png")})
                assert job.status_code == 201, job.text
                job_id, lines = job.json()["id"], []
                with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
                    stream = response.iter_lines()
                    lines += _lines_until(stream, "data:")  # the job as it stands: queued (no worker here)
                    redis_server.stop()
                    lines += _lines_until(stream, ": queue unreachable")
                    redis_server.start()
                    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 200
                    lines += list(stream)  # until the server ends it: the job has finished
        finally:
            server.stop()
    states = [json.loads(line[5:])["state"] for line in lines if line.startswith("data:")]
    assert states[0] == "queued" and states[-1] == "cancelled", lines
    assert sum(line.startswith(": queue unreachable") for line in lines) == 1
    assert "Traceback" not in server.text()


def _lines_until(stream: Iterator[str], prefix: str) -> list[str]:
    lines = []
    for line in stream:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the stream ended before a line starting {prefix!r}: {lines}")
