// The page of `s2s serve`: pick a model and a search, send inputs to POST /v1/generate, show the
// outputs, their n-best lists and an attention heatmap. Plain JavaScript, no build step, no
// library: everything the page needs is served by the same server.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

// Colour scale of the heatmap (white to dark blue, as matplotlib's "Blues"): weight 0 to 1.
const SCALE = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
// An output piece highlights the source pieces with at least this share of its largest weight.
const HIGHLIGHT_SHARE = 0.5;

let models = [];  // GET /v1/models

class ApiError extends Error {}

function colour(weight) {
  const w = Math.min(1, Math.max(0, Number.isFinite(weight) ? weight : 0)) * (SCALE.length - 1);
  const i = Math.min(SCALE.length - 2, Math.floor(w));
  const f = w - i;
  const rgb = SCALE[i].map((c, k) => Math.round(c + f * (SCALE[i + 1][k] - c)));
  return `rgb(${rgb.join(",")})`;
}

function gradient() {
  const stops = SCALE.map((c, i) => `rgb(${c.join(",")}) ${(100 * i) / (SCALE.length - 1)}%`);
  return `linear-gradient(to right, ${stops.join(", ")})`;
}

// fetch + JSON, with every failure turned into an ApiError whose message a person can read.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new ApiError(`Could not reach the server (${e.message}). Is \`s2s serve\` still running?`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    let message;
    if (body && body.error && body.error.message) {
      message = `${body.error.type || "error"}: ${body.error.message}`;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } else {
      message = text.trim().slice(0, 300) || response.statusText;
    }
    const retry = response.headers.get("Retry-After");
    const wait = retry ? ` (retry after ${retry} s)` : "";
    throw new ApiError(`HTTP ${response.status}${wait}: ${message}`);
  }
  if (body === null) throw new ApiError(`The server answered ${path} with something other than JSON.`);
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });  // on a phone the box is below the form
}

function clearError() {
  const box = $("#error");
  box.textContent = "";
  box.hidden = true;
}

function currentModel() {
  return models.find((m) => m.name === $("#model").value);
}

function method() {
  return $('input[name="method"]:checked').value;
}

// Show the controls of the chosen search method only.
function syncMethod() {
  const chosen = method();
  for (const field of $$("[data-method]")) {
    const on = field.dataset.method.split(" ").includes(chosen);
    field.hidden = !on;
    for (const input of $$("input", field)) input.disabled = !on;
  }
  // Beam search keeps beam_size outputs: the n-best spinner stops there (sampling has no such bound).
  $("#n_best").max = chosen === "beam" ? $("#beam_size").value : "";
}

function describe(model) {
  const params = model.parameters.toLocaleString("en-US");
  return `${model.family} · ${model.engine} · ${params} parameters · vocabularies ` +
    `${model.src_vocab_size} / ${model.tgt_vocab_size} · attention: ${model.attention ? "yes" : "no"}`;
}

// A model's search defaults become the values of the controls.
function applyModel() {
  const model = currentModel();
  if (!model) return;
  $("#model-info").textContent = describe(model);
  const d = model.search;
  const chosen = d.sample ? "sample" : d.beam_size > 1 ? "beam" : "greedy";
  $(`input[name="method"][value="${chosen}"]`).checked = true;
  $("#beam_size").value = d.beam_size > 1 ? d.beam_size : 5;
  $("#n_best").value = d.n_best;
  for (const key of ["length_penalty", "top_k", "top_p", "temperature"]) $(`#${key}`).value = d[key];
  for (const key of ["max_output_tokens", "min_len", "no_repeat_ngram_size", "repetition_penalty"]) {
    $(`#${key}`).value = "";
    $(`#${key}`).placeholder = d[key];
  }
  const attention = $("#attention");
  attention.disabled = !model.attention;
  attention.checked = model.attention;
  syncMethod();
}

async function loadModels() {
  try {
    models = (await api("v1/models")).models;
  } catch (e) {
    $("#model-info").textContent = "No model list.";
    showError(`Could not load the models: ${e.message}`);
    return;
  }
  const select = $("#model");
  select.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  if (!models.length) {
    $("#model-info").textContent = "The server serves no model.";
    return;
  }
  applyModel();
}

function inputs() {
  const text = $("#text").value;
  if ($('input[name="split"]:checked').value === "whole") return text.trim() ? [text] : [];
  return text.split(/\r?\n/).filter((line) => line.trim() !== "");
}

// The request body: the chosen method's settings, plus the generation controls given.
function request(texts) {
  const body = { inputs: texts, attention: $("#attention").checked && !$("#attention").disabled };
  if ($("#model").value) body.model = $("#model").value;
  const chosen = method();
  body.sample = chosen === "sample";
  body.beam_size = chosen === "beam" ? Number($("#beam_size").value) : 1;
  if (chosen === "greedy") body.n_best = 1;
  const numbers = {
    greedy: [],
    beam: ["n_best", "length_penalty"],
    sample: ["n_best", "top_k", "top_p", "temperature"],
  }[chosen].concat(["max_output_tokens", "min_len", "no_repeat_ngram_size", "repetition_penalty"]);
  for (const key of numbers) {
    const raw = $(`#${key}`).value.trim();
    if (raw !== "") body[key] = Number(raw);
  }
  return body;
}

