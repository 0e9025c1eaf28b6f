"""The films a worker node keeps on its disk: within a byte budget, least recently used out first, never one that a
worker process holds (the real ``flock`` between real processes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.files import PARTIAL_SUFFIX, atomic_output
from tests.media import gray_frames, moving_scene, write_clip
from tests.services import put_object
from tools.local_services import s3_settings
from worker.input_cache import STALE_PARTIAL_S, InputCache
from worker.storage import ObjectInfo
from worker.work import FILMS_KEPT, Runtime


class Downloads:
    """What the cache asked to have downloaded: each call writes ``size`` bytes atomically, as Storage.download does."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.made: list[str] = []

    def __call__(self, path: Path) -> None:
        self.made.append(path.name)
        with atomic_output(path) as out:
            out.write(b"\0" * self.size)


def film(index: int) -> ObjectInfo:
    return ObjectInfo(f"s3://scans/film{index}.mkv", 100, f"etag{index}", None)


def kept(cache: InputCache) -> set[str]:
    return {path.name for path in cache.folder.iterdir()}


def test_films_over_the_budget_go_least_recently_used_first_and_held_ones_stay(tmp_path):
    cache = InputCache(tmp_path / "inputs", budget_bytes=250)  # room for two
    download = Downloads(100)
    cache.take(film(0), download).release()
    in_use = cache.take(film(1), download)
    cache.take(film(0), download).release()  # used again, and not downloaded again: film 1 is now the older
    assert download.made == [cache.path_for(film(0)).name, cache.path_for(film(1)).name]
    cache.take(film(2), download).release()
    # Film 1 is the least recently used, but held: film 0 goes.
    assert kept(cache) == {cache.path_for(film(1)).name, cache.path_for(film(2)).name}
    in_use.release()
    cache.take(film(3), download).release()
    assert kept(cache) == {cache.path_for(film(2)).name, cache.path_for(film(3)).name}


def test_a_film_another_process_holds_is_kept_over_the_budget_until_it_lets_go(tmp_path, caplog):
    cache = InputCache(tmp_path / "inputs", budget_bytes=150)
    download = Downloads(100)
    cache.take(film(0), download).release()
    holder = subprocess.Popen(  # another worker process on the node, colouring film 0
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); sys.stdin.read()", str(cache.path_for(film(0)))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cache.take(film(1), download).release()
        assert kept(cache) == {cache.path_for(film(0)).name, cache.path_for(film(1)).name}
        assert "over its budget of 0 MB (TINCT_INPUT_CACHE_BYTES): the films in it are in use" in caplog.text
    finally:
        holder.communicate("")  # it exits, and its lock goes with it
    cache.take(film(2), download).release()
    assert kept(cache) == {cache.path_for(film(2)).name}


def test_a_download_that_died_is_removed_and_one_in_progress_is_not(tmp_path):
    cache = InputCache(tmp_path / "inputs", budget_bytes=300)  # room for the new film once the dead one is gone
    download = Downloads(100)
    cache.take(film(0), download).release()
    dead = cache.folder / f".film1.mkv.4242-0a0b{PARTIAL_SUFFIX}"  # a worker killed mid-download
    writing = cache.folder / f".film2.mkv.4343-0c0d{PARTIAL_SUFFIX}"
    for partial in (dead, writing):
        partial.write_bytes(b"\0" * 100)
    stale = time.time() - STALE_PARTIAL_S - 60
    os.utime(dead, (stale, stale))
    cache.take(film(3), download).release()
    assert kept(cache) == {cache.path_for(film(0)).name, writing.name, cache.path_for(film(3)).name}


@pytest.fixture
def stored_films(s3_server, tmp_path) -> list[str]:
    s3_server.make_bucket("scans")
    uris = []
    for index in range(FILMS_KEPT + 2):
        clip = write_clip(tmp_path / f"film{index}.mkv", gray_frames(moving_scene(4, 32, 24, seed=index)), fps=24)
        put_object(s3_server, f"s3://scans/film{index}.mkv", clip.path.read_bytes())
        uris.append(f"s3://scans/film{index}.mkv")
    return uris


def test_a_worker_keeps_the_films_it_is_colouring_and_lets_the_node_remove_the_rest(s3_server, stored_films,
                                                                                     tmp_path):
    rt = Runtime(s3_settings(s3_server, work_dir=tmp_path / "work", input_cache_bytes=1))  # room only for films in use
    inputs = tmp_path / "work" / "inputs"

    def copies(uris: list[str]) -> set[str]:
        return {rt.inputs.path_for(rt.storage.stat(uri)).name for uri in uris}

    for uri in stored_films:
        assert rt.film(uri).frames == 4
    # The process keeps its last FILMS_KEPT films and holds their copies. The first, let go of when the fifth came,
    # was removed to make room for the sixth; the second, let go of just now, stays until a download needs its room.
    assert {path.name for path in inputs.iterdir()} == copies(stored_films[1:])
    assert rt.film(stored_films[-1]) is rt.film(stored_films[-1])  # probed once while kept
    shutil.rmtree(inputs)  # an operator clearing the node's disk under a running worker
    assert rt.film(stored_films[-1]).frames == 4
    assert {path.name for path in inputs.iterdir()} == copies(stored_films[-1:])
