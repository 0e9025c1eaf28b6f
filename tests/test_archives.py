"""A job's results as one streamed ZIP (worker.api.archives): names, bytes, and a stream cut short never reads whole."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from worker.api.archives import entry_names, stream_zip, ticket, ticket_holder
from worker.api.auth import Principal
from worker.errors import BadInputError
from worker.settings import Settings
from worker.storage import Storage


def test_entries_are_named_by_their_paths_under_the_output_folder_once_each() -> None:
    uris = ["s3://c/out/a.png", "s3://c/out/box/b.png", "s3://c/elsewhere/a.png", "s3://c/other/a.png"]
    assert entry_names("s3://c/out/", uris) == [
        ("a.png", uris[0]), ("box/b.png", uris[1]), ("a (2).png", uris[2]), ("a (3).png", uris[3])]


def test_the_zip_streams_each_file_in_pieces_and_reads_back_byte_for_byte(tmp_path: Path) -> None:
    big, small = tmp_path / "big.tif", tmp_path / "small.png"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several of read_chunks' 1 MiB pieces
    small.write_bytes(b"small")
    pieces = list(stream_zip(Storage(Settings()), [("scans/big.tif", str(big)), ("small.png", str(small))]))
    assert len(pieces) > 4  # handed on as it was written, not held whole
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as archive:
        assert archive.testzip() is None and archive.namelist() == ["scans/big.tif", "small.png"]
        assert archive.read("scans/big.tif") == big.read_bytes() and archive.read("small.png") == b"small"
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())


def test_a_file_gone_midway_ends_the_stream_without_the_closing_directory(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"a" * 1000)
    pieces = []
    with pytest.raises(BadInputError, match="gone.png"):
        for piece in stream_zip(Storage(Settings()), [("a.png", str(tmp_path / "a.png")),
                                                      ("gone.png", str(tmp_path / "gone.png"))]):
            pieces.append(piece)
    with pytest.raises(zipfile.BadZipFile):  # what the client was sent is no ZIP any reader takes for whole
        zipfile.ZipFile(io.BytesIO(b"".join(pieces)))


def test_a_ticket_holds_for_its_job_its_holder_and_its_time_only() -> None:
    alice, bob = Principal("alice", digest=b"a" * 32), Principal("bob", digest=b"b" * 32)
    signature = ticket(alice, "0" * 24, 2000)
    assert ticket_holder([alice, bob], "alice", "0" * 24, 2000, signature, now=1999) is alice
    assert ticket_holder([alice, bob], "alice", "0" * 24, 2000, signature, now=2001) is None  # expired
    assert ticket_holder([alice, bob], "bob", "0" * 24, 2000, signature, now=1999) is None
    assert ticket_holder([alice, bob], "alice", "1" * 24, 2000, signature, now=1999) is None
    assert ticket_holder([alice, bob], "carol", "0" * 24, 2000, signature, now=1999) is None
