// Models: the registry's models, a model's versions with their gate verdicts, and one
// version's gates, lineage graph and model card.
import { api, seg } from "../api.js";
import { h, ago, card, fmtTime, link, num, pill, table } from "../dom.js";
import { lineageGraph } from "../charts.js";
import { markdown } from "../markdown.js";

// The models a page at a time (MODELS_SHOWN, read with limit and after= the last name
// shown): "Show more" adds the next page, so a registry of thousands is never read whole.
const MODELS_SHOWN = 100;

function modelRow(m) {
  return [
    link(`#/models/${seg(m.name)}`, m.name),
    m.tenant || "shared",
    m.latest_version ? link(`#/models/${seg(m.name)}/${m.latest_version}`, `v${m.latest_version}`) : "–",
    m.latest_gates ? pill(m.latest_gates.state) : "–",
    Object.entries(m.aliases).map(([a, v]) => h("span", { class: "tag" }, `@${a} → v${v}`)),
    ago(m.created_at),
  ];
}

export async function modelsPage() {
  const first = await api.get(`/models?limit=${MODELS_SHOWN}`);
  const list = table(["model", "tenant", "latest version", "gates of latest", "aliases", "registered"],
    first.map(modelRow), { "data-testid": "models" });
  let last = first.length ? first[first.length - 1].name : null;
  const note = h("p", { class: "muted", "data-testid": "models-note" });
  const more = h("button", { type: "button", "data-testid": "models-more" }, "Show more");
  const shown = (n, done) => {
    note.textContent = done ? `${n} models` : `the first ${n} models by name`;
    more.hidden = done;
  };
  let count = first.length;
  shown(count, first.length < MODELS_SHOWN);
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const page = await api.get(`/models?limit=${MODELS_SHOWN}&after=${encodeURIComponent(last)}`);
      const body = list.querySelector("tbody");
      for (const m of page) body.append(h("tr", {}, modelRow(m).map((c) => h("td", {}, c))));
      if (page.length) last = page[page.length - 1].name;
      count += page.length;
      shown(count, page.length < MODELS_SHOWN);
    } catch (err) {
      note.textContent = `could not read more models: ${err.message}`;
    } finally {
      more.disabled = false;
    }
  });
  return [h("h1", {}, "Models"), card(null, note, list, more)];
}

// The versions table shows the versions around the one on the page (up to VERSIONS_SHOWN,
// read with limit and before): a model with thousands of versions is never read whole.
const VERSIONS_SHOWN = 50;

function versionsTable(model, versions, current) {
  const first = versions.length ? versions[0].version : null;
  const last = versions.length ? versions[versions.length - 1].version : null;
  const note = first !== null && first > 1
    ? h("p", { class: "muted", "data-testid": "versions-shown" }, `v${first} to v${last} shown`)
    : null;
  return [note, table(["version", "gates", "aliases", "status", "trained by", "registered"],
    versions.slice().reverse().map((v) => [
      v.version === current ? h("strong", {}, `v${v.version}`)
        : link(`#/models/${seg(model)}/${v.version}`, `v${v.version}`),
      pill(v.gates.state),
      v.aliases.map((a) => h("span", { class: "tag" }, `@${a}`)),
      v.status,
      v.created_by || "–",
      ago(v.created_at),
    ]), { "data-testid": "versions" })];
}

function gatesCard(v) {
  const verdicts = ((v.metrics || {}).gates || {}).verdicts || [];
  const rows = verdicts.map((g) => [
    h("code", {}, g.gate || g.metric), num(g.observed), num(g.threshold),
    pill(g.passed ? "passed" : "failed"), g.reason || "",
  ]);
  const overrides = v.gates.overrides.map((o) =>
    h("li", {}, `${o.actor || "?"} overrode the gates for ${o.for || o.action || "a promotion"}: ${o.reason || ""}`));
  return card("Gate verdicts",
    h("p", {}, "Overall: ", pill(v.gates.state, null),
      v.gates.state === "not_evaluated" ? ` (${v.gates.unevaluated})` : ""),
    table(["gate", "observed", "threshold", "verdict", "reason"], rows, { "data-testid": "gates" }),
    overrides.length ? h("ul", { class: "overrides" }, overrides) : null);
}

export async function versionPage(model, number) {
  const [versions, chain, cardText] = await Promise.all([
    api.get(`/models/${seg(model)}/versions?limit=${VERSIONS_SHOWN}&before=${Number(number) + VERSIONS_SHOWN / 2}`),
    api.get(`/models/${seg(model)}/versions/${number}/lineage`),
    api.get(`/models/${seg(model)}/versions/${number}/card`),
  ]);
  const v = chain.version;
  return [
    h("p", { class: "crumbs" }, link("#/models", "Models"), " / ", link(`#/models/${seg(model)}`, model)),
    h("h1", {}, `${v.ref} `, pill(v.gates.state)),
    h("p", { class: "muted" }, `${v.kind} on ${v.base_model} · ${v.status} · registered `,
      fmtTime(v.created_at), v.created_by ? ` by ${v.created_by}` : "",
      v.aliases.length ? ` · ${v.aliases.map((a) => "@" + a).join(" ")}` : ""),
    h("div", { class: "grid2" },
      gatesCard(v),
      card("Versions", versionsTable(model, versions, v.version))),
    card("Lineage", h("div", { class: "scroll", "data-testid": "lineage" }, lineageGraph(chain))),
    card("Model card", h("div", { "data-testid": "card" }, markdown(cardText.card))),
  ];
}

export async function modelPage(model) {
  const m = await api.get(`/models/${seg(model)}`);
  if (m.latest_version) return versionPage(model, m.latest_version);
  return [h("h1", {}, model), card(null, h("p", { class: "muted" }, "no versions yet"))];
}
