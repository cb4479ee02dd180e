// DOM helpers: every text goes in through textContent or an attribute, never as HTML
// (the CSP also enforces Trusted Types: assigning a string as HTML would throw).

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h("a", {href: "#/x"}, "text", child, ...): an HTML element. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** s("rect", {x: 1}): an SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function ago(iso) {
  if (!iso) return "–";
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function num(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en");
  return Number(x.toPrecision(digits)).toLocaleString("en", { maximumFractionDigits: 6 });
}

/** A status word as a coloured pill: ok, bad, warn or neutral by its meaning. */
export function pill(text, kind) {
  return h("span", { class: `pill ${kind || pillKind(text)}` }, text);
}

export function pillKind(text) {
  const t = String(text);
  if (["passed", "pass", "succeeded", "ok", "running", "resolved", "true"].includes(t)) return "ok";
  if (["failed", "breach", "rolled_back", "aborted", "firing", "broken", "false"].includes(t))
    return "bad";
  if (["paused", "pending", "not_evaluated", "no_data", "preparing", "waiting", "not_enough_data",
    "no_reference"].includes(t))
    return "warn";
  return "neutral";
}

/** A table from column headers and rows of cells (strings or nodes). */
export function table(headers, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.length
      ? rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))
      : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none"))));
}

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);
}

export function link(href, text) {
  return h("a", { href }, text);
}
