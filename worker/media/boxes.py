"""Boxes: the layout of ISO base media files (MP4, MOV) and of JPEG 2000's JP2 files, which share it.

    for kind, start, end in file_boxes(f, 0):   # b"ftyp", 8, 32; b"mdat", 40, 8539; ... (end None: to the file's end)
    for kind, contents in boxes_in(data):       # the boxes inside a box's contents (a JP2 header box's)

A box is a 32-bit big-endian length (1: a 64-bit length follows its type; 0: it runs to the end of the file), a
four-letter type, and its contents; boxes follow one another, and some hold boxes of their own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO


def file_boxes(f: BinaryIO, position: int) -> Iterator[tuple[bytes, int, int | None]]:
    """The boxes of the file ``f`` from ``position`` on: (type, where its contents start, where they end, or None
    for a box that runs to the end of the file), found by their lengths, none of their contents read. An end past
    the file's is as its box says (a file cut short); a length too small to be one ends the walk."""
    while True:
        f.seek(position)
        header = f.read(16)
        if len(header) < 8:
            return
        length, kind = struct.unpack_from(">I4s", header)
        start = position + 8
        if length == 1:
            if len(header) < 16:
                return
            (length,) = struct.unpack_from(">Q", header, 8)
            start += 8
        if length == 0:
            yield kind, start, None
            return
        if position + length < start:
            return
        yield kind, start, position + length
        position += length


def boxes_in(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The boxes laid end to end in ``data``: (type, contents), a box cut short as far as it goes."""
    position = 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        start = position + 8
        if length == 1 and start + 8 <= len(data):
            (length,) = struct.unpack_from(">Q", data, start)
            start += 8
        end = len(data) if length == 0 else position + length
        if end < start:
            return
        yield kind, data[start:end]
        position = end


def box(kind: bytes, contents: bytes) -> bytes:
    """A box of type ``kind`` holding ``contents``, with a 64-bit length where a 32-bit one cannot say it."""
    if len(contents) + 8 > 0xFFFFFFFF:
        return struct.pack(">I4sQ", 1, kind, len(contents) + 16) + contents
    return struct.pack(">I4s", len(contents) + 8, kind) + contents
