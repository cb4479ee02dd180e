// The model card's markdown as DOM nodes (headings, paragraphs, lists, tables, code,
// emphasis): text only ever becomes text nodes, so a card cannot inject markup.
import { h } from "./dom.js";

function inline(text) {
  const out = [];
  const re = /(`[^`]+`|\*\*[^*]+\*\*|_[^_]+_|\[[^\]]+\]\([^)]+\))/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    const t = m[0];
    if (t.startsWith("`")) out.push(h("code", {}, t.slice(1, -1)));
    else if (t.startsWith("**")) out.push(h("strong", {}, t.slice(2, -2)));
    else if (t.startsWith("_")) out.push(h("em", {}, t.slice(1, -1)));
    else out.push(t.slice(1, t.indexOf("]")));  // a link: its text only
    last = m.index + t.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function cells(line) {
  return line.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
}

export function markdown(text) {
  const root = h("div", { class: "markdown" });
  const lines = text.split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      for (i += 1; i < lines.length && !lines[i].startsWith("```"); i += 1) code.push(lines[i]);
      root.append(h("pre", {}, code.join("\n")));
      i += 1;
    } else if (/^#{1,6} /.test(line)) {
      const level = Math.min(line.indexOf(" ") + 2, 5);
      root.append(h(`h${level}`, {}, inline(line.replace(/^#+ /, ""))));
      i += 1;
    } else if (line.trim().startsWith("|")) {
      const rows = [];
      for (; i < lines.length && lines[i].trim().startsWith("|"); i += 1) rows.push(lines[i]);
      const body = rows.filter((r) => !/^\s*\|?\s*:?-{3,}/.test(r)).map(cells);
      const [head, ...rest] = body;
      root.append(h("table", { class: "compact" },
        head && head.some((c) => c) ? h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, inline(c))))) : null,
        h("tbody", {}, (head && head.some((c) => c) ? rest : body.slice(1)).map((r) =>
          h("tr", {}, r.map((c) => h("td", {}, inline(c))))))));
    } else if (/^\s*[-*] /.test(line)) {
      const items = [];
      for (; i < lines.length && /^\s*[-*] /.test(lines[i]); i += 1) {
        items.push(h("li", {}, inline(lines[i].replace(/^\s*[-*] /, ""))));
      }
      root.append(h("ul", {}, items));
    } else if (!line.trim()) {
      i += 1;
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() && !/^(#|\||```|\s*[-*] )/.test(lines[i]); i += 1) {
        para.push(lines[i]);
      }
      root.append(h("p", {}, inline(para.join(" "))));
    }
  }
  return root;
}
