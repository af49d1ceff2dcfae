// Fair-use signals (docs/analytics.md#fair-use): the table both views show, and the
// provider's Fair use page.
// * An org's key sees its own org's signals in the Usage board's Fair use panel
//   (GET /v1/analytics/fair-use, app.js).
// * An admin token (the provider) picks an org (the Limits page's org suggestions), an
//   environment and a range, and reads that org's signals
//   (GET /v1/admin/orgs/{org}/fair-use?environment=&timeRange=): the same answer.
import { ApiError } from "./api.js";
import { h, round } from "./charts.js";

const $ = (selector) => document.querySelector(selector);

const SIGNAL_NAMES = {
  regeneration_loop: "Regeneration loops",
  criteria_without_scoring: "Criteria never scored",
  polling_instead_of_webhooks: "Polling instead of webhooks",
  ignored_retry_after: "Retries before Retry-After",
  burst_submission: "Burst submissions",
};
const BADGE = { ok: "good", watch: "warn", flagged: "bad" };

/** The headline of a set of signals: "2 flagged · 1 to watch", or "all ok". */
export function fairUseHeadline(signals) {
  const flagged = signals.filter((s) => s.status === "flagged").length;
  const watched = signals.filter((s) => s.status === "watch").length;
  return { flagged, text: flagged || watched ? `${flagged} flagged · ${watched} to watch` : "all ok" };
}

/** One row per signal (ok / watch / flagged), and the note that nothing is enforced. */
export function signalsTable(signals) {
  const rows = signals.map((s) => {
    const involved = (s.involved || []).slice(0, 3).map((i) => i.id).join(", ");
    const more = s.involvedCount > 3 ? ` +${s.involvedCount - 3}` : "";
    return h(
      "tr",
      { class: "table-row", dataset: { signal: s.signal, status: s.status } },
      h("td", { title: s.signal, text: SIGNAL_NAMES[s.signal] || s.signal }),
      h("td", {}, h("span", { class: `badge ${BADGE[s.status] || ""}`, text: s.status })),
      h("td", { class: "value", text: `${round(s.value)} / ${round(s.threshold)}` }),
      h("td", { text: involved ? involved + more : "—" }),
      h("td", { text: s.lastSeen ? new Date(s.lastSeen).toLocaleString("en") : "—" }),
    );
  });
  const head = h("tr", {}, ["Signal", "Status", "Value / threshold", "Involved", "Last seen"].map((t) => h("th", { scope: "col", text: t })));
  return [
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), h("tbody", {}, rows))),
    h("p", { class: "note", text: "Shown, never enforced: no hard quotas. Flagged above the threshold, watched above half of it." }),
  ];
}

/**
 * The provider's Fair use page. `api` has get(source, path, params); `onError(err)`
 * handles a 401 (signs out) and returns the text to show.
 */
export function createFairUse(api, onError) {
  let chosen = null; // {org, environment, timeRange}

  const show = (err) => {
    const el = $("[data-fairuse-error]");
    el.hidden = false;
    el.textContent = err instanceof ApiError ? onError(err) : String(err.message || err);
  };

  async function loadOrgs() {
    // The newest 100 orgs fill the suggestions (shared with the Limits page).
    try {
      const page = await api.get("orgs", "v1/admin/orgs", { limit: 100 });
      $("[data-org-choices]").replaceChildren(...(page.data || []).map((o) => h("option", { value: o.id, text: o.name || o.id })));
    } catch (err) {
      show(err);
    }
  }

  async function load() {
    await loadOrgs();
    if (!chosen) {
      render(null);
      return;
    }
    const { org, environment, timeRange } = chosen;
    try {
      const body = await api.get("fair-use", `v1/admin/orgs/${encodeURIComponent(org)}/fair-use`, { environment, timeRange });
      if (chosen && chosen.org === org && chosen.environment === environment && chosen.timeRange === timeRange) {
        $("[data-fairuse-error]").hidden = true;
        render(body);
      }
    } catch (err) {
      render(null);
      show(err);
    }
  }

  function choose(form) {
    const data = new FormData(form);
    const org = String(data.get("org") || "").trim();
    chosen = org ? { org, environment: String(data.get("environment")), timeRange: String(data.get("timeRange")) } : null;
    $("[data-fairuse-error]").hidden = true;
    load();
  }

  function render(body) {
    const heading = $("[data-fairuse-heading]");
    const headline = $("[data-fairuse-headline]");
    const el = $("[data-fairuse-table]");
    headline.textContent = "";
    if (!body) {
      heading.textContent = "Fair use (choose an org)";
      el.replaceChildren();
      return;
    }
    heading.textContent = `Fair use of ${body.org} (${body.environment}, ${body.timeRange})`;
    const signals = body.signals || [];
    if (!signals.length) {
      el.replaceChildren(h("p", { class: "note", text: "This server's policy watches no fair-use signals ([[fair_use]] tables, docs/policy.md)." }));
      return;
    }
    const { flagged, text } = fairUseHeadline(signals);
    headline.textContent = text;
    headline.dataset.flagged = String(flagged);
    el.replaceChildren(...signalsTable(signals));
  }

  return { load, choose };
}
