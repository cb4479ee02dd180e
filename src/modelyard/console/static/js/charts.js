// Charts as SVG drawn here (no library, nothing from a CDN): traffic plans, time series,
// guards against their thresholds, a rollout's timeline and a version's lineage.
import { h, s, num } from "./dom.js";

const PALETTE = ["#1f6feb", "#e36209", "#2da44e", "#8250df", "#cf222e", "#0a7b83", "#bf8700"];

export function versionColor(version) {
  return PALETTE[(Number(version) - 1 + PALETTE.length * 100) % PALETTE.length];
}

function svgBox(width, height, label) {
  return s("svg", {
    viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": label,
    class: "chart", preserveAspectRatio: "xMinYMin meet",
  }, s("title", {}, label));
}

/** The traffic plan as one bar of 100%: a segment per version. */
export function trafficBar(routes, { width = 640, height = 46 } = {}) {
  const svg = svgBox(width, height, "traffic plan: " +
    routes.map((r) => `version ${r.version} ${r.weight}%`).join(", "));
  let x = 0;
  for (const r of routes) {
    const w = (r.weight / 100) * width;
    if (w <= 0) continue;
    svg.append(s("rect", { x, y: 4, width: Math.max(w - 1, 1), height: 28, rx: 4,
      fill: versionColor(r.version) }));
    if (w > 60) {
      svg.append(s("text", { x: x + w / 2, y: 23, "text-anchor": "middle", class: "on-dark" },
        `v${r.version} · ${r.weight}%`));
    }
    x += w;
  }
  return svg;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw * (1 - 1e-9)) return m * p;
  return 10 * p;
}

/** Round y ticks from 0 over ``maxv``: about five, a step of 1, 2, 2.5 or 5 × 10^k
 * (whole numbers when ``whole``: counts are never split). */
export function yTicks(maxv, { whole = false } = {}) {
  let step = niceStep(maxv > 0 ? maxv / 4 : 0.25);
  if (whole) step = step < 1 ? 1 : step === 2.5 * Math.pow(10, Math.floor(Math.log10(step)))
    ? 2 * step : step;  // 2.5 of a count is no count: 5
  const top = Math.max(step, Math.ceil(maxv / step - 1e-9) * step);
  const ticks = [];
  for (let i = 0; i * step <= top + step / 1e6; i++) ticks.push(i * step);
  return ticks;
}

const MINUTE = 60000;
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 7 * 1440,
  14 * 1440].map((m) => m * MINUTE);

/** Time marks at whole minutes, hours or days (UTC) within t0..t1 (ms): at most six. */
export function timeTicks(t0, t1) {
  const span = Math.max(t1 - t0, 1);
  const step = TIME_STEPS.find((x) => span / x <= 6) ?? TIME_STEPS[TIME_STEPS.length - 1];
  const ticks = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) ticks.push(t);
  return ticks.length ? ticks : [t0];
}

function clock(ms) {
  return new Date(ms).toISOString().slice(11, 16);
}

/** A time mark's label: the UTC time of day, or the date (MM-DD) on a window of days. */
function mark(ms, span) {
  return span >= 2 * 1440 * MINUTE ? new Date(ms).toISOString().slice(5, 10) : clock(ms);
}

/**
 * A line per series over time: series = [{label, color, points: [[timeMs, value|null]]}].
 * ``unit`` follows the y values; ``threshold`` draws a dashed line.
 */
