/* Tinct console: plain JavaScript over the /api/v1 routes, no build step.
 *
 * The token lives in sessionStorage (this tab only). `make serve` prints a URL with it in the fragment
 * (#token=...), which browsers never send to a server; it is moved to sessionStorage and wiped from the address
 * bar at once. Images and the event stream are fetched with the Authorization header (an <img src> or an
 * EventSource cannot send one), so previews become blob: URLs and events are parsed from a fetch body.
 */
"use strict";

const API = "/api/v1";
const FINISHED = ["succeeded", "failed", "cancelled"];
const $ = (id) => document.getElementById(id);
const state = { token: null, me: null, abort: null, poll: null, cursor: null, blobs: [], editor: null, guide: null,
  arrival: null };

function setStatus(text) { $("status").textContent = text || ""; }

// A status said as the console moves to another view (a job just submitted, on the new job's page): a view's change
// clears the status line, which would take this one with it.
function goTo(hash, status) {
  if (location.hash === hash) { setStatus(status); return; }  // no view's change to wait for
  state.arrival = status;
  location.hash = hash;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  // Routes are given relative to /api/v1; URLs the API hands out (previews, results) are already absolute paths.
  const url = path.startsWith(API + "/") ? path : API + path;
  const response = await fetch(url, Object.assign({}, options, { headers }));
  if (response.status === 401) { signOut("Your token was not accepted; sign in again."); throw new ApiError(401, "unauthorized"); }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON: keep the status text */ }
    throw new ApiError(response.status, detail);
  }
  return response;
}

async function apiJson(path, options) { return (await api(path, options)).json(); }

async function blobUrl(path) {
  const url = URL.createObjectURL(await (await api(path)).blob());
  state.blobs.push(url);
  return url;
}

function signOut(message) {
  sessionStorage.removeItem("tinct-token");
  state.token = null; state.me = null;
  $("who").hidden = true;
  show("signin");
  if (message) setStatus(message);
}

async function signIn(token) {
  state.token = token;
  try {
    state.me = await apiJson("/whoami");
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) setStatus("Cannot reach the service: " + e.message);
    return false;
  }
  sessionStorage.setItem("tinct-token", token);
  $("who-name").textContent = "Signed in as " + state.me.name;
  $("who").hidden = false;
  return true;
}

function show(view) {
  for (const name of ["signin", "jobs", "job", "new", "hints", "references"]) $("view-" + name).hidden = name !== view;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
}

function stopLive() {
  if (state.abort) state.abort.abort();
  if (state.poll) clearInterval(state.poll);
  state.abort = null; state.poll = null; state.editor = null;
  for (const url of state.blobs) URL.revokeObjectURL(url);
  state.blobs = [];
}

