// HematoVision pages: upload and classify images, live view, session differential count.
// Plain JavaScript, no build step. Text from the server is inserted with textContent only.
"use strict";

const body = document.body;
const LABELS = JSON.parse(body.dataset.labels || "[]");
const COLOURS = JSON.parse(body.dataset.colours || "[]");
const MAX_BYTES = Number(body.dataset.maxBytes || 0);
const THRESHOLD = Number(body.dataset.threshold || 0);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Rounded down to 0.1, as in `hemato run`: a cell below the threshold never shows above it.
function pct(p) {
  return (Math.floor(1000 * p + 1e-9) / 10).toFixed(1) + " %";
}

function colourOf(label) {
  const i = LABELS.indexOf(label);
  return i < 0 ? "#a0a0a0" : COLOURS[i % COLOURS.length];
}

// ---- differential count (server-side, per browser session) ----
function diffRow(label, count, ofAnswered, ofAll, className) {
  const tr = el("tr", className || "");
  const name = el("td");
  const swatch = el("span", "swatch");
  swatch.style.background = colourOf(label);
  name.append(swatch, label);
  tr.append(name, el("td", "num", String(count)), el("td", "num", ofAnswered), el("td", "num", ofAll));
  return tr;
}

// One row per class, then UNCERTAIN. As in `hemato run`: UNCERTAIN cells are not in "% of answered";
// "% of all cells" counts them in.
function fillDifferential(tbody, diff) {
  tbody.replaceChildren();
  for (const c of diff.classes) {
    tbody.append(diffRow(c.label, c.count, c.percent.toFixed(1), c.percent_of_all.toFixed(1)));
  }
  tbody.append(diffRow("UNCERTAIN", diff.uncertain, "–", diff.uncertain_percent.toFixed(1), "uncertain"));
}

function showDifferential(diff) {
  const tbody = document.getElementById("diff-body");
  if (!tbody) return;
  fillDifferential(tbody, diff);
  document.getElementById("diff-certain").textContent = String(diff.certain);
  document.getElementById("diff-total").textContent = String(diff.total);
}

async function refreshDifferential() {
  const r = await fetch("/api/session");
  if (r.ok) showDifferential(await r.json());
}

const resetButton = document.getElementById("reset");
if (resetButton) {
  resetButton.addEventListener("click", async () => {
    const r = await fetch("/api/session/reset", {method: "POST"});
    if (r.ok) showDifferential(await r.json());
    const results = document.getElementById("results");
    if (results) results.replaceChildren();
  });
}

// ---- upload page ----
function probabilityBars(probabilities) {
  const bars = el("div", "bars");
  for (const label of LABELS) {
    const p = probabilities[label] || 0;
    const row = el("div", "bar-row");
    row.dataset.label = label;
    const track = el("div", "bar");
    const fill = el("div", "fill");
    fill.style.width = (100 * p).toFixed(1) + "%";
    fill.style.background = colourOf(label);
    track.append(fill);
    row.append(el("span", "bar-label", label), track, el("span", "bar-value", pct(p)));
    bars.append(row);
  }
  return bars;
}

function cellBlock(row, index, count) {
  const block = el("div", "cell");
  const answer = el("div", "answer");
  if (count > 1) answer.append(el("span", "badge", "cell " + (index + 1)));
  if (row.label === "UNCERTAIN") {
    block.classList.add("is-uncertain");
    answer.append(el("strong", "label uncertain", "⚠ UNCERTAIN"),
                  el("span", "top2", "best guess " + row.predicted + " " + pct(row.confidence) + ", runner-up " +
                     row.runner_up + " " + pct(row.probabilities[row.runner_up] || 0)));
    const why = row.reason === "low confidence" && THRESHOLD
      ? "below the " + (100 * THRESHOLD).toFixed(2) + " % threshold: a person classifies this cell"
      : (row.reason ? row.reason + ": a person classifies this cell" : "");
    if (why) answer.append(el("span", "reason", "(" + why + ")"));
  } else {
    const label = el("strong", "label", row.label);
    label.style.color = colourOf(row.label);
    answer.append(label, el("span", "conf", pct(row.confidence)));
  }
  block.append(answer, probabilityBars(row.probabilities));
  return block;
}

