"""The console in a real browser: Debian's headless chromium, driven by Playwright, against a running ``tinct serve``
(with a real worker, Redis and moto S3 behind it). It signs in from the URL ``make serve`` prints, uploads a photo
and a film through the new-job form, watches both finish, moves a before/after slider with the keyboard and the
mouse, and finds the film's frame strip. A screenshot is saved when anything fails."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.api_services import ApiStack, api_stack, gray_png
from tests.media import gray_frames, moving_scene, write_clip
from tests.services import JOB_TIMEOUT_S

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Previews are made on demand (a film's strip decodes and colorizes six frames): seconds on a busy 2-core machine.
PREVIEW_TIMEOUT_MS = 30_000
# Debian's chromium, headless, with nothing that reaches outside this machine (updates, sync, QUIC probes).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_checkpoint) -> Iterator[ApiStack]:
    with api_stack(tmp_path_factory.mktemp("console"), tiny_checkpoint) as running:
        yield running


# The mean colour of the 10x10 pixels at the centre of the hint editor's preview, read back through a canvas.
CENTRE_COLOUR = """() => {
  const img = document.querySelector('#hint-preview');
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(img, 0, 0);
  const data = context.getImageData(Math.floor(canvas.width / 2) - 5, Math.floor(canvas.height / 2) - 5, 10, 10).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < data.length; i += 4) { sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2]; }
  return sum.map((v) => v / (data.length / 4));
}"""


@pytest.fixture
def page() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 768})  # a laptop screen
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield page
        finally:
            browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


@contextmanager
def screenshot_on_failure(page, path: Path) -> Iterator[None]:
    """Whatever fails inside leaves a full-page screenshot at ``path`` (named in the failure's output)."""
    try:
        yield
    except BaseException:
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the failed browser test: {path}")
        raise


def test_console_uploads_a_photo_and_a_film_watches_them_finish_and_compares_before_and_after(stack, page, tmp_path,
                                                                                               tmp_path_factory):
    from playwright.sync_api import expect

    with screenshot_on_failure(page, tmp_path_factory.getbasetemp() / "console-failure.png"):
        photo = tmp_path / "portrait.png"
        photo.write_bytes(gray_png(4, 240, 160))
        film = write_clip(tmp_path / "reel.mkv", gray_frames(moving_scene(24, 96, 64)), gop=6, bframes=0).path
        token = stack.tokens["alice"]
        page.goto(f"{stack.url}/#token={token}")
        expect(page.locator("#who-name")).to_have_text("Signed in as alice")
        assert token not in page.url  # the token left the address bar at once

        # Keyboard first: the skip link is the first stop, then the main navigation.
        page.keyboard.press("Tab")
        expect(page.locator("a.skip")).to_be_focused()
        page.get_by_role("link", name="New job").click()
        expect(page.get_by_label("Output folder or prefix")).to_have_value("s3://colour/results/alice/")
        page.get_by_label("Files").set_input_files([str(photo), str(film)])
        page.get_by_label("Model").fill(str(stack.model))
        page.get_by_role("button", name="Colorize").click()

        # Two uploads, two jobs: the jobs list shows both, with live progress, until they have finished.
        expect(page).to_have_url(re.compile(r"#/jobs$"))
        rows = page.locator("#jobs-body tr")
        expect(rows).to_have_count(2)
        first_link = page.locator("#jobs-body a").first
        first_link.focus()  # a keyboard user on the list: the live updates must not take the focus away
        expect(page.locator("#jobs-body .badge.succeeded")).to_have_count(2, timeout=JOB_TIMEOUT_S * 1000)
        expect(first_link).to_be_focused()

        # The photo: a before/after slider, moved with the keyboard and then by dragging on the picture.
        page.get_by_role("link", name="portrait.png").click()
        expect(page.locator("#job-state")).to_have_text("succeeded")
        figure = page.locator("figure.compare")
        expect(figure).to_have_count(1)
        after = figure.locator("img.after")
        expect(after).to_have_attribute("src", re.compile(r"^blob:"), timeout=PREVIEW_TIMEOUT_MS)
        # Locator assertions, not wait_for_function: a string predicate is eval'd in the page, which the console's
        # Content-Security-Policy (no 'unsafe-eval') rightly refuses.
        expect(after).to_have_js_property("naturalWidth", 240)
        slider = figure.get_by_role("slider")
        slider.focus()
        for _ in range(5):
            page.keyboard.press("ArrowLeft")
        expect(slider).to_have_value("45")
        assert "45%" in after.evaluate("img => img.style.clipPath")
        page.keyboard.press("End")
        assert "100%" in after.evaluate("img => img.style.clipPath")  # all "before"
        box = figure.locator(".stage").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
        expect(slider).to_have_value(re.compile(r"^2[4-6]$"))
        expect(page.get_by_role("button", name="Download portrait.png").or_(
            page.get_by_role("link", name="Download portrait.png"))).to_be_visible()

        # The hint editor: the model's own preview, then a red point placed by mouse turns that spot red.
        page.get_by_role("link", name="Correct the colours with hints").click()
        preview = page.locator("#hint-preview")
        expect(preview).to_have_attribute("data-serial", "1", timeout=60_000)
        page.get_by_label("Colour of new points").fill("#d02010")
        box = page.locator("#hint-photo").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.locator("#hint-points li")).to_have_count(1)
        expect(page.locator("#hint-points li").first).to_contain_text("Point 1 at 120, 80")
        expect(preview).to_have_attribute("data-serial", "2", timeout=30_000)
        expect(preview).to_have_js_property("complete", True)
        red, green, blue = page.evaluate(CENTRE_COLOUR)
        assert red - green > 20 and red - blue > 20, (red, green, blue)
        # ... and the keyboard places one too: focus the photo, move the cross, press Enter.
        page.locator("#hint-canvas").focus()
        page.keyboard.press("Shift+ArrowLeft")
        page.keyboard.press("Enter")
        expect(page.locator("#hint-points li")).to_have_count(2)
        expect(page.locator("#hint-points li").nth(1)).to_contain_text("Point 2 at 96, 80")
        # Submitted with its hints, the photo is a new job, colorized again, compared on its own page.
        hinted_page = page.url
        page.get_by_role("button", name="Colorize again with these hints").click()
        expect(page).not_to_have_url(hinted_page)
        expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{24}$"))
        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=JOB_TIMEOUT_S * 1000)
        expect(page.locator("figure.compare img.after")).to_have_attribute("src", re.compile(r"^blob:"),
                                                                           timeout=PREVIEW_TIMEOUT_MS)

        # The film: a strip of before/after frames.
        page.get_by_role("link", name="Jobs", exact=True).click()
        page.get_by_role("link", name="reel.mkv").click()
        expect(page.locator("#previews-title")).to_have_text("Before and after, frame by frame")
        expect(page.locator("figure.compare")).to_have_count(6)
        expect(page.locator("figure.compare img.after").first).to_have_attribute("src", re.compile(r"^blob:"),
                                                                                 timeout=PREVIEW_TIMEOUT_MS)