// `make serve` prints a URL with the token in its fragment (#token=...). It arrives on the first load, or as a
// hash change when pasted into a tab already on the console: either way it leaves the address bar at once.
async function signInFromAddress() {
  const fragment = location.hash.match(/^#token=([^&]+)/);
  if (!fragment) return false;
  history.replaceState(null, "", location.pathname + "#/jobs");
  await signIn(decodeURIComponent(fragment[1]));
  return true;
}

async function route(event) {
  stopLive();
  await signInFromAddress();
  if (!state.token) { show("signin"); $("token").focus(); return; }
  const hash = location.hash || "#/jobs";
  const match = hash.match(/^#\/jobs\/([0-9a-f]{24})$/);
  // A photo job's hints, or (with the index of one of its photos) those of one photo of a collection.
  const hintsMatch = hash.match(/^#\/jobs\/([0-9a-f]{24})\/hints(?:\/(\d+))?$/);
  const referencesMatch = hash.match(/^#\/jobs\/([0-9a-f]{24})\/references$/);
  setStatus(state.arrival);
  state.arrival = null;
  if (match) { show("job"); await jobView(match[1]); }
  else if (hintsMatch) {
    show("hints");
    await hintsView(hintsMatch[1], hintsMatch[2] === undefined ? null : parseInt(hintsMatch[2], 10));
  }
  else if (referencesMatch) { show("references"); await referencesView(referencesMatch[1]); }
  else if (hash === "#/new") { show("new"); newView(); }
  else { show("jobs"); await jobsView(); }
  // After a navigation (not the first load, where the skip link should stay the first Tab stop), move focus to
  // the new view so that keyboard and screen-reader users start there.
  if (event) $("main").focus({ preventScroll: true });
}

// ------------------------------------------------------------------------------------------------- jobs list

function nameOf(uri) {
  const trimmed = uri.endsWith("/") ? uri.slice(0, -1) : uri;
  return trimmed.slice(trimmed.lastIndexOf("/") + 1) + (uri.endsWith("/") ? "/" : "");
}

function progressText(job) {
  const p = job.progress;
  if (!p.total) return job.state === "queued" ? "waiting for a worker" : "";
  let text = `${p.done}/${p.total} ${p.unit}`;
  if (job.state === "running" && p.eta_s) text += `, about ${Math.ceil(p.eta_s)} s left`;
  return text;
}

function progressBar(job, label) {
  const bar = el("progress", { max: String(job.progress.total || 1), "aria-label": label });
  if (job.progress.total || job.state === "succeeded") bar.value = job.state === "succeeded" ? (job.progress.total || 1) : job.progress.done;
  return bar;
}

function jobRow(job) {
  const when = new Date(job.updated_at * 1000);
  return el("tr", { "data-job": job.id },
    el("td", { class: "input" }, el("a", { href: "#/jobs/" + job.id, text: nameOf(job.input) })),
    el("td", { text: job.kind }),
    el("td", {}, el("span", { class: "badge " + job.state, text: job.state })),
    el("td", {}, progressBar(job, "Progress of " + nameOf(job.input)), " ", el("span", { class: "hint", text: progressText(job) })),
    el("td", { text: when.toLocaleTimeString() }));
}

async function loadJobs(append) {
  const filter = $("state-filter").value;
  const query = new URLSearchParams({ limit: "25" });
  if (filter) query.set("state", filter);
  if (append && state.cursor !== null) query.set("cursor", String(state.cursor));
  const page = await apiJson("/jobs?" + query);
  const body = $("jobs-body");
  const shown = Array.from(body.children).map((row) => row.dataset.job);
  const same = !append && shown.length === page.jobs.length && page.jobs.every((job, i) => job.id === shown[i]);
  if (same) {
    // The same jobs in the same order: update the rows in place, so a keyboard user's focus stays where it is.
    page.jobs.forEach((job, i) => {
      const fresh = jobRow(job).children;
      const cells = body.children[i].children;
      for (let c = 1; c < cells.length; c++) cells[c].replaceWith(fresh[c].cloneNode(true));
    });
  } else {
    if (!append) body.replaceChildren();
    for (const job of page.jobs) body.append(jobRow(job));
  }
  state.cursor = page.next;
  $("jobs-more").hidden = page.next === null || page.jobs.length === 0;
  $("jobs-empty").hidden = body.children.length > 0;
}

async function jobsView() {
  try { await loadJobs(false); } catch (e) { setStatus("Could not load jobs: " + e.message); return; }
  // Progress of the jobs on screen: a light poll of the list (one request every 2 s) rather than one event
  // stream per row; the job page streams events.
  state.poll = setInterval(() => {
    if (document.hidden) return;
    const running = document.querySelector("#jobs-body .badge.queued, #jobs-body .badge.running");
    if (running) loadJobs(false).catch(() => {});
  }, 2000);
}

// -------------------------------------------------------------------------------------------------- job page

function renderJob(job) {
  $("job-title").textContent = nameOf(job.input);
  const badge = $("job-state");
  badge.textContent = job.state; badge.className = "badge " + job.state;
  $("job-io").textContent = `${job.kind}: ${job.input} \u2192 ${job.output}`;
  $("job-guidance").textContent = guidanceText(job.options);
  $("job-guidance").hidden = !$("job-guidance").textContent;
  const bar = $("job-progress");
  bar.max = job.progress.total || 1;
  bar.value = job.state === "succeeded" ? bar.max : job.progress.done;
  $("job-progress-text").textContent = progressText(job);
  // Cancel asks first (a film's work so far is discarded); live updates leave an open question as it is.
  if (FINISHED.includes(job.state)) $("job-cancel-confirm").hidden = true;
  $("job-cancel").hidden = FINISHED.includes(job.state) || !$("job-cancel-confirm").hidden;
  $("job-error").textContent = jobErrorText(job);
  $("job-error").hidden = !$("job-error").textContent;
  $("job-error").classList.toggle("stopped", job.state !== "failed");
  $("job-failures").replaceChildren(...job.failures.map((f) => el("li", { text: `${nameOf(f.item)}: ${f.reason}` })));
}

// What a restorer gave the job besides the model: its colour hints (a document's, page by page) or reference frames.
function guidanceText(options) {
  const count = (hints) => (hints.points || []).length + (hints.regions || []).length;
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const hints = options.hints;
  if (hints && hints.pages) {
    const pages = Object.keys(hints.pages).sort((a, b) => a - b);
    const total = pages.reduce((sum, page) => sum + count(hints.pages[page]), 0);
    return `With ${plural(total, "colour hint")} on ${pages.length === 1 ? "page" : "pages"} ${pages.join(", ")}.`;
  }
  if (hints && count(hints)) return `With ${plural(count(hints), "colour hint")}.`;
  const references = options.references || [];
  if (references.length) {
    return `Guided by ${plural(references.length, "reference frame")}, at ${references.map((r) => r.time).join(", ")}.`;
  }
  return "";
}

// A cancelled job was stopped, not failed; a collection that succeeded with some files failed lists them below.
function jobErrorText(job) {
  if (job.state === "failed") return "Failed: " + job.error;
  if (job.state === "cancelled") return "Stopped: " + job.error;
  if (job.state === "succeeded" && job.failures.length) {
    return `Finished, but ${job.failures.length} of ${job.progress.total} ${job.progress.unit} failed:`;
  }
  return "";
}

async function followEvents(jobId, onJob) {
  const controller = new AbortController();
  state.abort = controller;
  const response = await api(`/jobs/${jobId}/events`, { signal: controller.signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (event === "job" && data) onJob(JSON.parse(data));
    }
  }
}

async function jobView(jobId) {
  for (const id of ["previews", "results", "results-all", "job-failures"]) $(id).replaceChildren();
  for (const id of ["previews-title", "previews-hint", "previews-more", "results-title", "results-all", "hints-link",
    "references-link", "job-cancel-confirm"]) {
    $(id).hidden = true;
  }
  let job;
  try { job = await apiJson("/jobs/" + jobId); } catch (e) { setStatus("Could not load the job: " + e.message); return; }
  renderJob(job);
  const askToCancel = (asking) => {
    $("job-cancel-confirm").hidden = !asking;
    $("job-cancel").hidden = asking;
    $(asking ? "job-cancel-no" : "job-cancel").focus();  // the safe choice first, for a keyboard user
  };
  $("job-cancel").onclick = () => askToCancel(true);
  $("job-cancel-no").onclick = () => askToCancel(false);
  $("job-cancel-yes").onclick = async () => {
    $("job-cancel-confirm").hidden = true;
    try { renderJob(await apiJson("/jobs/" + jobId, { method: "DELETE" })); setStatus("Job cancelled."); }
    catch (e) { setStatus("Could not cancel: " + e.message); renderJob(job); }
  };
  if (!FINISHED.includes(job.state)) {
    try {
      await followEvents(jobId, (update) => { job = update; renderJob(job); });
    } catch (e) {
      if (e.name === "AbortError") return;  // the user went to another page
      setStatus("Lost the job's event stream: " + e.message);
    }
  }
  if (job.state === "succeeded") {
    setStatus("Job finished.");
    if (job.kind === "image") { $("hints-open").href = `#/jobs/${jobId}/hints`; $("hints-link").hidden = false; }
    if (job.kind === "video") {
      $("references-open").href = `#/jobs/${jobId}/references`;
      $("references-link").hidden = false;
    }
    await Promise.all([showPreviews(jobId), showResults(jobId, job.kind)]);
  } else if (job.state === "failed") {
    setStatus("Job failed.");
  }
}

function compareFigure(preview, film, hintsHref) {
  // Not draggable: a drag on the picture moves the divider, where it would start the browser's drag of the image
  // (which cancels the pointer's events after its first move, in Firefox and Chromium alike).
  const before = el("img", { class: "before", alt: "Before: " + preview.label, draggable: "false" });
  const after = el("img", { class: "after", alt: "After: " + preview.label, draggable: "false" });
  const divider = el("div", { class: "divider" });
  const stage = el("div", { class: "stage" }, before, after, divider,
    el("span", { class: "tag b", text: "before" }), el("span", { class: "tag a", text: "after" }));
  const slider = el("input", { type: "range", min: "0", max: "100", value: "50", class: "slider",
    "aria-label": "Before and after, " + preview.label, "aria-valuetext": "50% before" });
  const place = () => {
    after.style.clipPath = `inset(0 0 0 ${slider.value}%)`;
    divider.style.left = slider.value + "%";
    slider.setAttribute("aria-valuetext", `${slider.value}% before`);
  };
  slider.addEventListener("input", place);
  // Dragging on the picture moves the slider too.
  stage.addEventListener("pointerdown", (event) => {
    const move = (e) => {
      const box = stage.getBoundingClientRect();
      slider.value = String(Math.round(Math.min(1, Math.max(0, (e.clientX - box.left) / box.width)) * 100));
      place();
    };
    event.preventDefault();  // no text selection while dragging
    move(event);
    stage.setPointerCapture(event.pointerId);
    stage.onpointermove = move;
    stage.onpointerup = stage.onpointercancel = () => { stage.onpointermove = null; };
  });
  place();
  blobUrl(preview.before).then((url) => { before.src = url; }).catch((e) => setStatus("Preview: " + e.message));
  blobUrl(preview.after).then((url) => { after.src = url; }).catch((e) => setStatus("Preview: " + e.message));
  const caption = el("figcaption", { text: preview.label });
  if (hintsHref) caption.append(" ", el("a", { href: hintsHref, text: `Correct ${preview.label} with hints` }));
  return el("figure", { class: "compare" + (film ? " frame" : "") }, stage, slider, caption);
}

async function showPreviews(jobId) {
  let data;
  try { data = await apiJson(`/jobs/${jobId}/previews`); } catch (e) { setStatus("No previews: " + e.message); return; }
  if (!data.previews.length) return;
  const film = data.kind === "video";
  $("previews-title").textContent = film ? "Before and after, frame by frame" : "Before and after";
  $("previews-title").hidden = false; $("previews-hint").hidden = false;
  const box = $("previews");
  box.className = "previews" + (film ? " film" : "");
  // A collection's photos are corrected one by one: its previews are its results, in the same order.
  const hintsOf = (p) => (data.kind === "collection" ? `#/jobs/${jobId}/hints/${p.index}` : null);
  box.replaceChildren(...data.previews.map((p) => compareFigure(p, film, hintsOf(p))));
  // A collection of hundreds is looked through a page of photos at a time.
  const more = $("previews-more");
  more.hidden = data.next === null;
  more.onclick = async () => {
    more.disabled = true;
    try {
      const page = await apiJson(`/jobs/${jobId}/previews?start=${data.next}`);
      const figures = page.previews.map((p) => compareFigure(p, film, hintsOf(p)));
      box.append(...figures);
      data.next = page.next;
      more.hidden = data.next === null;
      if (figures.length) figures[0].querySelector("input").focus();  // where the list goes on
    } catch (e) {
      setStatus("No more previews: " + e.message);
    } finally {
      more.disabled = false;
    }
  };
}

// A collection or a run of frames may have hundreds of results: the first few are listed, the rest on request.
const RESULTS_SHOWN = 10;

async function showResults(jobId, kind) {
  let data;
  try { data = await apiJson(`/jobs/${jobId}/results`); } catch (e) { return; }
  if (!data.results.length) return;
  $("results-title").hidden = false;
  // A collection's photos are corrected one by one, each from its result here.
  const collection = kind === "collection";
  const items = data.results.map((r, index) => {
    const correct = collection && r.input
      ? [" ", el("a", { href: `#/jobs/${jobId}/hints/${index}`, text: `Correct ${r.name} with hints` })] : [];
    if (r.url.startsWith("/")) {
      // A path on this server needs the token: download through fetch rather than a bare link.
      const button = el("button", { type: "button", class: "secondary", text: "Download " + r.name });
      button.addEventListener("click", async () => {
        const link = el("a", { href: await blobUrl(r.url), download: r.name });
        document.body.append(link); link.click(); link.remove();
      });
      return el("li", {}, button, ...correct, " ", el("span", { class: "hint", text: r.uri }));
    }
    return el("li", {}, el("a", { href: r.url, text: "Download " + r.name, rel: "noopener" }), ...correct,
      " ", el("span", { class: "hint", text: `${r.uri} (link valid ${Math.round(data.expires_in_s / 60)} min)` }));
  });
  if (items.length > 1) {
    $("results-all").replaceChildren(archiveButton(jobId));
    $("results-all").hidden = false;
  }
  if (items.length <= RESULTS_SHOWN) { $("results").replaceChildren(...items); return; }
  const more = el("button", { type: "button", class: "secondary", text: `Show all ${items.length} results` });
  more.addEventListener("click", () => {
    $("results").replaceChildren(...items);
    items[RESULTS_SHOWN].querySelector("a, button").focus(); // where the list goes on, not back at its top
  });
  $("results").replaceChildren(...items.slice(0, RESULTS_SHOWN), el("li", {}, more));
}

// Every result in one ZIP, streamed by the server as it writes it: the link the API signs needs no token, so the
// browser downloads it itself (to disk, as it arrives) rather than through this page's memory.
function archiveButton(jobId) {  // every result: the list stops at the API's first 1,000, the archive does not
  const button = el("button", { type: "button", class: "secondary", text: "Download every result as one ZIP" });
  button.addEventListener("click", async () => {
    try {
      const link = await apiJson(`/jobs/${jobId}/archive`, { method: "POST" });
      button.dataset.url = link.url;
      const anchor = el("a", { href: link.url, download: "" });
      document.body.append(anchor); anchor.click(); anchor.remove();
      setStatus("Downloading every result as one ZIP.");
    } catch (e) {
      setStatus("Could not download them: " + e.message);
    }
  });
  return button;
}

// ---------------------------------------------------------------------------------------------- hint editor

async function hintsView(jobId, resultIndex) {
  // The photo corrected (`target`): a photo job's own, or one of a collection's, which is colorized again on its own
  // into the collection's copy of it. A multi-page TIFF document is hinted a page at a time: `pages` holds each
  // page's hints (from 1), `hints` the shown page's: its points and its regions (polygons), and `drawing` the
  // corners of a region being placed. The photo to click on is that page's lightness, at its preview's size.
  const editor = { jobId, job: null, target: null, page: 1, pageCount: 1, pages: {}, hints: null, drawing: null,
    cross: { x: 0.5, y: 0.5 }, width: 0, height: 0, timer: null, serial: 0, shown: 0 };
  state.editor = editor;
  $("hints-back").href = "#/jobs/" + jobId;
  $("hint-error").hidden = true;
  $("hint-pages").hidden = true;
  $("hint-drawing").hidden = true;
  $("hint-mode-point").checked = true;
  $("hint-preview").removeAttribute("src");
  $("hint-photo").removeAttribute("src");
  try {
    editor.job = await apiJson("/jobs/" + jobId);
    if (resultIndex === null) {
      editor.target = { input: editor.job.input, output: editor.job.output };
    } else {
      const pair = (await apiJson(`/jobs/${jobId}/previews?start=${resultIndex}`)).previews[0];
      if (!pair || pair.index !== resultIndex || !pair.input) {
        throw new Error(`the job has no photo ${resultIndex + 1}`);
      }
      editor.target = { input: pair.input, output: pair.output };
    }
    $("hints-title").textContent = "Colour hints: " + nameOf(editor.target.input)
      + (resultIndex === null ? "" : ` (of ${nameOf(editor.job.input)})`);
    // The hints the job was submitted with, points and regions, each page's: resubmitting keeps what is not edited.
    const existing = (resultIndex === null && editor.job.options.hints) || {};
    for (const [number, hints] of Object.entries(existing.pages || { 1: existing })) {
      editor.pages[number] = pictureHints(hints);
    }
    await showPage(editor, 1);
  } catch (e) {
    setStatus("Cannot edit hints: " + e.message);
  }
}

// One of the previews' requests (the page's lightness, or its colour with hints), sent again while the server's
// rate limit turns it away.
async function previewRequest(path, options) {
  for (;;) {
    try {
      return await api(path, options);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 429)) throw e;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

async function showPage(editor, number) {
  editor.asked = number;
  const query = new URLSearchParams({ input: editor.target.input, page: String(number) });
  const response = await previewRequest("/preview/lightness?" + query);
  if (state.editor !== editor || editor.asked !== number) return;  // another view, or another page asked for since
  editor.page = number;
  editor.hints = editor.pages[number] = editor.pages[number] || pictureHints({});
  editor.drawing = null;
  editor.width = parseInt(response.headers.get("X-Photo-Width"), 10);
  editor.height = parseInt(response.headers.get("X-Photo-Height"), 10);
  editor.pageCount = parseInt(response.headers.get("X-Photo-Pages"), 10) || 1;
  const url = URL.createObjectURL(await response.blob());
  state.blobs.push(url);
  $("hint-photo").src = url;
  $("hint-photo").alt = editor.pageCount > 1 ? `Page ${number} of the document, to place colour hints on`
    : "The photo to place colour hints on";
  $("hint-photo-title").textContent = editor.pageCount > 1 ? `Page ${number}` : "Photo";
  $("hint-overlay").setAttribute("viewBox", `0 0 ${editor.width} ${editor.height}`);
  if (editor.pageCount > 1) {
    const choice = $("hint-page");
    if (choice.options.length !== editor.pageCount) {
      choice.replaceChildren(...Array.from({ length: editor.pageCount },
        (_, i) => el("option", { value: String(i + 1), text: `${i + 1} of ${editor.pageCount}` })));
    }
    choice.value = String(number);
    $("hint-pages").hidden = false;
  }
  renderHints();
  await refreshPreview();
}

function placeCross() {
  const editor = state.editor;
  $("hint-cross").style.left = editor.cross.x * 100 + "%";
  $("hint-cross").style.top = editor.cross.y * 100 + "%";
}

// A click (or Enter at the cross) at a fraction of the photo's width and height: a point, or a region's next corner.
function placeAt(fx, fy) {
  const editor = state.editor;
  if (!editor || !editor.width) return;
  const x = Math.min(editor.width - 1, Math.max(0, Math.round(fx * editor.width)));
  const y = Math.min(editor.height - 1, Math.max(0, Math.round(fy * editor.height)));
  const where = editor.pageCount > 1 ? ` on page ${editor.page}` : "";
  if ($("hint-mode-region").checked) {
    editor.drawing = editor.drawing || [];
    editor.drawing.push([x, y]);
    const region = editor.hints.regions.length + 1;
    setStatus(`Corner ${editor.drawing.length} of region ${region} placed at ${x}, ${y}${where}.`);
    renderHints();
    return;
  }
  const radius = Math.max(1, parseFloat($("hint-radius").value) || 12);
  editor.hints.points.push({ x, y, color: $("hint-colour").value, radius });
  setStatus(`Point ${editor.hints.points.length} placed at ${x}, ${y}${where}.`);
  renderHints();
  schedulePreview();
}

function finishRegion() {
  const editor = state.editor;
  if (!editor.drawing || editor.drawing.length < 3) {
    $("hint-error").textContent = "A region needs at least 3 corners.";
    $("hint-error").hidden = false;
    return;
  }
  editor.hints.regions.push({ polygon: editor.drawing, color: $("hint-colour").value });
  editor.drawing = null;
  $("hint-error").hidden = true;
  setStatus(`Region ${editor.hints.regions.length} finished.`);
  renderHints();
  schedulePreview();
  $("hint-canvas").focus();
}

function dropCorners() {
  const editor = state.editor;
  if (!editor.drawing) return;
  editor.drawing = null;
  setStatus("The region's corners were dropped.");
  renderHints();
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

// A colour input, radius input (points) and Remove button for one hint in its list; ``hints`` is its array.
function hintItem(kind, hints, index, text, onColour, radius) {
  const hint = hints[index];
  const colour = el("input", { type: "color", id: `hint-${kind}-colour-${index}`, value: hint.color });
  // The picker belongs to this input: re-rendering the list here would close it after the first change.
  colour.addEventListener("input", () => { hint.color = colour.value; onColour(); schedulePreview(); });
  const fields = [el("span", { text }), el("label", { for: colour.id, text: "colour" }), colour];
  if (radius) {
    const size = el("input", { type: "number", id: `hint-${kind}-radius-${index}`, min: "1", max: "500",
      value: String(hint.radius) });
    size.addEventListener("change", () => {
      hint.radius = Math.max(1, parseFloat(size.value) || 1);
      schedulePreview();
    });
    fields.push(el("label", { for: size.id, text: "radius" }), size);
  }
  const remove = el("button", { type: "button", class: "secondary", text: "Remove",
    "aria-label": `Remove ${kind} ${index + 1}` });
  remove.addEventListener("click", () => {
    hints.splice(index, 1);
    renderHints();
    schedulePreview();
    // The button went with its hint: keep a keyboard user in the list (the next hint's Remove, or the photo).
    const next = $(`hint-${kind}s`).querySelectorAll("button")[Math.min(index, hints.length - 1)];
    (next || $("hint-canvas")).focus();
  });
  return el("li", {}, ...fields, remove);
}

function renderHints() {
  const editor = state.editor;
  const canvas = $("hint-canvas");
  const overlay = $("hint-overlay");
  const { points, regions } = editor.hints;
  for (const marker of canvas.querySelectorAll(".marker")) marker.remove();
  const shapes = regions.map((region) => svg("polygon", { points: region.polygon.join(" "), fill: region.color,
    "fill-opacity": "0.35", stroke: region.color, "stroke-width": "2", "vector-effect": "non-scaling-stroke" }));
  if (editor.drawing) {
    shapes.push(svg("polyline", { points: editor.drawing.join(" "), class: "drawing", "stroke-width": "2",
      "vector-effect": "non-scaling-stroke" }));
    for (const [x, y] of editor.drawing) {
      shapes.push(svg("circle", { cx: x, cy: y, r: Math.max(editor.width, editor.height) / 120, fill: "#fff" }));
    }
  }
  overlay.replaceChildren(...shapes);
  $("hint-points").replaceChildren(...points.map((point, index) => {
    const marker = el("span", { class: "marker", "aria-hidden": "true" });
    if (editor.width) {
      marker.style.left = (point.x / editor.width) * 100 + "%";
      marker.style.top = (point.y / editor.height) * 100 + "%";
      marker.style.background = point.color;
      canvas.append(marker);
    }
    return hintItem("point", points, index, `Point ${index + 1} at ${point.x}, ${point.y}`,
      () => { marker.style.background = point.color; }, true);
  }));
  $("hint-regions").replaceChildren(...regions.map((region, index) => hintItem("region", regions, index,
    `Region ${index + 1}, ${region.polygon.length} corners`, () => {
      shapes[index].setAttribute("fill", region.color);
      shapes[index].setAttribute("stroke", region.color);
    }, false)));
  $("hint-drawing").hidden = !editor.drawing;
  if (editor.drawing) {
    $("hint-drawing-text").textContent = `Region ${regions.length + 1}: ${editor.drawing.length} corners placed.`;
  }
  $("hint-none").textContent = editor.pageCount > 1 ? "No points or regions on this page yet."
    : "No points or regions yet.";
  $("hint-none").hidden = points.length + regions.length > 0;
}

// One picture's hints as the API takes them (and a copy of them as the editor keeps them).
function pictureHints(hints) {
  return {
    points: (hints.points || []).map((p) => ({ x: p.x, y: p.y, color: p.color, radius: p.radius })),
    regions: (hints.regions || []).map((r) => ({ polygon: r.polygon.map(([x, y]) => [x, y]), color: r.color })),
  };
}

const hintCount = (hints) => hints.points.length + hints.regions.length;

// What the job is submitted with: a picture's hints, or a document's page by page (pages without any left out).
function jobHints(editor) {
  if (editor.pageCount === 1) return hintCount(editor.hints) ? pictureHints(editor.hints) : null;
  const pages = {};
  for (const [number, hints] of Object.entries(editor.pages)) if (hintCount(hints)) pages[number] = pictureHints(hints);
  return Object.keys(pages).length ? { pages } : null;
}

function schedulePreview() {
  const editor = state.editor;
  clearTimeout(editor.timer);
  editor.timer = setTimeout(() => refreshPreview().catch(() => {}), 250);  // a burst of edits, one preview
}

async function refreshPreview() {
  const editor = state.editor;
  const serial = ++editor.serial;
  const page = editor.page;
  const options = { model: editor.job.options.model };
  if (editor.job.options.render_size) options.render_size = editor.job.options.render_size;
  $("hint-timing").textContent = "(updating\u2026)";
  const began = performance.now();
  let response;
  try {
    response = await previewRequest("/preview", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ input: editor.target.input, page, hints: pictureHints(editor.hints), options }) });
  } catch (e) {
    $("hint-error").textContent = "Preview failed: " + e.message;
    $("hint-error").hidden = false;
    $("hint-timing").textContent = "";
    return;
  }
  // Another view, another page of the document, or a newer preview already shown: this one is out of date.
  if (state.editor !== editor || editor.page !== page || serial < editor.shown) return;
  editor.shown = serial;
  const url = URL.createObjectURL(await response.blob());
  state.blobs.push(url);
  $("hint-preview").src = url;
  $("hint-preview").dataset.serial = String(serial);
  $("hint-error").hidden = true;
  $("hint-timing").textContent = `(${((performance.now() - began) / 1000).toFixed(1)} s)`;
}

async function submitHints() {
  const editor = state.editor;
  const options = Object.assign({}, editor.job.options, { hints: jobHints(editor) });
  const counts = Object.values(editor.pages).map(hintCount).filter((count) => count > 0);
  const total = counts.reduce((sum, count) => sum + count, 0);
  try {
    const created = await apiJson("/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ input: editor.target.input, output: editor.target.output, kind: "image", options }) });
    const pages = editor.pageCount === 1 ? "" : counts.length === 1 ? " on 1 page" : ` on ${counts.length} pages`;
    goTo("#/jobs/" + created.id, `Submitted with ${total === 1 ? "1 colour hint" : total + " colour hints"}${pages}.`);
  } catch (e) {
    $("hint-error").textContent = "Not submitted: " + e.message;
    $("hint-error").hidden = false;
  }
}

// A point pressed on (within MARKER_REACH pixels of its marker) and moved is dragged to where it is let go; a press
// that does not move it is a click, which places a hint as anywhere else.
const MARKER_REACH = 10;

function dragPoint(event) {
  const editor = state.editor;
  if (!editor || !editor.width || event.button !== 0) return;
  const box = $("hint-photo").getBoundingClientRect();
  const clamp = (value, size) => Math.min(size - 1, Math.max(0, Math.round(value)));
  const at = (e) => [clamp((e.clientX - box.left) / box.width * editor.width, editor.width),
    clamp((e.clientY - box.top) / box.height * editor.height, editor.height)];
  const distance = (p) => Math.hypot((p.x / editor.width) * box.width - (event.clientX - box.left),
    (p.y / editor.height) * box.height - (event.clientY - box.top));
  const point = editor.hints.points.reduce((near, p) => (distance(p) < (near ? distance(near) : MARKER_REACH) ? p
    : near), null);
  if (!point) return;
  event.preventDefault();  // no text selection while dragging
  const canvas = $("hint-canvas");
  const from = [event.clientX, event.clientY];
  let moved = false;
  canvas.setPointerCapture(event.pointerId);
  canvas.onpointermove = (e) => {
    moved = moved || Math.hypot(e.clientX - from[0], e.clientY - from[1]) > 3;
    if (moved) { [point.x, point.y] = at(e); renderHints(); }
  };
  canvas.onpointerup = canvas.onpointercancel = () => {
    canvas.onpointermove = canvas.onpointerup = canvas.onpointercancel = null;
    if (!moved) return;
    editor.dragged = true;  // the click that ends a drag (dispatched before any timer) places nothing
    setTimeout(() => { editor.dragged = false; });
    setStatus(`Point ${editor.hints.points.indexOf(point) + 1} moved to ${point.x}, ${point.y}.`);
    schedulePreview();
  };
}

function bindHintEditor() {
  const canvas = $("hint-canvas");
  canvas.addEventListener("pointerdown", dragPoint);
  canvas.addEventListener("click", (event) => {
    if (state.editor && state.editor.dragged) { state.editor.dragged = false; return; }
    const box = $("hint-photo").getBoundingClientRect();
    placeAt((event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height);
  });
  canvas.addEventListener("keydown", (event) => {
    const editor = state.editor;
    if (!editor) return;
    const step = event.shiftKey ? 0.1 : 0.02;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (moves[event.key]) {
      event.preventDefault();
      editor.cross.x = Math.min(1, Math.max(0, editor.cross.x + moves[event.key][0]));
      editor.cross.y = Math.min(1, Math.max(0, editor.cross.y + moves[event.key][1]));
      placeCross();
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      placeAt(editor.cross.x, editor.cross.y);
    } else if (event.key === "Escape") {
      dropCorners();
    }
  });
  canvas.addEventListener("focus", placeCross);
  $("hint-mode-point").addEventListener("change", dropCorners);  // points now: a region left half-placed goes
  $("hint-region-finish").addEventListener("click", finishRegion);
  $("hint-region-cancel").addEventListener("click", () => { dropCorners(); $("hint-canvas").focus(); });
  $("hint-page").addEventListener("change", () => {
    const editor = state.editor;
    showPage(editor, parseInt($("hint-page").value, 10)).catch((e) => {
      $("hint-error").textContent = "Cannot show the page: " + e.message;
      $("hint-error").hidden = false;
    });
  });
  $("hint-submit").addEventListener("click", submitHints);
}

// ----------------------------------------------------------------------------------------- reference frames

async function referencesView(jobId) {
  // A film guided by colour pictures of some of its frames (options.references): the job's own, as submitted, to
  // which a restorer adds (a picture uploaded to their inbox, or named by URI) or from which they remove, then
  // resubmits the film with them.
  const guide = { jobId, job: null, references: [] };
  state.guide = guide;
  $("references-back").href = "#/jobs/" + jobId;
  $("references-error").hidden = true;
  const uploads = Boolean(state.me && state.me.uploads);
  $("reference-file").disabled = !uploads;
  $("reference-file-hint").textContent = uploads ? "Uploaded to your inbox when added."
    : "Uploads are not configured on this server: give the picture's URI.";
  try {
    guide.job = await apiJson("/jobs/" + jobId);
    if (guide.job.kind !== "video") throw new Error(`reference frames guide films; this job is a ${guide.job.kind}`);
    $("references-title").textContent = "Reference frames: " + nameOf(guide.job.input);
    guide.references = (guide.job.options.references || []).map((r) => ({ time: r.time, image: r.image }));
  } catch (e) {
    setStatus("Cannot guide the film: " + e.message);
    return;
  }
  renderReferences();
  await showStripTimes(guide);
}

// The film's strip of frames (its previews, each at its time), each a button that gives the time field its time: a
// restorer finds the shot there rather than in another program. A run of frames' strip has no times to give.
async function showStripTimes(guide) {
  $("reference-strip").replaceChildren();
  let strip;
  try { strip = (await apiJson(`/jobs/${guide.jobId}/previews`)).previews.filter((p) => p.time !== null); }
  catch (e) { return; }  // no strip (the film has not finished): times are typed
  if (state.guide !== guide) return;
  $("reference-strip").replaceChildren(...strip.map((pair) => {
    const time = String(Math.round(pair.time * 1000) / 1000);
    const picture = el("img", { alt: "", draggable: "false" });
    blobUrl(pair.before).then((url) => { picture.src = url; }).catch(() => {});
    const button = el("button", { type: "button", class: "secondary", "aria-label": `Use the frame at ${time} s` },
      picture, el("span", { text: `${time} s` }));
    button.addEventListener("click", () => { $("reference-time").value = time; $("reference-time").focus(); });
    return el("li", {}, button);
  }));
}

function renderReferences() {
  const guide = state.guide;
  $("references").replaceChildren(...guide.references.map((reference, index) => {
    const remove = el("button", { type: "button", class: "secondary", text: "Remove",
      "aria-label": `Remove the reference frame at ${reference.time}` });
    remove.addEventListener("click", () => {
      guide.references.splice(index, 1);
      renderReferences();
      const next = $("references").querySelectorAll("button")[Math.min(index, guide.references.length - 1)];
      (next || $("reference-time")).focus();
    });
    return el("li", {}, el("span", { text: `At ${reference.time}: ${nameOf(reference.image)}` }), remove);
  }));
  $("references-none").hidden = guide.references.length > 0;
}

async function addReference() {
  const guide = state.guide;
  const time = $("reference-time").value.trim();
  const file = $("reference-file").files[0];
  const uri = $("reference-uri").value.trim();
  const error = $("references-error");
  error.hidden = true;
  try {
    if (!time) throw new Error("give the frame's time: seconds (12.5) or a frame number (frame:300)");
    if (!file && !uri) throw new Error("choose the colour picture, or give its URI");
    let image = uri;
    if (file) {
      setStatus(`Uploading ${file.name}\u2026`);
      image = (await apiJson("/uploads?name=" + encodeURIComponent(file.name),
        { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } })).uri;
    }
    guide.references.push({ time, image });
    $("reference-time").value = ""; $("reference-file").value = ""; $("reference-uri").value = "";
    renderReferences();
    setStatus(`Reference frame at ${time} added.`);
  } catch (e) {
    error.textContent = "Not added: " + e.message;
    error.hidden = false;
    setStatus("");
  }
}

async function submitReferences() {
  const guide = state.guide;
  const references = guide.references.length ? guide.references.map((r) => ({ time: r.time, image: r.image })) : null;
  const options = Object.assign({}, guide.job.options, { references });
  try {
    const created = await apiJson("/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ input: guide.job.input, output: guide.job.output, kind: "video", options }) });
    const count = guide.references.length;
    goTo("#/jobs/" + created.id, `Submitted with ${count === 1 ? "1 reference frame" : count + " reference frames"}.`);
  } catch (e) {
    $("references-error").textContent = "Not submitted: " + e.message;
    $("references-error").hidden = false;
  }
}

function bindReferences() {
  $("reference-add").addEventListener("click", addReference);
  $("references-submit").addEventListener("click", submitReferences);
}

// --------------------------------------------------------------------------------------------------- new job

function newView() {
  const me = state.me || {};
  // The models a job may name (the shipped one and the model store's), offered as the model field is typed in.
  apiJson("/models").then((data) => {
    $("model-names").replaceChildren(...data.models.map((model) => el("option", { value: model.name })));
  }).catch((e) => setStatus("The model store could not be listed: " + e.message));
  if (!$("output-uri").value && me.results) $("output-uri").value = me.results;
  $("source-upload").disabled = !me.uploads;
  if (!me.uploads) { $("source-uri").checked = true; }
  $("upload-limit").textContent = me.uploads ? `Up to ${(me.max_upload_bytes / 1048576).toFixed(0)} MiB a file.` :
    "Uploads are not configured on this server.";
  toggleSource();
  $("new-error").hidden = true;
}

function toggleSource() {
  const upload = $("source-upload").checked;
  $("upload-field").hidden = !upload; $("uri-field").hidden = upload;
}

function options() {
  const result = { model: $("opt-model").value.trim() || "default", recolor: $("opt-recolor").checked };
  const smoothing = parseFloat($("opt-smoothing").value);
  if (!Number.isNaN(smoothing)) result.smoothing = smoothing;
  if ($("opt-format").value) result.format = $("opt-format").value;
  if ($("opt-codec").value !== "source") result.codec = $("opt-codec").value;
  const crf = parseInt($("opt-crf").value, 10);
  if (!Number.isNaN(crf)) result.crf = crf;
  return result;
}

async function submitNew(event) {
  event.preventDefault();
  const error = $("new-error");
  error.hidden = true;
  const button = $("new-submit");
  button.disabled = true;
  const ids = [];
  let inputs = [];
  try {
    const output = $("output-uri").value.trim();
    if ($("source-upload").checked) {
      const files = Array.from($("files").files);
      if (!files.length) throw new Error("choose at least one file to upload");
      for (const [i, file] of files.entries()) {
        setStatus(`Uploading ${file.name} (${i + 1} of ${files.length})\u2026`);
        const uploaded = await apiJson("/uploads?name=" + encodeURIComponent(file.name),
          { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
        inputs.push(uploaded.uri);
      }
    } else {
      inputs = [$("input-uri").value.trim()];
    }
    for (const input of inputs) {
      const job = await apiJson("/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ input, output, options: options() }) });
      ids.push(job.id);
    }
    $("files").value = "";
    if (ids.length === 1) goTo("#/jobs/" + ids[0], "Job submitted.");
    else goTo("#/jobs", `${ids.length} jobs submitted.`);
  } catch (e) {
    // Jobs already queued stay queued: say which, so that submitting again does not queue them twice.
    error.textContent = ids.length ? `${ids.length} of ${inputs.length} jobs submitted (see Jobs); the others were `
      + "not: " + e.message : "Not submitted: " + e.message;
    error.hidden = false;
    setStatus("");
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------------------ start

async function start() {
  if (!(await signInFromAddress())) {
    const saved = sessionStorage.getItem("tinct-token");
    if (saved) await signIn(saved);
  }
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (await signIn($("token").value.trim())) { $("token").value = ""; location.hash = "#/jobs"; await route(); }
    else if (!state.token || !state.me) { show("signin"); setStatus("That token was not accepted."); }
  });
  $("sign-out").addEventListener("click", () => { stopLive(); signOut("Signed out."); });
  $("state-filter").addEventListener("change", () => loadJobs(false).catch((e) => setStatus(e.message)));
  $("jobs-more").addEventListener("click", () => loadJobs(true).catch((e) => setStatus(e.message)));
  for (const radio of document.querySelectorAll("input[name=source]")) radio.addEventListener("change", toggleSource);
  $("new-form").addEventListener("submit", submitNew);
  $("new-form").addEventListener("input", () => { $("new-error").hidden = true; });  // no stale error beside new values
  bindHintEditor();
  bindReferences();
  window.addEventListener("hashchange", route);
  // The skip link must not change the hash: that would be read as a navigation to an unknown view.
  document.querySelector("a.skip").addEventListener("click", (event) => { event.preventDefault(); $("main").focus(); });
  await route();
}

document.addEventListener("DOMContentLoaded", start);
