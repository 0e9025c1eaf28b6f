"""Films downloaded to a worker node's disk, shared by its worker processes and kept within a byte budget.

    cache = InputCache(work_dir / "inputs", budget_bytes=40 * 1024**3)
    held = cache.take(info, lambda path: storage.download(info.uri, path))  # downloaded once per node and version
    probe_film(held.path, ...)                                               # held: no process removes it meanwhile
    held.release()

A film's segments are coloured by many tasks, often on one node, so its download is kept and shared. What is kept
is bounded: before a download, the films used least recently are removed until the new one fits in the budget. A
film some process holds is never removed (a shared ``flock`` on it; removal takes the exclusive one, without
waiting), so the budget is a soft one: a node colouring more films at once than fit keeps them all until they are
let go. "Used" is the file's access time, which ``take`` sets itself (many disks are mounted ``noatime``).
Downloads still being written (``models.files`` partial names) count against the budget; one unwritten for
STALE_PARTIAL_S was left by a download that died (a killed worker), and is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from models.files import PARTIAL_SUFFIX
from worker.storage import ObjectInfo

logger = logging.getLogger(__name__)

# A download writes its partial file every few seconds, and gives up after a minute without data (the storage read
# timeout); one unwritten for this long belongs to no download.
STALE_PARTIAL_S = 600


@dataclass
class HeldInput:
    """A downloaded input that this process holds (a shared lock on it): no process removes it until ``release``."""

    path: Path
    _fd: int

    def present(self) -> bool:
        """Whether ``path`` is still the file held (an operator clearing the folder takes it away regardless)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def used(self) -> None:
        """Mark it used now (its access time; its modification time stays), for the least-recently-used order."""
        with contextlib.suppress(OSError):
            os.utime(self.path, ns=(time.time_ns(), os.fstat(self._fd).st_mtime_ns))

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the file lets go of its lock
            self._fd = -1


class InputCache:
    """The films downloaded to ``folder`` on this node, kept within ``budget_bytes`` as the module says."""

    def __init__(self, folder: Path, budget_bytes: int) -> None:
        self.folder = folder
        self.budget_bytes = budget_bytes

    def path_for(self, info: ObjectInfo) -> Path:
        """Where a version of an object is kept: named by its version, with its suffix (FFmpeg reads some by it)."""
        return self.folder / f"{info.version_key()}{PurePosixPath(info.uri).suffix.lower()}"

    def take(self, info: ObjectInfo, download: Callable[[Path], object]) -> HeldInput:
        """The local copy of ``info``'s version, held; ``download`` (which writes a file atomically) makes it if the
        node has none, after room is made for it."""
        path = self.path_for(info)
        while True:
            if not path.exists():
                self.make_room(info.size)
                download(path)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # removed by another process between the download and the open: fetched again
            fcntl.flock(fd, fcntl.LOCK_SH)
            held = HeldInput(path, fd)
            if held.present():  # not removed (or replaced) between the open and the lock
                held.used()
                return held
            held.release()

    def make_room(self, size: int) -> None:
        """Remove the least recently used films no process holds until ``size`` more bytes fit in the budget."""
        entries = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as listing:
            for entry in listing:
                with contextlib.suppress(FileNotFoundError):  # removed by another process meanwhile
                    if entry.is_file():
                        entries.append((entry, entry.stat()))
        used = 0
        films = []
        for entry, stat in entries:
            if entry.name.endswith(PARTIAL_SUFFIX) and time.time() - stat.st_mtime > STALE_PARTIAL_S:
                with contextlib.suppress(FileNotFoundError):  # left by a download that died
                    os.unlink(entry.path)
                continue
            used += stat.st_size
            if not entry.name.endswith(PARTIAL_SUFFIX):  # a download in progress stays
                films.append((entry, stat))
        for entry, stat in sorted(films, key=lambda item: item[1].st_atime_ns):
            if used + size <= self.budget_bytes:
                return
            if _remove_unless_held(Path(entry.path)):
                used -= stat.st_size
                logger.info("removed the film copy %s (%d MB), unused for %.0f s, to keep %s within %d MB",
                            entry.name, stat.st_size // 2**20, time.time() - stat.st_atime, self.folder,
                            self.budget_bytes // 2**20)
        if entries and used + size > self.budget_bytes:
            logger.warning("%s will hold %d MB, over its budget of %d MB (TINCT_INPUT_CACHE_BYTES): the films in it "
                           "are in use", self.folder, (used + size) // 2**20, self.budget_bytes // 2**20)


def _remove_unless_held(path: Path) -> bool:
    """Remove ``path`` if no process holds it; whether it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            return False  # replaced by a fresh download meanwhile
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)
