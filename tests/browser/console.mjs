// The console's walk-through in a real browser, driven by Puppeteer: Chromium over the DevTools protocol, Firefox
// over WebDriver BiDi, one scenario for both. tests/test_console.py starts the stack (Redis, moto S3, a worker,
// tinct serve), writes the photos and films and puts a collection in its S3, and runs this with one JSON argument:
//   {browser: "chrome" | "firefox", executable, url, user, token, photo, secondPhoto, film, longFilm,
//    collection, document, reference, downloads, screenshot, jobTimeoutMs}
// It prints one line per step; any failure, or a JavaScript error on the page, exits 1 after a full-page screenshot.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import puppeteer from "puppeteer-core";

const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

const run = JSON.parse(process.argv[2]);
const PREVIEW_TIMEOUT_MS = 30_000; // previews are made on demand: seconds on a busy 2-core machine
const STEP_TIMEOUT_MS = 10_000;

// Debian's chromium, headless, with nothing that reaches outside this machine (updates, sync, QUIC probes).
const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
// Firefox's counterparts: no update checks, telemetry, safe-browsing lists or captive-portal probes.
const FIREFOX_PREFS = {
  "app.update.enabled": false, "browser.safebrowsing.update.enabled": false,
  "datareporting.policy.dataSubmissionEnabled": false, "network.captive-portal-service.enabled": false,
  "network.connectivity-service.enabled": false, "toolkit.telemetry.enabled": false,
  // A download (the results' ZIP) opens no downloads panel, which would take the keyboard from the page, and lands in
  // the test's own folder.
  "browser.download.alwaysOpenPanel": false, "browser.download.folderList": 2, "browser.download.dir": run.downloads,
  "browser.download.useDownloadDir": true,
};

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

// Waits until fn(...args) holds in the page. Functions, not strings: a string would be eval'd in the page,
// which the console's Content-Security-Policy (no 'unsafe-eval') rightly refuses.
async function until(page, what, fn, args = [], timeout = STEP_TIMEOUT_MS) {
  try {
    await page.waitForFunction(fn, { timeout, polling: 100 }, ...args);
  } catch (error) {
    throw new Failure(`timed out after ${timeout} ms waiting for ${what}`);
  }
}

// axe-core's rules (WCAG 2 A and AA, and its best practices) on the view on screen; hidden views are skipped by axe
// itself. Injected through the driver, which the page's Content-Security-Policy does not govern.
async function accessible(page, view) {
  if (await page.evaluate(() => typeof window.axe === "undefined")) await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => (await window.axe.run(document, { resultTypes: ["violations"] }))
    .violations.map((v) => `${v.id} (${v.impact}) at ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}: `
      + (v.nodes[0].failureSummary || v.help).replace(/\s+/g, " ")));
  check(violations.length === 0, `axe-core on ${view}: ${violations.join("; ")}`);
  audited.push(view);
}
const audited = [];

const text = (page, selector) => page.$eval(selector, (node) => node.textContent.trim());
const focusedMatches = (selector) => document.activeElement && document.activeElement.matches(selector);

// The link named ``name`` in ``scope`` once the page shows it (a list fills in after its view appears).
async function linkNamed(page, scope, name) {
  const named = (scope, name) => [...document.querySelectorAll(`${scope} a`)].some(
    (node) => node.textContent.trim() === name);
  await until(page, `a link named ${name} in ${scope}`, named, [scope, name]);
  const links = await page.$$(`${scope} a`);
  for (const link of links) if ((await link.evaluate((node) => node.textContent.trim())) === name) return link;
  throw new Failure(`no link named ${name} in ${scope}`);
}

// The mean colour of the 10x10 pixels at the centre of the hint editor's preview (or at fractions fx, fy of its width
// and height), read back through a canvas.
function centreColour(fx = 0.5, fy = 0.5) {
  const img = document.querySelector("#hint-preview");
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const data = context.getImageData(Math.floor(canvas.width * fx) - 5, Math.floor(canvas.height * fy) - 5, 10, 10).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < data.length; i += 4) { sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2]; }
  return sum.map((v) => v / (data.length / 4));
}

// The hint editor's preview numbers its requests: wait for the one after an edit to be shown, whole.
async function previewShown(page, serial, what) {
  await until(page, what, (wanted) => {
    const preview = document.querySelector("#hint-preview");
    return preview.dataset.serial === String(wanted) && preview.complete;
  }, [serial], 30_000);
}