function resultCard(file, data) {
  const card = el("article", "card result");
  const head = el("header");
  head.append(el("span", "source", data.source));
  const cells = data.rows.filter((r) => !r.error).length;
  const ms = Object.values(data.timings_ms).reduce((a, b) => a + b, 0);
  head.append(el("span", "muted", cells + (cells === 1 ? " cell" : " cells") + " · " + ms.toFixed(0) + " ms"));
  card.append(head);
  const img = el("img", "annotated");
  img.alt = "annotated " + data.source;
  img.src = data.annotated;
  card.append(img);
  if (cells === 0) {
    card.append(el("p", "warning", "No stained white blood cell found in this image."));
  } else if (cells > 1) {
    card.append(el("p", "muted", "Cells are numbered from the top-left; the boxes on the image carry the same answers."));
  }
  data.rows.filter((r) => !r.error).forEach((row, i) => card.append(cellBlock(row, i, cells)));
  return card;
}

function errorCard(name, message) {
  const card = el("article", "card error-card");
  const head = el("header");
  head.append(el("span", "source", name), el("strong", "failed", "failed"));
  card.append(head, el("p", "error", message));
  card.dataset.failed = "1";
  return card;
}

async function classifyFile(file) {
  if (MAX_BYTES && file.size > MAX_BYTES) {
    return errorCard(file.name, "too large: the limit is " + Math.round(MAX_BYTES / 1048576) + " MB");
  }
  const form = new FormData();
  form.append("file", file, file.name);
  let r;
  try {
    r = await fetch("/api/classify?annotated=1", {method: "POST", body: form});
  } catch (err) {
    return errorCard(file.name, "the server did not answer: " + err);
  }
  let data = null;
  try { data = await r.json(); } catch (err) { /* not JSON */ }
  if (!r.ok || !data) {
    return errorCard(file.name, (data && data.error) || ("error " + r.status));
  }
  return resultCard(file, data);
}

function images(n) {
  return n + (n === 1 ? " image" : " images");
}

// What the status line says once a batch is done: classified and failed images counted apart.
function batchStatus(done, failed) {
  if (!done && !failed) return "";
  if (!failed) return "Done: " + images(done) + " classified.";
  if (!done) return "Failed: " + images(failed) + " could not be classified (see below).";
  return "Done: " + images(done) + " classified; " + failed + " failed (see below).";
}

async function classifyAll(files) {
  const status = document.getElementById("status");
  const results = document.getElementById("results");
  const list = Array.from(files);
  let failed = 0;
  for (let i = 0; i < list.length; i++) {
    status.classList.remove("error");
    status.textContent = "Classifying " + (i + 1) + " of " + list.length + ": " + list[i].name + " …";
    const card = await classifyFile(list[i]);
    if (card.dataset.failed) failed += 1;
    results.append(card);  // in upload order, as the files were chosen
    await refreshDifferential();
  }
  status.textContent = batchStatus(list.length - failed, failed);
  status.classList.toggle("error", failed > 0);
}

const fileInput = document.getElementById("file");
if (fileInput) {
  fileInput.addEventListener("change", () => {
    classifyAll(fileInput.files).finally(() => { fileInput.value = ""; });
  });
  const drop = document.getElementById("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    classifyAll(e.dataTransfer.files);
  });
}

// ---- live page ----
async function pollLive() {
  try {
    const r = await fetch("/api/live");
    const data = await r.json();
    document.getElementById("fps").textContent = data.fps.toFixed(1) + " FPS";
    document.getElementById("frame-cells").textContent = data.cells + (data.cells === 1 ? " cell" : " cells") + " in view";
    document.getElementById("live-error").textContent = data.error || "";
    const parts = data.frame.classes.filter((c) => c.count > 0).map((c) => c.label + " " + c.count);
    if (data.frame.uncertain) parts.push("uncertain " + data.frame.uncertain);
    document.getElementById("frame-counts").textContent = parts.length ? "In view: " + parts.join(", ") : "";
  } catch (err) {
    document.getElementById("live-error").textContent = "server not answering";
  }
}

const countButton = document.getElementById("count-frame");
if (countButton) {
  countButton.addEventListener("click", async () => {
    const r = await fetch("/api/live/count", {method: "POST"});
    const data = await r.json();
    if (r.ok) showDifferential(data);
    else document.getElementById("live-error").textContent = data.error;
  });
  pollLive();
  setInterval(pollLive, 1000);
}

// ---- review page: confirm or reclassify every cell, counts follow ----
const reviewRoot = document.getElementById("review");

