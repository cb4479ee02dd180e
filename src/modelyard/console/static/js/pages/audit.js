// The audit log: the chain's verification and the events, filtered by action, actor,
// subject and time.
import { api } from "../api.js";
import { h, card, fmtTime, pill, table } from "../dom.js";

const FILTERS = ["action", "actor", "subject", "since", "limit"];

function chainCard(report) {
  return card("Chain",
    h("p", { "data-testid": "chain" }, pill(report.ok ? "ok" : "broken"),
      report.ok ? ` ${report.events} events verified; head ${report.head.seq}:${report.head.hash.slice(0, 16)}…`
        : ` broken at seq ${report.first_bad_seq}: ${report.reason}`),
    report.acknowledged.length
      ? h("p", { class: "small muted" }, `${report.acknowledged.length} acknowledged break(s)`) : null);
}

export async function auditPage(params, ctx) {
  const query = new URLSearchParams();
  for (const k of FILTERS) if (params.get(k)) query.set(k, params.get(k));
  if (!query.get("limit")) query.set("limit", "100");
  const [events, report] = await Promise.all([
    api.get(`/audit/events?${query}`), api.get("/audit/verify"),
  ]);
  const inputs = Object.fromEntries(FILTERS.map((k) => [k, h("input", {
    name: k, id: `filter-${k}`, value: params.get(k) || (k === "limit" ? "100" : ""),
    placeholder: { action: "rollout.* or alias.set", actor: "name", subject: "endpoint or model@alias",
      since: "2026-01-01T00:00:00Z", limit: "100" }[k],
  })]));
  const form = h("form", { class: "filters", "data-testid": "filters",
    onsubmit: (event) => {
      event.preventDefault();
      const next = new URLSearchParams();
      for (const k of FILTERS) if (inputs[k].value.trim()) next.set(k, inputs[k].value.trim());
      ctx.go(`#/audit?${next}`);
    } },
  FILTERS.map((k) => h("label", {}, k, inputs[k])),
  h("button", { type: "submit" }, "Filter"));
  return [
    h("h1", {}, "Audit log"),
    h("div", { class: "grid2" }, chainCard(report), card("Filters", form)),
    card(`Events (${events.length}, newest first)`, table(["seq", "time", "actor", "action", "subject", "details"],
      events.map((e) => [String(e.seq), h("span", { class: "nowrap" }, fmtTime(e.time)), e.actor, h("code", {}, e.action), e.subject,
        h("code", { class: "wrap" }, JSON.stringify(e.payload))]), { "data-testid": "audit-events" })),
  ];
}
