"""The API's before/after previews of a film job, made directly by ``worker.api.previews.Previews`` against moto's
real S3 server: what they cost in downloads, and that concurrent requests never share a scratch file."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
import OpenEXR
import pytest
import tifffile
import torch
from PIL import Image

from models.color import linear_to_srgb
from tests.icc_profiles import PROPHOTO, gamma_curve, matrix_trc_profile
from tests.media import gray_frames, moving_scene, write_clip, write_frames
from tests.services import S3Server, put_object
from tests.test_frame_sequences import AP0_CHROMATICITIES, AP0_TO_BT709
from tools.local_services import s3_settings
from worker.api.previews import FILM_FRAMES, Previews
from worker.jobs import JobRecord, JobSpec, film_output_uri
from worker.media.images import read_pages, read_photo, write_document, write_photo
from worker.storage import Storage

FILM = "s3://scans/reel.mkv"


class CountingStorage(Storage):
    """The real storage, noting every object it downloads."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.downloads: list[str] = []

    def download(self, uri, local_path):
        self.downloads.append(str(uri))
        return super().download(uri, local_path)


@pytest.fixture
def storage(s3_server: S3Server) -> Iterator[CountingStorage]:
    s3_server.make_bucket("scans")
    s3_server.make_bucket("colour")
    with CountingStorage(s3_settings(s3_server)) as store:
        yield store


def put_film(s3: S3Server, uri: str, tmp_path: Path, frames: int) -> None:
    clip = write_clip(tmp_path / f"{frames}.mkv", gray_frames(moving_scene(frames, 64, 48)), fps=24, gop=6,
                      bframes=0)
    put_object(s3, uri, clip.path.read_bytes())


def film_job(spec_output: str = "s3://colour/films/") -> JobRecord:
    return JobRecord(id="job-1", spec=JobSpec(input=FILM, output=spec_output, kind="video"), state="succeeded",
                     created=0.0, updated=0.0)


def test_a_film_is_read_once_for_its_preview_times_and_again_only_when_it_changes(s3_server, storage, tmp_path):
    put_film(s3_server, FILM, tmp_path, frames=24)
    previews = Previews(storage, tmp_path / "cache", tmp_path / "scratch")
    record = film_job()
    items = previews.items(record)
    assert len(items) == FILM_FRAMES and all(0 < a.time < b.time < 1.0 for a, b in pairwise(items))
    for _ in range(5):  # the console lists a job's previews on every visit
        assert previews.items(record) == items
    assert storage.downloads == [FILM]
    assert not any((tmp_path / "scratch").iterdir())  # the probe's download is gone

    put_film(s3_server, FILM, tmp_path, frames=48)  # the input replaced under the same name: a new version
    longer = previews.items(record)
    assert storage.downloads == [FILM, FILM] and longer[-1].time > 1.5 > items[-1].time


def test_a_film_strip_downloads_the_input_and_output_once_each(s3_server, storage, tmp_path):
    record = film_job()
    put_film(s3_server, FILM, tmp_path, frames=24)
    put_film(s3_server, film_output_uri(record.spec), tmp_path, frames=24)  # stands in for the colorized copy
    previews = Previews(storage, tmp_path / "cache", tmp_path / "scratch")
    items = previews.items(record)
    storage.downloads.clear()
    for item in items:
        for side in ("before", "after"):
            assert previews.image(record, item, side).stat().st_size > 0
    # The strip reads its times from the list's cache, and the frames from one download of each film.
    assert sorted(storage.downloads) == sorted([FILM, film_output_uri(record.spec)])
    assert not any((tmp_path / "scratch").iterdir())


def test_every_scratch_download_gets_a_file_of_its_own(s3_server, storage, tmp_path):
    """Requests for one job's previews arrive together; one deleting the download another is reading failed frames
    at random, so two downloads of one object never share a name."""
    put_film(s3_server, FILM, tmp_path, frames=6)
    previews = Previews(storage, tmp_path / "cache", tmp_path / "scratch")
    first, drop_first = previews._local(FILM, "in.mkv")
    second, drop_second = previews._local(FILM, "in.mkv")
    assert drop_first and drop_second and first != second
    assert first.read_bytes() == second.read_bytes()


