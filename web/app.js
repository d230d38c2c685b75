// Spotter search page: plain JavaScript, no build step, no external resources.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const $ = (id) => document.getElementById(id);
const grid = $("grid"), status = $("status"), input = $("q"), slider = $("threshold");
const PAGE = 40;

let state = { query: "", similar: null, example: null, offset: 0, next: 0, loading: false, generation: 0, threshold: null };
// The images shown, in grid order, and which one the viewer holds (for ← and →).
let shownImages = [];
let viewing = -1;

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(path, payload) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const init = payload === undefined ? { headers }
    : { method: "POST", headers: { ...headers, "Content-Type": "application/json" }, body: JSON.stringify(payload) };
  const res = await fetch(withToken(path), init);
  let body;
  try { body = await res.json(); } catch { body = { error: res.statusText }; }
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

// POST of a multipart form (an example image), answered like api().
async function apiForm(path, form) {
  const res = await fetch(withToken(path), { method: "POST", headers: token ? { Authorization: "Bearer " + token } : {}, body: form });
  let body;
  try { body = await res.json(); } catch { body = { error: res.statusText }; }
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

// The filter bar: capture dates (from, until: both days included), camera, folder.
const FILTERS = ["after", "until", "camera", "path", "sort"];
function filterValues() {
  const v = {};
  for (const name of FILTERS) {
    const value = $(`f-${name}`).value.trim();
    if (value) v[name] = value;
  }
  return v;
}
function addFilters(q) {
  const v = filterValues();
  if (v.after) q.set("after", v.after);
  if (v.until) q.set("before", new Date(Date.parse(v.until + "T00:00:00Z") + 86400000).toISOString().slice(0, 10));
  if (v.camera) q.set("camera", v.camera);
  if (v.path) q.set("path", v.path);
  if (v.sort) q.set("sort", v.sort);
}
// The page's URL holds the search and its filters, so a search is a link.
function syncUrl() {
  const url = new URLSearchParams();
  if (state.similar !== null) url.set("similar", state.similar);
  else if (state.query && !state.example) url.set("q", state.query);
  for (const [name, value] of Object.entries(filterValues())) url.set(name, value);
  if (token) url.set("token", token);
  history.replaceState(null, "", url.toString() ? `?${url}` : location.pathname);
}

function setStatus(text, isError = false) {
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function svgBoxes(svg, width, height, boxes, labels) {
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  boxes.forEach((b, i) => {
    const [x1, y1, x2, y2] = b.box;
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", x1); r.setAttribute("y", y1);
    r.setAttribute("width", Math.max(1, x2 - x1)); r.setAttribute("height", Math.max(1, y2 - y1));
    r.dataset.proposal = b.proposal;
    svg.appendChild(r);
    if (labels) {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", x1 + 4); t.setAttribute("y", y1 + 16 * width / Math.max(svg.clientWidth, 1));
      t.setAttribute("font-size", 14 * width / Math.max(svg.clientWidth, 1));
      t.textContent = `${i + 1}. ${b.score.toFixed(2)}`;
      svg.appendChild(t);
    }
  });
}

function card(img) {
  const el = document.createElement("button");
  el.className = "card";
  el.type = "button";
  el.title = img.path;
  el.innerHTML = `<div class="frame"><img loading="lazy" alt=""><svg></svg></div>
    <div class="meta"><span class="path"></span><span class="score"></span></div>`;
  const pic = el.querySelector("img");
  pic.src = withToken(`/api/thumbs/${img.image}`);
  pic.alt = img.path;
  svgBoxes(el.querySelector("svg"), img.width, img.height, img.boxes, false);
  el.querySelector(".path").textContent = img.path;
  el.querySelector(".score").textContent = img.score.toFixed(2);
  const position = shownImages.push(img) - 1;
  el.addEventListener("click", () => openViewer(position));
  return el;
}

async function load(reset) {
  if (!state.query && state.similar === null && !state.example) return;
  if (!reset && (state.loading || state.next === null)) return;
  const generation = reset ? ++state.generation : state.generation;
  if (reset) { state.offset = 0; state.next = 0; grid.replaceChildren(); shownImages = []; }
  state.loading = true;
  const q = new URLSearchParams({ k: PAGE, offset: state.next, group: "images" });
  if (state.threshold !== null) q.set("threshold", state.threshold);
  addFilters(q);
  let request;
  if (state.example) {
    if (state.example.box) q.set("box", state.example.box.map((v) => Math.round(v)).join(","));
    if (state.query) q.set("q", state.query);
    const form = new FormData();
    form.append("image", state.example.blob, "example");
    request = () => apiForm(`/api/search/image?${q}`, form);
  } else if (state.similar !== null) {
    request = () => api(`/api/similar/${state.similar}?${q}`);
  } else {
    q.set("q", state.query);
    request = () => api(`/api/search?${q}`);
  }
  if (reset) setStatus(state.example ? `Searching for objects ${state.example.label}…` : "Searching…");
  try {
    const result = await request();
    if (generation !== state.generation) return;
    result.images.forEach((img) => grid.appendChild(card(img)));
    state.next = result.next_offset;
    const shown = grid.children.length;
    const t = result.timings;
    if (shown === 0) {
      setStatus(`Nothing scored ${result.threshold.toFixed(2)} or more. Try other words or lower the min score.`);
    } else {
      setStatus(`${shown}${state.next !== null ? "+" : ""} ${shown === 1 && state.next === null ? "image" : "images"}${state.example ? " with objects " + state.example.label : ""} · text ${t.text_ms.toFixed(0)} ms, index ${t.ann_ms.toFixed(0)} ms, records ${t.meta_ms.toFixed(0)} ms`);
    }
  } catch (err) {
    if (generation === state.generation) {
      state.next = null; // stop paging after an error; a new search starts over
      setStatus(err.message, true);
    }
  } finally {
    if (generation === state.generation) state.loading = false;
  }
  // Keep filling while the sentinel is still visible (tall screens).
  if (state.next !== null && isVisible($("sentinel"))) load(false);
}

function isVisible(el) {
  const r = el.getBoundingClientRect();
  return r.top < innerHeight + 400;
}

function openViewer(position) {
  const img = shownImages[position];
  if (!img) return;
  viewing = position;
  const dialog = $("viewer");
  $("viewer-title").textContent = `${img.path} (${img.width}×${img.height})`;
  $("viewer-meta").textContent = photoLine(img.photo || {});
  $("viewer-position").textContent = `${position + 1} / ${shownImages.length}${state.next !== null ? "+" : ""}`;
  $("viewer-prev").disabled = position === 0;
  $("viewer-next").disabled = position === shownImages.length - 1 && state.next === null;
  const pic = $("viewer-img");
  const svg = $("viewer-boxes");
  pic.onload = () => svgBoxes(svg, img.width, img.height, img.boxes, true);
  pic.src = withToken(`/api/images/${img.image}`);
  const list = $("viewer-list");
  list.replaceChildren();
  img.boxes.forEach((b) => {
    const li = document.createElement("li");
    li.textContent = `${b.concept}: ${b.score.toFixed(3)} (objectness ${b.objectness.toFixed(2)}) at ${b.box.map((v) => Math.round(v)).join(", ")}`;
    const more = document.createElement("button");
    more.type = "button";
    more.textContent = "more like this";
    more.addEventListener("click", () => {
      dialog.close();
      state.similar = b.proposal;
      state.example = null;
      input.value = "";
      syncUrl();
      load(true);
    });
    li.appendChild(more);
    list.appendChild(li);
  });
  if (!dialog.open) dialog.showModal();
}

// When, with what and where a photo was taken, as far as its metadata says.
function photoLine(photo) {
  const parts = [];
  if (photo.taken !== undefined) {
    let when = new Date(photo.taken * 1000).toISOString().slice(0, 16).replace("T", " ");
    const offset = photo.taken_offset_minutes;
    if (offset === 0) {
      when += " UTC";
    } else if (offset !== undefined) {
      const sign = offset < 0 ? "-" : "+", abs = Math.abs(offset);
      when += ` ${sign}${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`;
    }
    parts.push(`taken ${when}${photo.taken_source === "file_modified" ? " (file time)" : ""}`);
  }
  if (photo.camera) parts.push(photo.camera);
  if (photo.gps) parts.push(`at ${photo.gps[0].toFixed(5)}, ${photo.gps[1].toFixed(5)}`);
  return parts.join(" · ");
}

// The next or previous image of the results; past the last one loaded, the next page first.
async function step(delta) {
  if (viewing < 0) return;
  const target = viewing + delta;
  if (target < 0) return;
  if (target >= shownImages.length) {
    if (state.next === null) return;
    await load(false);
  }
  openViewer(Math.min(target, shownImages.length - 1));
}

$("viewer-close").addEventListener("click", () => $("viewer").close());
$("viewer-prev").addEventListener("click", () => step(-1));
$("viewer-next").addEventListener("click", () => step(1));
$("viewer").addEventListener("close", () => { viewing = -1; });
// In the viewer: ← and → walk the results, Esc closes (the dialog's own behaviour).
$("viewer").addEventListener("keydown", (e) => {
  if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
  if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
});
$("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) $("viewer").close(); });

let timer = null;
input.addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(() => search(input.value), 250);
});
$("search-form").addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(timer); search(input.value); });

