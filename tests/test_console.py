"""The console in real browsers, Debian's headless Chromium and Firefox ESR, against a running ``tinct serve`` (with a
real worker, Redis and moto S3 behind it). One walk-through, tests/browser/console.mjs, driven by Puppeteer
(Chromium over the DevTools protocol, Firefox over WebDriver BiDi): it signs in from the URL ``make serve`` prints
(pasted into an open console, and in a new tab), uploads a photo and a film through the new-job form, watches both
finish, moves a before/after slider with the keyboard, a click and a drag, places, recolours and removes colour
hints and a region (and finds them again in the hinted job's editor), finds the film's frame strip, guides the film
with a reference frame, colorizes a collection with an unreadable photo (its 25 results listed 10 at first, its
previews 24), downloads it as one ZIP and corrects one of its photos, hints a two-page document page by page,
cancels a film, reads what a submission that failed half-way says, and looks at two views on a phone's width.
A screenshot is saved when anything fails.

Playwright for Python drove Chromium here until 2026-12-06; it reaches Firefox only through a patched build of its
own, or over BiDi with commands Firefox ESR does not have yet, and Puppeteer drives Debian's own builds of both."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from models.color import rgb_to_lab_np
from tests.api_services import ApiStack, api_stack, gray_png
from tests.media import gray_frames, moving_scene, write_clip
from tests.services import JOB_TIMEOUT_S

BROWSER_TESTS = Path(__file__).parent / "browser"
NODE = shutil.which("node")
BROWSERS = {"chrome": shutil.which("chromium"), "firefox": shutil.which("firefox-esr")}
# Each browser signs in as a user of its own: a user's jobs list shows only their jobs, so the walk-throughs' counts
# of rows hold whichever runs first.
USERS = {"chrome": "alice", "firefox": "bob"}
# The whole walk-through: two jobs and a hinted one on a busy 2-core machine, three browser starts at most.
WALK_TIMEOUT_S = 3 * JOB_TIMEOUT_S + 120

pytestmark = pytest.mark.skipif(
    NODE is None or not (BROWSER_TESTS / "node_modules" / "puppeteer-core").is_dir(),
    reason="needs Node.js and tests/browser's packages (make test installs them)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_checkpoint) -> Iterator[ApiStack]:
    with api_stack(tmp_path_factory.mktemp("console"), tiny_checkpoint) as running:
        yield running


@pytest.mark.parametrize("browser", sorted(BROWSERS))
def test_console_uploads_a_photo_and_a_film_watches_them_finish_and_compares_before_and_after(
        browser, stack, tmp_path, tmp_path_factory):
    executable = BROWSERS[browser]
    if executable is None:
        pytest.skip(f"needs Debian's {'chromium' if browser == 'chrome' else 'firefox-esr'} (make test installs it)")
    photo = tmp_path / "portrait.png"
    photo.write_bytes(gray_png(4, 240, 160))
    second_photo = tmp_path / "second.png"
    second_photo.write_bytes(gray_png(5, 120, 80))
    document = tmp_path / "letters.tif"  # two pages of their own sizes, hinted a page at a time
    pages = [Image.open(io.BytesIO(gray_png(seed, width, height))) for seed, width, height in ((9, 240, 160),
                                                                                               (10, 160, 200))]
    pages[0].save(document, format="TIFF", save_all=True, append_images=pages[1:])
    scene = list(moving_scene(24, 96, 64))
    film = write_clip(tmp_path / "reel.mkv", gray_frames(scene), gop=6, bframes=0).path
    reference = tmp_path / "still-6.png"  # the film's frame 6 in its colours, as a still from the shoot
    Image.fromarray(scene[6]).save(reference)
    # Long enough (50 s, about a hundred segments) to be cancelled before it finishes.
    long_film = write_clip(tmp_path / "long.mkv", gray_frames(moving_scene(1200, 96, 64)), gop=24, bframes=0).path
    # A collection in the user's own input prefix: 25 photos (more results and previews than the console shows at
    # first), and one file that only claims to be one.
    user = USERS[browser]
    album = [(f"{user}/album/fine-{i:02d}.png", gray_png(6 + i)) for i in range(25)]
    for key, body in (*album, (f"{user}/album/broken.png", b"not a PNG")):
        stack.s3.client().put_object(Bucket="scans", Key=key, Body=body)
    screenshot = tmp_path_factory.getbasetemp() / f"console-failure-{browser}.png"
    run = {"browser": browser, "executable": executable, "url": stack.url, "token": stack.tokens[user], "user": user,
           "photo": str(photo), "secondPhoto": str(second_photo), "film": str(film), "longFilm": str(long_film),
           "collection": f"s3://scans/{user}/album/", "document": str(document), "reference": str(reference),
           "downloads": str(tmp_path / "downloads"), "screenshot": str(screenshot),
           "jobTimeoutMs": JOB_TIMEOUT_S * 1000}
    walk = subprocess.run([NODE, str(BROWSER_TESTS / "console.mjs"), json.dumps(run)], capture_output=True, text=True,
                          timeout=WALK_TIMEOUT_S, env=dict(os.environ, NODE_OPTIONS=""))
    print(walk.stdout, walk.stderr)
    assert walk.returncode == 0, f"the console's walk-through failed in {browser}:\n{walk.stdout}{walk.stderr}"
    assert "ok: the jobs list and a photo's page fit a phone's width" in walk.stdout  # the walk's last step
    # The browser downloaded the collection's results as one ZIP, by the console's link, into the test's folder.
    with zipfile.ZipFile(tmp_path / "downloads" / "album-colour.zip") as archive:
        assert archive.testzip() is None and archive.namelist() == [f"fine-{i:02d}.png" for i in range(25)]
    # The document's hints, placed on its second page in the browser, reached the job page by page.
    client = stack.client(user)
    jobs = client.get("/api/v1/jobs", params={"limit": 50}).json()["jobs"]
    hinted = [job["options"]["hints"] for job in jobs if job["input"].endswith("/letters.tif")
              and job["options"].get("hints")]
    assert hinted == [{"pages": {"2": {"points": [{"x": 80, "y": 100, "color": "#2040d0", "radius": 12},
                                                  ], "regions": []}}}], hinted
    # The photo's point and region, placed in the browser, reached its hinted job.
    portrait = [job["options"]["hints"] for job in jobs if job["input"].endswith("/portrait.png")
                and job["options"].get("hints")]
    assert len(portrait) == 1 and [(p["x"], p["y"], p["color"]) for p in portrait[0]["points"]] == [
        (144, 120, "#d02010")], portrait  # where it was dragged
    assert {job["options"]["model"] for job in jobs} == {"archive-1950s"}  # named as the form offered it
    assert [(r["color"], len(r["polygon"])) for r in portrait[0]["regions"]] == [("#2040d0", 4)], portrait
    # The collection's photo corrected in the browser was colorized again into the collection's own copy of it.
    collection = next(job for job in jobs if job["kind"] == "collection")
    copies = {result["input"]: result["uri"] for result in
              client.get(f"/api/v1/jobs/{collection['id']}/results").json()["results"]}
    photo = f"s3://scans/{user}/album/fine-03.png"
    corrected = [job for job in jobs if job["input"] == photo]
    assert len(corrected) == 1 and corrected[0]["output"] == copies[photo] and corrected[0]["state"] == "succeeded"
    assert [point["color"] for point in corrected[0]["options"]["hints"]["points"]] == ["#d02010"]
    copy_url = next(result["url"] for result in client.get(f"/api/v1/jobs/{corrected[0]['id']}/results").json()[
        "results"])
    copy = np.asarray(Image.open(io.BytesIO(httpx.get(copy_url).content)).convert("RGB"), dtype=int)
    red = copy[26:38, 42:54].mean(axis=(0, 1))  # the point, at the 96x64 photo's centre
    assert red[0] - red[1] > 20 and red[0] - red[2] > 20, red
    # The film guided in the browser: its reference recorded (the picture uploaded to the user's inbox), and its
    # frame 6 nearer the picture's colours than gray is, by its ab (the tiny model alone is further than gray: 21.3
    # against 18.4 when measured; guided 13.7, the rest H.264's 4:2:0 chroma on a 96x64 frame).
    guided = [job for job in jobs if job["input"].endswith("/reel.mkv") and job["options"].get("references")]
    assert len(guided) == 1 and guided[0]["state"] == "succeeded"
    assert [(r["time"], r["image"].endswith("/still-6.png")) for r in guided[0]["options"]["references"]] == [
        ("frame:6", True)]
    film_url = client.get(f"/api/v1/jobs/{guided[0]['id']}/results").json()["results"][0]["url"]
    (tmp_path / "guided.mkv").write_bytes(httpx.get(film_url).content)
    with av.open(str(tmp_path / "guided.mkv")) as container:  # lossless, as the form asked (the guided job kept it)
        assert container.streams.video[0].codec_context.name == "ffv1" and guided[0]["options"]["codec"] == "ffv1"
        frame_6 = next(itertools.islice(container.decode(video=0), 6, None)).to_ndarray(format="rgb24")
    guided_ab, truth_ab = (rgb_to_lab_np(picture / 255.0)[..., 1:] for picture in (frame_6, scene[6]))
    off, gray_off = (np.hypot(*(ab - truth_ab).transpose(2, 0, 1)).mean() for ab in (guided_ab, 0 * truth_ab))
    assert off < 0.85 * gray_off, (off, gray_off)
