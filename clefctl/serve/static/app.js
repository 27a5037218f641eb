// clefctl serve: the page. Plain JavaScript, no build step; every action is one call of the JSON API
// (docs/serve.md). Text from the store is always set with textContent, never parsed as HTML.
"use strict";

// hits per request (infinite scroll asks for the next page); ?page=N sets another page size
const PAGE = Math.min(500, Math.max(1, Number(new URLSearchParams(location.search).get("page")) || 60));
const THUMB = 160;               // thumbnail size in pixels
const $ = (sel) => document.querySelector(sel);

const state = {
  query: null,        // {kind: "text"|"row"|"image"|"rank", value, label}
  offset: 0, more: false, loading: null, generation: 0,
  info: null, prompts: null, filter: new Set(), detailRow: null,
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function showError(err) {
  const box = $("#error");
  box.textContent = err ? (err.error || String(err)) + (err.hint ? ` (${err.hint})` : "") : "";
  box.hidden = !err;
}

async function api(path, options = {}) {
  const resp = await fetch(path, Object.assign({credentials: "same-origin"}, options));
  const type = resp.headers.get("content-type") || "";
  const body = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) throw (typeof body === "object" ? body : {error: `${resp.status}: ${body}`});
  return body;
}

function params(obj) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(obj)) if (v !== null && v !== undefined && v !== "") p.set(k, v);
  return p.toString();
}

function filterParams() {
  return state.filter.size ? {classes: [...state.filter].join(","), by: $("#filter-by").value} : {};
}

// ---------------------------------------------------------------------------------------------
// results
// ---------------------------------------------------------------------------------------------

function fmtTime(t) {
  if (t === null || t === undefined) return "";
  const m = Math.floor(t / 60), s = t - 60 * m;
  return `${m}:${s.toFixed(2).padStart(5, "0")}`;
}

function topPredicted(pred, n = 2) {
  if (!pred) return "";
  return Object.entries(pred).sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([c, p]) => `${c} ${(100 * p).toFixed(0)}%`).join(" ");
}

function card(hit) {
  const img = el("img", {src: `${hit.image}?size=${THUMB}`, loading: "lazy", width: THUMB, height: THUMB,
                         alt: hit.id, decoding: "async"});
  const where = hit.timestamp !== null && hit.timestamp !== undefined
    ? `${hit.source.split("/").pop()} @ ${fmtTime(hit.timestamp)}` + (hit.face_id !== null ? ` face ${hit.face_id}` : "")
    : hit.source.split("/").pop();
  const cap = el("figcaption", {},
    el("div", {class: "line1", text: `#${hit.rank}  ${hit.score.toFixed(3)}`}),
    el("div", {class: "hit-id", text: hit.id}),
    hit.labels ? el("div", {class: "labels", text: hit.labels}) : null,
    hit.predicted ? el("div", {class: "pred", text: topPredicted(hit.predicted)}) : null,
    el("div", {class: "where muted", text: where, title: hit.source}));
  const fig = el("figure", {class: "hit", "data-row": String(hit.row), "data-id": hit.id, tabIndex: 0}, img, cap);
  img.addEventListener("error", () => {               // e.g. 403: the file lies outside the store's sources
    fig.classList.add("no-image");
    img.title = "the image could not be served";
  });
  fig.addEventListener("click", () => openDetail(hit.row));
  fig.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openDetail(hit.row); });
  return fig;
}

function requestFor(q, offset) {
  const page = Object.assign({k: PAGE, offset}, filterParams());
  if (q.kind === "text") return `/api/search?${params(Object.assign({q: q.value}, page))}`;
  if (q.kind === "row") return `/api/search?${params(Object.assign({row: q.value}, page))}`;
  if (q.kind === "image") return `/api/search?${params(Object.assign({image: q.value}, page))}`;
  return `/api/rank?${params(Object.assign({class: q.value}, page))}`;
}

