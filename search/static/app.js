"use strict";
// The search page: one photo (or a stored one), filters, results by garment, like / not-it feedback,
// "Show more", a garment's photos. The URL holds what is on screen, so that Back/Forward and a
// shared link show the same results; the uploaded photo itself stays in this tab's memory.

const $ = (id) => document.getElementById(id);
const DEFAULTS = { category: "", subcategory: "", source: "shop", top: 20, group: "item",
                   like: "", item: "", photo: "", likes: "", dislikes: "" };
const state = { ...DEFAULTS };
let upload = null;          // the chosen photo (Blob), kept for Back after "more like this"
let uploadVector = null;    // its vector, from the server: liked along with the liked photos
let box = null;             // [x1, y1, x2, y2] in the photo's own pixels
let garments = [];          // the garments the server's detector found in the upload
let picked = null;          // which of them the results are for (null: a drawn box, or whole)
let pickedByHand = false;   // clicked by the user: kept when filters change
let facets = null, info = null, searchSeq = 0, shown = [], lastAnswer = null;
const maxTop = () => (info ? info.max_top : 1000);
const list = (text) => (text ? text.split(",").filter(Boolean) : []);

// ---- URL state ---------------------------------------------------------------------------------
function readUrl() {
  const p = new URLSearchParams(location.search);
  for (const k of Object.keys(DEFAULTS)) if (k !== "top") state[k] = p.has(k) ? p.get(k) : DEFAULTS[k];
  for (const k of filterNames()) if (!(k in DEFAULTS)) state[k] = p.get(k) || "";
  if (state.source === "all") state.source = "";
  if (!["shop", "consumer", ""].includes(state.source)) state.source = "shop";
  state.top = Math.min(maxTop(), Math.max(1, parseInt(p.get("top") || "20", 10) || 20));
  state.group = state.group === "none" ? "none" : "item";
}
function writeUrl(push) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) {
    if (v === DEFAULTS[k]) continue;
    p.set(k, k === "source" && v === "" ? "all" : v);
  }
  const url = location.pathname + (p.toString() ? "?" + p : "");
  if (url === location.pathname + location.search) return;
  (push ? history.pushState : history.replaceState).call(history, null, "", url);
}

// ---- status and errors -----------------------------------------------------------------------
function busy(text) { $("status").textContent = text; $("status").className = "busy"; }
function status(text) { $("status").textContent = text; $("status").className = ""; }
function showError(text) { $("error").textContent = text; $("error").classList.add("shown"); status(""); }
function clearError() { $("error").classList.remove("shown"); }
function plain(response, body) {
  // what went wrong, in words a shop assistant can act on
  const detail = body && typeof body.detail === "string" ? body.detail : "";
  switch (response.status) {
    case 400: case 408: return detail || "This photo cannot be used.";
    case 401: return "This search needs its access key.";
    case 404: return "That photo or garment is no longer in the collection.";
    case 413: return "This photo is too large" + (info ? " (the limit is " + info.max_upload_bytes / 1e6 + " MB)" : "") + ". Choose a smaller one.";
    case 415: return "The stored file of that photo is not an image.";
    case 422:
      if (body && body.known) {
        const what = (detail.match(/--(\w+)/) || [, "value"])[1];
        const value = (detail.match(/'([^']*)'/) || [, ""])[1];
        return "Unknown " + what + " " + value + ": choose one of " + body.known.join(", ") + ".";
      }
      return "Something in this search is not right: " + (detail || "check the filters") + ".";
    case 503: return "The search is busy; try again in a moment.";
    default: return "The search did not work (HTTP " + response.status + "). Try again, or ask whoever runs it.";
  }
}
async function api(url, options) {
  let response;
  try { response = await fetch(url, { credentials: "same-origin", ...options }); }
  catch (e) { throw new Error("The search server cannot be reached. Check the connection, or ask whoever runs it."); }
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const error = new Error(plain(response, body));
    error.status = response.status;
    if (response.status === 401) askForKey();
    throw error;
  }
  return body;
}

