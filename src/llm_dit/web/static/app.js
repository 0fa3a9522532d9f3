// llm-dit web page: plain JS over the JSON API (/docs). Three views: generate, runs, one run.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
};
const fmt = (v) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : v === null || v === undefined ? "—" : String(v));

class ApiError extends Error {
  constructor(status, detail, field) { super(detail); this.status = status; this.field = field; }
}

async function api(path, opts = {}) {
  const init = { method: opts.method || (opts.body !== undefined ? "POST" : "GET"), headers: {} };
  if (opts.body instanceof FormData) init.body = opts.body;
  else if (opts.body !== undefined) { init.body = JSON.stringify(opts.body); init.headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, init);
  if (!r.ok) {
    let detail = r.statusText, field = null;
    try { const j = await r.json(); detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail); field = j.field || null; } catch (e) { /* not JSON */ }
    throw new ApiError(r.status, detail, field);
  }
  return opts.raw ? r : r.json();
}

// ---------------------------------------------------------------------------------------------
// routing

let timers = [];
function clearTimers() { timers.forEach(clearInterval); timers = []; }

function route() {
  clearTimers();
  const path = location.pathname;
  document.querySelectorAll(".page").forEach((p) => (p.hidden = true));
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.remove("active"));
  if (path.startsWith("/runs/")) { $("#page-run").hidden = false; $("#nav-runs").classList.add("active"); showRun(decodeURIComponent(path.slice(6))); }
  else if (path === "/runs") { $("#page-runs").hidden = false; $("#nav-runs").classList.add("active"); showRuns(); }
  else { $("#page-generate").hidden = false; $("#nav-generate").classList.add("active"); showGenerate(); }
}

function go(path) { history.pushState({}, "", path); route(); }
document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[data-nav], a[data-run]");
  if (a && !ev.ctrlKey && !ev.metaKey) { ev.preventDefault(); go(a.getAttribute("href")); }
});
window.addEventListener("popstate", route);

async function health() {
  try {
    const h = await api("/api/health");
    $("#health").textContent = `profile ${h.profile} · ${h.device} · loaded: ${h.loaded.join(", ") || "none"} · queued ${h.queued}`;
  } catch (e) { $("#health").textContent = e.message; }
}

// ---------------------------------------------------------------------------------------------
// generate page

let options = null;
const refs = []; // {id, url, name, weight, role}

async function showGenerate() {
  if (!options) {
    options = await api("/api/options");
    buildForm();
  }
  refreshJobs();
  timers.push(setInterval(refreshJobs, 1000));
}

function controlInput(c) {
  const id = "f-" + c.name, field = (c.group ? "recipe." : "generation.") + c.name;
  let input;
  if (c.kind === "enum") {
    input = el("select", { id, "data-field": field });
    if (c.nullable) input.append(el("option", { value: "" }, `profile (${fmt(c.profile)})`));
    for (const o of c.options) input.append(el("option", { value: o }, o));
    if (!c.nullable) input.value = c.default;
  } else if (c.kind === "bool") {
    input = el("input", { id, type: "checkbox", "data-field": field });
    input.checked = !!c.default;
  } else if (c.kind === "int" || c.kind === "float") {
    input = el("input", { id, type: "number", "data-field": field, min: c.min, max: c.max,
      step: c.step || (c.kind === "int" ? 1 : "any"), placeholder: c.nullable ? (c.profile !== null && c.profile !== undefined ? `profile (${fmt(c.profile)})` : "off") : "" });
    if (c.default !== null && c.default !== undefined) input.value = c.default;
  } else if (c.kind === "slider") {
    const num = el("input", { id, type: "number", class: "slider-value", "data-field": field, min: c.min, max: c.max, step: c.step });
    const range = el("input", { type: "range", id: id + "-range", min: c.min, max: c.max, step: c.step });
    num.value = range.value = c.default;
    range.addEventListener("input", () => (num.value = range.value));
    num.addEventListener("input", () => (range.value = num.value));
    return el("label", { class: "control", title: c.help }, el("span", {}, c.name), range, num);
  } else {
    input = el("input", { id, type: "text", "data-field": field, placeholder: c.kind === "schedule" ? "linear:0.8:0.2" : c.nullable ? "profile / off" : "" });
    if (c.default !== null && c.default !== undefined) input.value = c.default;
  }
  return el("label", { class: "control", title: c.help }, el("span", {}, c.name), input);
}

