// Rendering: uPlot time series, ranked rows, tables, gauges and panel states.

export const COLORS = [
  "#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563",
];

const plots = new WeakMap();

/** Create an element: h("div", {class: "x", dataset: {a: 1}}, child, "text"). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function clear(el) {
  const plot = plots.get(el);
  if (plot) {
    plot.destroy();
    plots.delete(el);
  }
  el.replaceChildren();
}

/** The loading state of a chart element. */
export function loading(el) {
  if (!el.dataset.state) {
    el.dataset.state = "loading";
    el.replaceChildren(h("p", { class: "state", text: "Loading…" }));
  }
}

/** An empty state that says what to do: a sentence and an optional command to try. */
export function empty(el, sentence, command) {
  clear(el);
  el.dataset.state = "empty";
  el.append(
    h("div", { class: "empty" }, h("p", { text: sentence }), command ? h("pre", {}, h("code", { text: command })) : null),
  );
}

/** An error state (the API's message). */
export function failed(el, message) {
  clear(el);
  el.dataset.state = "error";
  el.append(h("p", { class: "state error", role: "alert", text: message }));
}

function ready(el) {
  clear(el);
  el.dataset.state = "ready";
}

function size(el) {
  const width = Math.max(240, Math.floor(el.clientWidth || el.parentElement.clientWidth || 320));
  return { width, height: width < 480 ? 180 : 220 };
}

const resizer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const plot = plots.get(entry.target);
    if (plot) {
      const next = size(entry.target);
      if (Math.abs(next.width - plot.width) > 2) plot.setSize(next);
    }
  }
});

/**
 * A time series chart.
 * @param x seconds since the epoch
 * @param series [{label, values, color?, scale?: "y" | "pct" | "ms", dash?, bars?}]
 */
export function timeSeries(el, x, series, { yLabel = "", pctLabel = "", unit = "", xRange = null } = {}) {
  ready(el);
  const uPlot = window.uPlot;
  const scales = { x: { time: true, range: xRange ? () => xRange : undefined }, y: { range: (u, min, max) => [0, Math.max(1, max)] } };
  const axes = [{}, { label: yLabel, size: 50 }];
  if (series.some((s) => s.scale === "pct")) {
    scales.pct = { range: [0, 100] };
    axes.push({ scale: "pct", side: 1, label: pctLabel, grid: { show: false }, values: (u, v) => v.map((n) => `${n}%`) });
  }
  const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
  const options = {
    ...size(el),
    scales,
    axes,
    cursor: { drag: { x: false, y: false } },
    legend: { live: false },
    series: [
      {},
      ...series.map((s, i) => ({
        label: s.label,
        scale: s.scale || "y",
        stroke: s.color || COLORS[i % COLORS.length],
        fill: s.bars ? `${s.color || COLORS[i % COLORS.length]}66` : undefined,
        width: 2,
        dash: s.dash,
        paths: s.bars ? bars : undefined,
        points: { show: !s.bars && x.length < 40 },
        value: (u, v) => (v === null || v === undefined ? "–" : `${round(v)}${s.scale === "pct" ? "%" : unit}`),
      })),
    ],
  };
  const data = [x, ...series.map((s) => s.values)];
  const plot = new uPlot(options, data, el);
  plots.set(el, plot);
  resizer.observe(el);
  el.dataset.points = String(x.length);
  return plot;
}

export function round(value) {
  if (typeof value !== "number") return value;
  if (Number.isInteger(value)) return value.toLocaleString("en");
  return value.toLocaleString("en", { maximumFractionDigits: 2 });
}

/** Ranked horizontal bars: [{label, sublabel?, value}], largest first. */
export function rankedRows(el, rows, { limit = 10 } = {}) {
  ready(el);
  const top = [...rows].sort((a, b) => b.value - a.value).slice(0, limit);
  const max = Math.max(1, ...top.map((r) => r.value));
  const list = h("ol", { class: "rows" });
  for (const row of top) {
    const fill = h("span", { class: "fill" });
    fill.style.width = `${(100 * row.value) / max}%`;
    list.append(
      h(
        "li",
        { class: "row", dataset: { key: row.key ?? row.label, value: row.value } },
        h("span", { class: "label", title: row.sublabel || row.label }, row.label, row.sublabel ? h("small", { text: row.sublabel }) : null),
        h("span", { class: "bar" }, fill),
        h("span", { class: "value", text: round(row.value) }),
      ),
    );
  }
  el.append(list);
  if (rows.length > limit) el.append(h("p", { class: "note", text: `Top ${limit} of ${rows.length}.` }));
}

/** A gauge: used / limit as a bar, with a caption. */
export function gauge(label, used, limit, caption, attrs = {}) {
  const pct = limit > 0 ? Math.min(100, (100 * used) / limit) : 0;
  const fill = h("span", { class: `fill${pct >= 90 ? " hot" : pct >= 60 ? " warm" : ""}` });
  fill.style.width = `${pct}%`;
  return h(
    "li",
    { class: "gauge", ...attrs },
    h("span", { class: "label", title: label, text: label }),
    h("span", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": limit, "aria-valuenow": used, "aria-label": label }, fill),
    h("span", { class: "value", text: caption }),
  );
}

/** A table in a horizontally scrollable wrapper (narrow screens never overflow). */
export function table(headings, rows) {
  const head = h("tr", {}, headings.map((t) => h("th", { scope: "col", text: t })));
  const body = rows.map((cells) => h("tr", { class: "table-row" }, cells.map((c) => h("td", {}, c))));
  return h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), h("tbody", {}, body)));
}

/** Mark a panel ready and hand back its element (for custom content). */
export function readyPanel(el) {
  ready(el);
  return el;
}