function search(text) {
  state.query = text.trim();
  state.similar = null;
  state.example = null;
  syncUrl();
  if (!state.query) { grid.replaceChildren(); setStatus("Type what you are looking for: cat, \"red car\", bike -person, 2:dog, cat"); return; }
  load(true);
}

slider.addEventListener("input", () => { $("threshold-value").textContent = Number(slider.value).toFixed(2); });
slider.addEventListener("change", () => {
  $("threshold-value").textContent = Number(slider.value).toFixed(2);
  state.threshold = Number(slider.value);
  load(true);
});

// A changed filter runs the current search again (and goes into the URL).
for (const name of FILTERS) {
  $(`f-${name}`).addEventListener("change", () => { syncUrl(); load(true); });
}
$("filters").addEventListener("submit", (e) => { e.preventDefault(); syncUrl(); load(true); });

// Search by example: an image (and a region of it) instead of, or with, text.
function searchByExample(blob, box, label) {
  state.example = { blob, box, label };
  state.similar = null;
  syncUrl();
  load(true);
}

// Draw a rectangle on the viewer's image to search for objects like that region.
(function regionDrawing() {
  const pic = $("viewer-img"), svg = $("viewer-boxes");
  let start = null, rect = null;
  const at = (e) => {
    const r = pic.getBoundingClientRect();
    return [Math.min(Math.max(e.clientX - r.left, 0), r.width), Math.min(Math.max(e.clientY - r.top, 0), r.height)];
  };
  pic.addEventListener("pointerdown", (e) => {
    if (viewing < 0 || e.button !== 0) return;
    e.preventDefault();
    pic.setPointerCapture(e.pointerId);
    start = at(e);
    rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("class", "drawing");
    svg.appendChild(rect);
  });
  pic.addEventListener("pointermove", (e) => {
    if (!start) return;
    const [x, y] = at(e);
    const img = shownImages[viewing];
    const scale = img.width / pic.getBoundingClientRect().width;
    rect.setAttribute("x", Math.min(x, start[0]) * scale);
    rect.setAttribute("y", Math.min(y, start[1]) * scale);
    rect.setAttribute("width", Math.abs(x - start[0]) * scale);
    rect.setAttribute("height", Math.abs(y - start[1]) * scale);
  });
  pic.addEventListener("pointerup", async (e) => {
    if (!start) return;
    const [x, y] = at(e);
    const from = start;
    start = null;
    rect.remove();
    if (Math.abs(x - from[0]) < 8 || Math.abs(y - from[1]) < 8) return; // a click, not a box
    const img = shownImages[viewing];
    const scale = img.width / pic.getBoundingClientRect().width;
    const box = [Math.min(x, from[0]), Math.min(y, from[1]), Math.max(x, from[0]), Math.max(y, from[1])].map((v) => v * scale);
    try {
      const res = await fetch(withToken(`/api/images/${img.image}`), { headers: token ? { Authorization: "Bearer " + token } : {} });
      if (!res.ok) throw new Error(`the image could not be read (${res.status})`);
      const blob = await res.blob();
      $("viewer").close();
      input.value = "";
      state.query = "";
      searchByExample(blob, box, `like the region of ${img.path}`);
    } catch (err) {
      setStatus(err.message, true);
    }
  });
})();

