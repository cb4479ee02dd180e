// Rollouts: every rollout, and one rollout's timeline with each guard's value against its
// threshold while it bakes; promote, pause, resume and abort for roles that may.
import { api, seg } from "../api.js";
import { h, ago, card, fmtTime, link, num, pill, table } from "../dom.js";
import { guardBar, rolloutTimeline, trafficBar } from "../charts.js";

function stepText(r) {
  return `${r.step_index + 1}/${r.steps.length} (${r.steps[r.step_index]}%)`;
}

export async function rolloutsPage() {
  const rollouts = await api.get("/rollouts?limit=200");
  return [
    h("h1", {}, "Rollouts"),
    card(null, table(["endpoint", "to", "status", "step", "strategy", "started by", "started", "finished"],
      rollouts.map((r) => [
        link(`#/rollouts/${seg(r.endpoint)}/${seg(r.id)}`, r.endpoint),
        h("code", {}, r.target_ref), pill(r.status), stepText(r), r.strategy,
        r.created_by || "–", ago(r.created_at), r.finished_at ? ago(r.finished_at) : "–",
      ]), { "data-testid": "rollouts" })),
  ];
}

function actions(r, ctx, rerender) {
  if (!r.active || !ctx.mayChange) return null;
  const base = `/endpoints/${seg(r.endpoint)}/rollout`;
  const act = (what, body) => async (event) => {
    event.target.disabled = true;
    try {
      await api.post(`${base}/${what}`, body ? body() : undefined);
      ctx.flash(`${what}: done`, "ok");
    } catch (err) {
      ctx.flash(`${what} refused: ${err.message}`, "bad");
    }
    await rerender();
  };
  const reason = h("input", { type: "text", id: "abort-reason", placeholder: "why (audited)",
    maxlength: 2000, "aria-label": "reason for the abort" });
  return h("div", { class: "actions", "data-testid": "actions" },
    h("button", { type: "button", id: "promote", onclick: act("promote") }, "Promote to 100% now"),
    r.status === "paused"
      ? h("button", { type: "button", id: "resume", class: "quiet", onclick: act("resume") }, "Resume")
      : h("button", { type: "button", id: "pause", class: "quiet", onclick: act("pause") }, "Pause"),
    h("span", { class: "abort" }, reason,
      h("button", { type: "button", id: "abort", class: "danger",
        onclick: act("abort", () => ({ reason: reason.value.trim() || null })) }, "Abort")));
}

function guardsCard(r) {
  if (!r.current) {
    const why = r.active ? `phase ${r.phase}: guards are read while a step bakes`
      : "the rollout has ended";
    return card("Guards", h("p", { class: "muted" }, why),
      h("ul", {}, r.guards.map((g) => h("li", {}, h("code", {}, g)))));
  }
  const c = r.current;
  return card("Guards — this step",
    h("p", { class: "muted", "data-testid": "step-traffic" },
      `${c.requests} requests to ${r.target_ref} this step (needs ${r.min_requests}), `,
      `${c.baseline_requests} to the baseline · baking ${num(c.elapsed_s, 3)} s of ${num(r.bake_s)} s`),
    h("div", { class: "guards", "data-testid": "guards" }, c.guards.map((g) =>
      h("div", { class: "guard" },
        h("div", { class: "guard-head" }, h("code", {}, g.guard), " ", pill(g.status)),
        guardBar(g),
        h("p", { class: "small muted" }, `value ${num(g.value)} · threshold ${num(g.threshold)}`,
          g.baseline !== null ? ` · baseline ${num(g.baseline)}` : "", ` · n=${g.n}`,
          g.p_value !== null && g.p_value !== undefined ? ` · p=${num(g.p_value)}` : "")))));
}

function eventsTable(r) {
  return table(["time", "event", "step", "detail"], r.events.slice().reverse().map((e) => [
    fmtTime(e.time), pill(e.kind), e.step_index === null ? "–" : String(e.step_index + 1),
    h("code", { class: "wrap" }, JSON.stringify(e.detail)),
  ]), { "data-testid": "events" });
}

export async function rolloutPage(endpoint, id, ctx) {
  const view = h("div", {});
  const render = async () => {
    let r;
    const latest = await api.get(`/endpoints/${seg(endpoint)}/rollout`);
    if (!id || latest.id === id) {
      r = latest;
    } else {
      const all = await api.get(`/rollouts?endpoint=${seg(endpoint)}&limit=1000`);
      r = all.find((x) => x.id === id);
      if (!r) throw new Error(`no rollout ${id} on ${endpoint}`);
    }
    const before = Object.entries(r.baseline).map(([v, w]) => `v${v} ${w}%`).join(", ");
    const now = (await api.get(`/endpoints/${seg(endpoint)}`)).routes;
    const nodes = [
      h("p", { class: "crumbs" }, link("#/rollouts", "Rollouts"), " / ",
        link(`#/endpoints/${seg(endpoint)}`, endpoint)),
      h("h1", {}, `${endpoint} → ${r.target_ref} `, h("span", { "data-testid": "status" }, pill(r.status))),
      h("p", { class: "muted" }, `${r.strategy} · started ${fmtTime(r.created_at)} by `,
        `${r.created_by || "?"} · step ${stepText(r)} · phase ${r.phase}`,
        r.promote_alias ? ` · promotes @${r.promote_alias}` : ""),
      actions(r, ctx, render),
      r.reason ? h("p", { class: "reason", "data-testid": "reason" }, `Reason: ${r.reason}`) : null,
      card("Timeline", h("div", { class: "scroll", "data-testid": "timeline" }, rolloutTimeline(r))),
      h("div", { class: "grid2" }, guardsCard(r),
        card("Traffic now", h("div", { "data-testid": "traffic-now" }, trafficBar(now)),
          h("p", { class: "small muted" }, `before the rollout: ${before} · steps `,
            `${r.steps.join("% → ")}% · bake ${num(r.bake_s)} s and ${r.min_requests} requests a step`))),
      card("Events", eventsTable(r)),
    ];
    view.replaceChildren(...nodes.filter(Boolean));
    ctx.paint(view);
    return r;
  };
  const first = await render();
  if (first.active) ctx.every(2000, render);
  return [view];
}