function showReviewCounts(counts) {
  fillDifferential(document.getElementById("review-counts"), counts);
  document.getElementById("review-total").textContent = String(counts.total);
  document.getElementById("review-reviewed").textContent =
    counts.reviewed + (counts.reclassified ? " (" + counts.reclassified + " reclassified)" : "");
}

if (reviewRoot) {
  let cells = [];
  let selected = null;
  const explainBox = document.getElementById("explain");

  const groups = () => ["UNCERTAIN", ...LABELS];
  const ordered = () => groups().flatMap((g) => cells.filter((c) => c.label === g));

  function imageFor(cell) {
    return (explainBox && explainBox.checked ? "/review/explain/" : "/review/crop/") + cell.id +
      (explainBox && explainBox.checked ? ".png" : ".jpg");
  }

  function thumb(cell) {
    const fig = el("figure", "thumb" + (cell.reviewed ? " reviewed" : "") + (cell.id === selected ? " selected" : ""));
    fig.dataset.id = String(cell.id);
    fig.tabIndex = 0;
    const img = el("img");
    img.alt = cell.label + " " + cell.source;
    img.src = imageFor(cell);
    img.width = 112;
    img.height = 112;
    fig.append(img);
    let caption = cell.reviewed ? (cell.label === cell.model_label ? "✓ confirmed" : "✓ was " + cell.model_label)
                                : cell.predicted + " " + pct(cell.confidence);
    fig.append(el("figcaption", "", caption));
    const buttons = el("div", "class-buttons");
    LABELS.forEach((label, i) => {
      const b = el("button", "class-button" + (cell.label === label ? " current" : ""), String(i + 1));
      b.type = "button";
      b.title = label + " (key " + (i + 1) + ")";
      b.dataset.label = label;
      b.style.borderColor = colourOf(label);
      b.addEventListener("click", (e) => { e.stopPropagation(); setLabel(cell.id, label); });
      buttons.append(b);
    });
    fig.append(buttons);
    fig.addEventListener("click", () => select(cell.id));
    return fig;
  }

  function render() {
    reviewRoot.replaceChildren();
    if (!cells.length) {
      reviewRoot.append(el("p", "muted", "No cells yet: upload images on the Upload page, or start the server with " +
                                         "hemato serve --review results.csv"));
      return;
    }
    for (const g of groups()) {
      const members = cells.filter((c) => c.label === g);
      if (!members.length) continue;
      const section = el("section", "panel review-group" + (g === "UNCERTAIN" ? " is-uncertain" : ""));
      section.dataset.label = g;
      const h = el("h2");
      const swatch = el("span", "swatch");
      swatch.style.background = colourOf(g);
      h.append(swatch, g + " ", el("small", "", "(" + members.length + ")"));
      const grid = el("div", "thumbs");
      members.forEach((c) => grid.append(thumb(c)));
      section.append(h, grid);
      reviewRoot.append(section);
    }
  }

  function select(id) {
    selected = id;
    for (const f of reviewRoot.querySelectorAll("figure.thumb")) f.classList.toggle("selected", f.dataset.id === String(id));
    const fig = reviewRoot.querySelector('figure.thumb[data-id="' + id + '"]');
    if (fig) fig.scrollIntoView({block: "nearest"});
  }

  async function setLabel(id, label) {
    const before = ordered().map((c) => c.id);
    const next = before[before.indexOf(id) + 1];
    const r = await fetch("/api/review/" + id, {method: "POST", headers: {"Content-Type": "application/json"},
                                                 body: JSON.stringify({label: label})});
    const data = await r.json();
    if (!r.ok) return;
    cells = cells.map((c) => (c.id === id ? data.cell : c));
    selected = next === undefined ? id : next;
    render();
    select(selected);
    showReviewCounts(data.counts);
  }

  async function loadReview() {
    const r = await fetch("/api/review");
    const data = await r.json();
    cells = data.cells;
    if (selected === null && cells.length) selected = ordered()[0].id;
    render();
    showReviewCounts(data.counts);
  }

  document.addEventListener("keydown", (e) => {
    if (e.target && e.target.tagName === "INPUT") return;
    const k = Number(e.key);
    if (selected !== null && Number.isInteger(k) && k >= 1 && k <= LABELS.length) {
      e.preventDefault();
      setLabel(selected, LABELS[k - 1]);
    }
  });
  if (explainBox) explainBox.addEventListener("change", render);
  loadReview();
} else {
  refreshDifferential();
}