function buildForm() {
  const groups = {};
  for (const c of options.recipe) (groups[c.group] = groups[c.group] || []).push(c);
  const box = $("#recipe-controls");
  box.replaceChildren();
  for (const [g, controls] of Object.entries(groups)) {
    box.append(el("fieldset", { "data-group": g }, el("legend", {}, g), controls.map(controlInput)));
  }
  $("#generation-controls").replaceChildren(...options.generation.map(controlInput));
  for (const [key, p] of Object.entries(options.presets)) $("#preset").append(el("option", { value: key }, p.title));
  $("#sweep-field").replaceChildren(...options.sweepable.map((f) => el("option", { value: f }, f)));
  $("#sweep-field").value = "alpha";
  $("#preset").addEventListener("change", applyPreset);
  $("#file").addEventListener("change", (ev) => uploadFiles(ev.target.files));
  const drop = $("#drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); uploadFiles(ev.dataTransfer.files); });
  $("#gen-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitGenerate(); });
  $("#save-recipe").addEventListener("click", saveRecipe);
  $("#run-sweep").addEventListener("click", runSweep);
}

function resetControls() {
  for (const c of [...options.recipe, ...options.generation]) {
    const input = $("#f-" + c.name);
    if (c.kind === "bool") input.checked = !!c.default;
    else input.value = c.default === null || c.default === undefined ? "" : c.default;
    if (c.kind === "enum" && c.nullable) input.value = "";
    if (c.kind === "slider") $("#f-" + c.name + "-range").value = input.value;
  }
  $("#caption_tokens").value = "";
}

function applyPreset() {
  const p = options.presets[$("#preset").value];
  resetControls();
  $("#preset-note").textContent = p ? p.note : "";
  if (!p) return;
  for (const [k, v] of Object.entries({ ...(p.recipe || {}), ...(p.generation || {}) })) {
    const input = $("#f-" + k);
    if (!input) continue;
    if (input.type === "checkbox") input.checked = !!v; else input.value = v;
    const range = $("#f-" + k + "-range");
    if (range) range.value = v;
  }
  if (p.caption_tokens) $("#caption_tokens").value = p.caption_tokens;
}

async function uploadFiles(list) {
  showError("#form-error", null);
  for (const f of list) {
    const fd = new FormData();
    fd.append("file", f);
    try {
      const u = await api("/api/uploads", { body: fd });
      refs.push({ ...u, weight: 1, role: "content" });
    } catch (e) { showError("#form-error", e); }
  }
  renderRefs();
}

function renderRefs() {
  $("#refs").replaceChildren(...refs.map((r, i) => el("div", { class: "ref" },
    el("img", { src: r.url, alt: r.name }),
    el("span", {}, r.name),
    el("label", {}, "weight ", el("input", { type: "number", step: "any", value: r.weight, "data-field": `recipe.references.${i}.weight`, oninput: (ev) => (r.weight = parseFloat(ev.target.value)) })),
    (() => { const s = el("select", { "data-field": `recipe.references.${i}.role`, onchange: (ev) => (r.role = ev.target.value) }, el("option", { value: "content" }, "content"), el("option", { value: "style" }, "style")); s.value = r.role; return s; })(),
    el("button", { type: "button", class: "small", onclick: () => { refs.splice(i, 1); renderRefs(); } }, "remove"))));
}

function value(c) {
  const input = $("#f-" + c.name);
  if (c.kind === "bool") return input.checked;
  const v = input.value.trim();
  if (c.name === "vl_text") return input.value; // "" is meaningful: no text in the VL chat
  if (v === "") return undefined;
  if (c.kind === "int") return Number.isNaN(Number(v)) ? v : Number(v);
  if (c.kind === "float" || c.kind === "slider") return Number.isNaN(Number(v)) ? v : Number(v);
  if (c.name === "target_std" && v !== "text" && !Number.isNaN(Number(v))) return Number(v);
  return v;
}

function collect() {
  const recipe = {};
  for (const c of options.recipe) { const v = value(c); if (v !== undefined) recipe[c.name] = v; }
  if (refs.length) recipe.references = refs.map((r) => ({ image: r.id, weight: r.weight, role: r.role }));
  const generation = {};
  for (const c of options.generation) { const v = value(c); if (v !== undefined) generation[c.name] = v; }
  const body = { recipe, generation };
  const prompt = $("#prompt").value.trim();
  if (prompt) body.prompt = prompt;
  const ct = $("#caption_tokens").value.trim();
  if (ct) body.caption_tokens = Number(ct);
  return body;
}

function showError(target, e) {
  document.querySelectorAll(".invalid").forEach((x) => x.classList.remove("invalid"));
  $(target).textContent = e ? e.message : "";
  if (e && e.field) {
    const input = document.querySelector(`[data-field="${e.field}"]`) || document.querySelector(`[data-field="${e.field.split(".").slice(0, 2).join(".")}"]`);
    if (input) { input.classList.add("invalid"); input.style.outline = "2px solid #b42318"; setTimeout(() => (input.style.outline = ""), 4000); }
  }
}

async function submitGenerate() {
  showError("#form-error", null);
  try {
    const job = await api("/api/generate", { body: collect() });
    $("#result").replaceChildren(el("p", { class: "note" }, `job ${job.id} queued (position ${job.position})`));
    follow(job.id, renderResult);
    refreshJobs();
  } catch (e) { showError("#form-error", e); }
}

async function saveRecipe() {
  showError("#form-error", null);
  try {
    const r = await api("/api/recipe", { body: { recipe: collect().recipe }, raw: true });
    const blob = await r.blob();
    const a = el("a", { href: URL.createObjectURL(blob), download: "recipe.toml" });
    document.body.append(a); a.click(); a.remove();
  } catch (e) { showError("#form-error", e); }
}

async function runSweep() {
  showError("#form-error", null);
  const field = $("#sweep-field").value;
  // the server splits and types the comma list, as it does for the command line's --vary
  const body = { ...collect(), axes: { [field]: $("#sweep-values").value } };
  try {
    const job = await api("/api/sweeps", { body });
    go("/runs/" + encodeURIComponent(job.run));
  } catch (e) { showError("#form-error", e); }
}

// job progress: server-sent events; the page falls back to polling if the stream breaks
const ENDED = ["done", "failed", "cancelled", "interrupted"];
function follow(id, onUpdate) {
  const es = new EventSource(`/api/jobs/${id}/events`);
  es.addEventListener("job", (ev) => {
    const job = JSON.parse(ev.data);
    onUpdate(job);
    if (ENDED.includes(job.state)) es.close();
  });
  es.onerror = () => {
    es.close();
    const t = setInterval(async () => {
      try { const job = await api(`/api/jobs/${id}`); onUpdate(job); if (ENDED.includes(job.state)) clearInterval(t); }
      catch (e) { clearInterval(t); }
    }, 1000);
  };
}

function progressOf(job) {
  const p = job.progress;
  if (job.state === "queued") return el("span", { class: "note" }, `position ${job.position} in the queue`);
  if (job.state !== "running") return null;
  const parts = [];
  if (p.cells) parts.push(el("div", {}, el("span", { class: "note" }, `cells ${p.cells_done}/${p.cells}`), el("progress", { max: p.cells, value: p.cells_done })));
  if (p.steps) parts.push(el("div", {}, el("span", { class: "note" }, `step ${p.step}/${p.steps}`), el("progress", { class: "steps", max: p.steps, value: p.step })));
  if (p.message) parts.push(el("div", { class: "note" }, p.message));
  return el("div", {}, parts);
}

function renderResult(job) {
  const box = $("#result");
  if (job.state !== "done") {
    box.replaceChildren(el("p", {}, el("span", { class: "state " + job.state }, job.state), " ", job.title), progressOf(job) || "",
      job.error ? el("p", { class: "error" }, job.error) : "");
    return;
  }
  refreshJobs();
  const r = job.result.record;
  const rows = [["backend", r.backend], ["alpha", Array.isArray(r.alpha) ? r.alpha.map(fmt).join(", ") : r.alpha],
    ["hidden_layer", r.hidden_layer], ["blend_mode", r.blend_mode], ["text_std", r.text_std], ["vl_std", r.vl_std],
    ["blended_std", r.blended_std], ["vl_shape", r.vl_shape && r.vl_shape.join(" x ")], ["blended_shape", r.blended_shape && r.blended_shape.join(" x ")],
    ["rms", r.rms && Object.entries(r.rms).map(([k, v]) => `${k} ${fmt(v)}`).join(", ")],
    ["seed / steps", `${r.config.generation.seed} / ${r.config.generation.steps}`], ["size", `${r.config.generation.width} x ${r.config.generation.height}`],
    ["generation_time", r.generation_time + " s"], ["total", r.seconds + " s"]];
  box.replaceChildren(
    el("img", { class: "picture", src: job.result.image, alt: r.prompt }),
    el("p", { class: "note" }, r.prompt),
    el("table", { class: "stats" }, el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, fmt(v)))))),
    el("p", {}, el("a", { href: job.result.image, download: "" }, "image"), " · ", el("a", { href: job.result.sidecar, target: "_blank" }, "metadata (.json)")),
    el("details", {}, el("summary", {}, "metadata"), el("pre", {}, JSON.stringify(r, null, 2))));
}