// ---- the access key ------------------------------------------------------------------------------
function askForKey() { $("key-form").hidden = false; $("key").focus(); }
$("key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const response = await fetch("/auth", { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ key: $("key").value }) });
  if (response.ok) { $("key-form").hidden = true; $("key").value = ""; $("key-error").textContent = ""; start(); }
  else $("key-error").textContent = "That key is not right.";
});

// ---- filters -----------------------------------------------------------------------------------
function chip(label, count, pressed, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.setAttribute("aria-pressed", pressed ? "true" : "false");
  b.append(label + " ");
  if (count !== null) { const c = document.createElement("span"); c.className = "count"; c.textContent = count; b.append(c); }
  b.addEventListener("click", onClick);
  return b;
}
const nice = (name) => (name || "").replace(/_/g, " ");
function renderFilters() {
  const cats = $("categories"), subs = $("subcategories");
  cats.replaceChildren(); subs.replaceChildren();
  if (facets) {
    const total = Object.values(facets.categories).reduce((a, b) => a + b, 0);
    cats.append(chip("All", total, !state.category, () => setFilter({ category: "", subcategory: "" })));
    for (const [name, n] of Object.entries(facets.categories).sort()) {
      const b = chip(name, n, state.category === name, () => setFilter({ category: name, subcategory: "" }));
      b.dataset.category = name;
      cats.append(b);
    }
    if (state.category && facets.subcategories[state.category]) {
      subs.append(chip("All " + state.category, null, !state.subcategory, () => setFilter({ subcategory: "" })));
      for (const [name, n] of Object.entries(facets.subcategories[state.category]).sort()) {
        const b = chip(nice(name), n, state.subcategory === name, () => setFilter({ subcategory: name }));
        b.dataset.subcategory = name;
        subs.append(b);
      }
    }
  }
  for (const b of document.querySelectorAll("[data-source]")) b.setAttribute("aria-pressed", b.dataset.source === state.source ? "true" : "false");
  $("top").value = state.top;
  $("group").value = state.group;
  const liked = list(state.likes).length, disliked = list(state.dislikes).length;
  $("feedback").hidden = !(liked || disliked);
  $("feedback-text").textContent = "Using " + liked + " liked and " + disliked + " not-it " +
    (liked + disliked === 1 ? "photo" : "photos") + ": more like the liked ones, the not-it garments left out.";
}
function setFilter(change) {
  Object.assign(state, change);
  renderFilters();
  writeUrl(false);
  rerun();
}
for (const b of document.querySelectorAll("[data-source]")) b.addEventListener("click", () => setFilter({ source: b.dataset.source }));
$("top").addEventListener("change", () => {
  const v = parseInt($("top").value, 10);
  setFilter({ top: Math.min(maxTop(), Math.max(1, isNaN(v) ? 20 : v)) });
});
$("group").addEventListener("change", () => setFilter({ group: $("group").value }));
$("clear-feedback").addEventListener("click", () => { Object.assign(state, { likes: "", dislikes: "" }); renderFilters(); writeUrl(true); rerun(); });

// ---- choosing a photo --------------------------------------------------------------------------
function formats() { return info ? info.formats.map((f) => (f === "JPEG" ? "JPEG" : f === "WEBP" ? "WebP" : f)) : ["JPEG", "PNG", "WebP", "BMP"]; }
function choose(file) {
  clearError();
  if (!file) return;
  const ok = ["image/jpeg", "image/png", "image/webp", "image/bmp"];
  if (file.type && !ok.includes(file.type)) { showError("This file is not a photo we can read: choose a " + formats().join(", ") + " file."); return; }
  if (info && file.size > info.max_upload_bytes) {
    showError("This photo is too large: " + (file.size / 1e6).toFixed(1) + " MB, the limit is " + (info.max_upload_bytes / 1e6) + " MB.");
    return;
  }
  upload = file; uploadVector = null; box = null; garments = []; picked = null; pickedByHand = false;
  Object.assign(state, { like: "", photo: "", item: "", likes: "", dislikes: "" });
  writeUrl(true);
  renderFilters();
  showPhoto();
  search(true);
}
function showPhoto() {
  const img = $("preview");
  img.onerror = () => $("stage").classList.remove("shown");  // the browser cannot show it
  if (state.like) { img.src = "/images/" + encodeURIComponent(state.like) + ".jpg"; }
  else if (upload) { if (img.dataset.blob !== String(upload.size) + upload.name) { img.src = URL.createObjectURL(upload); img.dataset.blob = String(upload.size) + upload.name; } }
  else { $("stage").classList.remove("shown"); return; }
  if (state.like) img.dataset.blob = "";
  $("photo-note").textContent = state.like ? "More like this stored photo:" : "";
  $("stage").classList.add("shown");
  $("box-hint").hidden = !!state.like || !upload;
  drawBox();
}
$("drop").addEventListener("click", () => $("file").click());
$("drop").addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
$("file").addEventListener("change", () => choose($("file").files[0]));
for (const ev of ["dragenter", "dragover"]) $("drop").addEventListener(ev, (e) => { e.preventDefault(); $("drop").classList.add("over"); });
for (const ev of ["dragleave", "drop"]) $("drop").addEventListener(ev, () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => { e.preventDefault(); choose(e.dataTransfer.files[0]); });
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData || {}).items || []].find((i) => i.kind === "file");
  if (item) choose(item.getAsFile());
});

