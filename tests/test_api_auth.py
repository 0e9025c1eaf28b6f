"""Bearer tokens and prefixes (worker.api.auth) on their own: which URIs a token may touch, how tokens files fail."""

from __future__ import annotations

import json

import pytest

from worker.api.auth import ADMIN, TokenConfigError, authenticate, inside, load_principals, normalize_prefix
from worker.settings import Settings


@pytest.mark.parametrize(("uri", "prefix", "expected"), [
    ("s3://scans/alice/a.png", "s3://scans/alice/", True),
    ("s3://scans/alice/", "s3://scans/alice/", True),  # the prefix itself: a collection's input or an output
    ("s3://scans/alice", "s3://scans/alice/", False),  # the object "alice" beside the folder, not in it
    ("s3://scans/alice-evil/a.png", "s3://scans/alice/", False),  # a sibling sharing the name's start
    ("s3://scans/alice/../bob/a.png", "s3://scans/alice/", False),
    ("s3://scans/alice/./a.png", "s3://scans/alice/", False),
    ("s3://scans/alice\\..\\bob/a.png", "s3://scans/alice/", False),
    ("s3://other/alice/a.png", "s3://scans/alice/", False),
    ("s3://scans/anything", "s3://scans/", True),  # a whole bucket
    ("ftp://scans/alice/a.png", "s3://scans/alice/", False),
    ("", "s3://scans/alice/", False),
])
def test_inside_is_by_whole_segments_and_refuses_dot_segments(uri, prefix, expected):
    assert inside(uri, prefix) is expected


def test_folder_prefixes_resolve_symlinks_so_a_link_cannot_lead_outside(tmp_path):
    allowed = tmp_path / "allowed"
    secret = tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "link").symlink_to(secret)
    prefix = normalize_prefix(str(allowed))
    assert prefix == f"file://{allowed}/"
    assert inside(str(allowed / "photo.png"), prefix)
    assert inside(f"file://{allowed}/photo.png", prefix)
    assert inside(f"{allowed}/", prefix) and not inside(str(allowed), prefix)  # the folder; a file named like it
    assert not inside(str(allowed / "link" / "photo.png"), prefix)
    assert not inside(str(tmp_path / "allowed-too" / "photo.png"), prefix)


def tokens_file(tmp_path, entries, encoding: str = "utf-8") -> Settings:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": entries}), encoding=encoding)
    return Settings(api_tokens_file=path, api_token="admin-token-0123456789", api_inbox="s3://inbox/",
                    api_results="s3://out/results/")


def test_tokens_authenticate_by_bearer_header_and_carry_their_own_folders(tmp_path):
    principals = load_principals(tokens_file(tmp_path, [
        {"name": "alice", "token": "a" * 20, "inputs": ["s3://scans/alice"], "outputs": ["s3://out/alice/"]},
        {"name": "bob", "token": "b" * 20},
    ]))
    assert [p.name for p in principals] == [ADMIN, "alice", "bob"]
    alice = authenticate(principals, "Bearer " + "a" * 20)
    assert alice is not None and alice.name == "alice" and not alice.admin
    assert alice.inputs == ("s3://scans/alice/", "s3://inbox/alice/")
    assert alice.outputs == ("s3://out/alice/", "s3://out/results/alice/")
    assert alice.may_read("s3://inbox/alice/x/scan.tif") and not alice.may_read("s3://inbox/bob/x/scan.tif")
    assert authenticate(principals, "bearer admin-token-0123456789").admin  # the scheme is case-insensitive
    for header in (None, "", "Bearer", "Bearer ", "Basic " + "a" * 20, "Bearer " + "a" * 19, "Bearer " + "a" * 21):
        assert authenticate(principals, header) is None, header
    assert "a" * 20 not in repr(alice)


def test_a_tokens_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    """As a Windows editor saves UTF-8 (it had failed as "not valid JSON")."""
    principals = load_principals(tokens_file(tmp_path, [{"name": "alice", "token": "a" * 20}], "utf-8-sig"))
    assert [p.name for p in principals] == [ADMIN, "alice"]


@pytest.mark.parametrize(("entries", "message"), [
    ([{"name": "x", "token": "short"}], "tokens[0].token: a string of at least 16 characters"),
    ([{"name": "bad name", "token": "t" * 20}], "tokens[0].name:"),
    ([{"name": "x", "token": "t" * 20, "role": "root"}], "tokens[0].role: unknown field"),
    ([{"name": "x", "token": "t" * 20, "inputs": "s3://a/"}], "tokens[0].inputs: a list"),
    ([{"name": "x", "token": "t" * 20, "inputs": ["gs://a/"]}], "tokens[0].inputs: unsupported storage URI scheme"),
    ([{"name": "x", "token": "t" * 20}, {"name": "x", "token": "u" * 20}], "token names must be unique"),
    ([{"name": "admin", "token": "t" * 20}], "token names must be unique"),
    ([{"name": "x", "token": "t" * 20}, {"name": "y", "token": "t" * 20}], "two entries share one token"),
])
def test_a_bad_tokens_file_is_refused_naming_the_entry_never_the_token(tmp_path, entries, message):
    with pytest.raises(TokenConfigError) as caught:
        load_principals(tokens_file(tmp_path, entries))
    assert message in str(caught.value)
    assert "t" * 20 not in str(caught.value) and "short" not in str(caught.value)