def test_a_broadcast_captures_strip_shows_the_same_frames_before_and_after(s3_server, storage, tmp_path):
    """A transport stream's clock starts where the recorder's was (here 100 s in) while Tinct's copy starts at
    zero: each side's times count from its own first frame, and each frame is found through the film's index
    (a transport stream's own seek can land past the keyframe). The strip once showed the first frame six times."""
    frames = list(gray_frames(moving_scene(48, 64, 48)))
    capture = write_clip(tmp_path / "capture.ts", frames, fps=24, gop=6, bframes=2, encoder_options={"qp": "0"},
                         container_options={"output_ts_offset": "100"})  # lossless H.264: only JPEG tells sides apart
    assert capture.pts[0] * capture.time_base >= 100
    copy = write_clip(tmp_path / "copy.mkv", frames, fps=24, gop=6, bframes=0, codec="ffv1")
    record = JobRecord(id="job-ts", spec=JobSpec(input="s3://scans/capture.ts", output="s3://colour/films/",
                                                 kind="video"), state="succeeded", created=0.0, updated=0.0)
    put_object(s3_server, record.spec.input, capture.path.read_bytes())
    put_object(s3_server, film_output_uri(record.spec), copy.path.read_bytes())
    previews = Previews(storage, tmp_path / "cache", tmp_path / "scratch")
    items = previews.items(record)
    strips = {side: [np.asarray(Image.open(previews.image(record, item, side)).convert("L"), np.float32)
                     for item in items] for side in ("before", "after")}
    for before, after in zip(strips["before"], strips["after"], strict=True):
        assert np.abs(before - after).mean() < 1.5  # the same frame on both sides (JPEG apart)
    assert all(np.abs(a - b).mean() > 5 for a, b in pairwise(strips["before"]))  # frames spread over the film


def test_a_run_of_frames_strip_reads_its_colour_copy_once_for_both_sides(s3_server, storage, tmp_path):
    # A run is thousands of objects, not one film to read frames from; its copy's lightness is the run's own.
    record = JobRecord(id="job-run", spec=JobSpec(input="s3://scans/reel1/scan_%07d.dpx", output="s3://colour/films/",
                                                  kind="video"), state="succeeded", created=0.0, updated=0.0)
    assert film_output_uri(record.spec) == "s3://colour/films/scan.mkv"
    put_film(s3_server, film_output_uri(record.spec), tmp_path, frames=24)  # stands in for the colorized copy
    previews = Previews(storage, tmp_path / "cache", tmp_path / "scratch")
    items = previews.items(record)
    assert len(items) == FILM_FRAMES
    for item in items:
        before = np.asarray(Image.open(previews.image(record, item, "before")).convert("RGB"), dtype=np.int16)
        assert np.abs(before - before.mean(axis=-1, keepdims=True)).max() <= 1  # gray
        assert previews.image(record, item, "after").stat().st_size > 0
    assert storage.downloads == [film_output_uri(record.spec)] * 2  # the times, then the strip


def test_a_log_scans_copies_are_previewed_as_a_display_shows_them(s3_server, storage, tmp_path):
    """Reference white in a log scan is code 685 of 1023: shown as it is, a light gray; read as log, white."""
    white, middle = 685 << 6, 470 << 6  # 16-bit codes of a 10-bit log frame: reference white, and about 18 % gray
    frame = np.full((48, 64), white, np.uint16)
    frame[:, 32:] = middle
    for path in write_frames(tmp_path / "frames", [frame] * 4, name="c_%04d.dpx", first=0, rate=24.0):
        data = bytearray(path.read_bytes())
        data[801] = 1  # printing density, as Tinct's frames out of a log scan say
        put_object(s3_server, f"s3://colour/reel/{path.name}", bytes(data))
    frames_job = JobRecord(id="job-frames", spec=JobSpec(input="s3://scans/reel/scan_%07d.dpx",
                                                         output="s3://colour/reel/c_%04d.dpx", kind="video"),
                           state="succeeded", created=0.0, updated=0.0, metrics={"frames": 4, "first_frame": 0})
    film = write_clip(tmp_path / "copy.mkv", [frame] * 24, codec="ffv1", pix_fmt="gray16le", fps=24)
    put_object(s3_server, "s3://colour/films/scan.mkv", film.path.read_bytes())
    film_job_record = JobRecord(id="job-film", spec=JobSpec(input="s3://scans/reel/scan_%07d.dpx",
                                                            output="s3://colour/films/", kind="video"),
                                state="succeeded", created=0.0, updated=0.0, metrics={"log_encoded": True})
    previews = Previews(storage, tmp_path / "cache", tmp_path / "scratch")
    for record in (frames_job, film_job_record):
        item = previews.items(record)[0]
        for side in ("before", "after"):
            shown = np.asarray(Image.open(previews.image(record, item, side)).convert("L"), dtype=np.int16)
            assert shown[:, 4:28].mean() > 250 and 100 < shown[:, 36:60].mean() < 140, (record.id, side)