async function refreshJobs() {
  try {
    const jobs = await api("/api/jobs");
    $("#jobs").replaceChildren(...jobs.slice(0, 12).map((j) => el("li", { "data-job": j.id },
      el("div", {}, el("span", { class: "state " + j.state }, j.state), " ", j.kind, ": ", j.title, " ",
        j.run ? el("a", { href: "/runs/" + encodeURIComponent(j.run), "data-run": "" }, "open run") : "",
        ["queued", "running"].includes(j.state) ? el("button", { type: "button", class: "small cancel", onclick: () => api(`/api/jobs/${j.id}/cancel`, { method: "POST" }).then(refreshJobs) }, "cancel") : ""),
      progressOf(j), j.error ? el("div", { class: "error" }, j.error) : "")));
    health();
  } catch (e) { /* the server went away: the next tick tries again */ }
}

// ---------------------------------------------------------------------------------------------
// runs page

let experiments = null;

async function showRuns() {
  if (!experiments) {
    experiments = await api("/api/experiments");
    $("#exp-name").replaceChildren(...experiments.map((e) => el("option", { value: e.name }, `${e.name} (${e.quick_cells}/${e.cells} cells)`)));
    const describe = () => { const e = experiments.find((x) => x.name === $("#exp-name").value); $("#exp-summary").textContent = `${e.summary} · ${e.images} image(s)${e.caption ? " · writes its own prompts (captions)" : ""}`; };
    $("#exp-name").addEventListener("change", describe);
    describe();
    $("#exp-form").addEventListener("submit", (ev) => { ev.preventDefault(); startExperiment(); });
  }
  await listRuns();
  timers.push(setInterval(listRuns, 3000));
}