async function runQuery(q, firstPage = null) {
  state.query = q;
  state.offset = 0;
  state.more = false;
  state.generation += 1;
  $("#results").replaceChildren();
  $("#query-line").textContent = q.label;
  if (firstPage) appendPage(firstPage, state.generation);
  else await loadMore();
}

function appendPage(doc, generation) {
  if (generation !== state.generation) return;            // a newer query replaced this one
  const box = $("#results");
  const frag = document.createDocumentFragment();
  for (const hit of doc.hits) frag.append(card(hit));
  box.append(frag);
  state.offset = doc.offset + doc.hits.length;
  state.more = doc.more;
  const what = state.query.kind === "rank" ? `ranked by ${state.query.value}` : "hits";
  const filt = doc.filter ? `, filter ${doc.filter.classes.join(" + ")} (${doc.filter.by})` : "";
  $("#status").textContent = `${state.offset} ${what} of ${doc.matching}${filt} - ${doc.ms} ms`;
  $("#status").dataset.done = String(state.generation);
}

async function loadMore() {
  // one request at a time per query; a page of an older query that arrives late is dropped
  const generation = state.generation;
  if (!state.query || state.loading === generation) return;
  if (state.offset > 0 && !state.more) return;
  state.loading = generation;
  try {
    appendPage(await api(requestFor(state.query, state.offset)), generation);
    if (generation === state.generation) showError(null);
  } catch (err) {
    if (generation === state.generation) showError(err);
  } finally {
    if (state.loading === generation) state.loading = null;
  }
  if (state.more && generation === state.generation && sentinelVisible()) loadMore();
}

function sentinelVisible() {
  const r = $("#sentinel").getBoundingClientRect();
  return r.top < window.innerHeight + 400;
}

// ---------------------------------------------------------------------------------------------
// image search
// ---------------------------------------------------------------------------------------------

async function searchImage(file) {
  if (!file) return;
  try {
    const doc = await api(`/api/search/image?${params(Object.assign({k: PAGE, offset: 0}, filterParams()))}`,
                          {method: "POST", body: file, headers: {"content-type": file.type || "application/octet-stream"}});
    showError(null);
    await runQuery({kind: "image", value: doc.image, label: `image ${file.name}`}, doc);
  } catch (err) {
    showError(err);
  }
}

// ---------------------------------------------------------------------------------------------
// the detail panel: why did it match
// ---------------------------------------------------------------------------------------------

function explainTextFor(q) {
  if (q && q.kind === "text") return q.value;
  if (q && q.kind === "rank" && state.prompts) {
    const c = state.prompts.classes.find((x) => x.id === q.value.split(",")[0]);
    const tpl = (state.prompts.prompts.templates.name || ["{name}"])[0];
    if (c) return tpl.replace("{name}", c.name);
  }
  return $("#explain-text").value || "";
}

async function openDetail(row) {
  state.detailRow = row;
  const panel = $("#detail");
  panel.hidden = false;
  for (const f of document.querySelectorAll(".hit.selected")) f.classList.remove("selected");
  const fig = document.querySelector(`.hit[data-row="${row}"]`);
  if (fig) fig.classList.add("selected");
  $("#detail-face").src = `/media/${row}?size=192`;
  try {
    const hit = await api(`/api/hit/${row}`);
    renderFields(hit);
    renderPlayer(hit);
  } catch (err) {
    showError(err);
  }
  const text = explainTextFor(state.query);
  $("#explain-text").value = text;
  if (text) explainRow(row, text);
  else { $("#heatmap").hidden = true; $("#words").replaceChildren(); }
}