// Drop or paste an image onto the page to search by it.
function exampleFile(list) {
  return [...(list || [])].find((f) => f.type.startsWith("image/"));
}
document.addEventListener("dragover", (e) => { if (e.dataTransfer && [...e.dataTransfer.types].includes("Files")) e.preventDefault(); });
document.addEventListener("drop", (e) => {
  const file = exampleFile(e.dataTransfer && e.dataTransfer.files);
  if (!file) return;
  e.preventDefault();
  searchByExample(file, null, `like ${file.name || "the dropped image"}`);
});
document.addEventListener("paste", (e) => {
  const file = exampleFile(e.clipboardData && e.clipboardData.files);
  if (!file) return;
  e.preventDefault();
  searchByExample(file, null, "like the pasted image");
});

document.addEventListener("keydown", (e) => {
  if (e.key === "/" && document.activeElement !== input) { e.preventDefault(); input.focus(); input.select(); }
});

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) load(false);
}, { rootMargin: "400px" }).observe($("sentinel"));

// Jobs: what the server is indexing, with progress; rescan and cancel (from this machine, or
// with the token). Polled every 2 s while a job is queued or running, every 15 s otherwise.
const JOB_NAMES = { index: "Index", rescan: "Rescan", retry_failed: "Retry failed", compact: "Compact" };
let jobsTimer = null;

