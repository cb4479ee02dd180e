// Monitoring: alerts, drift per feature (the latest stored run of each endpoint, each
// feature's value against its threshold), and feedback per endpoint version.
import { api, seg } from "../api.js";
import { h, ago, card, fmtTime, link, num, pill, table } from "../dom.js";
import { guardBar } from "../charts.js";

function alertsCard(alerts) {
  const order = { firing: 0, pending: 1, resolved: 2, inactive: 3 };
  const rows = alerts.slice().sort((a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9))
    .map((a) => [pill(a.state), h("code", {}, a.rule), a.severity,
      Object.entries(a.labels).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`)),
      num(a.value), a.summary, a.active_since ? ago(a.active_since) : "–"]);
  return card("Alerts", table(["state", "rule", "severity", "labels", "value", "summary", "since"],
    rows, { "data-testid": "alerts" }));
}

// tests whose value is a p-value: drift is a value below the threshold (the others: above)
const P_VALUE = new Set(["ks", "chisquare", "mmd"]);

function driftCard(results) {
  const byRun = new Map();
  for (const r of results) {
    const key = `${r.endpoint_name} · ${r.version || "all versions"}`;
    if (!byRun.has(key)) byRun.set(key, []);
    byRun.get(key).push(r);
  }
  if (!byRun.size) {
    return card("Drift per feature", h("p", { class: "muted", "data-testid": "drift" },
      "No drift runs stored yet (modelyard monitor drift, or the monitoring loop, stores them)."));
  }
  return card("Drift per feature", h("div", { "data-testid": "drift" },
    [...byRun.entries()].map(([key, rows]) => h("div", { class: "drift-run" },
      h("h3", {}, key, " ", h("span", { class: "muted small" },
        `reference ${rows[0].reference} · window ${fmtTime(rows[0].window_start)} → `,
        `${fmtTime(rows[0].window_end)} · computed ${ago(rows[0].computed_at)}`)),
      h("div", { class: "features" }, rows.map((r) => h("div", { class: "feature" },
        h("div", { class: "guard-head" }, h("strong", {}, r.feature), " ",
          pill(...(STATUS[r.status] || [r.status])),
          h("span", { class: "muted small" }, " ", driftDetail(r))),
        r.value === null || r.value === undefined ? null :
          guardBar({ guard: r.feature, value: r.value, threshold: r.threshold,
            status: r.drifted ? "breach" : r.status === "ok" ? "pass" : "pending" },
          { width: 420, height: 50, max: P_VALUE.has(r.method) ? 1 : null }))))))));
}

// a drift status as a reader says it, and the colour of its pill
const STATUS = { drift: ["drift", "bad"], ok: ["ok", "ok"],
  not_enough_data: ["not enough data", "warn"], no_reference: ["no reference", "warn"] };

/** What a feature's test found, in words: no "–: – (drift above –)" when none ran. */
function driftDetail(r) {
  const n = `n=${r.n_current} now vs ${r.n_reference} in the reference`;
  if (r.method === "-") return `no test applies (${n})`;
  const test = `${r.method}${P_VALUE.has(r.method) ? " p-value" : ""}`;
  if (r.value === null || r.value === undefined) return `${test}: too few samples to test (${n})`;
  return `${test}: ${num(r.value)} (drift ${P_VALUE.has(r.method) ? "below" : "above"} ` +
    `${num(r.threshold)}, ${n})`;
}

function feedbackCard(summary, recent) {
  const rows = summary.map((f) => {
    const total = Math.max(f.count, 1);
    const bar = h("span", { class: "split", title: `${f.positive} positive, ${f.negative} negative` },
      h("i", { class: "pos", dataset: { share: f.positive / total } }),
      h("i", { class: "neg", dataset: { share: f.negative / total } }));
    return [link(`#/endpoints/${seg(f.endpoint)}`, f.endpoint), f.version || "–", num(f.count),
      num(f.mean_score), bar, `${f.positive} / ${f.negative}`, f.last_at ? ago(f.last_at) : "–"];
  });
  return card("Feedback",
    table(["endpoint", "version", "answers rated", "mean score", "", "+ / −", "last"], rows,
      { "data-testid": "feedback" }),
    h("h3", {}, "Latest"),
    table(["time", "endpoint", "version", "score", "comment"], recent.map((f) => [
      fmtTime(f.updated_at), f.endpoint_name, f.version || "–",
      // a correction of a request that got no answer: its score rates none, in no mean
      f.counted === false ? pill(`${num(f.score)} (not counted)`, "neutral")
        : pill(num(f.score), f.score > 0 ? "ok" : f.score < 0 ? "bad" : "neutral"),
      f.comment || "",
    ]), { "data-testid": "feedback-recent" }));
}

export async function monitoringPage() {
  const [alerts, drift, summary, recent] = await Promise.all([
    api.get("/alerts"), api.get("/drift?latest=true"), api.get("/feedback/summary"),
    api.get("/feedback?limit=10"),
  ]);
  return [h("h1", {}, "Monitoring"), alertsCard(alerts), driftCard(drift),
    feedbackCard(summary, recent)];
}
