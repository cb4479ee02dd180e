// Live traffic of one endpoint per version: requests, errors and p95 latency per bucket,
// from GET /admin/v1/endpoints/{endpoint}/series, refreshed every 5 s.
import { api, seg } from "../api.js";
import { h, card, num } from "../dom.js";
import { legend, lineChart, versionColor } from "../charts.js";

const WINDOWS = { "15m": 15, "1h": 60, "1d": 900 };  // window → seconds per point

function label(series) {
  return `${series.version || "no version"}${series.shadow ? " (shadow)" : ""}`;
}

function colorOf(series) {
  const number = String(series.version || "").split(":").pop();
  return series.version ? versionColor(number) : "#8c959f";
}

function charts(data) {
  const all = data.series;
  const line = (pick) => all.map((x) => ({
    label: label(x), color: colorOf(x),
    points: x.points.map((p) => [new Date(p.start).getTime(), pick(p)]),
  }));
  const per = `per ${data.bucket_s} s`;
  return [
    legend(all.map((x) => [`${label(x)}: ${num(x.requests)} requests, ${num(x.errors)} errors`,
      colorOf(x)])),
    h("div", { class: "charts" },
      lineChart(line((p) => p.requests), { title: `Requests ${per}`, whole: true }),
      lineChart(line((p) => p.errors), { title: `Errors ${per}`, whole: true }),
      lineChart(line((p) => p.latency_p95_ms), { title: "Latency p95", unit: " ms" }),
      lineChart(line((p) => p.latency_p50_ms), { title: "Latency p50", unit: " ms" })),
  ];
}

export async function seriesCharts(name, endpoint, ctx) {
  const box = h("div", { "data-testid": "series" });
  let windowName = "15m";
  const load = async () => {
    try {
      const data = await api.get(`/endpoints/${seg(name)}/series?window=${windowName}`
        + `&bucket=${WINDOWS[windowName]}`);
      box.replaceChildren(...charts(data));
    } catch (err) {
      box.replaceChildren(h("p", { class: "error" }, `cannot load the traffic series: ${err.message}`));
    }
    ctx.paint(box);
  };
  const picker = h("span", { class: "picker" }, Object.keys(WINDOWS).map((w) =>
    h("button", { type: "button", class: w === windowName ? "quiet on" : "quiet",
      dataset: { window: w },
      onclick: async (event) => {
        windowName = w;
        for (const b of picker.querySelectorAll("button")) b.classList.toggle("on", b === event.target);
        await load();
      } }, `last ${w}`)));
  await load();
  ctx.every(5000, load);
  return card("Live traffic per version", picker, box);
}