function jobRow(job) {
  const li = document.createElement("li");
  li.className = "job " + job.state;
  const p = job.progress || {};
  const what = JOB_NAMES[job.spec.kind] || job.spec.kind;
  const roots = (job.spec.roots || []).join(", ");
  const label = document.createElement("span");
  label.textContent = `#${job.id} ${what}${roots ? " " + roots : ""}: ${job.state.replace("_", " ")}`;
  li.append(label);
  if (job.state === "running" && p.files_total) {
    const bar = document.createElement("progress");
    bar.max = p.files_total;
    bar.value = p.files_done;
    const eta = p.eta_seconds ? `, ${Math.ceil(p.eta_seconds)} s left` : "";
    bar.title = `${p.files_done} / ${p.files_total} images${eta}`;
    li.append(bar, document.createTextNode(` ${p.files_done}/${p.files_total}${eta}`));
  } else if (job.state === "running" && p.message) {
    li.append(document.createTextNode(` (${p.message})`));
  }
  if (job.state === "done" && job.result && job.result.files_found !== undefined) {
    const r = job.result;
    li.append(document.createTextNode(` — ${r.indexed} indexed, ${r.unchanged} unchanged, ${r.failed.length} failed`));
  }
  if (job.state === "failed" && job.error) li.append(document.createTextNode(` — ${job.error}`));
  if (job.state === "queued" || job.state === "running") {
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    cancel.addEventListener("click", () => api(`/api/jobs/${job.id}/cancel`, {}).then(refreshJobs, showJobError));
    li.append(cancel);
  }
  return li;
}

function showJobError(err) { setStatus(err.message, true); }

async function refreshJobs() {
  clearTimeout(jobsTimer);
  let jobs = [];
  try {
    jobs = (await api("/api/jobs")).jobs;
  } catch (err) {
    $("jobs").hidden = true; // a server without jobs
    return;
  }
  const active = jobs.filter((j) => j.state === "queued" || j.state === "running");
  const running = active.find((j) => j.state === "running");
  const p = running && running.progress;
  $("jobs-summary").textContent = running
    ? (p && p.files_total ? `Indexing ${p.files_done}/${p.files_total}` : "Working…")
    : active.length ? `Jobs (${active.length} queued)` : "Jobs";
  $("jobs-list").replaceChildren(...jobs.slice(0, 8).map(jobRow));
  jobsTimer = setTimeout(refreshJobs, active.length ? 2000 : 15000);
}

$("jobs-rescan").addEventListener("click", () => api("/api/jobs", { kind: "rescan" }).then(refreshJobs, showJobError));
$("jobs").addEventListener("toggle", refreshJobs);

(async function init() {
  for (const name of FILTERS) if (params.get(name)) $(`f-${name}`).value = params.get(name);
  refreshJobs();
  try {
    const stats = await api("/api/stats");
    slider.value = stats.default_threshold;
    $("threshold-value").textContent = Number(slider.value).toFixed(2);
    if (!params.get("q") && params.get("similar") === null) {
      setStatus(`${stats.indexed} images, ${stats.proposals} objects indexed with model ${stats.model}. Type what you are looking for.`);
    }
  } catch (err) {
    setStatus(err.message, true);
  }
  if (params.get("similar") !== null) { state.similar = Number(params.get("similar")); load(true); }
  else if (params.get("q")) { input.value = params.get("q"); search(params.get("q")); }
})();
