"""Who is calling, and what they may touch: bearer tokens, each with a name and the prefixes it may read and write.

Two sources, both optional, both read once when ``tinct serve`` starts (:func:`load_principals`):

- ``TINCT_API_TOKEN``: one all-powerful token, named ``admin``: any input, any output, every job.
- ``TINCT_API_TOKENS_FILE``: a JSON file of named tokens, each limited to its prefixes::

      {"tokens": [
        {"name": "alice", "token": "...", "inputs": ["s3://scans/alice/"], "outputs": ["s3://colour/alice/"]},
        {"name": "lab", "token": "...", "inputs": ["/srv/archive/in/"], "outputs": ["/srv/archive/out/"],
         "admin": false}
      ]}

A token may also always read its own upload folder (``<TINCT_API_INBOX>/<name>/``) and write its own results
folder (``<TINCT_API_RESULTS>/<name>/``). Every presented token is compared against every known one with
:func:`hmac.compare_digest` over SHA-256 digests, so neither the answer's timing nor its length tells an attacker
how much of a guess was right. Token values live only in :class:`Principal` objects whose ``repr`` hides them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from worker.settings import Settings
from worker.storage import join_uri, parse_uri

ADMIN = "admin"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TokenConfigError(ValueError):
    """The token settings cannot be used; ``str()`` names the variable or the file entry."""


@dataclass(frozen=True)
class Principal:
    """A caller: its name, whether it may do anything, and the normalized prefixes it may read and write."""

    name: str
    admin: bool = False
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    digest: bytes = field(default=b"", repr=False)  # SHA-256 of the token; the token itself is not kept

    def may_read(self, uri: str) -> bool:
        return self.admin or any(inside(uri, prefix) for prefix in self.inputs)

    def may_write(self, uri: str) -> bool:
        return self.admin or any(inside(uri, prefix) for prefix in self.outputs)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def normalize_prefix(prefix: str) -> str:
    """``s3://bucket/prefix/`` or ``file:///abs/folder/`` (symlinks resolved), always ending in ``/``."""
    scheme, bucket, key = parse_uri(prefix)
    if scheme == "s3":
        key = key.strip("/")
        return f"s3://{bucket}/{key}/" if key else f"s3://{bucket}/"
    return f"file://{os.path.realpath(key).rstrip('/')}/"


def inside(uri: str, prefix: str) -> bool:
    """Whether ``uri`` is the folder ``prefix`` itself (with its '/') or lies under it.

    ``.``/``..`` segments are never inside anything: S3 keeps them literally while a folder resolves them, so a key
    such as ``alice/../bob/x`` means different things to different readers and is refused outright. Folder paths
    are compared after resolving symlinks."""
    try:
        scheme, bucket, key = parse_uri(uri)
    except ValueError:
        return False
    raw = uri.split("://", 1)[-1]
    if any(segment in (".", "..") for segment in raw.replace("\\", "/").split("/")):
        return False
    if scheme == "s3":
        target = f"s3://{bucket}/{key}"
    else:  # a folder keeps its trailing '/' through realpath: "in/" is the folder, "in" a file beside it
        target = f"file://{os.path.realpath(key)}" + ("/" if uri.endswith("/") else "")
    return target.startswith(prefix)


def load_principals(settings: Settings) -> list[Principal]:
    """Every token the settings name; :class:`TokenConfigError` for a malformed file or a duplicate token."""
    principals: list[Principal] = []
    if settings.api_token:
        principals.append(Principal(ADMIN, admin=True, digest=_digest(settings.api_token)))
    if settings.api_tokens_file is not None:
        principals += _read_tokens_file(Path(settings.api_tokens_file))
    principals = [_with_own_folders(p, settings) for p in principals]
    names = [p.name for p in principals]
    if len(set(names)) != len(names):
        raise TokenConfigError("TINCT_API_TOKENS_FILE: token names must be unique (and 'admin' is TINCT_API_TOKEN's)")
    digests = [p.digest for p in principals]
    if len(set(digests)) != len(digests):
        raise TokenConfigError("TINCT_API_TOKENS_FILE: two entries share one token")
    return principals


def _read_tokens_file(path: Path) -> list[Principal]:
    where = f"TINCT_API_TOKENS_FILE {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # (as a Windows editor may save it)
    except OSError as exc:
        raise TokenConfigError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except ValueError as exc:  # the message names a line and column, never the file's content
        raise TokenConfigError(f"{where}: not valid JSON ({exc})") from None
    entries = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TokenConfigError(f"{where}: expected {{\"tokens\": [...]}}")
    principals = []
    for index, entry in enumerate(entries):
        label = f"{where}: tokens[{index}]"
        if not isinstance(entry, dict):
            raise TokenConfigError(f"{label}: expected an object")
        unknown = set(entry) - {"name", "token", "inputs", "outputs", "admin"}
        if unknown:
            raise TokenConfigError(f"{label}.{sorted(unknown)[0]}: unknown field")
        name, token = entry.get("name"), entry.get("token")
        if not isinstance(name, str) or not _NAME.match(name):
            raise TokenConfigError(f"{label}.name: letters, digits, '_', '.', '-' (up to 64), got {name!r}")
        if not isinstance(token, str) or len(token) < 16:
            raise TokenConfigError(f"{label}.token: a string of at least 16 characters")  # the value is not shown
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            raise TokenConfigError(f"{label}.admin: true or false")
        prefixes = {}
        for kind in ("inputs", "outputs"):
            values = entry.get(kind, [])
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise TokenConfigError(f"{label}.{kind}: a list of s3://bucket/prefix/ URIs or folders")
            try:
                prefixes[kind] = tuple(normalize_prefix(v) for v in values)
            except ValueError as exc:
                raise TokenConfigError(f"{label}.{kind}: {exc}") from None
        principals.append(Principal(name, admin, prefixes["inputs"], prefixes["outputs"], _digest(token)))
    return principals


def _with_own_folders(principal: Principal, settings: Settings) -> Principal:
    inputs, outputs = principal.inputs, principal.outputs
    if settings.api_inbox:
        inputs += (normalize_prefix(join_uri(settings.api_inbox, principal.name)),)
    if settings.api_results:
        outputs += (normalize_prefix(join_uri(settings.api_results, principal.name)),)
    return Principal(principal.name, principal.admin, inputs, outputs, principal.digest)


def own_folder(base: str, principal: Principal) -> str:
    """The principal's own folder under the inbox or results base, as a URI ending in ``/``."""
    return normalize_prefix(join_uri(base, principal.name))


def authenticate(principals: list[Principal], header: str | None) -> Principal | None:
    """The principal whose token is in ``Authorization: Bearer <token>``, or None. Every known token is compared
    (no early exit), each in constant time."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    presented = _digest(token.strip())
    found: Principal | None = None
    for principal in principals:
        if hmac.compare_digest(presented, principal.digest):
            found = principal
    return found
