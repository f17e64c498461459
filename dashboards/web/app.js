// The abray results dashboard: plain JavaScript, no build step, Plotly served by the API itself.
//
// It reads the REST API only: GET /jobs (the list), and for the selected job GET /jobs/{id},
// /jobs/{id}/summary and /jobs/{id}/results?format=json (the tidy schema). The URL hash `#job=N`
// selects a job. While the selected job is queued or running it is polled every 2 s, and the list
// too; once nothing runs, the list is polled every 15 s and the finished job not at all.
//
// State for tests and scripts: <body data-state="loading|ready|auth|error" data-selected-job>,
// #job-detail[data-job-id][data-status][data-done][data-total][data-trials][data-points][data-renders],
// #jobs-table tr[data-job-id][data-status], and the Plotly divs' `.data`.
"use strict";

(() => {
  const ACTIVE = new Set(["queued", "running"]);
  const FAST_MS = 2000;
  const IDLE_MS = 15000;
  const RETRY_MS = 5000;
  const TOKEN_KEY = "abray.token";
  const HUES = [212, 24, 140, 350, 270, 48, 185, 300];
  const DASHES = ["solid", "dot", "dash", "dashdot", "longdash", "longdashdot"];
  const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  const $ = (id) => document.getElementById(id);
  const state = {
    token: localStorage.getItem(TOKEN_KEY) || "",
    jobs: [],
    selected: null,       // job id from the hash
    job: null, summary: null, results: null,
    listTimer: null, jobTimer: null,
    listGen: 0, jobGen: 0, // a newer fetch makes older answers stale
    authNeeded: false,
    renders: 0,
  };

  class AuthError extends Error {}

  // ---- the API -----------------------------------------------------------------------------------

  async function api(path) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(path, { headers, cache: "no-store" });
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
    return response.json();
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
    tr.append(el("td", {}, String(job.id)), el("td", { class: "name" }, job.name),
      el("td", {}, statusBadge(job.status)), el("td", {}, progressCell(job.progress)),
      el("td", { class: "time", title: job.created_at }, shortTime(job.created_at)));
    const open = () => { location.hash = `job=${job.id}`; };
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    return tr;
  }

  function statusBadge(status) {
    return el("span", { class: `status ${status}` }, status);
  }

  function progressCell(p) {
    const wrap = el("div", { class: "progress" });
    const bar = el("progress", { max: String(Math.max(p.total, 1)), value: String(p.done) });
    const extra = [];
    if (p.running) extra.push(`${p.running} running`);
    if (p.failed) extra.push(`${p.failed} failed`);
    if (p.diverged) extra.push(`${p.diverged} diverged`);
    if (p.cancelled) extra.push(`${p.cancelled} cancelled`);
    wrap.append(bar, el("span", {}, `${p.done}/${p.total}` + (extra.length ? ` · ${extra.join(", ")}` : "")));
    return wrap;
  }

  // ---- the selected job --------------------------------------------------------------------------

  function hashJob() {
    const m = /(?:^|[#&])job=(\d+)/.exec(location.hash);
    return m ? Number(m[1]) : null;
  }

  function select(id) {
    if (id === state.selected && state.job) return;
    state.selected = id;
    state.job = state.summary = state.results = null;
    document.body.dataset.selectedJob = id === null ? "" : String(id);
    for (const tr of $("jobs-table").tBodies[0].rows) {
      tr.classList.toggle("selected", Number(tr.dataset.jobId) === id);
    }
    $("job-none").hidden = id !== null;
    $("job-detail").hidden = true;
    refreshJob();
  }

  async function refreshJob() {
    clearTimeout(state.jobTimer);
    const id = state.selected;
    if (id === null || state.authNeeded) return;
    const gen = ++state.jobGen;
    let delay = null;
    try {
      const job = await api(`/jobs/${id}`);
      if (gen !== state.jobGen) return;
      // results change exactly when progress.epochs does: fetch them (and the summary) only then
      const known = state.job && state.job.id === job.id && state.results !== null &&
        state.job.progress.epochs === job.progress.epochs;
      const [summary, results] = known ? [state.summary, state.results] : await Promise.all([
        api(`/jobs/${id}/summary`), api(`/jobs/${id}/results?format=json`)]);
      if (gen !== state.jobGen) return;
      clearError();
      Object.assign(state, { job, summary, results });
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

  function renderJob() {
    const { job, summary, results } = state;
    const detail = $("job-detail");
    $("job-none").hidden = true;
    detail.hidden = false;  // before plotting, so that the charts get their size

    $("job-title").textContent = `#${job.id} ${job.name}`;
    $("job-status").replaceChildren(statusBadge(job.status));
    $("job-progress").replaceChildren(progressCell(job.progress));
    $("job-meta").textContent = jobMeta(job);
    $("job-error").hidden = !job.error;
    $("job-error").textContent = job.error || "";

    const trials = groupTrials(results);
    renderAccuracy(summary.rows, job.id);
    renderLoss(trials, job.id);
    renderStaleness(trials, job.id);
    renderSummary(summary.rows);

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

  // one hue per optimizer, in a fixed order, so that the charts agree
  function optimizerColor(optimizer, shade = 0.5) {
    const names = optimizerNames();
    const i = Math.max(names.indexOf(optimizer), 0);
    const light = 28 + Math.round(42 * shade);
    return `hsl(${HUES[i % HUES.length]}, 70%, ${light}%)`;
  }

  function optimizerNames() {
    const names = new Set();
    for (const r of (state.summary && state.summary.rows) || []) names.add(r.optimizer);
    for (const r of state.results || []) names.add(r.optimizer);
    return [...names].sort();
  }

  function baseLayout(jobId, extra) {
    return Object.assign({
      uirevision: String(jobId),  // keep zoom and hidden traces across refreshes
      margin: { l: 56, r: 12, t: 8, b: 44 },
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1f2933" },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fff",
      legend: { font: { size: 11 } },
      hoverlabel: { namelength: -1 },
    }, extra);
  }

  function renderAccuracy(rows, jobId) {
    const traces = [];
    for (const optimizer of [...new Set(rows.map((r) => r.optimizer))].sort()) {
      const mine = rows.filter((r) => r.optimizer === optimizer).sort((a, b) => a.delay - b.delay);
      traces.push({
        type: "scatter", mode: "lines+markers", name: optimizer,
        x: mine.map((r) => r.delay), y: mine.map((r) => r.mean),
        error_y: { type: "data", array: mine.map((r) => r.std ?? 0), visible: true, thickness: 1.5, width: 5 },
        customdata: mine.map((r) => [r.count, r.diverged, r.std ?? 0]),
        hovertemplate: "D=%{x}: %{y:.1%} ± %{customdata[2]:.1%}<br>%{customdata[0]} seeds, %{customdata[1]} diverged",
        line: { color: optimizerColor(optimizer), width: 2 }, marker: { size: 7 },
      });
    }
    const delays = [...new Set(rows.map((r) => r.delay))].sort((a, b) => a - b);
    Plotly.react($("chart-accuracy"), traces, baseLayout(jobId, {
      xaxis: { title: { text: "delay D (updates)" }, tickvals: delays.length <= 12 ? delays : undefined, zeroline: false },
      yaxis: { title: { text: "test accuracy" }, tickformat: ".0%", range: [0, 1.04] },
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" }, showlegend: true,
      margin: { l: 56, r: 12, t: 28, b: 44 },
    }), PLOT_CONFIG);
  }

  function groupLabel(c) {
    const where = c.mode === "free" ? `free W=${c.workers}`
      : c.mode === "distributed" ? `D=${c.delay} dist W=${c.workers}` : `D=${c.delay}`;
    return `${c.optimizer} ${where}`;
  }

  function trialLabel(c) {
    return `${groupLabel(c)} s=${c.seed}`;
  }

  // one line per trial: color by optimizer (shade by delay), dash by seed; one legend entry per
  // optimizer and delay when there are several seeds (a click toggles all of its seeds)
  function renderLoss(trials, jobId) {
    const metric = $("loss-metric").value;
    const delays = [...new Set(trials.map((t) => t.config.delay))].sort((a, b) => a - b);
    const seeds = [...new Set(trials.map((t) => t.config.seed))].sort((a, b) => a - b);
    const multiSeed = seeds.length > 1;
    const inLegend = new Set();
    const traces = trials.map((t) => {
      const c = t.config;
      const group = groupLabel(c);
      const shade = delays.length > 1 ? delays.indexOf(c.delay) / (delays.length - 1) : 0.5;
      const showlegend = !multiSeed || !inLegend.has(group);
      inLegend.add(group);
      return {
        type: "scatter", mode: t.epochs.length > 1 ? "lines" : "lines+markers",
        name: multiSeed ? group : trialLabel(c), legendgroup: group, showlegend, meta: t.id,
        x: t.epochs.map((e) => e.epoch), y: t.epochs.map((e) => lossValue(e[metric])),
        line: { color: optimizerColor(c.optimizer, shade), width: 1.6, dash: DASHES[seeds.indexOf(c.seed) % DASHES.length] },
        hovertemplate: `${trialLabel(c)}<br>epoch %{x}: %{y:.4g}<extra>${t.id}</extra>`,
      };
    });
    // diverging runs reach 1e8 and more: keep the axis on the useful range (10x the largest first loss)
    const values = traces.flatMap((t) => t.y).filter((v) => v !== null);
    const firsts = traces.map((t) => t.y.find((v) => v !== null)).filter((v) => v !== undefined);
    const cap = 10 * Math.max(...firsts);
    const clipped = values.length > 0 && Math.max(...values) > cap;
    const lastEpoch = Math.max(0, ...trials.map((t) => t.epochs.length ? t.epochs[t.epochs.length - 1].epoch : 0));
    const low = values.length ? Math.min(...values) : 1;
    const high = clipped ? cap : values.length ? Math.max(...values) : 1;
    Plotly.react($("chart-loss"), traces, baseLayout(jobId, {
      xaxis: { title: { text: "epoch" }, zeroline: false, dtick: lastEpoch <= 10 ? 1 : undefined },
      yaxis: {
        title: { text: metric.replace("_", " ") }, type: "log",
        range: clipped ? [Math.log10(low) - 0.1, Math.log10(cap)] : undefined,
        autorange: !clipped,
        dtick: Math.log10(high / low) >= 1.5 ? 1 : undefined,  // powers of ten when it spans decades
      },
      annotations: clipped ? [{
        text: `diverging: up to ${Math.max(...values).toExponential(0)}, off scale`, xref: "paper", yref: "paper",
        x: 1, y: 1, xanchor: "right", yanchor: "top", showarrow: false, bgcolor: "rgba(255,255,255,0.85)",
        font: { size: 11, color: "#9a3412" },
      }] : [],
      showlegend: true,
    }), PLOT_CONFIG);
  }

  function lossValue(v) {
    return typeof v === "number" && Number.isFinite(v) && v > 0 ? v : null;  // diverged: a gap
  }

  function renderStaleness(trials, jobId) {
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
    // summed over epochs: per trial when there are few, else per optimizer and mode
    const perTrial = distributed.length <= 6;
    const groups = new Map();
    for (const t of distributed) {
      const c = t.config;
      const key = perTrial ? t.id : `${c.optimizer} ${c.mode}${c.mode === "distributed" ? ` D=${c.delay}` : ""}`;
      if (!groups.has(key)) groups.set(key, { name: perTrial ? trialLabel(c) : key, optimizer: c.optimizer, counts: new Map() });
      const counts = groups.get(key).counts;
      for (const e of t.epochs) {
        let hist = {};
        try { hist = typeof e.staleness_hist === "string" ? JSON.parse(e.staleness_hist || "{}") : (e.staleness_hist || {}); } catch (_) { /* skip */ }
        for (const [s, n] of Object.entries(hist)) counts.set(Number(s), (counts.get(Number(s)) || 0) + Number(n));
      }
    }
    const list = [...groups.values()];
    const traces = list.map((g, i) => {
      const xs = [...g.counts.keys()].sort((a, b) => a - b);
      return {
        type: "bar", name: g.name, x: xs, y: xs.map((s) => g.counts.get(s)),
        marker: { color: optimizerColor(g.optimizer, list.length > 1 ? i / (list.length - 1) : 0.5) },
        hovertemplate: `${g.name}<br>staleness %{x}: %{y} updates<extra></extra>`,
      };
    });
    Plotly.react(chart, traces, baseLayout(jobId, {
      barmode: "group", bargap: 0.15,
      xaxis: { title: { text: "staleness (updates)" }, dtick: 1, zeroline: false },
      yaxis: { title: { text: "gradients applied" } },
      showlegend: true,
    }), PLOT_CONFIG);
  }

  function renderSummary(rows) {
    const sorted = [...rows].sort((a, b) => cmp(a.optimizer, b.optimizer) || a.delay - b.delay);
    $("summary-table").tBodies[0].replaceChildren(...sorted.map((r) => {
      const tr = el("tr", { "data-optimizer": r.optimizer, "data-delay": r.delay });
      const swatch = el("span", { class: "swatch", style: `background:${optimizerColor(r.optimizer)}` });
      const name = el("td", {});
      name.append(swatch, r.optimizer);
      tr.append(name, el("td", { class: "num" }, String(r.delay)), el("td", { class: "num" }, pct(r.mean)),
        el("td", { class: "num" }, r.std == null ? "–" : `± ${pct(r.std)}`), el("td", { class: "num" }, String(r.count)),
        el("td", { class: `num${r.diverged ? " bad" : ""}` }, String(r.diverged)));
      return tr;
    }));
    $("summary-empty").hidden = rows.length > 0;
  }

  // ---- small helpers -----------------------------------------------------------------------------

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.append(text);
    return node;
  }

  function pct(v) {
    return v == null ? "–" : `${(100 * v).toFixed(1)}%`;
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
    $("refresh").addEventListener("click", () => { refreshList(); if (state.selected !== null) refreshJob(); });
    $("loss-metric").addEventListener("change", () => {
      if (state.results) renderLoss(groupTrials(state.results), state.job.id);
    });
    window.addEventListener("hashchange", () => select(hashJob()));
    const id = hashJob();
    if (id !== null) select(id);
    refreshList();
  }

  if (typeof Plotly === "undefined") {
    document.body.dataset.state = "error";
    $("error-banner").textContent = "plotly.min.js did not load (/dashboard/static/plotly.min.js).";
    $("error-banner").hidden = false;
  } else {
    init();
  }
})();