def test_openexr_frames_are_previewed_through_the_srgb_curve(s3_server, storage, tmp_path):
    """An OpenEXR copy holds linear light: its 18 % gray is code 0.18, shown as it is nearly black; it shows at the
    sRGB curve's 118 of 255, its white (and a highlight above it) white."""
    light = np.full((48, 64, 3), 0.18, np.float32)
    light[:, :16] = 1.0
    light[:, 16:24] = 6.0
    for index in range(4):
        with av.open(str(tmp_path / f"c_{index:04d}.exr"), "w", format="image2") as out:
            stream = out.add_stream("exr", rate=24, options={"format": "half"})
            stream.width, stream.height, stream.pix_fmt = 64, 48, "gbrpf32le"
            out.mux(stream.encode(av.VideoFrame.from_ndarray(light, format="gbrpf32le")))
            out.mux(stream.encode())
        put_object(s3_server, f"s3://colour/plate/c_{index:04d}.exr", (tmp_path / f"c_{index:04d}.exr").read_bytes())
    record = JobRecord(id="job-exr", spec=JobSpec(input="s3://scans/plate/p_%04d.exr",
                                                  output="s3://colour/plate/c_%04d.exr", kind="video"),
                       state="succeeded", created=0.0, updated=0.0, metrics={"frames": 4, "first_frame": 0})
    previews = Previews(storage, tmp_path / "cache", tmp_path / "scratch")
    item = previews.items(record)[0]
    shown = np.asarray(Image.open(previews.image(record, item, "after")).convert("L"), dtype=np.int16)
    assert shown[:, 2:22].mean() > 250 and abs(shown[:, 28:60].mean() - 118) < 4


def test_an_aces_copy_is_previewed_in_its_own_primaries(s3_server, storage, tmp_path):
    """A copy of an ACES plate holds AP0 light and says so: shown as BT.709 values, its colours were wrong (an AP0
    red of 0.3, 0.05, 0.02 is BT.709's 0.69, -0.02, -0.01: far redder)."""
    ap0 = np.full((48, 64, 3), 0.18, np.float32)
    ap0[:, :32] = (0.3, 0.05, 0.02)
    for index in range(4):
        with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage,
                           "chromaticities": AP0_CHROMATICITIES}, {"RGB": ap0.astype(np.float16)}) as f:
            f.write(str(tmp_path / f"c_{index:04d}.exr"))
        put_object(s3_server, f"s3://colour/aces/c_{index:04d}.exr", (tmp_path / f"c_{index:04d}.exr").read_bytes())
    record = JobRecord(id="job-aces", spec=JobSpec(input="s3://scans/aces/p_%04d.exr",
                                                   output="s3://colour/aces/c_%04d.exr", kind="video"),
                       state="succeeded", created=0.0, updated=0.0, metrics={"frames": 4, "first_frame": 0})
    previews = Previews(storage, tmp_path / "cache", tmp_path / "scratch")
    shown = np.asarray(Image.open(previews.image(record, previews.items(record)[0], "after")).convert("RGB"),
                       dtype=np.float64)
    bt709 = AP0_TO_BT709 @ np.array((0.3, 0.05, 0.02), np.float16).astype(np.float64)
    expected = linear_to_srgb(torch.from_numpy(bt709.clip(0, 1))).numpy() * 255
    assert np.abs(shown[4:44, 4:28].mean(axis=(0, 1)) - expected).max() < 3
    assert abs(shown[4:44, 36:60].mean() - 118) < 4  # a neutral is a neutral in any primaries


