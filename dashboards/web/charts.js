// The dashboard's charts (Plotly, served by the API): final accuracy against delay for one or several jobs,
// curves per trial (by epoch or step: loss, accuracy, learning rate, staleness) and the staleness histogram.
// Legends sit under the plot area, never over a curve. A "setting" is a summary row's group (optimizer, delay
// and every other swept field, seed excepted); its colour is the same in every chart and table.
"use strict";

window.AbrayCharts = (() => {
  const HUES = [212, 24, 140, 350, 270, 48, 185, 300];
  const SEED_DASHES = ["solid", "dot", "dash", "dashdot", "longdash", "longdashdot"];
  const JOB_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"];
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
  const METRICS = {
    test_loss: { label: "test loss", log: true },
    train_loss: { label: "train loss", log: true },
    test_accuracy: { label: "test accuracy (%)", scale: 100 },
    lr_now: { label: "learning rate" },
    staleness_mean: { label: "staleness, mean (updates)" },
    staleness_max: { label: "staleness, max (updates)" },
  };
  const X_AXES = { epoch: "epoch", steps: "step (updates applied)" };

  // ---- settings and colours --------------------------------------------------------------------------

  function settingKeys(groupBy) {
    return (groupBy || ["optimizer", "delay"]).filter((k) => k !== "delay");
  }

  function settingLabel(row, keys) {
    return [String(row.optimizer), ...keys.filter((k) => k !== "optimizer").map((k) => `${k}=${row[k]}`)].join(" ");
  }

  // label -> hue, in sorted order, so that every chart and table agrees
  function palette(labels) {
    const sorted = [...new Set(labels)].sort();
    return new Map(sorted.map((label, i) => [label, HUES[i % HUES.length]]));
  }

  function color(hue, shade = 0.5) {
    return `hsl(${hue ?? HUES[0]}, 70%, ${28 + Math.round(42 * shade)}%)`;
  }

  // ---- axes -------------------------------------------------------------------------------------------

  function tickText(v) {
    return String(Number(v.toPrecision(4)));  // 0.5 -> "0.5" (never ".5" or a bare "5"), 2.295 -> "2.295"
  }

  // Tick values and labels for a log axis from low to high: powers of ten over wide ranges, else 1-2-5 or
  // every digit, so that a short run's axis still reads "0.3, 0.5, 1" with its leading "0."
  function logTicks(low, high) {
    const span = Math.log10(high / low);
    const digits = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    const choices = span >= 1.5 ? [[1], [1, 2, 5]] : span >= 0.6 ? [[1, 2, 5], digits] : [digits];
    let values = [];
    for (const mantissas of choices) {
      values = [];
      for (let k = Math.floor(Math.log10(low)); k <= Math.ceil(Math.log10(high)); k++) {
        for (const m of mantissas) {
          const v = Number((m * 10 ** k).toPrecision(6));
          if (v >= low * 0.999 && v <= high * 1.001) values.push(v);
        }
      }
      if (values.length >= 2) break;
    }
    if (values.length < 2) values = linearTicks(low, high);  // a narrow range: evenly spaced round values
    return { tickvals: values, ticktext: values.map(tickText) };
  }

  // about `count` round values (1, 2 or 5 times a power of ten apart) from low to high
  function linearTicks(low, high, count = 4) {
    if (!(high > low)) return [Number(low.toPrecision(3))];
    const raw = (high - low) / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * magnitude).find((v) => v >= raw * 0.999);
    const decimals = Math.max(0, -Math.floor(Math.log10(step)));
    const values = [];
    for (let i = Math.ceil(low / step); i * step <= high * (1 + 1e-9); i++) values.push(Number((i * step).toFixed(decimals)));
    return values;
  }

  function layout(jobId, extra) {
    return Object.assign({
      uirevision: String(jobId),  // keep zoom and hidden traces across refreshes
      margin: { l: 60, r: 16, t: 10, b: 10 },
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1f2933" },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fff",
      // under the plot area, below the x axis' title: Plotly widens the bottom margin to fit it
      legend: { orientation: "h", x: 0, xanchor: "left", y: 0, yanchor: "bottom", yref: "container",
        font: { size: 11 } },
      hoverlabel: { namelength: -1 },
      showlegend: true,
    }, extra);
  }

  // taller with more legend entries, so that the plot area keeps its height
  function fitHeight(div, traces) {
    const names = traces.filter((t) => t.showlegend !== false).map((t) => String(t.name));
    const widest = Math.max(0, ...names.map((n) => n.length)) * 6.5 + 48;  // px: 11 px text, a line sample
    const perRow = Math.max(1, Math.floor((div.clientWidth || 400) / widest));
    div.style.height = `${Math.min(900, 320 + 21 * Math.ceil(names.length / perRow))}px`;
  }

  function xAxis(title, extra) {
    return Object.assign({ title: { text: title, standoff: 6 }, zeroline: false, automargin: true }, extra);
  }

  // ---- final accuracy against delay --------------------------------------------------------------------

  // jobs: [{ id, name, groupBy, rows }], the open job first; colour by setting, line style by job
  function accuracy(div, jobs, hues) {
    const traces = [];
    jobs.forEach((job, j) => {
      const keys = settingKeys(job.groupBy);
      const bySetting = new Map();
      for (const r of job.rows) {
        const label = settingLabel(r, keys);
        if (!bySetting.has(label)) bySetting.set(label, []);
        bySetting.get(label).push(r);
      }
      for (const label of [...bySetting.keys()].sort()) {
        const mine = bySetting.get(label).sort((a, b) => a.delay - b.delay);
        traces.push({
          type: "scatter", mode: "lines+markers", name: jobs.length > 1 ? `#${job.id} ${label}` : label,
          meta: job.id, x: mine.map((r) => r.delay), y: mine.map((r) => r.accuracy_mean),
          error_y: { type: "data", array: mine.map((r) => r.accuracy_std ?? 0), visible: true, thickness: 1.5, width: 5 },
          customdata: mine.map((r) => [r.count, r.diverged, r.accuracy_std ?? 0]),
          hovertemplate: `#${job.id} ${label}<br>D=%{x}: %{y:.1f}% ± %{customdata[2]:.1f}<br>`
            + "%{customdata[0]} seeds, %{customdata[1]} diverged<extra></extra>",
          line: { color: color(hues.get(label)), width: 2, dash: JOB_DASHES[j % JOB_DASHES.length] },
          marker: { size: 7 },
        });
      }
    });
    const delays = [...new Set(jobs.flatMap((j) => j.rows.map((r) => r.delay)))].sort((a, b) => a - b);
    fitHeight(div, traces);
    Plotly.react(div, traces, layout(jobs.map((j) => j.id).join(","), {
      xaxis: xAxis("delay D (updates)", { tickvals: delays.length <= 12 ? delays : undefined }),
      yaxis: { title: { text: "final test accuracy (%)" }, range: [0, 104], ticksuffix: "" },
    }), CONFIG);
  }

  // ---- curves per trial ---------------------------------------------------------------------------------

  function value(v, spec) {
    if (typeof v !== "number" || !Number.isFinite(v)) return null;
    if (spec.log && v <= 0) return null;  // diverged: a gap
    return spec.scale ? spec.scale * v : v;
  }

  // trials: [{ id, config, epochs }]; one line per trial: colour by setting (shade by delay), dash by seed;
  // one legend entry per setting and delay when there are several seeds (a click toggles all its seeds)
  function curves(div, trials, { metric, x, keys, hues, jobId }) {
    const spec = METRICS[metric];
    const delays = [...new Set(trials.map((t) => t.config.delay))].sort((a, b) => a - b);
    const seeds = [...new Set(trials.map((t) => t.config.seed))].sort((a, b) => a - b);
    const inLegend = new Set();
    const traces = trials.map((t) => {
      const c = t.config;
      const label = settingLabel(c, keys);
      const where = c.mode === "free" ? `free W=${c.workers}` : `D=${c.delay}` + (c.mode === "distributed" ? ` W=${c.workers}` : "");
      const group = `${label} ${where}`;
      const shade = delays.length > 1 ? delays.indexOf(c.delay) / (delays.length - 1) : 0.5;
      const showlegend = seeds.length === 1 || !inLegend.has(group);
      inLegend.add(group);
      return {
        type: "scatter", mode: t.epochs.length > 1 ? "lines" : "lines+markers",
        name: seeds.length > 1 ? group : `${group} seed ${c.seed}`, legendgroup: group, showlegend, meta: t.id,
        x: t.epochs.map((e) => e[x]), y: t.epochs.map((e) => value(e[metric], spec)),
        line: { color: color(hues.get(label), shade), width: 1.6, dash: SEED_DASHES[seeds.indexOf(c.seed) % SEED_DASHES.length] },
        hovertemplate: `${group} seed ${c.seed}<br>${x === "steps" ? "step" : "epoch"} %{x}: %{y:.4g}<extra>${t.id}</extra>`,
      };
    });
    const yaxis = { title: { text: spec.label }, automargin: true, rangemode: spec.log ? undefined : "tozero" };
    const annotations = [];
    const values = traces.flatMap((t) => t.y).filter((v) => v !== null);
    if (spec.log && values.length) {
      // diverging runs reach 1e8 and more: keep the axis on the useful range (10x the largest first value)
      const firsts = traces.map((t) => t.y.find((v) => v !== null)).filter((v) => v !== undefined);
      const cap = 10 * Math.max(...firsts);
      const top = Math.max(...values);
      const low = Math.min(...values);
      const high = Math.min(top, cap);
      Object.assign(yaxis, { type: "log", range: [Math.log10(low) - 0.04, Math.log10(high) + 0.04], autorange: false },
        logTicks(low, high));
      if (top > cap) {
        annotations.push({
          text: `diverging: up to ${top.toExponential(0)}, off scale`, xref: "paper", yref: "paper",
          x: 1, y: 1, xanchor: "right", yanchor: "top", showarrow: false, bgcolor: "rgba(255,255,255,0.85)",
          font: { size: 11, color: "#9a3412" },
        });
      }
    }
    const last = Math.max(0, ...trials.map((t) => t.epochs.length ? t.epochs[t.epochs.length - 1][x] : 0));
    fitHeight(div, traces);
    Plotly.react(div, traces, layout(jobId, {
      xaxis: xAxis(X_AXES[x], { dtick: x === "epoch" && last <= 10 ? 1 : undefined }),
      yaxis, annotations,
    }), CONFIG);
  }

  // ---- staleness ---------------------------------------------------------------------------------------

  // summed over epochs: per trial when there are few, else per setting and mode
  function staleness(div, trials, { keys, hues, jobId }) {
    const perTrial = trials.length <= 6;
    const groups = new Map();
    for (const t of trials) {
      const c = t.config;
      const label = settingLabel(c, keys);
      const key = perTrial ? t.id : `${label} ${c.mode}${c.mode === "distributed" ? ` D=${c.delay}` : ""}`;
      const name = perTrial ? `${label} ${c.mode === "free" ? `free W=${c.workers}` : `D=${c.delay}`} seed ${c.seed}` : key;
      if (!groups.has(key)) groups.set(key, { name, label, counts: new Map() });
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
        marker: { color: color(hues.get(g.label), list.length > 1 ? i / (list.length - 1) : 0.5) },
        hovertemplate: `${g.name}<br>staleness %{x}: %{y} updates<extra></extra>`,
      };
    });
    fitHeight(div, traces);
    Plotly.react(div, traces, layout(jobId, {
      barmode: "group", bargap: 0.15,
      xaxis: xAxis("staleness (updates)", { dtick: 1 }),
      yaxis: { title: { text: "gradients applied" }, automargin: true },
    }), CONFIG);
  }

  return { accuracy, curves, staleness, palette, color, settingKeys, settingLabel, logTicks, METRICS };
})();