// ---- the box around the garment ----------------------------------------------------------------
function scale() { const img = $("preview"); return img.naturalWidth / img.clientWidth || 1; }
function place(el, b) {
  const s = scale();
  Object.assign(el.style, { display: "block", left: b[0] / s + "px", top: b[1] / s + "px",
    width: (b[2] - b[0]) / s + "px", height: (b[3] - b[1]) / s + "px" });
}
function drawBox() {
  const el = $("box"), active = box && upload && !state.like;
  $("clear-box").hidden = !active;
  drawGarments();
  if (!active) { el.style.display = "none"; return; }
  place(el, box);
}
function drawGarments() {
  // each garment found outlined with its type; the one searched in green; click one to search it
  const layer = $("garments"), on = upload && !state.like;
  layer.replaceChildren();
  layer.classList.toggle("dim", !!box);
  if (!on) { $("garment-note").textContent = ""; return; }
  const area = (g) => (g.box[2] - g.box[0]) * (g.box[3] - g.box[1]);
  const order = garments.map((g, i) => i).sort((a, b) => area(garments[b]) - area(garments[a]));
  for (const i of order) {  // the larger first: a garment inside another stays clickable on top
    const g = garments[i], b = document.createElement("button");
    b.type = "button";
    b.dataset.index = i;
    b.className = i === picked && !box ? "picked" : "";
    b.dataset.type = g.type;
    b.setAttribute("aria-pressed", String(i === picked && !box));
    b.setAttribute("aria-label", "Search the " + g.type + "-body garment (" + Math.round(g.score * 100) + "% sure)");
    const label = document.createElement("span");
    label.textContent = g.type + " " + Math.round(g.score * 100) + "%";
    b.append(label);
    b.addEventListener("click", (e) => { e.stopPropagation(); box = null; picked = i; pickedByHand = true; drawBox(); search(); });
    place(b, g.box);
    layer.append(b);
  }
  const n = garments.length;
  $("garment-note").textContent = n ? n + (n === 1 ? " garment" : " garments") + " found: click one to search it, or drag a box." : "";
}
let dragFrom = null, dragging = false;
function point(e) {
  const r = $("preview").getBoundingClientRect(), s = scale(), img = $("preview");
  const x = Math.min(Math.max(e.clientX - r.left, 0), r.width) * s;
  const y = Math.min(Math.max(e.clientY - r.top, 0), r.height) * s;
  return [Math.min(x, img.naturalWidth), Math.min(y, img.naturalHeight)];
}
// a drag anywhere on the photo (on an outline too) draws a box; a click on an outline searches
// that garment (its own click handler), a click on the photo clears a drawn box
$("stage").addEventListener("pointerdown", (e) => {
  if (!upload || state.like || e.button !== 0) return;
  if (e.target === $("preview")) e.preventDefault();
  dragFrom = point(e); dragging = false;
});
$("stage").addEventListener("pointermove", (e) => {
  if (!dragFrom) return;
  const [x, y] = point(e);
  if (!dragging) {
    const s = scale();
    if (Math.hypot(x - dragFrom[0], y - dragFrom[1]) / s < 5) return;  // not yet a drag
    dragging = true; $("stage").setPointerCapture(e.pointerId);
  }
  box = [Math.min(dragFrom[0], x), Math.min(dragFrom[1], y), Math.max(dragFrom[0], x), Math.max(dragFrom[1], y)];
  drawBox();
});
$("stage").addEventListener("pointerup", (e) => {
  if (!dragFrom) return;
  const dragged = dragging;
  dragFrom = null; dragging = false;
  if (!dragged && e.target !== $("preview")) return;  // a click on an outline: its own
  if (!dragged && !box) return;
  if (box && (box[2] - box[0] < 8 || box[3] - box[1] < 8 || !dragged)) box = null;  // a click, not a box
  drawBox(); search();
});
$("clear-box").addEventListener("click", () => { box = null; pickedByHand = false; drawBox(); search(); });
$("stage").addEventListener("keydown", (e) => {
  if (!upload || state.like || e.target.closest("#garments")) return;  // an outline's own keys
  const img = $("preview"), W = img.naturalWidth, H = img.naturalHeight, step = Math.max(W, H) * 0.02;
  if (e.key === "Enter" && !box) { box = [W * .2, H * .2, W * .8, H * .8]; }
  else if ((e.key === "Delete" || e.key === "Backspace") && box) { box = null; }
  else if (box && e.key.startsWith("Arrow")) {
    const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[e.key];
    if (e.shiftKey) { box[2] = Math.min(W, Math.max(box[0] + 8, box[2] + d[0])); box[3] = Math.min(H, Math.max(box[1] + 8, box[3] + d[1])); }
    else {
      const dx = Math.min(Math.max(d[0], -box[0]), W - box[2]), dy = Math.min(Math.max(d[1], -box[1]), H - box[3]);
      box = [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy];
    }
  } else if (e.key !== "Enter") return;
  e.preventDefault(); drawBox();
  if (e.key === "Enter" || e.key === "Delete" || e.key === "Backspace") search();
});
$("stage").addEventListener("keyup", (e) => { if (box && e.key.startsWith("Arrow")) search(); });
window.addEventListener("resize", drawBox);
$("preview").addEventListener("load", drawBox);  // outlines need the photo's displayed size
$("go").addEventListener("click", () => rerun());