function renderFields(hit) {
  const dl = $("#detail-fields");
  dl.replaceChildren();
  const fields = [["id", hit.id], ["row", hit.row], ["source", hit.source], ["subject", hit.subject],
                  ["labels", hit.labels], ["frame", hit.frame], ["time", fmtTime(hit.timestamp)],
                  ["face", hit.face_id], ["split", hit.split], ["box", hit.box ? hit.box.join(", ") : ""]];
  for (const [k, v] of fields) {
    if (v === null || v === undefined || v === "") continue;
    dl.append(el("dt", {text: k}), el("dd", {text: String(v), title: String(v)}));
  }
  const probs = $("#detail-probs");
  probs.replaceChildren();
  for (const [title, table] of [["model head", hit.predicted], ["prompt classes", hit.classes]]) {
    if (!table) continue;
    const list = el("div", {class: "probs"}, el("h3", {text: title}));
    for (const [c, p] of Object.entries(table).sort((a, b) => b[1] - a[1]).slice(0, 5)) {
      const bar = el("span", {class: "bar"});
      bar.style.width = `${Math.round(100 * p)}%`;
      list.append(el("div", {class: "prob"}, el("span", {class: "cls", text: c}), el("span", {class: "track"}, bar),
                     el("span", {class: "pct", text: `${(100 * p).toFixed(0)}%`})));
    }
    probs.append(list);
  }
}

function renderPlayer(hit) {
  const player = $("#player");
  if (!hit.video) {
    player.hidden = true;
    player.removeAttribute("src");
    return;
  }
  player.hidden = false;
  const t = hit.timestamp || 0;
  player.src = `${hit.video}#t=${t.toFixed(3)}`;
  player.onloadedmetadata = () => { player.currentTime = t; };
}

async function explainRow(row, text) {
  const img = $("#heatmap");
  const words = $("#words");
  words.replaceChildren(el("span", {class: "muted", text: "explaining..."}));
  const q = params({row, q: text});
  try {
    const doc = await api(`/api/explain?${q}&format=json`);
    if (state.detailRow !== row) return;
    img.hidden = false;
    img.src = `/api/explain?${q}&format=png`;
    $("#heatmap-caption").textContent = `cosine ${doc.similarity.toFixed(3)}`;
    words.replaceChildren();
    for (const w of doc.words) {
      const span = el("span", {class: "word", text: w.word, title: w.score.toFixed(2)});
      span.style.backgroundColor = `rgba(46, 160, 67, ${0.1 + 0.8 * w.score})`;
      words.append(span, " ");
    }
    showError(null);
  } catch (err) {
    words.replaceChildren();
    showError(err);
  }
}

// ---------------------------------------------------------------------------------------------
// prompt classes: edit, re-score, rank, filter, save
// ---------------------------------------------------------------------------------------------

function renderClasses(summary) {
  state.prompts = summary;
  const list = $("#class-list");
  list.replaceChildren();
  if (!summary) {
    $("#classes-set").textContent = "(none: the store's model and data set name no prompt set)";
    return;
  }
  $("#classes-set").textContent = `${summary.prompts.dataset} (${summary.task})`;
  $("#mode").value = summary.mode;
  for (const c of summary.classes) list.append(classRow(c));
  const agree = summary.agreement || {};
  const a = agree.mean_f1 !== undefined && agree.mean_f1 !== null ? `mean F1 vs labels ${(100 * agree.mean_f1).toFixed(1)}`
    : agree.accuracy !== undefined && agree.accuracy !== null ? `accuracy vs labels ${(100 * agree.accuracy).toFixed(1)}%` : "";
  $("#classes-status").textContent = `scored in ${(1000 * summary.seconds).toFixed(0)} ms${a ? "; " + a : ""}`;
}