async function listRuns() {
  const runs = await api("/api/runs");
  $("#runs-table tbody").replaceChildren(...(runs.length ? runs.map((r) => el("tr", {},
    el("td", {}, el("a", { href: "/runs/" + encodeURIComponent(r.name), "data-run": "" }, r.name)),
    el("td", {}, r.experiment), el("td", {}, r.prompt || "(captions)"),
    el("td", { class: "num" }, `${r.done}/${r.cells}` + (r.failed ? ` (${r.failed} failed)` : "")),
    el("td", {}, el("span", { class: "state " + r.status }, r.status)), el("td", {}, r.modified.replace("T", " ").slice(0, 19))))
    : [el("tr", {}, el("td", { colspan: 6, class: "note" }, "No runs yet: start one here, or run a sweep from the generate page."))]));
}

async function startExperiment() {
  showError("#exp-error", null);
  try {
    const images = [];
    for (const f of $("#exp-files").files) {
      const fd = new FormData();
      fd.append("file", f);
      images.push((await api("/api/uploads", { body: fd })).id);
    }
    const e = experiments.find((x) => x.name === $("#exp-name").value);
    const body = { experiment: e.name, images, quick: $("#exp-quick").checked, generation: {} };
    const prompt = $("#exp-prompt").value.trim();
    if (prompt) body.prompt = prompt;
    if ($("#exp-steps").value) body.generation.steps = Number($("#exp-steps").value);
    if ($("#exp-run").value.trim()) body.name = $("#exp-run").value.trim();
    const job = await api("/api/experiments", { body });
    go("/runs/" + encodeURIComponent(job.run));
  } catch (e) { showError("#exp-error", e); }
}

// ---------------------------------------------------------------------------------------------
// one run

let selectedCell = null;