// ---- searching -----------------------------------------------------------------------------------
// the filter fields come from the server's payload schema (/api/info)
const filterNames = () => (info ? info.filters.map((f) => f.name) : ["category", "subcategory", "source"]);
function filters() {
  const f = { top: state.top, group: state.group };
  for (const k of filterNames()) if (state[k]) f[k] = state[k];
  return f;
}
function rerun(focus) {
  if (list(state.likes).length || list(state.dislikes).length) return recommend(0, focus);
  if (state.like) return similar(state.like, false, focus);
  if (upload) return search(focus);
  status("Choose a photo to start.");
  $("results").replaceChildren(); $("more-results").hidden = true; $("legend").hidden = true;
}
async function run(request, offset, focus, then) {
  // one query (search, similar or recommend): a first page, or the next one after `offset`;
  // `then(answer)`: what else the answer changes, unless a newer query has been asked since
  const seq = ++searchSeq;
  clearError(); busy(offset ? "Finding more…" : "Searching…"); $("go").disabled = false;
  if (!offset) closeItem(false);
  try {
    const answer = await request();
    if (seq !== searchSeq) return;
    if (then) then(answer);
    render(answer, offset > 0);
    if (focus) $("r-title").focus({ preventScroll: false });
  } catch (e) {
    if (seq !== searchSeq) return;
    showError(e.message);
    if (e.status === 400 || e.status === 413) { upload = null; box = null; garments = []; picked = null; showPhoto(); }
  }
}
function search(focus, offset = 0) {
  if (!upload) return;
  const chosen = box || (pickedByHand && garments[picked] ? garments[picked].box : null);
  return run(async () => {
    const form = new FormData();
    form.append("file", upload, upload.name || "photo");
    for (const [k, v] of Object.entries(filters())) form.append(k, v);
    form.append("offset", offset);
    if (chosen) form.append("bbox", chosen.map((v) => Math.round(v)).join(","));
    return api("/api/search", { method: "POST", body: form });
  }, offset, focus, (answer) => {
    uploadVector = answer.query_vector;
    if (!chosen && !offset) {  // the server detected: its garments, and the one it searched
      garments = answer.garments || []; picked = answer.garment; drawBox();
      if (answer.notice) $("garment-note").textContent = "No garment found: the whole photo was searched.";
    }
  });
}
function similar(id, push, focus, offset = 0) {
  if (!offset) { state.like = id; writeUrl(push); showPhoto(); }
  const p = new URLSearchParams({ ...filters(), offset });
  return run(() => api("/api/points/" + encodeURIComponent(id) + "/similar?" + p), offset, focus);
}
function recommend(offset = 0, focus) {
  const positive = list(state.likes), negative = list(state.dislikes);
  if (state.like) positive.push(state.like);
  const vectors = !state.like && upload && uploadVector ? [uploadVector] : [];
  if (!positive.length && !vectors.length) { status("Like at least one result, or choose a photo."); return; }
  return run(() => api("/api/recommend", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...filters(), offset, positive, negative, vectors }) }), offset, focus);
}
$("more-results").addEventListener("click", () => {
  const offset = shown.length;
  if (list(state.likes).length || list(state.dislikes).length) recommend(offset);
  else if (state.like) similar(state.like, false, false, offset);
  else search(false, offset);
});
function vote(id, kind) {
  // like a result, or mark it "not it" (again: take it back); the results follow at once
  const likes = new Set(list(state.likes)), dislikes = new Set(list(state.dislikes));
  const [mine, other] = kind === "like" ? [likes, dislikes] : [dislikes, likes];
  if (mine.has(id)) mine.delete(id); else { mine.add(id); other.delete(id); }
  Object.assign(state, { likes: [...likes].join(","), dislikes: [...dislikes].join(",") });
  renderFilters(); writeUrl(true); rerun();
}
function card(p, extra) {
  const li = document.createElement("li");
  const b = document.createElement("button");
  b.type = "button"; b.className = "card"; b.dataset.id = p.id;
  if (p.item_id) b.dataset.item = p.item_id;
  if (p.category) b.dataset.category = p.category;
  const img = document.createElement("img");
  img.src = p.thumb_url; img.alt = nice(p.subcategory) + " " + (p.source === "consumer" ? "customer" : p.source || "") + " photo";
  img.loading = "lazy";
  const meta = document.createElement("div"); meta.className = "meta";
  const head = document.createElement("b"); head.textContent = extra.title; meta.append(head);
  for (const line of extra.lines) { const s = document.createElement("span"); s.textContent = line; meta.append(s); }
  b.append(img, meta);
  if (extra.tip) b.title = extra.tip;
  li.append(b);
  return li;
}
function voteButtons(id) {
  const row = document.createElement("div"); row.className = "vote";
  for (const [kind, label, words] of [["like", "Like", "More like this photo"], ["dislike", "Not it", "Not this garment: leave it out"]]) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; b.dataset.vote = kind; b.title = words;
    b.setAttribute("aria-label", words);
    b.setAttribute("aria-pressed", list(kind === "like" ? state.likes : state.dislikes).includes(id) ? "true" : "false");
    b.addEventListener("click", () => vote(id, kind));
    row.append(b);
  }
  return row;
}
const SIMILARITY = "Similarity between the garment you searched with and this photo: 100% is the same picture; unrelated garments score around 50% or less.";
const MATCH = "How close this photo is to the nearest photo you liked (100%: the same picture). Photos nearer to one you marked 'not it' come last.";
function scoreLabel(answer, score) {
  if (answer.query !== "recommend") return Math.round(Math.max(0, score) * 100) + "% similar";
  return score >= 0 ? Math.round(score * 100) + "% match" : "nearer a not-it photo";
}
function render(answer, append) {
  lastAnswer = answer;
  if (!append) { shown = []; $("results").replaceChildren(); }
  const ownItem = answer.query_item;
  let own = false;
  for (const r of answer.results) {
    const p = r.photo;
    shown.push(p.id);
    const li = card(p, {
      title: scoreLabel(answer, r.score),
      lines: [nice(p.subcategory) + " · " + (p.source === "consumer" ? "customer photo" : p.source + " photo")]
        .concat(answer.group === "item" ? [r.matches + (r.matches === 1 ? " photo matched" : " photos matched")] : []),
      tip: (answer.query === "recommend" ? MATCH : SIMILARITY) + " Click for all photos of this garment.",
    });
    const b = li.firstChild;
    b.dataset.rank = r.rank;
    if (ownItem && p.item_id === ownItem) { b.classList.add("own"); own = true; }
    b.addEventListener("click", () => openItem(p.item_id, p.id, true));
    li.append(voteButtons(p.id));
    $("results").append(li);
  }
  $("legend").hidden = !own && !$("results").querySelector(".own");
  $("more-results").hidden = !(answer.results.length >= state.top && shown.length + state.top <= maxTop());
  const what = answer.group === "item" ? "garments" : "photos";
  const f = Object.values(answer.filters).map(nice).join(", ");
  const ms = answer.timings_ms.model ? answer.timings_ms.model + " ms model, " : "";
  status(shown.length ? shown.length + " " + what + (f ? " · " + f : "") + " · " + ms + answer.timings_ms.store + " ms search"
         : "Nothing found" + (f ? " in " + f : "") + ". Try fewer filters.");
  if (!append && state.item) openItem(state.item, state.photo, false);
}
function closeItem(write) {
  $("detail").classList.remove("shown");
  if (write && (state.item || state.photo)) { state.item = ""; state.photo = ""; writeUrl(false); }
}
async function openItem(itemId, photoId, push) {
  if (!itemId) return;
  state.item = itemId; state.photo = photoId || ""; writeUrl(push);
  for (const b of $("results").querySelectorAll(".card")) b.classList.toggle("selected", b.dataset.id === photoId);
  try {
    const item = await api("/api/items/" + encodeURIComponent(itemId));
    const shops = item.photos.filter((p) => p.source === "shop").length;
    $("d-title").textContent = "This garment · " + shops + " shop and " + (item.photos.length - shops) + " customer photos";
    const grid = $("item-photos"); grid.replaceChildren();
    for (const p of item.photos) {
      const li = card(p, { title: p.source === "consumer" ? "Customer photo" : "Shop photo", lines: [nice(p.subcategory)],
                           tip: "More like this photo" });
      if (p.id === photoId) li.firstChild.classList.add("selected");
      li.firstChild.addEventListener("click", () => similar(p.id, true, true));
      grid.append(li);
    }
    const chosen = item.photos.find((p) => p.id === photoId) || item.photos[0];
    const facts = [["garment", item.item_id], ["photo id", chosen.id], ["file", chosen.path], ["split", chosen.split]];
    $("internals-list").replaceChildren(...facts.flatMap(([k, v]) => {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = v || "—"; return [dt, dd];
    }));
    $("more").onclick = () => similar(chosen.id, true, true);
    $("detail").classList.add("shown");
    $("d-title").focus({ preventScroll: true });
    $("detail").scrollIntoView({ block: "nearest" });
  } catch (e) { showError(e.message); }
}
$("close-detail").addEventListener("click", () => closeItem(true));

// ---- start -----------------------------------------------------------------------------------------
async function start() {
  readUrl();
  try {
    [info, facets] = await Promise.all([api("/api/info"), api("/api/facets")]);
    $("info").textContent = info.points.toLocaleString() + " photos · model " + info.model.backbone +
      (info.model.weights === "none" ? " (untrained)" : "");
    $("drop-hint").textContent = formats().join(", ") + ", up to " + info.max_upload_bytes / 1e6 + " MB.";
    $("file").accept = info.formats.map((f) => "image/" + f.toLowerCase()).join(",");
    $("top").max = info.max_top;
  } catch (e) { if (e.status !== 401) { showError(e.message); $("info").textContent = "not connected"; } return; }
  renderFilters();
  showPhoto();
  rerun();
}
window.addEventListener("popstate", () => { readUrl(); renderFilters(); showPhoto(); rerun(); });
start();
