// The abray results dashboard: plain JavaScript, no build step, Plotly served by the API itself. Charts are
// drawn by charts.js (AbrayCharts), tables by table.js (AbrayTable); this file holds the state and the API.
//
// It reads the REST API only: GET /jobs (the list), /health (links to Ray's dashboard and Grafana, when they
// answer), and for the open job GET /jobs/{id}, /jobs/{id}/summary, /jobs/{id}/trials and
// /jobs/{id}/results?format=json (the tidy schema); for each job ticked for comparison, its summary. The URL
// hash `#job=N&compare=A,B` says which. While the open job is queued or running it is polled every 2 s, and
// the list too; once nothing runs, the list is polled every 15 s and the finished job not at all.
//
// State for tests and scripts: <body data-state="loading|ready|auth|error" data-selected-job>,
// #job-detail[data-job-id][data-status][data-done][data-total][data-trials][data-points][data-renders]
// [data-compared], #jobs-table tr[data-job-id][data-status], the tables' data-shown/data-total, and the
// Plotly divs' `.data`.
"use strict";

(() => {
  const ACTIVE = new Set(["queued", "running"]);
  const FAST_MS = 2000;
  const IDLE_MS = 15000;
  const RETRY_MS = 5000;
  const LINKS_MS = 60000;
  const TOKEN_KEY = "abray.token";
  const LINKS = { ray_dashboard: "Ray dashboard", grafana: "Grafana" };
  // config fields that are paths or switches, not hyperparameters: left out of the trials table
  const NOT_HYPERPARAMETERS = new Set(["data_root", "download", "storage_path", "output"]);
  const Charts = window.AbrayCharts;

  const $ = (id) => document.getElementById(id);
  const state = {
    token: localStorage.getItem(TOKEN_KEY) || "",
    jobs: [],
    selected: null,        // the open job's id, from the hash
    compare: [],           // ids ticked for comparison, from the hash
    job: null, summary: null, results: null, trials: null, version: null,
    compared: new Map(),   // id -> { job, summary } of ticked jobs
    listTimer: null, jobTimer: null, linksTimer: null,
    listGen: 0, jobGen: 0, // a newer fetch makes older answers stale
    authNeeded: false,
    renders: 0,
  };

  class AuthError extends Error {}

  // ---- the API -----------------------------------------------------------------------------------

  function headers(accept = "application/json") {
    const h = { Accept: accept };
    if (state.token) h.Authorization = `Bearer ${state.token}`;
    return h;
  }

  async function request(path, accept) {
    const response = await fetch(path, { headers: headers(accept), cache: "no-store" });
    if (response.status === 401) {
      let detail = "";
      try { detail = (await response.json()).detail || ""; } catch (_) { /* not JSON */ }
      throw new AuthError(detail);
    }
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = JSON.stringify((await response.json()).detail); } catch (_) { /* not JSON */ }
      const err = new Error(`${path}: ${response.status} ${detail}`);
      err.status = response.status;
      throw err;
    }
    return response;
  }

  async function api(path) {
    return (await request(path)).json();
  }

  function needToken(err) {
    state.authNeeded = true;
    clearTimeout(state.listTimer);
    clearTimeout(state.jobTimer);
    document.body.dataset.state = "auth";
    const banner = $("auth-banner");
    banner.hidden = false;
    banner.dataset.reason = err.message || "";
    banner.firstChild.textContent = state.token && err.message === "wrong bearer token"
      ? "The stored token was refused. Enter this service's API token above; it is kept in this browser only "
        + "(localStorage) and sent as "
      : "This service needs its API token to read jobs. Enter it above; it is kept in this browser only "
        + "(localStorage) and sent as ";
    setStatus("token needed");
    $("token-input").focus();
  }

  function showError(err) {
    const banner = $("error-banner");
    banner.textContent = `Could not reach the API: ${err.message}`;
    banner.hidden = false;
    if (document.body.dataset.state === "loading") document.body.dataset.state = "error";
  }

  function clearError() {
    $("error-banner").hidden = true;
  }

  // ---- links to Ray's dashboard and Grafana ------------------------------------------------------

  async function refreshLinks() {
    clearTimeout(state.linksTimer);
    let links = {};
    try {
      links = (await (await fetch("/health", { cache: "no-store" })).json()).links || {};  // 503 has them too
    } catch (_) { /* no links this time */ }
    const nav = $("links");
    nav.replaceChildren(...Object.entries(LINKS).filter(([key]) => links[key]).map(([key, text]) =>
      el("a", { href: links[key], target: "_blank", rel: "noopener noreferrer", "data-link": key }, text)));
    nav.hidden = nav.children.length === 0;
    nav.dataset.checks = String(Number(nav.dataset.checks || 0) + 1);
    state.linksTimer = setTimeout(refreshLinks, LINKS_MS);
  }

  // ---- the job list ------------------------------------------------------------------------------

  async function refreshList() {
    clearTimeout(state.listTimer);
    if (state.authNeeded) return;
    const gen = ++state.listGen;
    let delay = IDLE_MS;
    try {
      const page = await api("/jobs?limit=100");
      if (gen !== state.listGen) return;
      clearError();
      state.jobs = page.items;
      renderList(page);
      if (state.selected === null && page.items.length) {
        history.replaceState(null, "", `#job=${page.items[0].id}`);  // open the newest job
        select(page.items[0].id);
      } else if (state.selected === null) {
        document.body.dataset.state = "ready";
      }
      if (state.compare.some((id) => isStale(id))) compareNow();
      delay = page.items.some((j) => ACTIVE.has(j.status)) ? FAST_MS : IDLE_MS;
    } catch (err) {
      if (gen !== state.listGen) return;
      if (err instanceof AuthError) return needToken(err);
      showError(err);
      delay = RETRY_MS;
    }
    state.listTimer = setTimeout(refreshList, delay);
  }

  function renderList(page) {
    const body = $("jobs-table").tBodies[0];
    body.replaceChildren(...page.items.map(jobRow));
    $("jobs-empty").hidden = page.items.length > 0;
    const active = page.items.filter((j) => ACTIVE.has(j.status)).length;
    const more = page.total > page.items.length ? ` (newest ${page.items.length} shown)` : "";
    setStatus(`${page.total} job${page.total === 1 ? "" : "s"}${more}` + (active ? `, ${active} active` : ""));
    document.body.dataset.listRenders = String(Number(document.body.dataset.listRenders || 0) + 1);
  }

  function jobRow(job) {
    const tr = el("tr", { "data-job-id": job.id, "data-status": job.status, tabindex: "0" });
    if (job.id === state.selected) tr.classList.add("selected");
    const tick = el("input", { type: "checkbox", class: "compare", "aria-label": `compare job ${job.id}` });
    tick.checked = state.compare.includes(job.id);
    tick.disabled = job.id === state.selected;
    tick.addEventListener("click", (e) => e.stopPropagation());
    tick.addEventListener("change", () => setCompare(tick.checked
      ? [...state.compare, job.id] : state.compare.filter((id) => id !== job.id)));
    const first = el("td", { class: "compare" });
    first.append(tick);
    tr.append(first, el("td", {}, String(job.id)), el("td", { class: "name", title: job.name }, job.name),
      el("td", {}, statusBadge(job.status)), el("td", {}, progressCell(job.progress)),
      el("td", { class: "time", title: job.created_at }, shortTime(job.created_at)));
    const open = () => { location.hash = hashOf(job.id, state.compare.filter((id) => id !== job.id)); };
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    return tr;
  }

  function statusBadge(status) {
    return el("span", { class: `status ${status}` }, status);
  }

  function progressCell(p) {
    const extra = [];
    if (p.running) extra.push(`${p.running} running`);
    if (p.failed) extra.push(`${p.failed} failed`);
    if (p.diverged) extra.push(`${p.diverged} diverged`);
    if (p.cancelled) extra.push(`${p.cancelled} cancelled`);
    const wrap = el("div", { class: "progress", title: `${p.done}/${p.total} trials done` + (extra.length ? `; ${extra.join(", ")}` : "") });
    const bar = el("progress", { max: String(Math.max(p.total, 1)), value: String(p.done) });
    wrap.append(bar, el("span", {}, `${p.done}/${p.total}`));
    if (extra.length) wrap.append(el("span", { class: "extra" }, extra.join(", ")));
    return wrap;
  }

  // ---- the hash: which job is open, which are compared -------------------------------------------

  function parseHash() {
    const job = /(?:^|[#&])job=(\d+)/.exec(location.hash);
    const compare = /(?:^|[#&])compare=([\d,]+)/.exec(location.hash);
    return { job: job ? Number(job[1]) : null,
      compare: compare ? [...new Set(compare[1].split(",").filter(Boolean).map(Number))] : [] };
  }

  function hashOf(job, compare) {
    return `#job=${job}` + (compare.length ? `&compare=${compare.join(",")}` : "");
  }

  function setCompare(ids) {
    if (state.selected === null) return;
    location.hash = hashOf(state.selected, ids.filter((id) => id !== state.selected));
  }

  function onHash() {
    const { job, compare } = parseHash();
    state.compare = compare.filter((id) => id !== job);
    if (job !== state.selected) select(job);
    else compareNow();
    for (const tick of document.querySelectorAll("#jobs-table input.compare")) {
      tick.checked = state.compare.includes(Number(tick.closest("tr").dataset.jobId));
    }
  }

  // ---- the open job ------------------------------------------------------------------------------

  function select(id) {
    if (id === state.selected && state.job) return;
    state.selected = id;
    state.job = state.summary = state.results = state.trials = state.version = null;
    document.body.dataset.selectedJob = id === null ? "" : String(id);
    for (const tr of document.querySelectorAll("#jobs-table tbody tr")) {
      tr.classList.toggle("selected", Number(tr.dataset.jobId) === id);
      tr.querySelector("input.compare").disabled = Number(tr.dataset.jobId) === id;
    }
    clearTimeout(state.jobTimer);
    if (id === null) {
      $("job-detail").hidden = true;
      $("job-none").hidden = false;
      return;
    }
    refreshJob();
  }

  async function refreshJob() {
    clearTimeout(state.jobTimer);
    if (state.authNeeded || state.selected === null) return;
    const id = state.selected;
    const gen = ++state.jobGen;
    let delay = null;
    try {
      const job = await api(`/jobs/${id}`);
      if (gen !== state.jobGen) return;
      // results, summary and trials change only when the progress does: fetch them only then
      const version = `${job.status} ${JSON.stringify(job.progress)}`;
      const known = state.job && state.job.id === job.id && state.version === version;
      const [summary, results, trials] = known ? [state.summary, state.results, state.trials] : await Promise.all([
        api(`/jobs/${id}/summary`), api(`/jobs/${id}/results?format=json`), api(`/jobs/${id}/trials`)]);
      if (gen !== state.jobGen) return;
      clearError();
      Object.assign(state, { job, summary, results, trials, version });
      await refreshCompared(false);
      if (gen !== state.jobGen) return;
      renderJob();
      if (ACTIVE.has(job.status)) delay = FAST_MS;
      else if (state.jobs.some((j) => j.id === id && ACTIVE.has(j.status))) refreshList();  // show it finished
    } catch (err) {
      if (gen !== state.jobGen) return;
      if (err instanceof AuthError) return needToken(err);
      if (err.status === 404) {
        $("job-detail").hidden = true;
        $("job-none").hidden = false;
        $("job-none").textContent = `Job ${id} does not exist.`;
        document.body.dataset.state = "ready";
        return;
      }
      showError(err);
      delay = RETRY_MS;
    }
    if (delay !== null) state.jobTimer = setTimeout(refreshJob, delay);
  }

  // ---- compared jobs -------------------------------------------------------------------------------

  function isStale(id) {
    const known = state.compared.get(id);
    const listed = state.jobs.find((j) => j.id === id);
    return !known || (listed && listed.progress.epochs !== known.job.progress.epochs);
  }

  function compareNow() {
    refreshCompared().catch((err) => (err instanceof AuthError ? needToken(err) : showError(err)));
  }

  async function refreshCompared(render = true) {
    for (const id of [...state.compared.keys()]) if (!state.compare.includes(id)) state.compared.delete(id);
    const missing = state.compare.filter(isStale);
    const fetched = await Promise.all(missing.map(async (id) => {
      try {
        return [id, { job: await api(`/jobs/${id}`), summary: await api(`/jobs/${id}/summary`) }];
      } catch (err) {
        if (err.status !== 404) throw err;
        return [id, null];  // deleted or never there: nothing to draw
      }
    }));
    for (const [id, data] of fetched) if (data) state.compared.set(id, data);
    if (render && state.job && state.results) renderAccuracy();
  }

  // ---- rendering the open job ----------------------------------------------------------------------

  function renderJob() {
    const { job, results } = state;
    const detail = $("job-detail");
    $("job-none").hidden = true;
    detail.hidden = false;  // before plotting, so that the charts get their size

    $("job-title").textContent = `#${job.id} ${job.name}`;
    $("job-status").replaceChildren(statusBadge(job.status));
    $("job-progress").replaceChildren(progressCell(job.progress));
    $("job-meta").textContent = jobMeta(job);
    $("job-error").hidden = !job.error;
    $("job-error").textContent = job.error || "";
    for (const button of document.querySelectorAll(".downloads button")) button.disabled = results.length === 0;

    const trials = groupTrials(results);
    const charts = $("charts");
    if (results.length === 0) {  // nothing reported: a note instead of empty charts
      for (const div of charts.querySelectorAll(".chart")) Plotly.purge(div);
      charts.hidden = true;
      $("results-empty").hidden = false;
      $("results-empty").textContent = ACTIVE.has(job.status) ? "No results yet: no trial has reported an epoch."
        : `No results: no trial reported an epoch${job.error ? " (the error is above)" : ""}.`;
    } else {
      charts.hidden = false;
      $("results-empty").hidden = true;
      renderAccuracy();
      renderCurves(trials);
      renderStaleness(trials);
      renderSummary();
    }
    renderTrials();

    state.renders += 1;
    Object.assign(detail.dataset, {
      jobId: String(job.id), status: job.status, done: String(job.progress.done), total: String(job.progress.total),
      trials: String(trials.length), points: String(results.length), renders: String(state.renders),
    });
    document.body.dataset.jobStatus = job.status;
    document.body.dataset.state = "ready";
  }

  function jobMeta(job) {
    const spec = job.spec || {};
    const parts = [];
    for (const [key, values] of Object.entries(spec.grid || {})) parts.push(`${key}: ${[].concat(values).join(", ")}`);
    for (const [key, value] of Object.entries(spec)) {
      if (key !== "grid" && key !== "name" && (typeof value !== "object" || value === null)) parts.push(`${key} ${value}`);
    }
    if (job.started_at) parts.push(`started ${shortTime(job.started_at)}`);
    if (job.finished_at) {
      parts.push(`finished ${shortTime(job.finished_at)}`);
      if (job.started_at) parts.push(`took ${duration(new Date(job.finished_at) - new Date(job.started_at))}`);
    }
    if (job.cancel_requested_at && !job.finished_at) parts.push("cancelling");
    return parts.join(" · ");
  }

  // rows of the tidy schema -> one entry per trial: its config and its epochs in order
  function groupTrials(rows) {
    const byId = new Map();
    for (const r of rows) {
      if (!byId.has(r.trial_id)) byId.set(r.trial_id, { id: r.trial_id, config: r, epochs: [] });
      byId.get(r.trial_id).epochs.push(r);
    }
    const trials = [...byId.values()];
    for (const t of trials) t.epochs.sort((a, b) => a.epoch - b.epoch);
    return trials.sort((a, b) => cmp(a.config.optimizer, b.config.optimizer) || a.config.delay - b.config.delay
      || cmp(a.config.mode, b.config.mode) || a.config.seed - b.config.seed || cmp(a.id, b.id));
  }

  function cmp(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function openKeys() {
    return Charts.settingKeys(state.summary && state.summary.group_by);
  }

  // one colour per setting over the open job and the compared ones
  function hues() {
    const labels = [];
    for (const s of [state.summary, ...[...state.compared.values()].map((c) => c.summary)]) {
      if (!s) continue;
      const keys = Charts.settingKeys(s.group_by);
      for (const r of s.rows) labels.push(Charts.settingLabel(r, keys));
    }
    for (const r of state.results || []) labels.push(Charts.settingLabel(r, openKeys()));
    return Charts.palette(labels);
  }

  function renderAccuracy() {
    const jobs = [{ id: state.job.id, name: state.job.name, groupBy: state.summary.group_by, rows: state.summary.rows }];
    for (const id of state.compare) {
      const c = state.compared.get(id);
      if (c) jobs.push({ id, name: c.job.name, groupBy: c.summary.group_by, rows: c.summary.rows });
    }
    Charts.accuracy($("chart-accuracy"), jobs, hues());
    const note = $("compare-note");
    note.hidden = jobs.length < 2;
    note.textContent = jobs.length < 2 ? "" : `· compared: ${jobs.slice(1).map((j) => `#${j.id}`).join(", ")} (dashed)`;
    $("job-detail").dataset.compared = jobs.slice(1).map((j) => j.id).join(",");
  }

  function renderCurves(trials) {
    Charts.curves($("chart-curves"), trials, { metric: $("curve-metric").value, x: $("curve-x").value,
      keys: openKeys(), hues: hues(), jobId: state.job.id });
  }

  function renderStaleness(trials) {
    const distributed = trials.filter((t) => t.config.mode && t.config.mode !== "simulated");
    const chart = $("chart-staleness");
    chart.dataset.trials = String(distributed.length);
    $("staleness-note").hidden = distributed.length > 0;
    $("job-detail").classList.toggle("no-staleness", !distributed.length);
    if (!distributed.length) {
      if (!chart.hidden) Plotly.purge(chart);
      chart.hidden = $("staleness-card").hidden = true;
      return;
    }
    chart.hidden = $("staleness-card").hidden = false;
    Charts.staleness(chart, distributed, { keys: openKeys(), hues: hues(), jobId: state.job.id });
  }

  function renderSummary() {
    const { group_by: groupBy, rows } = state.summary;
    const keys = openKeys();
    const colours = hues();
    const columns = groupBy.map((key, i) => ({
      key, label: key, numeric: rows.some((r) => typeof r[key] === "number"),
      format: i === 0 ? (v, r) => {
        const cell = el("span", {});
        cell.append(el("span", { class: "swatch", style: `background:${Charts.color(colours.get(Charts.settingLabel(r, keys)))}` }), String(v));
        return cell;
      } : undefined,
    }));
    columns.push(
      { key: "accuracy_mean", label: "accuracy", numeric: true, format: pct },
      { key: "accuracy_std", label: "std", numeric: true, format: (v) => (v == null ? "–" : `± ${pct(v)}`) },
      { key: "count", label: "trials", numeric: true },
      { key: "diverged", label: "diverged", numeric: true, className: (r) => (r.diverged ? "bad" : "") });
    AbrayTable.render($("summary-table"), { columns, rows,
      rowAttrs: (r) => ({ "data-optimizer": r.optimizer, "data-delay": r.delay }) });
    $("summary-empty").hidden = rows.length > 0;
  }

  function renderTrials() {
    const trials = state.trials || [];
    const fields = trials.length ? Object.keys(trials[0].config).filter((k) => !NOT_HYPERPARAMETERS.has(k)) : [];
    const varies = (k) => new Set(trials.map((t) => JSON.stringify(t.config[k]))).size > 1;
    const swept = fields.filter(varies);
    const rows = trials.map((t) => Object.assign({}, t.config, {
      trial_id: t.trial_id, status: t.status, epochs_reported: t.epochs_reported,
      test_accuracy: t.test_accuracy == null ? null : 100 * t.test_accuracy, diverged: t.diverged, error: t.error,
    }));
    const numeric = (k) => rows.some((r) => typeof r[k] === "number");
    const columns = [
      { key: "trial_id", label: "trial" },
      { key: "status", label: "status", className: (r) => (r.status === "failed" ? "bad" : "") },
      { key: "epochs_reported", label: "epochs", numeric: true },
      { key: "test_accuracy", label: "accuracy", numeric: true, format: pct, title: "last reported test accuracy (%)" },
      { key: "diverged", label: "diverged", format: (v) => (v ? "yes" : "no"), className: (r) => (r.diverged ? "bad" : "") },
      ...[...swept, ...fields.filter((k) => !swept.includes(k))].map((k) => ({
        key: k, label: k, numeric: numeric(k), className: () => (swept.includes(k) ? "swept" : ""),
        title: swept.includes(k) ? `sort by ${k} (swept)` : `sort by ${k} (the same for every trial)`,
        format: (v) => (v === null || v === undefined ? "–" : Array.isArray(v) ? v.join(",") : String(v)) })),
      { key: "error", label: "error", className: () => "error-cell" },
    ];
    AbrayTable.render($("trials-table"), { columns, rows, rowAttrs: (r) => ({ "data-trial-id": r.trial_id }) });
    $("trials-count").textContent = `${rows.length} trial${rows.length === 1 ? "" : "s"}`;
  }

  // ---- downloads -------------------------------------------------------------------------------------

  async function download(format) {
    const id = state.job.id;
    try {
      const blob = await (await request(`/jobs/${id}/results?format=${format}`, "*/*")).blob();
      const url = URL.createObjectURL(blob);
      const a = el("a", { href: url, download: `job-${id}.${format}` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      if (err instanceof AuthError) return needToken(err);
      showError(err);
    }
  }

  // ---- small helpers -----------------------------------------------------------------------------

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.append(text);
    return node;
  }

  function pct(v) {  // summaries are in percent already
    return v == null ? "–" : `${v.toFixed(1)}%`;
  }

  function shortTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" })
      : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  }

  function duration(ms) {
    const s = Math.round(ms / 1000);
    return s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${(s / 3600).toFixed(1)} h`;
  }

  function setStatus(text) {
    $("status-line").textContent = text;
  }

  // ---- start -------------------------------------------------------------------------------------

  function restart() {
    state.authNeeded = false;
    $("auth-banner").hidden = true;
    document.body.dataset.state = "loading";
    state.job = null;
    refreshList();
    if (state.selected !== null) refreshJob();
  }

  function init() {
    $("token-input").value = state.token;
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      state.token = $("token-input").value.trim();
      if (state.token) localStorage.setItem(TOKEN_KEY, state.token);
      else localStorage.removeItem(TOKEN_KEY);
      restart();
    });
    $("token-clear").addEventListener("click", () => {
      state.token = "";
      $("token-input").value = "";
      localStorage.removeItem(TOKEN_KEY);
      restart();
    });
    $("refresh").addEventListener("click", () => {
      refreshList();
      refreshLinks();
      if (state.selected !== null) refreshJob();
    });
    for (const id of ["curve-metric", "curve-x"]) {
      $(id).addEventListener("change", () => { if (state.results && state.results.length) renderCurves(groupTrials(state.results)); });
    }
    for (const button of document.querySelectorAll(".downloads button")) {
      button.addEventListener("click", () => download(button.dataset.format));
    }
    window.addEventListener("hashchange", onHash);
    // a chart follows its card's width (a scroll bar appearing, the window resized, a card reflowed)
    const resized = new ResizeObserver((entries) => {
      for (const entry of entries) if (entry.target._fullLayout && !entry.target.hidden) Plotly.Plots.resize(entry.target);
    });
    for (const div of document.querySelectorAll(".chart")) resized.observe(div);
    const { job, compare } = parseHash();
    state.compare = compare.filter((id) => id !== job);
    if (job !== null) select(job);
    refreshList();
    refreshLinks();
  }

  if (typeof Plotly === "undefined" || !window.AbrayCharts || !window.AbrayTable) {
    document.body.dataset.state = "error";
    $("error-banner").textContent = "The dashboard's scripts did not load (/dashboard/static/plotly.min.js, charts.js, table.js).";
    $("error-banner").hidden = false;
  } else {
    init();
  }
})();