export function lineChart(series, { title = "", unit = "", width = 640, height = 220,
  threshold = null, whole = false } = {}) {
  const m = { l: 66, r: 12, t: 22, b: 26 };
  const svg = svgBox(width, height, title);
  const all = series.flatMap((x) => x.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const iw = width - m.l - m.r, ih = height - m.t - m.b;
  svg.append(s("text", { x: m.l, y: 14, class: "chart-title" }, title));
  if (!all.length) {
    svg.append(s("text", { x: m.l + iw / 2, y: m.t + ih / 2, "text-anchor": "middle",
      class: "muted-svg" }, "no requests in this window"));
    return svg;
  }
  const times = series.flatMap((x) => x.points.map((p) => p[0]));  // the whole window
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const span = Math.max(t1 - t0, 1);
  const ticks = yTicks(Math.max(...all.map((p) => p[1]), threshold ?? 0), { whole });
  const top = ticks[ticks.length - 1];
  const X = (t) => m.l + ((t - t0) / span) * iw;
  const Y = (v) => m.t + ih - (Math.min(v, top) / top) * ih;
  for (const v of ticks) {
    const y = Y(v);
    svg.append(s("line", { x1: m.l, x2: m.l + iw, y1: y, y2: y, class: "grid" }));
    svg.append(s("text", { x: m.l - 6, y: y + 4, "text-anchor": "end", class: "axis" },
      num(v, 3) + unit));
  }
  for (const t of timeTicks(t0, t1)) {
    const x = X(t);
    const anchor = x < m.l + 20 ? "start" : x > m.l + iw - 20 ? "end" : "middle";
    svg.append(s("text", { x, y: height - 8, "text-anchor": anchor, class: "axis" },
      mark(t, t1 - t0)));
  }
  if (threshold !== null) {
    svg.append(s("line", { x1: m.l, x2: m.l + iw, y1: Y(threshold), y2: Y(threshold),
      class: "threshold" }));
  }
  for (const x of series) {
    let d = "", pen = false;
    for (const [t, v] of x.points) {
      if (v === null || v === undefined) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${X(t).toFixed(1)},${Y(v).toFixed(1)}`;
      pen = true;
    }
    svg.append(s("path", { d, fill: "none", stroke: x.color, "stroke-width": 2 }));
    const has = (i) => i >= 0 && i < x.points.length && x.points[i][1] !== null
      && x.points[i][1] !== undefined;
    x.points.forEach(([t, v], i) => {  // every point when few, else those a line cannot show
      if (has(i) && (x.points.length < 40 || (!has(i - 1) && !has(i + 1)))) {
        svg.append(s("circle", { cx: X(t), cy: Y(v), r: 2.5, fill: x.color }));
      }
    });
  }
  return svg;
}

export function legend(items) {
  return h("div", { class: "legend" }, items.map(([label, color]) =>
    h("span", {}, h("i", { class: "swatch", dataset: { color } }), label)));
}

/** Paint the swatches of legends (their colour cannot be an inline style under the CSP). */
export function paintSwatches(root) {
  for (const el of root.querySelectorAll("i.swatch")) {
    if (el.dataset.color) el.style.background = el.dataset.color;
  }
  for (const el of root.querySelectorAll(".split i")) {
    el.style.width = `${Math.round(Number(el.dataset.share) * 100)}%`;
  }
}

/**
 * One guard: its value as a bar against its threshold (a line). Lower-is-better guards
 * (error_rate <= 0.02) breach to the right of the line, higher-is-better ones to the left.
 */
export function guardBar(g, { width = 520, height = 54, max = null } = {}) {
  const label = `${g.guard}: value ${num(g.value)} against threshold ${num(g.threshold)} — ${g.status}`;
  const svg = svgBox(width, height, label);
  const m = { l: 8, r: 8 };
  const iw = width - m.l - m.r;
  const values = [g.value, g.threshold, g.baseline].filter((v) => typeof v === "number");
  const top = max ?? niceMax(Math.max(...values, 0) * 1.25 || 1);
  const X = (v) => m.l + (Math.max(0, Math.min(v, top)) / top) * iw;
  svg.append(s("rect", { x: m.l, y: 8, width: iw, height: 18, rx: 4, class: "track" }));
  if (typeof g.value === "number") {
    svg.append(s("rect", { x: m.l, y: 8, width: Math.max(X(g.value) - m.l, 2), height: 18,
      rx: 4, class: `bar ${g.status}` }));
  }
  if (typeof g.threshold === "number") {
    const x = X(g.threshold);
    svg.append(s("line", { x1: x, x2: x, y1: 2, y2: 32, class: "threshold-mark" }));
    const near = x < m.l + 70 ? "start" : x > width - m.r - 70 ? "end" : "middle";
    svg.append(s("text", { x, y: 46, "text-anchor": near, class: "axis" },
      `threshold ${num(g.threshold)}`));
    if (near !== "start") svg.append(s("text", { x: m.l, y: 46, class: "axis" }, "0"));
    if (near !== "end") {
      svg.append(s("text", { x: width - m.r, y: 46, "text-anchor": "end", class: "axis" }, num(top)));
    }
  }
  return svg;
}

const EVENT_LABEL = {
  started: "started", prepared: "prepared", step: "step", waiting: "waiting",
  breach: "breach", rolled_back: "rolled back", succeeded: "succeeded", aborted: "aborted",
  promoted: "promoted", paused: "paused", resumed: "resumed",
};

/**
 * A rollout's timeline: its steps as a staircase of percentages (done, current, to come)
 * and its events along time below.
 */
export function rolloutTimeline(r, { width = 860, height = 150 } = {}) {
  const svg = svgBox(width, height, `rollout of ${r.target_ref} on ${r.endpoint}: ${r.status}`);
  const m = { l: 16, r: 16 };
  const n = r.steps.length;
  const stepW = (width - m.l - m.r) / n;
  const reached = r.active ? r.step_index : r.status === "succeeded" ? n - 1 : r.step_index;
  r.steps.forEach((pct, i) => {
    const x = m.l + i * stepW;
    const barH = 10 + (pct / 100) * 46;
    const state = i < reached || (i === reached && r.status === "succeeded") ? "done"
      : i === reached && r.active ? "current" : "todo";
    const failed = !r.active && r.status !== "succeeded" && i === reached;
    svg.append(s("rect", { x: x + 4, y: 64 - barH, width: stepW - 8, height: barH, rx: 4,
      class: `step ${failed ? "failed" : state}` }));
    if (state === "current" && r.current && r.bake_s > 0) {
      const done = Math.min(r.current.elapsed_s / r.bake_s, 1);
      svg.append(s("rect", { x: x + 4, y: 60, width: (stepW - 8) * done, height: 4, rx: 2,
        class: "bake" }, s("title", {}, `baked ${Math.round(done * 100)}%`)));
    }
    svg.append(s("text", { x: x + stepW / 2, y: 78, "text-anchor": "middle", class: "axis" },
      `step ${i + 1}: ${pct}%${state === "current" ? " (now)" : ""}`));
  });
  const events = r.events || [];
  if (events.length) {
    const times = events.map((e) => new Date(e.time).getTime());
    const t0 = Math.min(...times), t1 = Math.max(...times, Date.now());
    const X = (t) => m.l + ((t - t0) / Math.max(t1 - t0, 1)) * (width - m.l - m.r);
    svg.append(s("line", { x1: m.l, x2: width - m.r, y1: 104, y2: 104, class: "grid" }));
    events.forEach((e, i) => {
      const x = X(times[i]);
      const kind = ["breach", "rolled_back", "aborted"].includes(e.kind) ? "bad"
        : e.kind === "succeeded" ? "ok" : "neutral";
      svg.append(s("circle", { cx: x, cy: 104, r: 5, class: `event ${kind}` },
        s("title", {}, `${e.kind} at ${e.time}`)));
      const label = EVENT_LABEL[e.kind] || e.kind;
      const pct = e.detail && e.detail.percent !== undefined ? ` ${e.detail.percent}%` : "";
      svg.append(s("text", { x: Math.min(Math.max(x, m.l + 24), width - m.r - 24),
        y: 122 + (i % 2) * 14, "text-anchor": "middle", class: "axis" }, label + pct));
    });
  }
  return svg;
}

/**
 * A version's lineage, oldest on the left: each version with the run that trained it and
 * the base model; an arrow from each parent to its child.
 */
export function lineageGraph(chain, { width = 860 } = {}) {
  const nodes = [];  // oldest first
  for (let n = chain; n; n = n.parent) nodes.unshift(n);
  const missing = (() => { let n = chain; while (n.parent) n = n.parent; return n.missing_parent; })();
  const colW = 200, boxW = 168, boxH = 46;
  const cols = nodes.length + 1 + (missing ? 1 : 0);
  const w = Math.max(width, cols * colW + 20), height = 150;
  const svg = svgBox(w, height, "lineage: " + nodes.map((n) => n.version.ref).join(" → "));
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
  s("path", { d: "M0,0L10,5L0,10z", class: "arrowhead" }))));
  const box = (x, y, title, sub, cls, href) => {
    const g = s("g", { class: `node ${cls}` },
      s("rect", { x, y, width: boxW, height: boxH, rx: 8 }),
      s("text", { x: x + 10, y: y + 19, class: "node-title" }, title),
      s("text", { x: x + 10, y: y + 36, class: "node-sub" }, sub));
    svg.append(href ? s("a", { href }, g) : g);
  };
  const arrow = (x1, y1, x2, y2) => svg.append(s("path", {
    d: `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`,
    class: "edge", "marker-end": "url(#arrow)" }));
  let col = 0;
  const yMid = 24, yBot = 96;
  if (missing) {
    box(10, yMid, missing, "not in this store", "missing");
    col = 1;
  } else {
    box(10, yMid, nodes[0].version.base_model, "base model", "base");
    col = 1;
  }
  let prev = { x: 10 + boxW, y: yMid + boxH / 2 };
  for (const n of nodes) {
    const x = 10 + col * colW;
    const v = n.version;
    if (n.run) {
      box(x - 6, yBot, `run ${n.run.id}`, `seed ${n.run.seed} · ${n.run.status}`, "run");
    }
    box(x, yMid, v.ref, `${v.kind} · gates ${v.gates.state}`, `version ${v.gates.state}`,
      `#/models/${encodeURIComponent(v.model)}/${v.version}`);
    arrow(prev.x, prev.y, x, yMid + boxH / 2);
    if (n.run) arrow(x - 6 + boxW / 2, yBot, x + boxW / 2, yMid + boxH);
    if (v.aliases && v.aliases.length) {
      svg.append(s("text", { x: x + boxW, y: yMid - 8, "text-anchor": "end", class: "alias" },
        "@" + v.aliases.join(" @")));
    }
    prev = { x: x + boxW, y: yMid + boxH / 2 };
    col += 1;
  }
  return svg;
}
