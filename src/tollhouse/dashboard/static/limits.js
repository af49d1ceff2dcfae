// The Limits page: effective limits with overrides marked.
// * An org's root or manager key reads its own org's (GET /v1/limits), read-only: overrides
//   are the API provider's to set.
// * An admin token (the provider) picks an org (GET /v1/admin/orgs) and reads, sets and
//   clears its overrides (GET /v1/admin/orgs/{org}/limits, PUT/DELETE …/limits/{bucket}).
import { ApiError } from "./api.js";
import { h, table } from "./charts.js";

const $ = (selector) => document.querySelector(selector);
const when = (iso) => (iso ? new Date(iso).toLocaleString("en", { dateStyle: "medium", timeStyle: "short" }) : "–");
const per = (seconds) => (seconds % 86400 === 0 ? `${seconds / 86400} d` : seconds % 3600 === 0 ? `${seconds / 3600} h` : seconds % 60 === 0 ? `${seconds / 60} min` : `${seconds} s`);

/**
 * The Limits page of one session. `api` has get(source, path, params) and
 * send(method, path, body); `provider`: signed in with an admin token; `onError(err)`
 * handles a 401 (signs out) and returns the text to show.
 */
export function createLimits(api, { provider }, onError) {
  let org = null; // the provider's chosen org

  const show = (err) => {
    const el = $("[data-limits-error]");
    el.hidden = false;
    el.textContent = err instanceof ApiError ? onError(err) : String(err.message || err);
  };
  const hide = () => {
    $("[data-limits-error]").hidden = true;
  };

  let loads = 0; // bumps on every load: an answer for an older one is dropped

  async function load(keepError = false) {
    const mine = ++loads;
    $("[data-limits-provider]").hidden = !provider;
    $("[data-limits-note]").textContent = provider
      ? "Choose an org: set an override for a bucket, or clear one to go back to the policy's limit. Running servers apply a change within a second."
      : "Your org's limits per window. Overridden limits are marked; they are set by your API provider and cannot be changed here.";
    if (provider) {
      await loadOrgs();
      if (mine !== loads) return;
      if (!org) {
        render(null);
        return;
      }
    }
    try {
      const path = provider ? `v1/admin/orgs/${encodeURIComponent(org)}/limits` : "v1/limits";
      const body = await api.get("limits", path);
      if (mine !== loads) return;
      render(body);
      if (!keepError) hide();
    } catch (err) {
      if (mine !== loads) return;
      render(null);
      show(err);
    }
  }

  async function loadOrgs() {
    // The newest 100 orgs fill the suggestions; any other id can still be typed.
    try {
      const page = await api.get("orgs", "v1/admin/orgs", { limit: 100 });
      $("[data-org-choices]").replaceChildren(...(page.data || []).map((o) => h("option", { value: o.id, text: o.name || o.id })));
    } catch (err) {
      show(err);
    }
  }

  function choose(form) {
    const value = String(new FormData(form).get("org") || "").trim();
    org = value || null;
    hide();
    load();
  }

  async function change(work) {
    try {
      await work();
      hide();
      await load();
    } catch (err) {
      show(err);
      await load(true);
    }
  }

  const bucketPath = (bucket) => `v1/admin/orgs/${encodeURIComponent(org)}/limits/${encodeURIComponent(bucket)}`;

  function overrideControls(b) {
    const cell = h("span", { class: "actions" });
    const input = h("input", { type: "number", min: "1", step: "1", value: String(b.limit), "aria-label": `New limit of ${b.name}`, dataset: { overrideInput: b.name } });
    const set = h("button", { type: "button", dataset: { setOverride: b.name }, text: "Set override" });
    set.addEventListener("click", () => {
      const limit = Number(input.value);
      change(() => api.send("PUT", bucketPath(b.name), { limit }));
    });
    cell.append(input, set);
    if (b.overridden) {
      const clear = h("button", { type: "button", class: "danger", dataset: { clearOverride: b.name }, text: "Clear" });
      clear.addEventListener("click", () => change(() => api.send("DELETE", bucketPath(b.name))));
      cell.append(clear);
    }
    return cell;
  }

  function keyOverrides(b) {
    if (!b.keyOverrides.length) return "–";
    return h(
      "span",
      { class: "actions" },
      b.keyOverrides.map((k) => {
        const item = h("span", { dataset: { keyOverride: k.keyId }, text: `${k.keyId}: ${k.limit}` });
        if (!provider) return item;
        const clear = h("button", { type: "button", class: "danger", dataset: { clearKeyOverride: k.keyId }, text: "Clear" });
        clear.addEventListener("click", () => change(() => api.send("DELETE", `${bucketPath(b.name)}?keyId=${encodeURIComponent(k.keyId)}`)));
        return h("span", {}, item, " ", clear);
      }),
    );
  }

  function render(body) {
    const heading = $("[data-limits-heading]");
    if (!body) {
      heading.textContent = provider ? "Limits (choose an org)" : "Limits";
      $("[data-limits-table]").replaceChildren();
      $("[data-pools-table]").replaceChildren();
      return;
    }
    heading.textContent = body.environment ? `Limits of ${body.org} (${body.environment})` : `Limits of ${body.org}`;
    const rows = body.buckets.map((b) => [
      h("span", { dataset: { bucket: b.name }, text: b.displayName || b.name }),
      per(b.windowSeconds),
      String(b.policyLimit),
      h("strong", { dataset: { effective: b.name }, text: String(b.limit) }),
      b.overridden
        ? h("span", { class: "pill running", dataset: { overridden: b.name }, title: `since ${when(b.override && b.override.updatedAt)}`, text: "override" })
        : h("span", { class: "pill", dataset: { overridden: b.name }, text: "policy" }),
      keyOverrides(b),
      ...(provider ? [overrideControls(b)] : []),
    ]);
    const headings = ["Bucket", "Window", "Policy limit", "Limit", "Source", "Key overrides", ...(provider ? [""] : [])];
    $("[data-limits-table]").replaceChildren(rows.length ? table(headings, rows) : h("p", { class: "note", text: "The policy has no buckets." }));
    const pools = body.pools.map((p) => [p.name, String(p.limit)]);
    $("[data-pools-table]").replaceChildren(pools.length ? table(["Pool (in flight)", "Limit"], pools) : h("p", { class: "note", text: "No pools." }));
  }

  return { load, choose };
}