function formatScore(score) {
  return score === null || score === undefined ? "no score" : `score ${score.toFixed(4)}`;
}

function highlight(table, row) {
  clearHighlight(table);
  const weights = JSON.parse(row.dataset.weights);
  const top = Math.max(...weights);
  row.classList.add("active");
  const heads = $$("thead th.src-piece", table);
  const attended = [];
  weights.forEach((w, j) => {
    if (top > 0 && w >= HIGHLIGHT_SHARE * top) {
      heads[j].classList.add("hl");
      if (w === top) heads[j].classList.add("top");
      attended.push([w, heads[j].textContent]);
    }
  });
  attended.sort((a, b) => b[0] - a[0]);
  const piece = $("th.out-piece", row).textContent;
  const note = table.closest(".attention-block").querySelector(".focus-note");
  note.textContent = `“${piece}” attended most to: ` +
    attended.map(([w, p]) => `“${p}” ${w.toFixed(2)}`).join(", ");
}

function clearHighlight(table) {
  for (const el of $$(".hl, .top, .active", table)) el.classList.remove("hl", "top", "active");
}

function heatmap(attention, index) {
  const table = document.createElement("table");
  table.className = "attn";
  const caption = table.createCaption();
  caption.className = "sr-only";
  caption.textContent = `Attention of output ${index + 1}: rows are output pieces, columns source pieces`;
  const headRow = table.createTHead().insertRow();
  const corner = document.createElement("th");
  corner.className = "corner";
  corner.scope = "col";
  corner.textContent = "output \\ source";
  headRow.append(corner);
  for (const piece of attention.source_pieces) {
    const th = document.createElement("th");
    th.scope = "col";
    th.className = "src-piece";
    th.textContent = piece;
    headRow.append(th);
  }
  const body = table.createTBody();
  attention.output_pieces.forEach((piece, i) => {
    const row = body.insertRow();
    const weights = attention.weights[i] || [];
    row.dataset.weights = JSON.stringify(weights);
    const th = document.createElement("th");
    th.scope = "row";
    th.className = "out-piece";
    th.tabIndex = 0;
    th.textContent = piece;
    row.append(th);
    weights.forEach((w, j) => {
      const cell = row.insertCell();
      cell.style.background = colour(w);
      cell.title = `${piece} ← ${attention.source_pieces[j]}: ${w.toFixed(3)}`;
      const value = document.createElement("span");
      value.className = "sr-only";
      value.textContent = w.toFixed(2);
      cell.append(value);
    });
  });
  const enter = (event) => {
    const row = event.target.closest("tbody tr");
    if (row) highlight(table, row);
  };
  table.addEventListener("mouseover", enter);
  table.addEventListener("focusin", enter);
  table.addEventListener("mouseleave", () => clearHighlight(table));
  return table;
}

function render(response, texts) {
  const results = $("#results");
  results.replaceChildren();
  const template = $("#result-template");
  response.results.forEach((result, i) => {
    const card = template.content.firstElementChild.cloneNode(true);
    $(".result-title", card).textContent = `${response.model}: input ${i + 1} of ${response.results.length}`;
    $(".source-text", card).textContent = texts[i];
    $(".output", card).textContent = result.output;
    $(".score", card).textContent = `(${formatScore(result.score)})`;
    const list = $(".nbest", card);
    for (const hyp of result.n_best) {
      const li = document.createElement("li");
      const out = document.createElement("span");
      out.className = "hyp";
      out.textContent = hyp.output;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = formatScore(hyp.score);
      li.append(out, " ", score);
      list.append(li);
    }
    const block = $(".attention-block", card);
    if (result.attention) {
      $(".scale", card).style.background = gradient();
      const box = $(".heatmap", card);
      box.setAttribute("aria-label", `Attention heatmap of input ${i + 1}`);
      if (result.attention.output_pieces.length) box.append(heatmap(result.attention, i));
      else box.textContent = "The output is empty: no attention to show.";
    } else {
      block.hidden = true;
    }
    results.append(card);
  });
}

async function generate(event) {
  event.preventDefault();
  clearError();
  const texts = inputs();
  if (!texts.length) {
    showError("Type an input first.");
    return;
  }
  const button = $("#submit");
  const busy = $("#busy");
  button.disabled = true;
  busy.textContent = "Generating…";
  const start = performance.now();
  try {
    const response = await api("v1/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request(texts)),
    });
    render(response, texts);
    busy.textContent = `Done in ${Math.round(performance.now() - start)} ms.`;
  } catch (e) {
    $("#results").replaceChildren();
    busy.textContent = "";
    showError(e instanceof ApiError ? e.message : `Unexpected error: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#form").addEventListener("submit", generate);
  $("#model").addEventListener("change", applyModel);
  for (const radio of $$('input[name="method"]')) radio.addEventListener("change", syncMethod);
  $("#beam_size").addEventListener("input", syncMethod);
  $("#text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#form").requestSubmit();
  });
  syncMethod();
  loadModels();
});
