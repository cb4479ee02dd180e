// The console's pages by the URL's hash (#/models, #/endpoints/NAME, #/rollouts/ENDPOINT,
// #/monitoring, #/audit?actor=...): each page reads the admin API as the logged-in person.
import { api, loadSession, logout } from "./api.js";
import { h, card } from "./dom.js";
import { paintSwatches } from "./charts.js";
import { modelPage, modelsPage, versionPage } from "./pages/models.js";
import { endpointPage, endpointsPage } from "./pages/endpoints.js";
import { rolloutPage, rolloutsPage } from "./pages/rollouts.js";
import { monitoringPage } from "./pages/monitoring.js";
import { auditPage } from "./pages/audit.js";
import { usagePage } from "./pages/usage.js";

const view = document.getElementById("view");
const flashBox = document.getElementById("flash");
const ROLES = ["viewer", "developer", "approver", "admin"];
let me = null;
let timers = [];
let generation = 0;

function flash(message, kind = "neutral") {
  flashBox.textContent = message;
  flashBox.className = `flash ${kind}`;
  flashBox.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { flashBox.hidden = true; }, 8000);
}

function paint(root) {
  paintSwatches(root);
}

const ROUTES = [
  [/^models$/, () => modelsPage()],
  [/^models\/([^/]+)$/, (m) => modelPage(m[1])],
  [/^models\/([^/]+)\/(\d+)$/, (m) => versionPage(m[1], Number(m[2]))],
  [/^endpoints$/, () => endpointsPage()],
  [/^endpoints\/([^/]+)$/, (m, ctx) => endpointPage(m[1], ctx)],
  [/^rollouts$/, () => rolloutsPage()],
  [/^rollouts\/([^/]+)$/, (m, ctx) => rolloutPage(m[1], null, ctx)],
  [/^rollouts\/([^/]+)\/([^/]+)$/, (m, ctx) => rolloutPage(m[1], m[2], ctx)],
  [/^monitoring$/, () => monitoringPage()],
  [/^audit$/, (m, ctx, params) => auditPage(params, ctx)],
  [/^usage$/, (m, ctx, params) => usagePage(params)],
];

/** A path segment of the address, decoded; null when it is not valid percent-encoding. */
function decoded(part) {
  try {
    return decodeURIComponent(part);
  } catch (_) {
    return null;
  }
}

async function route() {
  for (const t of timers) clearInterval(t);
  timers = [];
  const mine = ++generation;
  const raw = window.location.hash.replace(/^#\/?/, "") || "models";
  const [path, query] = raw.split("?");
  const parts = path.split("/").map(decoded);
  const malformed = parts.includes(null);  // said on the page below, like an unknown page
  const params = new URLSearchParams(query || "");
  const page = malformed ? "" : parts[0];
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page);
  }
  const ctx = {
    me, flash, paint, mayChange: me.mayChange, mayApprove: me.mayApprove,
    go: (hash) => { window.location.hash = hash; },
    every: (ms, fn) => {
      const t = setInterval(async () => {
        if (mine !== generation) return;
        try { await fn(); } catch (err) { flash(err.message, "bad"); }
      }, ms);
      timers.push(t);
    },
  };
  const joined = malformed ? "" : parts.map((p) => p.replaceAll("/", "%2F")).join("/");
  const found = ROUTES.find(([re]) => re.test(joined));
  view.setAttribute("aria-busy", "true");
  try {
    if (malformed) throw new Error(`no page ${path}: its address is not valid percent-encoding`);
    if (!found) throw new Error(`no page ${path}`);
    const m = joined.match(found[0]).map((x) => (x === undefined ? x : decodeURIComponent(x)));
    const nodes = await found[1](m, ctx, params);
    if (mine !== generation) return;
    view.replaceChildren(...[nodes].flat().filter(Boolean));
  } catch (err) {
    if (mine !== generation) return;
    view.replaceChildren(h("h1", {}, "Cannot show this page"),
      card(null, h("p", { class: "error" }, err.message)));
  }
  paint(view);
  view.setAttribute("aria-busy", "false");
  view.dataset.page = page;
}

async function start() {
  const session = await loadSession();
  const who = await api.get("/whoami");
  const rank = ROLES.indexOf(who.role);
  const writes = who.scopes.includes("write");
  me = { ...who, mayChange: writes && rank >= 1, mayApprove: writes && rank >= 2 };
  document.getElementById("who").textContent =
    `${who.actor} · ${who.role}${writes ? "" : " (read-only token)"} · via ${session.via}`;
  document.getElementById("logout").addEventListener("click", () => logout().catch((err) => {
    flash(`Not logged out: ${err.message}. The session is still open; try again.`, "bad");
  }));
  window.addEventListener("hashchange", route);
  await route();
}

start().catch((err) => {
  view.replaceChildren(h("p", { class: "error" }, `The console cannot start: ${err.message}`));
});