function classRow(c, isNew = false) {
  const id = el("input", {class: "cid", value: c.id, readOnly: !isNew, title: "class id", size: 8});
  const name = el("input", {class: "name", value: c.name, title: "label name"});
  const descs = el("textarea", {class: "descs", rows: 2, value: (c.descriptions || []).join("\n"),
                                title: "descriptions, one per line"});
  const filter = el("input", {type: "checkbox", class: "filter", title: "filter results: faces with this class",
                              checked: state.filter.has(c.id)});
  filter.addEventListener("change", () => {
    if (filter.checked) state.filter.add(id.value); else state.filter.delete(id.value);
    if (state.query) runQuery(state.query);
  });
  const rank = el("button", {type: "button", class: "small rank", text: "rank", title: "rank the store by this class"});
  rank.addEventListener("click", () => runQuery({kind: "rank", value: id.value, label: `ranked by class ${id.value}`}));
  const row = el("div", {class: "class", "data-id": c.id},
                 el("div", {class: "row"}, filter, id, name, rank), descs);
  return row;
}

function editedPrompts() {
  const base = JSON.parse(JSON.stringify(state.prompts.prompts));
  base.classes = [...document.querySelectorAll("#class-list .class")].map((row) => ({
    id: row.querySelector(".cid").value.trim(),
    name: row.querySelector(".name").value.trim(),
    descriptions: row.querySelector(".descs").value.split("\n").map((s) => s.trim()).filter(Boolean),
  }));
  return base;
}

async function rescore() {
  if (!state.prompts) return;
  $("#classes-status").textContent = "re-scoring...";
  try {
    const summary = await api("/api/rescore", {method: "POST", headers: {"content-type": "application/json"},
                                               body: JSON.stringify({prompts: editedPrompts(), mode: $("#mode").value})});
    showError(null);
    renderClasses(summary);
    $("#classes-status").dataset.hash = summary.prompt_hash;
    if (state.query && (state.query.kind === "rank" || state.filter.size)) await runQuery(state.query);
  } catch (err) {
    $("#classes-status").textContent = "not re-scored";
    showError(err);
  }
}

// ---------------------------------------------------------------------------------------------
// start
// ---------------------------------------------------------------------------------------------

async function start() {
  const url = new URL(window.location.href);
  if (url.searchParams.has("token")) {           // the server set the cookie: keep the token out of history
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search);
  }
  try {
    const info = await api("/api/info");
    state.info = info;
    $("#store-info").textContent = `${info.image_set}: ${info.rows} faces, ${info.model}, ${info.index} index`;
    $("#store-info").dataset.ready = "1";
    if (!info.label_classes.length) $("#filter-by").querySelector("[value=labels]").disabled = true;
    renderClasses(info.prompt_classes);
  } catch (err) {
    showError(err);
  }
  $("#search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("#q").value.trim();
    if (text) runQuery({kind: "text", value: text, label: `"${text}"`});
  });
  $("#upload").addEventListener("change", (ev) => searchImage(ev.target.files[0]));
  $("#explain-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (state.detailRow !== null && $("#explain-text").value.trim()) explainRow(state.detailRow, $("#explain-text").value.trim());
  });
  $("#close-detail").addEventListener("click", () => { $("#detail").hidden = true; state.detailRow = null; });
  $("#more-like-this").addEventListener("click", () => {
    if (state.detailRow !== null) runQuery({kind: "row", value: state.detailRow, label: `more like row ${state.detailRow}`});
  });
  $("#rescore").addEventListener("click", rescore);
  $("#filter-by").addEventListener("change", () => { if (state.query && state.filter.size) runQuery(state.query); });
  $("#add-class").addEventListener("click", () => {
    const row = classRow({id: "new_class", name: "", descriptions: []}, true);
    $("#class-list").append(row);
    row.querySelector(".cid").focus();
  });
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMore();
  }, {rootMargin: "400px"}).observe($("#sentinel"));
  const hint = $("#drop-hint");
  document.addEventListener("dragover", (ev) => { ev.preventDefault(); hint.hidden = false; });
  document.addEventListener("dragleave", (ev) => { if (!ev.relatedTarget) hint.hidden = true; });
  document.addEventListener("drop", (ev) => {
    ev.preventDefault();
    hint.hidden = true;
    const file = ev.dataTransfer.files[0];
    if (file) searchImage(file);
  });
}

document.addEventListener("DOMContentLoaded", start);
