// A sortable, filterable HTML table, for the dashboard's trials and summary tables. No dependencies.
//
//   AbrayTable.render(tableElement, { columns, rows, rowAttrs })
//     columns: [{ key, label, numeric, format(value, row), title, className }]
//     rows: plain objects; rowAttrs(row) -> attributes of the row's <tr>
//
// A click on a header sorts by that column (again: the other way); aria-sort says which. The input under a
// header filters: text matches anywhere (case-insensitive); "<", "<=", ">", ">=", "=" and "!=" compare
// (numbers as numbers). Sorting and filters survive re-renders of the same table with the same columns.
// The table's data-shown and data-total say how many rows pass the filters, of how many.
"use strict";

window.AbrayTable = (() => {
  const COMPARISON = /^(<=|>=|!=|<|>|=)\s*(.*)$/;

  function isMissing(v) {
    return v === null || v === undefined || v === "" || (typeof v === "number" && Number.isNaN(v));
  }

  function matches(value, filter) {
    const text = filter.trim();
    if (!text) return true;
    const m = COMPARISON.exec(text);
    if (!m) return !isMissing(value) && String(value).toLowerCase().includes(text.toLowerCase());
    const [, op, rhs] = m;
    const a = typeof value === "number" ? value : Number(value);
    const b = Number(rhs);
    if (rhs.trim() === "" || Number.isNaN(b) || isMissing(value) || Number.isNaN(a)) {
      const same = String(value ?? "").toLowerCase() === rhs.trim().toLowerCase();
      return op === "=" ? same : op === "!=" ? !same : false;
    }
    return { "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "=": a === b, "!=": a !== b }[op];
  }

  function compare(a, b) {
    if (isMissing(a) && isMissing(b)) return 0;
    if (isMissing(a)) return 1;  // missing values last, either way
    if (isMissing(b)) return -1;
    if (typeof a === "number" && typeof b === "number") return a - b;
    if (typeof a === "boolean" || typeof b === "boolean") return Number(a) - Number(b);
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.append(text);
    return node;
  }

  function buildHead(table, spec, state) {
    const labels = el("tr", { class: "labels" });
    const filters = el("tr", { class: "filters" });
    for (const col of spec.columns) {
      const th = el("th", { "data-key": col.key, class: `${col.numeric ? "num " : ""}sortable`, tabindex: "0",
        title: col.title || `sort by ${col.label}` }, col.label);
      const sort = () => {
        state.dir = state.sortKey === col.key ? -state.dir : 1;
        state.sortKey = col.key;
        renderBody(table);
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
      labels.append(th);
      const input = el("input", { type: "search", "data-key": col.key, "aria-label": `filter ${col.label}`,
        placeholder: col.numeric ? ">, <, =" : "filter", spellcheck: "false" });
      input.value = state.filters[col.key] || "";
      input.addEventListener("input", () => { state.filters[col.key] = input.value; renderBody(table); });
      const cell = el("th", { class: col.numeric ? "num" : "" });
      cell.append(input);
      filters.append(cell);
    }
    table.tHead.replaceChildren(labels, filters);
  }

  function renderBody(table) {
    const { spec, state } = table._abray;
    let rows = spec.rows.filter((r) => spec.columns.every((c) => matches(r[c.key], state.filters[c.key] || "")));
    if (state.sortKey !== null) {
      rows = rows.map((r, i) => [r, i]).sort(([a, i], [b, j]) => state.dir * compare(a[state.sortKey], b[state.sortKey])
        || i - j).map(([r]) => r);
    }
    for (const th of table.tHead.rows[0].cells) {
      th.setAttribute("aria-sort", th.dataset.key !== state.sortKey ? "none"
        : state.dir > 0 ? "ascending" : "descending");
    }
    const body = table.tBodies[0] || table.createTBody();
    body.replaceChildren(...rows.map((r) => {
      const tr = el("tr", spec.rowAttrs ? spec.rowAttrs(r) : {});
      for (const c of spec.columns) {
        const td = el("td", { class: `${c.numeric ? "num" : ""} ${c.className ? c.className(r) : ""}`.trim() });
        const shown = c.format ? c.format(r[c.key], r) : (isMissing(r[c.key]) ? "–" : String(r[c.key]));
        td.append(shown);
        tr.append(td);
      }
      return tr;
    }));
    table.dataset.shown = String(rows.length);
    table.dataset.total = String(spec.rows.length);
  }

  function render(table, spec) {
    const signature = spec.columns.map((c) => c.key).join("\u0000");
    if (!table._abray || table._abray.signature !== signature) {
      const old = table._abray ? table._abray.state : { sortKey: null, dir: 1, filters: {} };
      const keys = new Set(spec.columns.map((c) => c.key));
      const state = { sortKey: keys.has(old.sortKey) ? old.sortKey : null, dir: old.dir,
        filters: Object.fromEntries(Object.entries(old.filters).filter(([k]) => keys.has(k))) };
      table._abray = { signature, spec, state };
      buildHead(table, spec, state);
    }
    table._abray.spec = spec;
    renderBody(table);
  }

  return { render, matches, compare };
})();
