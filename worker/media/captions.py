"""Closed captions (CEA-608 and CEA-708) that ride inside a film's video stream, carried frame by frame into its
H.264 or H.265 copy.

    captions = frame_captions(frame)                      # a decoded frame's cc_data, or None
    packet = captioned_packet(packet, captions, "h264")   # the coded frame, its captions in an SEI before its slices

Broadcast and tape captures (MPEG-2 from DVDs and transport streams, H.264 and H.265 from broadcast and AVCHD)
carry their captions as ATSC A/53 user data in each coded picture: the picture's cc_data, a few 3-byte constructs
(a marker and type, two bytes of caption data). FFmpeg's decoders hand them over with the frame (A53_CC side data),
but a frame coloured from numbers has none, and an encoder writes none: copies had lost them without a word. PyAV
cannot attach side data to a frame, so each coded frame of the copy gets its source frame's cc_data here, as the
SEI message libx264 and NVENC write for it (user data registered by ITU-T T.35, ATSC's "GA94"), placed before the
frame's first slice, where decoders (FFmpeg's, a broadcaster's) read it back.

Encoders emit Annex B streams (start codes before each NAL unit) into the segments, and the join's muxers convert
them for MP4 and Matroska with the SEI inside. ProRes has no place for them in its frames; a ProRes copy in a .mov
gets its CEA-608 captions as a QuickTime closed-caption track (c608), as broadcast deliveries of ProRes masters carry
them and editing suites read them (CEA-708 has no such track). FFV1, ProRes in Matroska and frames out have no
place for captions, and say so (``worker.media.video_source.captions_lost``).

A master may carry its captions the other way round, in such a track beside its pictures: its samples ride into an
H.264 or H.265 copy's frames the same way (``spread_over_frames``, ``worker.media.video_source.caption_track_samples``),
which is where an MP4 or Matroska copy, having no caption track, keeps them (``worker.media.segments``).
"""

from __future__ import annotations

import av

CAPTION_CODECS = frozenset({"h264", "h265"})  # Tinct's codecs whose copies carry captions in their frames
CEA608, CEA708 = "CEA-608", "CEA-708"
CEA608_CODEC = "eia_608"  # FFmpeg's name for a caption track's CEA-608 samples (QuickTime's c608)

_A53_HEADER = bytes([0xB5, 0x00, 0x31]) + b"GA94" + bytes([0x03])  # T.35 USA, ATSC's provider, "GA94", cc_data
_USER_DATA_REGISTERED = 4  # the SEI payload type of ITU-T T.35 user data
_SEI_NAL_HEADERS = {"h264": bytes([0x06]), "h265": bytes([39 << 1, 0x01])}  # SEI NAL unit (H.265: prefix SEI)
_START_CODE = b"\x00\x00\x00\x01"
_MAX_CONSTRUCTS = 31  # cc_count is 5 bits


def frame_captions(frame: av.VideoFrame) -> bytes | None:
    """A decoded frame's closed-caption data (its cc_data constructs, 3 bytes each), or None where it has none."""
    try:
        entries = list(frame.side_data)
    except ValueError:  # side data of a kind newer than PyAV's list (the HDR10 reader warns of it)
        return None
    for entry in entries:
        if entry.type == av.sidedata.sidedata.Type.A53_CC:
            data = bytes(entry)
            return data[: len(data) - len(data) % 3] or None
    return None


def caption_kinds(captions: bytes) -> set[str]:
    """Which captions cc_data holds: CEA-608 (constructs of type 0 and 1, a field's byte pair each) and CEA-708
    (types 2 and 3, the DTVCC packets'), counting valid constructs alone."""
    kinds = set()
    for marker in captions[::3]:
        if marker & 0x04:  # cc_valid
            kinds.add(CEA608 if marker & 0x03 < 2 else CEA708)
    return kinds


def cea608_constructs(captions: bytes) -> bytes:
    """cc_data's valid CEA-608 constructs, as a QuickTime caption track's samples hold them (FFmpeg writes a field's
    pairs into its cdat and cdt2 atoms)."""
    constructs = (captions[start:start + 3] for start in range(0, len(captions) - 2, 3))
    return b"".join(construct for construct in constructs if construct[0] & 0x04 and construct[0] & 0x03 < 2)


