// Usage: what each tenant used and what it cost per UTC day (the numbers budgets count,
// read from the usage kept per day): a line per tenant of the cost per day, and a table of
// each tenant's requests, tokens and cost over the window.
import { api } from "../api.js";
import { h, card, link, num, table } from "../dom.js";
import { legend, lineChart, versionColor } from "../charts.js";

const DAY = 86400000;
const WINDOWS = [7, 30, 90];

function cost(row) {
  const unpriced = row.unpriced_tokens ? ` (+${row.unpriced_tokens.toLocaleString("en")} ` +
    "unpriced tokens)" : "";
  return num(row.cost, 4) + unpriced;
}

export async function usagePage(params) {
  const asked = Number.parseInt(params.get("days") || "30", 10);
  const days = WINDOWS.includes(asked) ? asked : 30;
  const first = Math.floor(Date.now() / DAY) * DAY - (days - 1) * DAY;  // 00:00 UTC
  const since = new Date(first).toISOString().slice(0, 10);
  const [perDay, perTenant] = await Promise.all([
    api.get(`/usage?since=${since}&by=day,tenant`), api.get(`/usage?since=${since}&by=tenant`),
  ]);
  const tenants = perTenant.map((r) => r.tenant);
  const series = tenants.map((tenant, i) => {
    const spent = new Map(perDay.filter((r) => r.tenant === tenant)
      .map((r) => [Date.parse(`${r.day}T00:00:00Z`), r.cost]));
    const points = [];
    for (let t = first; t < first + days * DAY; t += DAY) points.push([t, spent.get(t) ?? 0]);
    return { label: tenant, color: versionColor(i + 1), points };
  });
  const choose = h("p", { class: "muted" }, "The last ",
    WINDOWS.map((d) => d === days ? h("strong", {}, `${d} days`) : link(`#/usage?days=${d}`,
      `${d} days`)).flatMap((x, i) => (i ? [" · ", x] : [x])), ` (UTC days from ${since}).`);
  if (!perTenant.length) {
    return [h("h1", {}, "Usage"), choose, card("Cost per day", h("p",
      { class: "muted", "data-testid": "usage" }, `No requests since ${since}.`))];
  }
  const rows = perTenant.map((r) => [r.tenant, num(r.requests, 9),
    r.prompt_tokens.toLocaleString("en"), r.completion_tokens.toLocaleString("en"), cost(r)]);
  return [
    h("h1", {}, "Usage"), choose,
    card("Cost per day", h("div", { "data-testid": "usage-chart" },
      lineChart(series, { title: "cost per UTC day, at today's token prices", width: 1100,
        height: 260 }),
      legend(series.map((x) => [x.label, x.color])))),
    card("Per tenant", table(["tenant", "requests", "prompt tokens", "completion tokens",
      "cost"], rows, { "data-testid": "usage" }),
    h("p", { class: "muted small" }, "Users' requests only: shadow copies and requests still ",
      "running are not counted. Tokens of versions without a price cost nothing and are ",
      "shown apart (modelyard monitor price set).")),
  ];
}