def test_a_jpeg2000_copy_is_previewed_in_the_colours_its_profile_gives_it(s3_server, storage, tmp_path):
    """A JP2 file keeps its profile in a box Pillow does not read: the copy of a ProPhoto master, its codes
    ProPhoto's, was shown as sRGB codes, its colours dull (a red of sRGB 200, 40, 40 is ProPhoto's 140, 61, 44)."""
    master = tmp_path / "master.jp2"
    Image.fromarray(np.full((48, 64), 128, np.uint8)).save(master, irreversible=False)
    photo = read_photo(master)
    photo.icc_profile = matrix_trc_profile(PROPHOTO, gamma_curve(1.8))  # as if the master were tagged ProPhoto
    shown = np.full((48, 64, 3), 0.5)
    shown[:, :32] = (200 / 255, 40 / 255, 40 / 255)
    write_photo(tmp_path / "copy.jp2", shown, photo, "tests@1")
    before, after = photo_pair(s3_server, storage, tmp_path, master, tmp_path / "copy.jp2")
    assert np.abs(after[8:40, 4:28].mean(axis=(0, 1)) - (200, 40, 40)).max() < 6
    assert np.abs(before - photo.L * 2.55).max() < 1.5  # the master's lightness, as every photo's "before" shows


def photo_pair(s3: S3Server, storage: Storage, tmp_path: Path, source: Path, copy: Path
               ) -> tuple[np.ndarray, np.ndarray]:
    """The preview pair of a photo job that coloured ``source`` into ``copy`` (both put in the bucket first): the
    "before" side's gray and the "after" side's RGB."""
    put_object(s3, f"s3://scans/box/{source.name}", source.read_bytes())
    put_object(s3, f"s3://colour/box/{source.name}", copy.read_bytes())
    record = JobRecord(id=f"job-{source.stem}", spec=JobSpec(input=f"s3://scans/box/{source.name}",
                                                             output="s3://colour/box/", kind="image"),
                       state="succeeded", created=0.0, updated=0.0)
    previews = Previews(storage, tmp_path / "cache", tmp_path / "scratch")
    item = previews.items(record)[0]
    before = np.asarray(Image.open(previews.image(record, item, "before")).convert("L"), dtype=np.int16)
    after = np.asarray(Image.open(previews.image(record, item, "after")).convert("RGB"), dtype=np.int16)
    return before, after


def test_a_documents_pair_shows_its_pages_side_by_side(s3_server, storage, tmp_path):
    """A multi-page document's preview had shown its first page alone, as if the rest had not been coloured: its
    pages now stand side by side, before and after alike, each beside its copy's page at the same place."""
    pages = [np.full((60, 40), 90, np.uint8), np.full((60, 80), 160, np.uint8)]
    source = tmp_path / "album.tif"
    with tifffile.TiffWriter(source) as writer:
        for page in pages:
            writer.write(page, photometric="minisblack")
    decoded = list(read_pages(source))
    reds = [np.dstack([page / 255, page / 255 * 0.5, page / 255 * 0.3]) for page in pages]
    write_document(tmp_path / "copy.tif", zip(reds, decoded, strict=True), "tests@1")
    before, after = photo_pair(s3_server, storage, tmp_path, source, tmp_path / "copy.tif")
    assert after.shape[:2] == before.shape == (60, 40 + 8 + 80)  # two pages and the gap between them
    for left, right, page, lightness in ((0, 40, pages[0], decoded[0].L), (48, 128, pages[1], decoded[1].L)):
        shown = after[4:56, left + 4:right - 4].mean(axis=(0, 1))
        assert np.abs(shown - (page[0, 0], page[0, 0] * 0.5, page[0, 0] * 0.3)).max() < 6  # its page's own red
        assert abs(before[4:56, left + 4:right - 4].mean() - lightness.mean() * 2.55) < 3  # and its own lightness