async function showRun(name) {
  selectedCell = null;
  $("#run-title").textContent = name;
  const update = async () => {
    let d;
    try { d = await api("/api/runs/" + encodeURIComponent(name)); }
    catch (e) { $("#run-info").replaceChildren(el("span", { class: "error" }, e.message)); clearTimers(); return; }
    renderRun(d);
    if (d.status !== "running" && !(d.job && ["queued", "running"].includes(d.job.state))) clearTimers();
  };
  await update();
  timers.push(setInterval(update, 1500));
}

async function resumeRun(name) {
  try { await api(`/api/runs/${encodeURIComponent(name)}/resume`, { method: "POST" }); clearTimers(); showRun(name); }
  catch (e) { $("#run-job").append(el("p", { class: "error" }, e.message)); }
}

function renderRun(d) {
  const done = d.cells.filter((c) => c.status === "done").length;
  $("#run-info").replaceChildren(el("span", { class: "state " + d.status }, d.status), ` ${d.experiment || "waiting for the worker"}${d.quick ? " (quick)" : ""} · ${d.kind === "trials" ? "trials" : `${done}/${d.cells.length} cells`} · `,
    d.prompt ? `“${d.prompt}”` : "captions as prompts", " · ",
    d.report ? el("a", { href: d.report, target: "_blank", id: "report-link" }, "report.html") : "report when done",
    ...(d.metadata ? [" · ", el("a", { href: d.metadata, target: "_blank" }, "metadata.json")] : []));
  // a folder whose run.json cannot be read: what is wrong, and nothing else to show
  if (d.status === "damaged") $("#run-info").replaceChildren(el("span", { class: "state damaged" }, "damaged"), " " + d.error);
  const job = d.job && ["queued", "running"].includes(d.job.state) ? d.job : null;
  const missing = d.cells.length - done;
  // an interrupted, cancelled or failed run: its finished cells are kept, the missing ones made again
  const resume = !job && d.status !== "running" && missing > 0 && d.experiment ? el("button", { type: "button", class: "small", id: "resume-run", onclick: () => resumeRun(d.name) }, `resume (${missing} cell${missing === 1 ? "" : "s"} to make)`) : "";
  $("#run-job").replaceChildren(...(job ? [progressOf(job) || "", el("button", { type: "button", class: "small cancel", onclick: () => api(`/api/jobs/${job.id}/cancel`, { method: "POST" }) }, "cancel run")] : [d.job && d.job.error ? el("p", { class: "error" }, d.job.error) : "", resume]));
  // warnings, answers and the cell table: HTML the server builds with the report's own code
  if ($("#run-summary").dataset.key !== d.summary) {
    $("#run-summary").dataset.key = d.summary;
    $("#run-summary").innerHTML = d.summary;
  }
  const gridKey = d.grids.join("|");
  if ($("#run-grids").dataset.key !== gridKey) {
    $("#run-grids").dataset.key = gridKey;
    $("#run-grids").replaceChildren(...d.grids.map((g) => el("a", { href: g, target: "_blank" }, el("img", { src: g + "?t=" + Date.now(), alt: "grid", class: "grid" }))));
  }
  $("#run-cells").replaceChildren(...d.cells.map((c) => el("div", { class: "cell" + (selectedCell === c.name ? " selected" : ""), "data-cell": c.name, onclick: () => { selectedCell = c.name; renderRun(d); } },
    c.image ? el("img", { src: c.image, alt: c.name }) : el("div", { class: "placeholder" }, c.status),
    el("div", {}, el("strong", {}, c.name)),
    el("div", { class: "note" }, Object.entries(c.params).map(([k, v]) => `${k}=${fmt(v)}`).join(" ")),
    c.error ? el("div", { class: "error" }, c.error) : "")));
  const sel = d.cells.find((c) => c.name === selectedCell);
  const plotsKey = d.plots.join("|") + (sel ? sel.name : "");
  if ($("#run-plots").dataset.key !== plotsKey) {
    $("#run-plots").dataset.key = plotsKey;
    $("#run-plots").replaceChildren(
      sel && sel.record ? el("div", {}, el("h3", {}, "Record of " + sel.name), el("pre", { id: "cell-record" }, JSON.stringify(sel.record, null, 2))) : "",
      d.plots.length ? el("h3", {}, "Plots") : "", ...d.plots.map((p) => el("img", { src: p, alt: "plot" })));
  }
}

// opened from the server's link with ?token=: the cookie holds it now; keep it out of the history
if (new URLSearchParams(location.search).has("token")) history.replaceState({}, "", location.pathname);
route();
health();