// An editor's submit button clicked: the new job's page, and the job succeeded. ``says``, what the status line says
// on arriving there (before the job's end replaces it with "Job finished.").
async function submitFrom(page, button, what, says = null) {
  const editor = page.url();
  await page.click(button);
  await until(page, `${what}'s page`, (old) => location.href !== old && /#\/jobs\/[0-9a-f]{24}$/.test(location.hash),
    [editor]);
  const status = await text(page, "#status");
  check(says === null || status === says || status === "Job finished.", `the status on ${what}'s page: ${status}`);
  await until(page, `${what} to succeed`, () => document.querySelector("#job-state").textContent === "succeeded",
    [], run.jobTimeoutMs);
}

async function openNewJob(page) {
  await (await linkNamed(page, "nav", "New job")).click();
  await until(page, "the new-job form", () => !document.querySelector("#view-new").hidden);
}

async function signedIn(page, how) {
  await until(page, `the signed-in name, ${how}`,
    (user) => document.querySelector("#who-name").textContent === `Signed in as ${user}`, [run.user]);
  check(!page.url().includes(run.token), `the token stayed in the address bar, ${how}`);
}

async function scenario(browser, page, step) {
  // The URL `make serve` prints, pasted into a tab already on the console: a hash change, not a load.
  await page.goto(`${run.url}/`);
  await until(page, "the sign-in page", () => !document.querySelector("#view-signin").hidden);
  await accessible(page, "the sign-in page");
  await page.goto(`${run.url}/#token=${run.token}`);
  await signedIn(page, "pasted into an open console");
  step("signed in from the URL pasted into an open console; the token left the address bar");
  await (await linkNamed(page, "nav", "New job")).click();
  await until(page, "the new-job form's output default",
    (user) => document.querySelector("#output-uri").value === `s3://colour/results/${user}/`, [run.user]);
  const files = await page.$("#files");
  await files.uploadFile(run.photo, run.film);
  // The model by its name in the model store, which the field offers.
  await until(page, "the model store's names", () => [...document.querySelectorAll("#model-names option")]
    .map((option) => option.value).join(" ") === "default archive-1950s");
  await page.$eval("#opt-model", (node) => { node.value = "archive-1950s"; });
  await page.select("#opt-codec", "ffv1");  // the film's copy lossless, as a master
  await page.click("#new-submit");
  step("two files uploaded through the new-job form");

  // Two uploads, two jobs: the jobs list shows both, with live progress, until they have finished.
  await until(page, "the jobs list", () => location.hash === "#/jobs");
  await until(page, "two rows", () => document.querySelectorAll("#jobs-body tr").length === 2);
  const submitted = await text(page, "#status");  // said on the view the submission went to, not wiped by it
  check(submitted === "2 jobs submitted.", `the status line after submitting reads ${submitted}`);
  await page.focus("#jobs-body a"); // a keyboard user on the list: live updates must not take the focus away
  await until(page, "both jobs to succeed", () => document.querySelectorAll("#jobs-body .badge.succeeded").length === 2,
    [], run.jobTimeoutMs);
  check(await page.evaluate(focusedMatches, "#jobs-body tr:first-child a"), "the live updates took the focus");
  await accessible(page, "the jobs list");
  step("both jobs succeeded; the focus stayed on the list");

  // The photo: a before/after slider, moved with the keyboard, by a click and by a drag on the picture.
  await (await linkNamed(page, "#jobs-body", "portrait.png")).click();
  await until(page, "the job's state", () => document.querySelector("#job-state").textContent === "succeeded");
  await until(page, "the photo's colorized preview", () => {
    const figures = document.querySelectorAll("figure.compare");
    const after = figures.length === 1 && figures[0].querySelector("img.after");
    return after && after.src.startsWith("blob:") && after.complete && after.naturalWidth === 240;
  }, [], PREVIEW_TIMEOUT_MS);
  const slider = await page.$("figure.compare input[type=range]");
  const clipPath = () => page.$eval("figure.compare img.after", (node) => node.style.clipPath);
  await slider.focus();
  for (let i = 0; i < 5; i++) await page.keyboard.press("ArrowLeft");
  check(await slider.evaluate((node) => node.value) === "45", "five ArrowLeft presses did not leave the slider at 45");
  check((await clipPath()).includes("45%"), `the picture's clip does not follow the slider: ${await clipPath()}`);
  await page.keyboard.press("End");
  check((await clipPath()).includes("100%"), "End does not show the whole 'before'");
  const box = await (await page.$("figure.compare .stage")).boundingBox();
  const middle = box.y + box.height / 2;
  await page.mouse.click(box.x + box.width * 0.25, middle);
  const clicked = Number(await slider.evaluate((node) => node.value));
  check(clicked >= 24 && clicked <= 26, `a click at a quarter of the picture left the slider at ${clicked}`);
  // A drag, in small moves as a hand makes it: the browser must not take it over as a drag of the image.
  await page.mouse.move(box.x + box.width * 0.25, middle);
  await page.mouse.down();
  for (let i = 1; i <= 10; i++) await page.mouse.move(box.x + box.width * (0.25 + 0.045 * i), middle);
  await page.mouse.up();
  const dragged = Number(await slider.evaluate((node) => node.value));
  check(dragged >= 69 && dragged <= 71, `a drag to 70% of the picture left the slider at ${dragged}`);
  await until(page, "the download of portrait.png", () => [...document.querySelectorAll("#results a, #results button")]
    .some((node) => node.textContent.trim() === "Download portrait.png"));
  await accessible(page, "a photo's page");
  step("the before/after slider follows the keyboard, a click and a drag");

  // The hint editor: the model's own preview, then a red point placed by mouse turns that spot red.
  await (await linkNamed(page, "#hints-link", "Correct the colours with hints")).click();
  await until(page, "the hint editor's first preview", () => document.querySelector("#hint-preview").dataset.serial === "1",
    [], 60_000);
  await page.$eval("#hint-colour", (node) => {
    node.value = "#d02010";
    node.dispatchEvent(new Event("input", { bubbles: true }));
    node.dispatchEvent(new Event("change", { bubbles: true }));
  });
  // A click as a hand makes it, moving a few pixels between press and release: still a click, not a drag of the photo.
  const photo = await (await page.$("#hint-photo")).boundingBox();
  await page.mouse.move(photo.x + photo.width / 2 - 8, photo.y + photo.height / 2);
  await page.mouse.down();
  for (let i = 1; i <= 4; i++) await page.mouse.move(photo.x + photo.width / 2 - 8 + 2 * i, photo.y + photo.height / 2);
  await page.mouse.up();
  await until(page, "the first point", () => document.querySelectorAll("#hint-points li").length === 1);
  const first = await text(page, "#hint-points li:nth-child(1)");
  check(first.includes("Point 1 at 120, 80"), `the first point reads ${first}`);
  await previewShown(page, 2, "the preview with the point");
  const [red, green, blue] = await page.evaluate(centreColour);
  check(red - green > 20 && red - blue > 20, `the hinted spot is not red: ${[red, green, blue]}`);
  // ... and the keyboard places one too: focus the photo, move the cross, press Enter.
  await page.focus("#hint-canvas");
  await page.keyboard.down("Shift");
  await page.keyboard.press("ArrowLeft");
  await page.keyboard.up("Shift");
  await page.keyboard.press("Enter");
  await until(page, "the second point", () => document.querySelectorAll("#hint-points li").length === 2);
  const second = await text(page, "#hint-points li:nth-child(2)");
  check(second.includes("Point 2 at 96, 80"), `the second point reads ${second}`);
  await previewShown(page, 3, "the preview with both points");
  // A point's own colour, changed as its picker does (an input event per change): the picker's input stays in the
  // page, so the picker stays open, and the preview follows.
  const stillThere = await page.$eval("#hint-point-colour-0", (node) => {
    node.value = "#10c020";
    node.dispatchEvent(new Event("input", { bubbles: true }));
    return node.isConnected;
  });
  check(stillThere, "changing a point's colour replaced its input (which closes the picker)");
  await previewShown(page, 4, "the preview with the green point");
  const greened = await page.evaluate(centreColour);
  check(greened[1] - greened[0] > 20 && greened[1] - greened[2] > 20, `the recoloured spot is not green: ${greened}`);
  await accessible(page, "the hint editor");
  // Removing a point by keyboard leaves the focus in the list, on the next point's Remove.
  await page.focus("#hint-points li:nth-child(1) button");
  await page.keyboard.press("Enter");
  await until(page, "one point left", () => document.querySelectorAll("#hint-points li").length === 1);
  const left = await text(page, "#hint-points li:nth-child(1)");
  check(left.includes("Point 1 at 96, 80"), `after removing the first point the list reads ${left}`);
  check(await page.evaluate(focusedMatches, "#hint-points li:nth-child(1) button"),
    "removing a point by keyboard lost the focus");
  step(`hints placed by mouse and keyboard, one recoloured, one removed; the preview's centre turned red (${
    [red, green, blue].map(Math.round)}), then green (${greened.map(Math.round)})`);
  await previewShown(page, 5, "the preview without the removed point");

  // A region: its corners placed by mouse in region mode, then finished, colour it blue; corners placed by the
  // keyboard and dropped with Escape leave nothing.
  await page.click("#hint-mode-region");
  await page.$eval("#hint-colour", (node) => {
    node.value = "#2040d0";
    node.dispatchEvent(new Event("input", { bubbles: true }));
  });
  const corners = await (await page.$("#hint-photo")).boundingBox();  // measured again: the focus moved the page
  for (const [fx, fy] of [[0.05, 0.08], [0.35, 0.08], [0.35, 0.4], [0.05, 0.4]]) {
    await page.mouse.click(corners.x + corners.width * fx, corners.y + corners.height * fy);
  }
  const drawing = await text(page, "#hint-drawing-text");
  check(drawing === "Region 1: 4 corners placed.", `the region being placed reads ${drawing}`);
  await page.click("#hint-region-finish");
  await until(page, "the region", () => document.querySelectorAll("#hint-regions li").length === 1
    && document.querySelector("#hint-drawing").hidden);
  const region = await text(page, "#hint-regions li:nth-child(1)");
  check(region.includes("Region 1, 4 corners"), `the region reads ${region}`);
  await previewShown(page, 6, "the preview with the region");
  const inside = await page.evaluate(centreColour, 0.2, 0.24);
  check(inside[2] - inside[0] > 20 && inside[2] - inside[1] > 10, `the region is not blue: ${inside}`);
  await page.focus("#hint-canvas");
  await page.keyboard.press("Enter");
  await until(page, "a corner placed by the keyboard", () => !document.querySelector("#hint-drawing").hidden);
  await page.keyboard.press("Escape");
  await until(page, "the corner dropped", () => document.querySelector("#hint-drawing").hidden
    && document.querySelectorAll("#hint-regions li").length === 1);
  await accessible(page, "the hint editor with a region");
  // A point dragged by its marker moves (in region mode too), and the click that ends the drag places nothing.
  const dragBox = await (await page.$("#hint-photo")).boundingBox();
  await page.mouse.move(dragBox.x + dragBox.width * 0.4 + 2, dragBox.y + dragBox.height * 0.5 - 1);
  await page.mouse.down();
  for (let i = 1; i <= 8; i++) {  // to 60% across and 75% down: 144, 120
    await page.mouse.move(dragBox.x + dragBox.width * (0.4 + 0.025 * i), dragBox.y + dragBox.height * (0.5 + i / 32));
  }
  await page.mouse.up();
  await previewShown(page, 7, "the preview with the point moved");
  const moved = await text(page, "#hint-points li:nth-child(1)");
  check(moved.includes("Point 1 at 144, 120"), `the dragged point reads ${moved}`);
  check(await page.$eval("#hint-drawing", (node) => node.hidden), "the drag's click placed a region's corner");
  step(`a region placed corner by corner turned its inside blue (${inside.map(Math.round)}); Escape dropped a corner; `
    + "a point dragged to a new place");

  // Submitted with its hints, the photo is a new job, colorized again, compared on its own page.
  await submitFrom(page, "#hint-submit", "the hinted job");
  await until(page, "the hinted job's preview",
    () => document.querySelector("figure.compare img.after")?.src.startsWith("blob:"), [], PREVIEW_TIMEOUT_MS);
  const withHints = await text(page, "#job-guidance");
  check(withHints === "With 2 colour hints.", `the hinted job's page says ${withHints}`);
  // Its editor opens with the hints it was submitted with: editing it again starts from them.
  await (await linkNamed(page, "#hints-link", "Correct the colours with hints")).click();
  await until(page, "the hinted job's hints in its editor", () => document.querySelectorAll("#hint-points li").length
    === 1 && document.querySelectorAll("#hint-regions li").length === 1 && document.querySelectorAll(
    "#hint-overlay polygon").length === 1, [], PREVIEW_TIMEOUT_MS);
  step("colorized again with the hints, as a new job, whose editor starts from its point and region");

  // The film: a strip of before/after frames.
  await (await linkNamed(page, "nav", "Jobs")).click();
  await until(page, "the jobs list", () => document.querySelectorAll("#jobs-body tr").length === 3);
  await (await linkNamed(page, "#jobs-body", "reel.mkv")).click();
  await until(page, "the film's strip", () => document.querySelector("#previews-title").textContent
    === "Before and after, frame by frame" && document.querySelectorAll("figure.compare").length === 6);
  await until(page, "the film's first colorized frame",
    () => document.querySelector("figure.compare img.after").src.startsWith("blob:"), [], PREVIEW_TIMEOUT_MS);
  await accessible(page, "a film's page");
  step("the film's strip shows six before/after frames");

  // The film guided by a colour picture of its frame 6, uploaded from the references view; a time that is not one
  // is refused by the API, in one line naming the field, and removed before the film is resubmitted.
  // By the keyboard, once shown: the strip's pictures may still be moving the page under a click.
  await until(page, "the link to the film's reference frames",
    () => !document.querySelector("#references-link").hidden);
  await page.focus("#references-open");
  await page.keyboard.press("Enter");
  await until(page, "the references view", () => document.querySelector("#references-title").textContent
    === "Reference frames: reel.mkv" && !document.querySelector("#references-none").hidden);
  // Its strip of frames gives a time at a click.
  await until(page, "the film's frames to pick a time from",
    () => document.querySelectorAll("#reference-strip button").length === 6, [], PREVIEW_TIMEOUT_MS);
  const picked = await page.$eval("#reference-strip li:nth-child(3) button", (node) => {
    node.click();
    return node.textContent.trim();
  });
  const pickedTime = await page.$eval("#reference-time", (node) => node.value);
  check(`${pickedTime} s` === picked && Number(pickedTime) > 0,
    `the third frame gave the time ${pickedTime} (${picked})`);
  await page.$eval("#reference-time", (node) => { node.value = ""; });
  for (const [time, picture] of [["frame:6", run.reference], ["soon", run.reference]]) {
    await page.type("#reference-time", time);
    await (await page.$("#reference-file")).uploadFile(picture);
    await page.click("#reference-add");
    await until(page, `the reference at ${time}`, (wanted) => [...document.querySelectorAll("#references li")]
      .some((li) => li.textContent.startsWith(`At ${wanted}: `)), [time], 30_000);
  }
  await page.click("#references-submit");
  await until(page, "the refused time", () => !document.querySelector("#references-error").hidden);
  const refused = await text(page, "#references-error");
  check(refused.startsWith("Not submitted: options.references[1].time: "), `the refusal reads ${refused}`);
  await accessible(page, "the reference frames of a film");
  await page.click("#references li:nth-child(2) button");
  await until(page, "one reference left", () => document.querySelectorAll("#references li").length === 1);
  await submitFrom(page, "#references-submit", "the guided film", "Submitted with 1 reference frame.");
  const guidedBy = await text(page, "#job-guidance");
  check(guidedBy === "Guided by 1 reference frame, at frame:6.", `the guided film's page says ${guidedBy}`);
  step("a film guided by a reference frame uploaded from its references view; a bad time refused, then removed");

  // A collection named by its URI, one of its photos unreadable: the job succeeds and lists what failed.
  await openNewJob(page);
  await page.click("#source-uri");
  await page.type("#input-uri", run.collection);
  await page.click("#new-submit");
  await until(page, "the collection to finish", () => document.querySelector("#job-title").textContent === "album/"
    && document.querySelector("#job-state").textContent === "succeeded", [], run.jobTimeoutMs);
  const partly = await text(page, "#job-error");
  check(partly === "Finished, but 1 of 26 files failed:", `the collection's error line reads ${partly}`);
  const failure = await text(page, "#job-failures li");
  check(failure.startsWith("broken.png: "), `the collection's failure reads ${failure}`);
  // Its 25 results: the first 10 listed, the rest one click away.
  await until(page, "the collection's first results and a button for the rest", () =>
    document.querySelectorAll("#results li").length === 11
    && document.querySelector("#results li:last-child button").textContent === "Show all 25 results");
  await accessible(page, "a collection's page with a failure");
  // By the keyboard: the previews above load as this runs, and a click aimed before they had moved the page landed
  // on one of them (Firefox).
  await page.focus("#results li:last-child button");
  await page.keyboard.press("Enter");
  await until(page, "all 25 results", () => document.querySelectorAll("#results li").length === 25
    && [...document.querySelectorAll("#results li")].every((li) => li.textContent.startsWith("Download ")));
  check(await page.evaluate(() => document.activeElement.textContent.trim() === "Download fine-10.png"),
    "showing every result did not move the focus to the first one added");
  // Every result as one ZIP: the button asks for a signed link, which the browser downloads without the token, into
  // run.downloads (tests/test_console.py opens it); the page fetches it again here, with no token either.
  await page.focus("#results-all button");  // the keyboard again: the previews above may still be moving the page
  await page.keyboard.press("Enter");
  await until(page, "the archive's link", () => document.querySelector("#results-all button").dataset.url);
  const zip = await page.$eval("#results-all button", async (node) => {
    const response = await fetch(node.dataset.url);
    const bytes = new Uint8Array(await response.arrayBuffer());
    return { status: response.status, type: response.headers.get("content-type"), size: bytes.length,
      magic: String.fromCharCode(bytes[0], bytes[1]), names: (new TextDecoder().decode(bytes).match(/fine-\d\d\.png/g)
        || []).filter((name, i, all) => all.indexOf(name) === i).length };
  });
  check(zip.status === 200 && zip.type === "application/zip" && zip.magic === "PK" && zip.names === 25,
    `the collection's ZIP: ${JSON.stringify(zip)}`);
  // Its previews a page of 24 at a time: the 25th photo's after the button, the focus on it.
  await until(page, "the first page of previews", () => document.querySelectorAll("#previews figure").length === 24
    && !document.querySelector("#previews-more").hidden);
  // By the keyboard: the previews' pictures load as this runs and move the page under a click aimed before (Firefox).
  await page.focus("#previews-more");
  await page.keyboard.press("Enter");
  await until(page, "the next page of previews", () => document.querySelectorAll("#previews figure").length === 25
    && document.querySelector("#previews-more").hidden, [], PREVIEW_TIMEOUT_MS);
  const last = await text(page, "#previews figure:nth-child(25) figcaption");
  check(last.startsWith("fine-24.png"), `the 25th preview reads ${last}`);
  check(await page.evaluate(focusedMatches, "#previews figure:nth-child(25) input"), "the focus stayed behind");
  step("a collection with an unreadable photo finishes, lists it, and lists its 25 results 10 at first, its previews "
    + `24 at first; all 25 download as one ZIP (${zip.size} bytes)`);

  // One photo of the collection corrected with hints, from its preview: colorized again on its own, into the
  // collection's copy of it (tests/test_console.py reads the job back from the API).
  await (await linkNamed(page, "#previews", "Correct fine-03.png with hints")).click();
  await until(page, "the collection photo's hint editor", () => document.querySelector("#hints-title").textContent
    === "Colour hints: fine-03.png (of album/)" && document.querySelector("#hint-preview").dataset.serial === "1",
  [], 60_000);
  check(await page.$eval("#hint-pages", (node) => node.hidden), "a photo of one picture is offered pages");
  await page.$eval("#hint-colour", (node) => {
    node.value = "#d02010";
    node.dispatchEvent(new Event("input", { bubbles: true }));
  });
  const albumPhoto = await (await page.$("#hint-photo")).boundingBox();
  await page.mouse.click(albumPhoto.x + albumPhoto.width / 2, albumPhoto.y + albumPhoto.height / 2);
  await previewShown(page, 2, "the collection photo's preview with its point");
  const albumRed = await page.evaluate(centreColour);
  check(albumRed[0] - albumRed[1] > 20 && albumRed[0] - albumRed[2] > 20, `the photo's hinted spot: ${albumRed}`);
  await submitFrom(page, "#hint-submit", "the corrected photo");
  const corrected = await text(page, "#job-io");
  check(corrected.startsWith(`image: ${run.collection}fine-03.png \u2192 `) && corrected.endsWith("/fine-03.png"),
    `the corrected photo's job reads ${corrected}`);
  step("a photo of the collection corrected with hints from its preview, as a job of its own");

  // A two-page TIFF document, hinted a page at a time: page 2 (a picture of its own size) gets a blue point, page 1
  // none, and the job is submitted with page 2's hints alone (tests/test_console.py reads them back from the API).
  await openNewJob(page);
  await page.click("#source-upload");
  await (await page.$("#files")).uploadFile(run.document);
  await page.click("#new-submit");
  await until(page, "the document to succeed", () => document.querySelector("#job-title").textContent === "letters.tif"
    && document.querySelector("#job-state").textContent === "succeeded", [], run.jobTimeoutMs);
  await (await linkNamed(page, "#hints-link", "Correct the colours with hints")).click();
  await until(page, "the document's first page and its preview", () => !document.querySelector("#hint-pages").hidden
    && document.querySelector("#hint-preview").dataset.serial === "1", [], 60_000);
  const choices = await page.$$eval("#hint-page option", (nodes) => nodes.map((node) => node.textContent));
  check(choices.join("|") === "1 of 2|2 of 2", `the page choices read ${choices}`);
  await page.select("#hint-page", "2");
  await until(page, "page 2 in gray, 160x200", () => {
    const photo = document.querySelector("#hint-photo");
    return photo.complete && photo.naturalWidth === 160 && photo.naturalHeight === 200;
  }, [], PREVIEW_TIMEOUT_MS);
  await previewShown(page, 2, "page 2's preview");
  await page.$eval("#hint-colour", (node) => {
    node.value = "#2040d0";
    node.dispatchEvent(new Event("input", { bubbles: true }));
  });
  const pageTwo = await (await page.$("#hint-photo")).boundingBox();
  await page.mouse.click(pageTwo.x + pageTwo.width / 2, pageTwo.y + pageTwo.height / 2);
  await until(page, "the point on page 2", () => document.querySelectorAll("#hint-points li").length === 1);
  const placed = await text(page, "#hint-points li:nth-child(1)");
  check(placed.includes("Point 1 at 80, 100"), `page 2's point reads ${placed}`);
  await previewShown(page, 3, "page 2's preview with its point");
  const blued = await page.evaluate(centreColour);
  check(blued[2] - blued[0] > 20 && blued[2] - blued[1] > 10, `page 2's hinted spot is not blue: ${blued}`);
  await accessible(page, "the hint editor on a document's page");
  // Page 1 has points of its own (none): the list follows the page, and page 2's point is kept for the job.
  await page.select("#hint-page", "1");
  await until(page, "page 1 again, without points", () => document.querySelector("#hint-photo").naturalWidth === 240
    && document.querySelectorAll("#hint-points li").length === 0 && !document.querySelector("#hint-none").hidden);
  await submitFrom(page, "#hint-submit", "the hinted document");
  const pageHints = await text(page, "#job-guidance");
  check(pageHints === "With 1 colour hint on page 2.", `the hinted document's page says ${pageHints}`);
  step(`a document hinted page by page: page 2's centre turned blue (${blued.map(Math.round)}), page 1 kept none`);

  // A film cancelled while it runs (or waits) is stopped, not failed, and can be cancelled only once.
  await openNewJob(page);
  await page.click("#source-upload");
  await (await page.$("#files")).uploadFile(run.longFilm);
  await page.click("#new-submit");
  await until(page, "the film's Cancel button", () => document.querySelector("#job-title").textContent === "long.mkv"
    && !document.querySelector("#job-cancel").hidden, [], 30_000);
  const queued = await text(page, "#status");
  check(queued === "Job submitted.", `the status line on the submitted film's page reads ${queued}`);
  await accessible(page, "an unfinished job's page");
  // Cancel asks first, with the safe answer focused: keeping the job changes nothing; stopping it cancels.
  await page.click("#job-cancel");
  await until(page, "the question before cancelling", () => !document.querySelector("#job-cancel-confirm").hidden
    && document.querySelector("#job-cancel").hidden);
  check(await page.evaluate(focusedMatches, "#job-cancel-no"), "the safe answer is not focused");
  await accessible(page, "the question before cancelling");
  await page.keyboard.press("Enter");
  await until(page, "the question to go", () => document.querySelector("#job-cancel-confirm").hidden
    && !document.querySelector("#job-cancel").hidden);
  check(await text(page, "#job-state") !== "cancelled", "keeping the job cancelled it");
  await page.click("#job-cancel");
  await until(page, "the question again", () => !document.querySelector("#job-cancel-confirm").hidden);
  await page.click("#job-cancel-yes");
  await until(page, "the film to stop", () => document.querySelector("#job-state").textContent === "cancelled");
  const stopped = await text(page, "#job-error");
  check(stopped === "Stopped: cancelled by request", `the cancelled film's line reads ${stopped}`);
  check(await page.$eval("#job-cancel", (node) => node.hidden), "a cancelled job still offers Cancel");
  await accessible(page, "a cancelled job's page");
  step("a film cancelled from its page, after its question, is stopped");

  // A submission that fails half-way (the queue lost between two jobs, played here by answering the second
  // POST /jobs as the API does then) says which jobs were queued, so that submitting again does not queue them twice.
  await openNewJob(page);
  await (await page.$("#files")).uploadFile(run.photo, run.secondPhoto);
  let jobsPosted = 0;
  await page.setRequestInterception(true);
  page.on("request", (request) => {
    if (request.isInterceptResolutionHandled()) return;
    const jobPost = request.method() === "POST" && new URL(request.url()).pathname === "/api/v1/jobs";
    if (jobPost && ++jobsPosted === 2) {
      request.respond({ status: 503, contentType: "application/json", headers: { "Retry-After": "5" },
        body: JSON.stringify({ detail: "queue: job queue unreachable; retry later" }) });
    } else {
      request.continue();
    }
  });
  await page.click("#new-submit");
  await until(page, "the half-way error", () => !document.querySelector("#new-error").hidden, [], 30_000);
  await page.setRequestInterception(false);
  const halfWay = await text(page, "#new-error");
  check(halfWay === "1 of 2 jobs submitted (see Jobs); the others were not: queue: job queue unreachable; retry later",
    `the half-way error reads ${halfWay}`);
  await accessible(page, "the new-job form with an error");
  await page.type("#opt-model", " ");
  check(await page.$eval("#new-error", (node) => node.hidden), "the error stayed beside a changed form");
  step("a submission that fails half-way names the jobs it queued; the error leaves when the form changes");

  // The same URL opened in a new tab (a first load, no token kept for that tab): signed in, the token gone, and,
  // keyboard first, the skip link is the first Tab stop.
  const tab = await browser.newPage();
  tab.on("pageerror", (error) => errors.push(String(error.message || error)));
  await tab.setViewport({ width: 1366, height: 768 });
  await tab.goto(`${run.url}/#token=${run.token}`);
  await signedIn(tab, "opened in a new tab");
  await tab.keyboard.press("Tab");
  check(await tab.evaluate(focusedMatches, "a.skip"), "the first Tab stop is not the skip link");
  step("signed in from the URL in a new tab; the skip link is the first Tab stop");

  // On a phone the jobs list and a photo's page fit the screen's width: nothing to scroll sideways.
  await tab.setViewport({ width: 390, height: 844 });
  const fits = () => document.documentElement.scrollWidth <= document.documentElement.clientWidth;
  const portrait = await linkNamed(tab, "#jobs-body", "portrait.png"); // the list filled in, then measured
  await until(tab, "the jobs list to fit a phone's width", fits);
  await portrait.click();
  await until(tab, "a photo's page on a phone", () => document.querySelector("figure.compare img.after")?.complete
    && document.querySelector("figure.compare img.after").naturalWidth > 0, [], PREVIEW_TIMEOUT_MS);
  await until(tab, "a photo's page to fit a phone's width", fits);
  step("the jobs list and a photo's page fit a phone's width");
  step(`axe-core found nothing on ${audited.length} views: ${audited.join(", ")}`);
}

const browser = await puppeteer.launch(run.browser === "firefox"
  ? { browser: "firefox", executablePath: run.executable, headless: true, extraPrefsFirefox: FIREFOX_PREFS }
  : { browser: "chrome", executablePath: run.executable, headless: true, args: CHROMIUM_ARGS,
    downloadBehavior: { policy: "allow", downloadPath: run.downloads } });
const page = await browser.newPage();
const errors = [];
page.on("pageerror", (error) => errors.push(String(error.message || error)));
await page.setViewport({ width: 1366, height: 768 }); // a laptop screen
let status = 0;
try {
  console.log(`${run.browser} ${await browser.version()}`);
  await scenario(browser, page, (line) => console.log(`ok: ${line}`));
  check(errors.length === 0, `JavaScript errors on the page: ${errors.join("; ")}`);
} catch (error) {
  status = 1;
  console.log(`FAILED: ${error instanceof Failure ? error.message : error.stack}`);
  await page.screenshot({ path: run.screenshot, fullPage: true }).catch(() => {});
  console.log(`screenshot of the failed browser test: ${run.screenshot}`);
} finally {
  await browser.close();
}
process.exit(status);
