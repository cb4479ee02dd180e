// Endpoints: their traffic plans, and per endpoint the plan, its rollout, and (when the
// admin API serves the traffic series) live requests, errors and latency per version.
import { api, seg } from "../api.js";
import { h, ago, card, link, pill, table } from "../dom.js";
import { legend, trafficBar, versionColor } from "../charts.js";
import { seriesCharts } from "./series.js";

export async function endpointsPage() {
  const [endpoints, active] = await Promise.all([
    api.get("/endpoints"), api.get("/rollouts?active=true"),
  ]);
  const rolling = new Map(active.map((r) => [r.endpoint, r]));
  return [
    h("h1", {}, "Endpoints"),
    card(null, table(["endpoint", "tenant", "serves", "traffic plan", "rollout", "updated"],
      endpoints.map((e) => [
        link(`#/endpoints/${seg(e.name)}`, e.name),
        e.tenant || "shared",
        h("code", {}, e.model_ref),
        h("div", { class: "mini" }, trafficBar(e.routes, { width: 320, height: 36 })),
        rolling.has(e.name)
          ? link(`#/rollouts/${seg(e.name)}`, pill(rolling.get(e.name).status))
          : h("span", { class: "muted" }, "none"),
        ago(e.updated_at),
      ]), { "data-testid": "endpoints" })),
  ];
}

export async function endpointPage(name, ctx) {
  const e = await api.get(`/endpoints/${seg(name)}`);
  let latest = null;
  try {
    latest = await api.get(`/endpoints/${seg(name)}/rollout`);
  } catch (err) {
    if (err.status !== 404) throw err;
  }
  const plan = card("Traffic plan",
    trafficBar(e.routes),
    legend(e.routes.map((r) => [`${e.model}:${r.version} — ${r.weight}%`, versionColor(r.version)])),
    table(["version", "weight"], e.routes.map((r) => [
      link(`#/models/${seg(e.model)}/${r.version}`, `${e.model}:${r.version}`), `${r.weight}%`,
    ]), { "data-testid": "plan" }),
    e.shadow_version ? h("p", {}, `Shadow: ${e.model}:${e.shadow_version} receives a copy of `,
      `${Math.round(e.shadow_fraction * 100)}% of requests (never returned).`) : null,
    e.follows_alias ? h("p", {}, `Follows the alias @${e.follows_alias}.`) : null);
  const rollout = card("Rollout", latest
    ? h("p", {}, link(`#/rollouts/${seg(name)}`, `to ${latest.target_ref}`), " ",
      pill(latest.status), ` started ${ago(latest.created_at)} by ${latest.created_by || "?"}`)
    : h("p", { class: "muted" }, "no rollout yet"));
  return [
    h("p", { class: "crumbs" }, link("#/endpoints", "Endpoints")),
    h("h1", {}, name),
    h("p", { class: "muted" }, `tenant ${e.tenant || "shared"} · serves `, h("code", {}, e.model_ref)),
    h("div", { class: "grid2" }, plan, rollout),
    await seriesCharts(name, e, ctx),
  ];
}
