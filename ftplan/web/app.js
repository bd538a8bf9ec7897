// ftplan serve's page: inputs <-> URL, POST /api/plan and /api/scale, charts drawn as inline SVG.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["model", "gpus", "method", "stage", "seq_len", "global_batch", "solve"];
const DEFAULTS = { model: "llama-2-7b", gpus: "8xA800", method: "", stage: "sft", seq_len: "2048", global_batch: "",
  solve: "" };
const COLORS = { weights: "#4e79a7", gradients: "#b07aa1", optimizer: "#f2a93b", activations: "#59a14f",
  other: "#9aa3b2" };
const TIME_COLORS = ["#4e79a7", "#e15759", "#76b7b2", "#f28e2b", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f"];
let generation = 0;  // answers of an older request are dropped
let winner = null;

const gib = (b) => (b / 2 ** 30).toFixed(1);
const fmtInt = (x) => Math.round(x).toLocaleString("en-US");
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
  "'": "&#39;" }[c]));

function setState(state) { document.body.dataset.state = state; }

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function postJSON(path, body) {
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  if (!response.ok) {
    let detail = `HTTP ${response.status}`;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

function readInputs() {
  const values = {};
  for (const f of FIELDS) values[f] = $(f).value.trim();
  return values;
}

function writeURL(values) {
  const params = new URLSearchParams();
  for (const f of FIELDS) if (values[f] && values[f] !== DEFAULTS[f]) params.set(f, values[f]);
  if (!params.has("model")) params.set("model", values.model);
  if (!params.has("gpus")) params.set("gpus", values.gpus);
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

function ensureOption(select, value) {
  if (value && ![...select.options].some((o) => o.value === value)) select.add(new Option(value, value), 0);
}

function requestBody(values) {
  const body = { gpus: values.gpus, seq_len: values.seq_len || DEFAULTS.seq_len };
  const pasted = $("model_config").value.trim();
  if (pasted) {
    try { body.model_config = JSON.parse(pasted); } catch (e) { throw new Error(`config.json: ${e.message}`); }
  } else {
    body.model = values.model;
  }
  if (values.global_batch) body.global_batch = values.global_batch;
  if (values.stage && values.stage !== DEFAULTS.stage) body.stage = values.stage;
  if (values.solve) body.solve = values.solve;
  return body;
}

async function run() {
  const mine = ++generation;
  const values = readInputs();
  writeURL(values);
  setState("loading");
  $("status").textContent = "planning…";
  let body;
  try {
    body = requestBody(values);
    const planBody = { ...body, top: 5 };
    if (values.method) planBody.method = [values.method];
    const data = await (await postJSON("/api/plan", planBody)).json();
    if (mine !== generation) return;
    showError("");
    renderPlans(data);
  } catch (e) {
    if (mine !== generation) return;
    showError(e.message);
    $("status").textContent = "";
    setState("error");
    return;
  }
  if (!winner) { setState("ready"); return; }
  try {
    const gpu = values.gpus.split("x").pop();
    const total = values.gpus.split("x").slice(0, -1).reduce((a, b) => a * Number(b), 1) || 1;
    const scaleBody = { ...body, gpu, method: winner.config.method, max_gpus: Math.max(16, 2 * total) };
    delete scaleBody.gpus;
    const data = await (await postJSON("/api/scale", scaleBody)).json();
    if (mine !== generation) return;
    renderScale(data);
  } catch (e) {
    if (mine !== generation) return;
    $("scale-chart").innerHTML = `<text x="10" y="20">${esc(e.message)}</text>`;
  }
  setState("ready");
}

function renderPlans(data) {
  const plans = data.plans;
  winner = plans.length ? plans[0] : null;
  $("download").disabled = !winner;
  $("status").textContent = "";
  const tbody = $("ranking").querySelector("tbody");
  tbody.innerHTML = "";
  if (!winner) {
    const reasons = Object.entries(data.rejected || {}).sort((a, b) => b[1] - a[1]).slice(0, 3);
    $("summary").innerHTML = `<strong>No plan fits</strong> (${fmtInt(data.candidates_evaluated)} candidates). ` +
      reasons.map(([r, n]) => `${fmtInt(n)} × ${esc(r)}`).join("; ");
    for (const id of ["memory-chart", "time-chart", "scale-chart"]) $(id).innerHTML = "";
    return;
  }
  const cfg = winner.config;
  const cluster = `${cfg.cluster.nodes > 1 ? cfg.cluster.nodes + "x" : ""}${cfg.cluster.gpus_per_node}x${cfg.cluster.gpu}`;
  $("summary").innerHTML = `<strong>${esc(cfg.model.name)}</strong> on ${esc(cluster)}: ` +
    `${fmtInt(data.candidates_evaluated)} candidates, ${fmtInt(data.valid)} valid, ${fmtInt(data.fitting)} fit. ` +
    `Winner: <strong>${esc(cfg.method)} ${esc(winner.name)}</strong>, ${fmtInt(winner.tokens_per_s)} tokens/s, ` +
    `${gib(winner.memory_per_gpu_bytes.total)} of ${gib(winner.gpu_memory_bytes)} GiB per GPU.` +
    headroomNote(data) + limitNote(data.limit);
  plans.forEach((p, i) => {
    const row = tbody.insertRow();
    if (i === 0) row.className = "winner";
    const fill = (100 * p.memory_per_gpu_bytes.total / p.gpu_memory_bytes).toFixed(0);
    row.innerHTML = `<td>${i + 1}</td><td>${esc(p.config.method)}</td><td class="plan">${esc(p.name)}</td>` +
      `<td>${gib(p.memory_per_gpu_bytes.total)} (${fill}%)</td>` +
      `<td class="${p.fits ? "yes" : "no"}">${p.fits ? "yes" : "no"}</td><td>${fmtInt(p.tokens_per_s)}</td>` +
      `<td>${p.step_time_s.toFixed(2)}</td><td>${(100 * p.mfu).toFixed(0)}%` +
      // online RL: generation's share of the step beside MFU
      `${p.generation_share === undefined ? "" : ` / gen ${(100 * p.generation_share).toFixed(0)}%`}</td>` +
      `<td><button type="button" class="small" title="download this plan's files">files</button></td>`;
    row.querySelector("button").addEventListener("click", () => download(p));
  });
  renderMemory(winner);
  renderTime(winner);
}

// the recommendation with headroom (planner/search.py recommend) and --solve's answer (planner/limits.py)
function headroomNote(data) {
  const r = data.recommendation;
  if (!r || r.fastest === r.plan) return "";
  const gain = (100 * r.fastest_gain).toFixed(2);
  return ` <span class="note">Recommended over the fastest plan, ${esc(r.fastest)} (tight), which is ${gain}% ` +
    `faster: ${esc(r.reason)}.</span>`;
}

function limitNote(limit) {
  if (!limit) return "";
  const what = limit.knob === "seq-len" ? "Longest sequence" : "Largest micro-batch";
  return limit.value === null ? ` ${what} that fits: none.` :
    ` <strong>${what} that fits: ${fmtInt(limit.value)}</strong>.`;
}

function renderMemory(p) {
  const m = p.memory_per_gpu_bytes;
  const cap = p.gpu_memory_bytes;
  const full = Math.max(m.total, cap);
  const x0 = 10, width = 440, scale = width / full;
  let x = x0, bars = "", legend = "";
  ["weights", "gradients", "optimizer", "activations", "other"].forEach((k, i) => {
    const w = m[k] * scale;
    bars += `<rect x="${x}" y="22" width="${Math.max(w, 0)}" height="34" fill="${COLORS[k]}">` +
      `<title>${k}: ${gib(m[k])} GiB</title></rect>`;
    x += w;
    const lx = x0 + (i % 3) * 150, ly = 84 + Math.floor(i / 3) * 18;
    legend += `<rect x="${lx}" y="${ly - 9}" width="10" height="10" fill="${COLORS[k]}"/>` +
      `<text x="${lx + 14}" y="${ly}">${k} ${gib(m[k])} GiB</text>`;
  });
  const capX = x0 + cap * scale;
  const r = p.memory_readings_bytes || {};
  $("memory-title").textContent = `Winner's memory per GPU: ${gib(m.total)} GiB of ${gib(cap)} GiB ` +
    `(peak in ${p.peak_phase}; allocated ${gib(r.allocated)}, reserved ${gib(r.reserved)}, ` +
    `device ${gib(r.device)} GiB)`;
  $("memory-chart").innerHTML = `<rect x="${x0}" y="22" width="${width}" height="34" fill="#f0f2f5"/>` + bars +
    `<line x1="${capX}" x2="${capX}" y1="12" y2="64" stroke="${p.fits ? "#1d2430" : "#b3261e"}" ` +
    `stroke-width="2" stroke-dasharray="4 2"/>` +
    `<text x="${Math.min(capX, 455)}" y="10" text-anchor="end">GPU memory ${gib(cap)} GiB</text>` + legend;
}

function renderTime(p) {
  const entries = Object.entries(p.time_breakdown_s).filter(([, s]) => s > 0);
  const top = Math.max(...entries.map(([, s]) => s), 1e-9);
  const rowH = 22, label = 120, width = 250;
  let svg = "";
  entries.forEach(([k, s], i) => {
    const y = 8 + i * rowH;
    const unit = s >= 1 ? `${s.toFixed(2)} s` : `${(1000 * s).toFixed(1)} ms`;
    svg += `<text x="${label - 6}" y="${y + 12}" text-anchor="end">${esc(k.replace(/_/g, " "))}</text>` +
      `<rect x="${label}" y="${y}" width="${Math.max(1, width * s / top)}" height="14" ` +
      `fill="${TIME_COLORS[i % TIME_COLORS.length]}"><title>${k}: ${unit}</title></rect>` +
      `<text x="${label + width * s / top + 6}" y="${y + 12}">${unit}</text>`;
  });
  const h = 16 + entries.length * rowH;
  $("time-chart").setAttribute("viewBox", `0 0 460 ${h}`);
  $("time-title").textContent = `Winner's step time: ${p.step_time_s.toFixed(2)} s, ` +
    `MFU ${(100 * p.mfu).toFixed(0)}% (overlapped communication not shown)`;
  $("time-chart").innerHTML = svg;
}

function renderScale(data) {
  const rows = data.rows.filter((r) => r.fits);
  $("scale-title").textContent = `Speedup against GPU count: ${data.model} ${data.method} on ${data.gpu}` +
    (data.baseline_gpus ? `, against ${data.baseline_gpus} GPU${data.baseline_gpus > 1 ? "s" : ""} (log-log)` : "");
  if (!rows.length) { $("scale-chart").innerHTML = `<text x="10" y="20">no GPU count fits</text>`; return; }
  const L = 52, R = 880, T = 26, B = 214;
  const counts = data.rows.map((r) => r.gpus);
  const ideal = (g) => g / data.baseline_gpus;
  const lg = Math.log2;
  const xMin = lg(Math.min(...counts)), xMax = Math.max(lg(Math.max(...counts)), xMin + 1);
  const speeds = [...rows.map((r) => r.speedup), ...counts.map(ideal)].filter((s) => s > 0);
  const yMin = Math.floor(lg(Math.min(...speeds))), yMax = Math.max(Math.ceil(lg(Math.max(...speeds))), yMin + 1);
  const X = (g) => L + (R - L) * (lg(g) - xMin) / (xMax - xMin);
  const Y = (s) => B - (B - T) * (lg(s) - yMin) / (yMax - yMin);
  let svg = `<line class="axis" x1="${L}" x2="${R}" y1="${B}" y2="${B}"/>` +
    `<line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${B}"/>`;
  for (let e = yMin; e <= yMax; e++) {
    svg += `<line class="grid" x1="${L}" x2="${R}" y1="${Y(2 ** e)}" y2="${Y(2 ** e)}"/>` +
      `<text x="${L - 6}" y="${Y(2 ** e) + 4}" text-anchor="end">${+(2 ** e).toFixed(3)}×</text>`;
  }
  for (const g of counts) svg += `<text x="${X(g)}" y="${B + 16}" text-anchor="middle">${g}</text>`;
  svg += `<text x="${(L + R) / 2}" y="${B + 34}" text-anchor="middle">GPUs</text>`;
  svg += `<polyline fill="none" stroke="#9aa3b2" stroke-dasharray="5 4" points="${counts.map((g) =>
    `${X(g)},${Y(ideal(g))}`).join(" ")}"/>`;
  svg += `<polyline fill="none" stroke="#2a62c9" stroke-width="2.5" points="${rows.map((r) =>
    `${X(r.gpus)},${Y(r.speedup)}`).join(" ")}"/>`;
  for (const r of rows) {
    svg += `<circle cx="${X(r.gpus)}" cy="${Y(r.speedup)}" r="4" fill="#2a62c9"><title>${r.gpus} GPUs: ` +
      `${r.plan}, ${fmtInt(r.tokens_per_s)} tokens/s, speedup ${r.speedup.toFixed(2)}×, efficiency ` +
      `${(100 * r.efficiency).toFixed(0)}%</title></circle>` + (r.gpus === data.baseline_gpus ? "" :
      `<text x="${X(r.gpus) - 6}" y="${Y(r.speedup) - 8}" text-anchor="end">${(100 * r.efficiency).toFixed(0)}%</text>`);
  }
  svg += `<line x1="${L + 14}" x2="${L + 40}" y1="${T + 6}" y2="${T + 6}" stroke="#2a62c9" stroke-width="2.5"/>` +
    `<text x="${L + 46}" y="${T + 10}">predicted speedup (labels: scaling efficiency)</text>` +
    `<line x1="${L + 14}" x2="${L + 40}" y1="${T + 24}" y2="${T + 24}" stroke="#9aa3b2" stroke-dasharray="5 4"/>` +
    `<text x="${L + 46}" y="${T + 28}">ideal (linear)</text>`;
  $("scale-chart").innerHTML = svg;
}

async function download(plan) {
  try {
    const response = await postJSON("/api/emit", { plan });
    const disposition = response.headers.get("Content-Disposition") || "";
    const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || "ftplan-emit.zip";
    const url = URL.createObjectURL(await response.blob());
    const a = Object.assign(document.createElement("a"), { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    showError(e.message);
  }
}

async function init() {
  setState("loading");
  const query = new URLSearchParams(location.search);
  try {
    const [models, gpus] = await Promise.all([fetch("/api/models").then((r) => r.json()),
      fetch("/api/gpus").then((r) => r.json())]);
    for (const m of models) $("model").add(new Option(`${m.name} (${(m.params / 1e9).toFixed(1)}B)`, m.name));
    for (const g of gpus) {
      for (const n of [1, 8, "2x8"]) $("gpu-list").append(new Option(`${g.name} ${(g.hbm_bytes / 2 ** 30).toFixed(0)} GiB`,
        `${n}x${g.name}`));
    }
  } catch (e) {
    showError(`cannot read the catalogs: ${e.message}`);
  }
  for (const f of FIELDS) {
    const value = query.get(f) ?? DEFAULTS[f];
    if (f === "model") ensureOption($("model"), value);  // an alias (7b) or a path stays as given
    $(f).value = value;
  }
  $("inputs").addEventListener("submit", (e) => { e.preventDefault(); run(); });
  for (const f of ["model", "method"]) $(f).addEventListener("change", run);
  for (const f of ["gpus", "seq_len", "global_batch", "solve"]) $(f).addEventListener("change", run);
  $("model_config").addEventListener("change", run);
  $("download").addEventListener("click", () => winner && download(winner));
  run();
}

init();