def spread_over_frames(sample: bytes, frames: int) -> list[bytes]:
    """A caption track's sample (CEA-608 constructs, as FFmpeg reads QuickTime's c608 samples) shared among the
    ``frames`` frames it lasts: each field's pairs in order, as evenly as they go (a sample a frame, as broadcast
    masters carry them, gives each frame its own). CEA-608 sends a pair per field per frame, and a decoder reads them
    at that pace, so a sample's pairs must not all land on its first frame."""
    constructs = [sample[start:start + 3] for start in range(0, len(sample) - 2, 3)]
    fields = [[c for c in constructs if c[0] & 0x03 == field] for field in (0, 1)]
    return [b"".join(b"".join(pairs[len(pairs) * i // frames:len(pairs) * (i + 1) // frames]) for pairs in fields)
            for i in range(frames)]


def captioned_packet(packet: av.Packet, captions: bytes, codec: str) -> av.Packet:
    """``packet`` (one coded frame from ``codec``'s encoder) again, with ``captions`` in it (``with_captions``)."""
    return repacked(packet, with_captions(bytes(packet), captions, codec))


def repacked(packet: av.Packet, data: bytes) -> av.Packet:
    """A packet of ``data`` in ``packet``'s place: its stream, times and keyframe flag."""
    copy = av.Packet(data)
    copy.stream, copy.time_base = packet.stream, packet.time_base
    copy.pts, copy.dts, copy.duration = packet.pts, packet.dts, packet.duration
    copy.is_keyframe = packet.is_keyframe
    return copy


def with_captions(data: bytes, captions: bytes, codec: str) -> bytes:
    """``data``, one coded frame of ``codec`` ("h264" or "h265") in Annex B form, with an SEI message carrying
    ``captions`` (cc_data) before its first slice: after any access unit delimiter, parameter sets and other SEI,
    as H.264 and H.265 order them."""
    if not (data.startswith(b"\x00\x00\x01") or data.startswith(_START_CODE)):
        raise ValueError(f"a coded {codec} frame not in Annex B form (no start code)")
    sei = _START_CODE + _SEI_NAL_HEADERS[codec] + _escaped(_sei_payload(captions) + b"\x80")
    first_slice = _first_slice(data, codec)
    return data[:first_slice] + sei + data[first_slice:]


def _sei_payload(captions: bytes) -> bytes:
    """The SEI message: its type and size, then ATSC A/53's cc_data (a flag and count byte, a reserved byte, the
    constructs, the end marker)."""
    constructs = len(captions) // 3
    if constructs > _MAX_CONSTRUCTS:
        captions, constructs = captions[: 3 * _MAX_CONSTRUCTS], _MAX_CONSTRUCTS
    user_data = _A53_HEADER + bytes([0x40 | constructs, 0xFF]) + captions + b"\xff"
    size, coded_size = len(user_data), b""
    while size >= 255:
        coded_size, size = coded_size + b"\xff", size - 255
    return bytes([_USER_DATA_REGISTERED]) + coded_size + bytes([size]) + user_data


def _escaped(payload: bytes) -> bytes:
    """``payload`` with emulation prevention: a 3 after two zeros wherever the next byte is 0 to 3, so that no start
    code appears inside the NAL unit."""
    out, zeros = bytearray(), 0
    for byte in payload:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _first_slice(data: bytes, codec: str) -> int:
    """Where the start code of ``data``'s first slice (VCL NAL unit) begins; its end where it has none."""
    position = 0
    while (found := data.find(b"\x00\x00\x01", position)) >= 0:
        header = found + 3
        if header >= len(data):
            break
        kind = data[header] & 0x1F if codec == "h264" else (data[header] >> 1) & 0x3F
        is_slice = 1 <= kind <= 5 if codec == "h264" else kind <= 31
        if is_slice:
            return found - 1 if found > 0 and data[found - 1] == 0 else found
        position = header
    return len(data)
