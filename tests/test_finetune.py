"""Fine-tuning on an archive's own collection, end to end against real components: the shipped model tuned on
colour photos in moto's S3 (over real HTTP) by ``python -m tools train``, published into an S3 model store by
``python -m tools promote``, and used by name by a real ``tinct worker`` (Celery on a real redis-server) and by
``tinct colorize``."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, is_model_name, load_checkpoint, resolve_checkpoint
from models.predictor import DecodeOptions
from tests.conftest import gradient_image
from tests.services import (
    WorkerProcess,
    env_for_workers,
    get_object,
    put_object,
    s3_settings,
    wait_for_job,
)
from tools import evaluate, promote
from tools import train as train_tool
from tools.datasets import PhotoBank, SourceSpec
from worker import cli
from worker.errors import ModelError
from worker.jobs import JobSpec
from worker.model_store import resolve_model
from worker.service import Service
from worker.settings import Settings
from worker.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
NAME = "archive-1950s"


def png(rgb: np.ndarray, gray: bool = False) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(rgb)
    (image.convert("L") if gray else image).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_collection(s3, prefix: str, count: int = 4) -> None:
    for i in range(count):
        put_object(s3, f"{prefix}p{i}.png", png(gradient_image(96, 96, seed=i)))


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Entry points read their settings from the environment: point this process's at the test services."""
    for name in list(os.environ):
        if name.startswith(("TINCT_S3_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def published_label(s3, uri: str, tmp_path: Path) -> str:
    local = tmp_path / f"published-{time.monotonic_ns()}.pt"
    local.write_bytes(get_object(s3, uri))
    return load_checkpoint(local).label


def description(data: bytes) -> str:
    return str(Image.open(io.BytesIO(data)).info.get("Description", ""))


def photo_job(model: str, output: str) -> JobSpec:
    return JobSpec.from_dict({"input": "s3://scans/a.png", "output": output,
                              "options": {"model": model, "render_size": 64}})


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tools", "train", "--steps", "3", "--batch-size", "2", "--crop", "64",
            "--warmup-steps", "1", "--threads", "1", *args]


def run_tool(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env | {"OMP_NUM_THREADS": "1"}, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


# --- the whole path: tune on S3 photos, publish, colorize by name ----------------------------------------------


def test_fine_tune_on_s3_photos_publish_and_a_worker_uses_it_by_name(tmp_path, redis_server, s3_server, monkeypatch):
    for bucket in ("photos", "models", "scans", "colour"):
        s3_server.make_bucket(bucket)
    colour_collection(s3_server, "s3://photos/colour-1950s/")
    tool_env = env_for_workers(s3_server=s3_server, base=os.environ, cache_dir=tmp_path / "tool-cache")

    # (a) python -m tools train --init default --data s3://...: the shipped model, tuned on the archive's photos.
    run_dir = tmp_path / "run"
    done = run_tool(train_command("--init", "default", "--data", "s3://photos/colour-1950s/", "--run-dir",
                                  str(run_dir)), tool_env)
    assert done.returncode == 0, done.stderr[-2000:]
    parent, child = load_checkpoint(DEFAULT_CHECKPOINT), load_checkpoint(run_dir / "model.pt")
    assert (child.model_name, child.config) == (parent.model_name, parent.config)
    assert child.provenance["init_from"]["label"] == parent.label
    assert child.provenance["init_from"]["checkpoint"] == "default"
    assert child.provenance["data"] == ["s3://photos/colour-1950s/"]
    assert child.provenance["data_sources"] == [{"source": "s3://photos/colour-1950s/", "photos": 4}]
    assert child.provenance["rebalance_lambda"] == parent.provenance["rebalance_lambda"]  # the parent's, unasked
    child_decode, parent_decode = DecodeOptions(**child.decode), DecodeOptions(**parent.decode)
    same = ("method", "temperature", "rebalance")  # the parent's decoding, unasked; the prior is the archive's own
    assert [getattr(child_decode, k) for k in same] == [getattr(parent_decode, k) for k in same]
    assert child_decode.ab_prior is not None and abs(sum(child_decode.ab_prior) - 1) < 1e-6
    assert child.sha256 != parent.sha256
    moved = max(float((child.state_dict[k].float() - v.float()).abs().max())
                for k, v in parent.state_dict.items() if v.is_floating_point())
    assert moved > 1e-4

    # Publish into the model store (python -m tools promote -o s3://...), as a release would.
    use_env(monkeypatch, env_for_workers(s3_server=s3_server))
    store = "s3://models/store/"
    assert promote.main([str(run_dir / "model.pt"), "-o", f"{store}{NAME}.pt"]) == 0
    tuned_label = published_label(s3_server, f"{store}{NAME}.pt", tmp_path)
    assert tuned_label == child.label != parent.label

    # (b) A real worker loads it by name from the store, and says so in the job and in the photo.
    env = env_for_workers(redis_server, s3_server, work_dir=tmp_path / "work", base=os.environ, engine="torch",
                          device="cpu", render_size=64, retry_backoff_s=0.5, s3_max_attempts=1, model_store=store,
                          cache_dir=tmp_path / "worker-cache")
    env["OMP_NUM_THREADS"] = "1"
    worker = WorkerProcess("w", env, tmp_path / "worker.log")
    try:
        put_object(s3_server, "s3://scans/a.png", png(gradient_image(64, 96, seed=7), gray=True))
        client = Service(s3_settings(s3_server, redis_url=redis_server.url))
        job_id, _ = client.submit(photo_job(NAME, "s3://colour/"))
        record = wait_for_job(client, job_id)
        assert record.state == "succeeded", (record.error, worker.log_tail())
        assert record.metrics["model"] == tuned_label
        assert f"model {tuned_label}" in description(get_object(s3_server, "s3://colour/a.png"))

        # Published again under the same name (here: the shipped weights): the next job fetches the new version
        # by its new ETag instead of reusing the copy or the engine it already has.
        assert promote.main([str(DEFAULT_CHECKPOINT), "-o", f"{store}{NAME}.pt"]) == 0
        republished = published_label(s3_server, f"{store}{NAME}.pt", tmp_path)
        assert republished != tuned_label
        job_id, _ = client.submit(photo_job(NAME, "s3://colour/v2/"))
        record = wait_for_job(client, job_id)
        assert record.state == "succeeded", (record.error, worker.log_tail())
        assert record.metrics["model"] == republished
        assert f"model {republished}" in description(get_object(s3_server, "s3://colour/v2/a.png"))
        assert len(list((tmp_path / "worker-cache" / "models" / NAME).glob("*.pt"))) == 2
    finally:
        worker.stop()


def test_an_unknown_model_name_fails_the_job_once_naming_the_model_and_the_store(tmp_path, redis_server, s3_server):
    for bucket in ("models", "scans", "colour"):
        s3_server.make_bucket(bucket)
    put_object(s3_server, "s3://scans/a.png", png(gradient_image(64, 96), gray=True))
    env = env_for_workers(redis_server, s3_server, work_dir=tmp_path / "work", base=os.environ, engine="torch",
                          device="cpu", render_size=64, retry_backoff_s=0.5, s3_max_attempts=1,
                          model_store="s3://models/store/", cache_dir=tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    worker = WorkerProcess("w", env, tmp_path / "worker.log")
    try:
        client = Service(s3_settings(s3_server, redis_url=redis_server.url))
        job_id, _ = client.submit(photo_job("no-such-archive", "s3://colour/"))
        record = wait_for_job(client, job_id)
        assert record.state == "failed"
        assert record.error == ("cannot load model no-such-archive: not in the model store s3://models/store/ "
                                "(no s3://models/store/no-such-archive.pt)")
        assert "; retry 1 in" not in worker.text()  # permanent: failed once, never retried
    finally:
        worker.stop()


# --- bad training input: one line naming the source, no traceback -----------------------------------------------


def test_an_empty_s3_prefix_is_a_one_line_error(tmp_path, s3_server):
    s3_server.make_bucket("photos")
    put_object(s3_server, "s3://photos/other/p.png", png(gradient_image(96, 96)))  # a neighbour, not under the prefix
    env = env_for_workers(s3_server=s3_server, base=os.environ, cache_dir=tmp_path / "cache")
    done = run_tool(train_command("--init", "default", "--data", "s3://photos/colour-1950s/", "--run-dir",
                                  str(tmp_path / "run")), env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "python -m tools train: error: s3://photos/colour-1950s/: no images under this prefix"
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("s3://no-such-bucket/colour/", "s3://no-such-bucket/colour/: no such bucket"),
        ("s3://photos/gray/", "s3://photos/gray/: no usable colour photos (2 images: 2 gray"),
        ("s3://photos/gray:2", "s3://photos/gray: no usable colour photos"),
    ],
)
def test_unusable_s3_sources_are_one_line_errors(tmp_path, s3_server, monkeypatch, capsys, data, reason):
    s3_server.make_bucket("photos")
    for i in range(2):
        put_object(s3_server, f"s3://photos/gray/g{i}.png", png(gradient_image(64, 64, seed=i), gray=True))
    use_env(monkeypatch, env_for_workers(s3_server=s3_server))
    with pytest.raises(SystemExit) as exc:
        train_tool.main(["--init", "default", "--data", data, "--run-dir", str(tmp_path / "run"), "--steps", "1",
                         "--threads", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert reason in err[-1] and "Traceback" not in "\n".join(err)


def test_s3_sources_keep_their_weights_and_names(s3_server):
    s3_server.make_bucket("photos")
    colour_collection(s3_server, "s3://photos/colour-1950s/", count=3)
    put_object(s3_server, "s3://photos/colour-1950s/notes.txt", b"not a photo")
    assert SourceSpec.parse("s3://photos/colour-1950s:2") == SourceSpec("s3://photos/colour-1950s", 2.0)
    assert SourceSpec.parse("s3://photos/scans:2/") == SourceSpec("s3://photos/scans:2/", 1.0)
    with Storage(s3_settings(s3_server)) as storage:
        bank = PhotoBank([SourceSpec.parse("s3://photos/colour-1950s:2")], short_side=40, storage=storage)
    assert bank.names == [f"s3://photos/colour-1950s/p{i}.png" for i in range(3)]
    assert bank.sampling_weights == [2.0] * 3
    assert all(min(image.shape[:2]) == 40 for image in bank.images)


def test_evaluate_scores_s3_photos_with_a_model_from_the_store(tmp_path, s3_server, tiny_checkpoint, monkeypatch,
                                                                capsys):
    """How an archive checks its tune on photos of its own: ``tools evaluate`` reads an s3:// prefix and a model
    name as ``tools train`` does."""
    s3_server.make_bucket("photos")
    colour_collection(s3_server, "s3://photos/colour-1950s/", count=3)
    put_object(s3_server, "s3://photos/colour-1950s/notes.txt", b"not a photo")
    put_object(s3_server, "s3://photos/colour-1950s/scan.png", png(gradient_image(64, 64, seed=9), gray=True))
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(tiny_checkpoint, store / f"{NAME}.pt")
    use_env(monkeypatch, env_for_workers(s3_server=s3_server, model_store=str(store), cache_dir=tmp_path / "cache"))
    out = tmp_path / "eval.json"
    assert evaluate.main(["--model", NAME, "--data", "s3://photos/colour-1950s/", "--render-size", "64",
                          "--engine", "torch", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [image["name"] for image in result["images"]] == [f"s3://photos/colour-1950s/p{i}.png" for i in range(3)]
    assert result["skipped"] == ["s3://photos/colour-1950s/scan.png"]  # gray: nothing to compare with
    assert [row["label"] for row in result["models"]] == [load_checkpoint(tiny_checkpoint).label]
    assert "3 photos from s3://photos/colour-1950s/" in capsys.readouterr().out
    for data, reason in (("s3://photos/empty/", "s3://photos/empty/: no images under this prefix"),
                         ("s3://no-such-bucket/x/", "s3://no-such-bucket/x/: no such bucket")):
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--model", NAME, "--data", data, "--render-size", "64"])
        assert exc.value.code == 2
        assert capsys.readouterr().err.strip() == f"python -m tools evaluate: error: {reason}"


# --- names: the rules, a folder store, the command line ---------------------------------------------------------


def test_what_counts_as_a_model_name():
    assert all(map(is_model_name, ["archive-1950s", "v2.1_final", "A"]))
    assert not any(map(is_model_name, ["default", "model.pt", "m.ONNX", "runs/x/model", "../x", ".hidden", "-x",
                                       "a b", "", None]))


def test_a_folder_store_fetches_by_name_and_again_when_republished(tmp_path, tiny_checkpoint,
                                                                    tiny_regression_checkpoint):
    store = tmp_path / "store"
    store.mkdir()
    settings = Settings(model_store=str(store), cache_dir=tmp_path / "cache")
    storage = Storage(settings)
    shutil.copy(tiny_checkpoint, store / f"{NAME}.pt")
    first = resolve_model(NAME, settings, storage)
    assert load_checkpoint(first).label == load_checkpoint(tiny_checkpoint).label
    assert resolve_model(NAME, settings, storage) == first  # cached: the same version is not copied again
    shutil.copy(tiny_regression_checkpoint, store / "next.pt")
    os.replace(store / "next.pt", store / f"{NAME}.pt")  # published again: a new version, fetched again
    second = resolve_model(NAME, settings, storage)
    assert second != first
    assert load_checkpoint(second).label == load_checkpoint(tiny_regression_checkpoint).label
    assert load_checkpoint(first).label == load_checkpoint(tiny_checkpoint).label  # the old copy is left intact
    for passthrough in ("default", str(tiny_checkpoint), "export.onnx"):
        assert resolve_model(passthrough, settings, storage) == passthrough
    with pytest.raises(ModelError, match=re.escape(f"cannot load model nope: not in the model store {store}")):
        resolve_model("nope", settings, storage)
    with pytest.raises(ModelError, match="needs a model store: set TINCT_MODEL_STORE"):
        resolve_model(NAME, Settings(cache_dir=tmp_path / "cache"), storage)
    assert resolve_checkpoint(NAME, [tmp_path / "empty", store]) == store / f"{NAME}.pt"  # models' own lookup
    with pytest.raises(CheckpointError, match="no model of that name"):
        resolve_checkpoint("nope", [store])


def test_settings_take_a_folder_or_s3_model_store():
    assert Settings.from_env({"TINCT_MODEL_STORE": "s3://models/store/"}).model_store == "s3://models/store/"
    assert Settings.from_env({}).model_store is None
    with pytest.raises(ValueError, match="TINCT_MODEL_STORE"):
        Settings(model_store="gs://models/")


def test_tinct_colorize_resolves_a_name_through_the_store(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(tiny_checkpoint, store / f"{NAME}.pt")
    (tmp_path / "in.png").write_bytes(png(gradient_image(48, 64), gray=True))
    monkeypatch.setenv("TINCT_MODEL_STORE", str(store))
    argv = ["colorize", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--engine", "torch",
            "--render-size", "64", "-q"]
    assert cli.main([*argv, "--model", NAME]) == 0
    label = load_checkpoint(tiny_checkpoint).label
    assert f"model {label}" in description((tmp_path / "out.png").read_bytes())
    assert cli.main([*argv, "--model", "nope", "--overwrite"]) == 2
    assert f"cannot load model nope: not in the model store {store}" in capsys.readouterr().err
