// The Limits page: effective limits of buckets and pools with overrides marked.
// * An org's root or manager key reads its own org's (GET /v1/limits), read-only: overrides
//   are the API provider's to set.
// * An admin token (the provider) picks an org (GET /v1/admin/orgs) and reads, sets and
//   clears its overrides (GET /v1/admin/orgs/{org}/limits, PUT/DELETE …/limits/{bucket},
//   where {bucket} is a bucket's or a pool's name): the org's for every environment, for
//   SANDBOX or PRODUCTION alone, and its keys'.
import { ApiError } from "./api.js";
import { h, table } from "./charts.js";

const $ = (selector) => document.querySelector(selector);
const when = (iso) => (iso ? new Date(iso).toLocaleString("en", { dateStyle: "medium", timeStyle: "short" }) : "–");
/** The environments an org's override may name, in column order. */
const ENVIRONMENTS = [
  ["SANDBOX", "Sandbox"],
  ["PRODUCTION", "Production"],
];
const per = (seconds) => (seconds % 86400 === 0 ? `${seconds / 86400} d` : seconds % 3600 === 0 ? `${seconds / 3600} h` : seconds % 60 === 0 ? `${seconds / 60} min` : `${seconds} s`);

/**
 * The Limits page of one session. `api` has get(source, path, params) and
 * send(method, path, body); `provider`: signed in with an admin token; `onError(err, { change })`
 * handles a 401 (signs out) and returns the text to show (for a change: the server's
 * message alone).
 */
export function createLimits(api, { provider }, onError) {
  let org = null; // the provider's chosen org
  const chosenEnvironment = new Map(); // bucket or pool → the set-override control's environment ("" = all)

  /** Say why a call failed; `change`: setting or clearing an override, not a read. */
  const show = (err, change = false) => {
    const el = $("[data-limits-error]");
    el.hidden = false;
    el.textContent = err instanceof ApiError ? onError(err, { change }) : String(err.message || err);
  };
  const hide = () => {
    $("[data-limits-error]").hidden = true;
  };

  let loads = 0; // bumps on every load: an answer for an older one is dropped

  // The table's data-state: "loading" from a change or a load until the render that ends
  // them, then "ready" (a change typed into a field is not replaced by a render under way).
  const busy = () => {
    $("[data-limits-table]").dataset.state = "loading";
  };

  async function load(keepError = false) {
    const mine = ++loads;
    busy();
    $("[data-limits-provider]").hidden = !provider;
    $("[data-limits-note]").textContent = provider
      ? "Choose an org: set an override for a bucket or a pool in every environment or in one, or clear one to go back to the org-wide or the policy's limit. Running servers apply a change within a second."
      : "Your org's limits per window, and of requests in flight at once (pools). Overridden limits are marked; they are set by your API provider and cannot be changed here.";
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
    chosenEnvironment.clear(); // another org's controls start on "All environments"
    hide();
    load();
  }

  async function change(work) {
    busy();
    try {
      await work();
      hide();
      await load();
    } catch (err) {
      show(err, true);
      await load(true);
    }
  }

  const bucketPath = (bucket) => `v1/admin/orgs/${encodeURIComponent(org)}/limits/${encodeURIComponent(bucket)}`;

  function overrideControls(b) {
    const cell = h("span", { class: "actions" });
    const input = h("input", { type: "number", min: "1", step: "1", value: String(b.limit), "aria-label": `New limit of ${b.name}`, dataset: { overrideInput: b.name } });
    const chosen = chosenEnvironment.get(b.name) || "";
    const environment = h(
      "select",
      { "aria-label": `Environment of the override of ${b.name}`, dataset: { overrideEnvironment: b.name } },
      h("option", { value: "", text: "All environments", selected: chosen === "" }),
      ENVIRONMENTS.map(([env, label]) => h("option", { value: env, text: label, selected: chosen === env })),
    );
    environment.addEventListener("change", () => chosenEnvironment.set(b.name, environment.value));
    const set = h("button", { type: "button", dataset: { setOverride: b.name }, text: "Set override" });
    set.addEventListener("click", () => {
      const limit = Number(input.value);
      // No `environment` at all for every environment (what the API takes as "both").
      const body = environment.value ? { limit, environment: environment.value } : { limit };
      change(() => api.send("PUT", bucketPath(b.name), body));
    });
    cell.append(input, environment, set);
    if (b.overridden) {
      const clear = h("button", { type: "button", class: "danger", title: "Clear the override for all environments", dataset: { clearOverride: b.name }, text: "Clear org-wide" });
      clear.addEventListener("click", () => change(() => api.send("DELETE", bucketPath(b.name))));
      cell.append(clear);
    }
    return cell;
  }

  /** The limit a key of `env` gets (without a key override), and where it comes from. */
  function environmentLimit(b, env) {
    const applied = b.byEnvironment[env];
    const own = (b.environmentOverrides || []).find((o) => o.environment === env);
    const id = `${b.name}:${env}`;
    const pill = own
      ? h("span", { class: "pill running", dataset: { envSource: id }, title: `this environment's override, since ${when(own.updatedAt)}`, text: "env override" })
      : applied.overridden
        ? h("span", { class: "pill running", dataset: { envSource: id }, title: "the override for all environments", text: "org-wide" })
        : h("span", { class: "pill", dataset: { envSource: id }, text: "policy" });
    return h("span", { class: "actions" }, h("strong", { dataset: { envLimit: id }, text: String(applied.limit) }), pill);
  }

  function environmentOverrides(b) {
    if (!b.environmentOverrides.length) return "–";
    return h(
      "span",
      { class: "actions" },
      b.environmentOverrides.map((o) => {
        const id = `${b.name}:${o.environment}`;
        const item = h("span", { dataset: { envOverride: id }, title: `since ${when(o.updatedAt)}`, text: `${o.environment}: ${o.limit}` });
        const clear = h("button", { type: "button", class: "danger", dataset: { clearEnvOverride: id }, text: "Clear" });
        clear.addEventListener("click", () => change(() => api.send("DELETE", `${bucketPath(b.name)}?environment=${encodeURIComponent(o.environment)}`)));
        return h("span", {}, item, " ", clear);
      }),
    );
  }

  function keyOverrides(b) {
    if (!b.keyOverrides.length) return "–";
    return h(
      "span",
      { class: "actions" },
      b.keyOverrides.map((k) => {
        // One key may have overrides on several buckets: the hooks name both.
        const which = `${b.name}/${k.keyId}`;
        const item = h("span", { dataset: { keyOverride: which }, text: `${k.keyId}: ${k.limit}` });
        if (!provider) return item;
        const clear = h("button", { type: "button", class: "danger", dataset: { clearKeyOverride: which }, text: "Clear" });
        clear.addEventListener("click", () => change(() => api.send("DELETE", `${bucketPath(b.name)}?keyId=${encodeURIComponent(k.keyId)}`)));
        return h("span", {}, item, " ", clear);
      }),
    );
  }

  function render(body) {
    $("[data-limits-table]").dataset.state = "ready";
    const heading = $("[data-limits-heading]");
    if (!body) {
      heading.textContent = provider ? "Limits (choose an org)" : "Limits";
      $("[data-limits-table]").replaceChildren();
      $("[data-pools-table]").replaceChildren();
      return;
    }
    heading.textContent = body.environment ? `Limits of ${body.org} (${body.environment})` : `Limits of ${body.org}`;
    const rows = body.buckets.map((b) => [h("span", { dataset: { bucket: b.name }, text: b.displayName || b.name }), per(b.windowSeconds)]);
    $("[data-limits-table]").replaceChildren(rows.length ? limitTable(["Bucket", "Window"], body.buckets, rows) : h("p", { class: "note", text: "The policy has no buckets." }));
    // A pool is overridden as a bucket is (its name is never a bucket's): the same cells.
    const pools = body.pools.map((p) => [h("span", { dataset: { pool: p.name }, text: p.name })]);
    $("[data-pools-table]").replaceChildren(pools.length ? limitTable(["Pool (in flight)"], body.pools, pools) : h("p", { class: "note", text: "No pools." }));
  }

  /**
   * The table of buckets or pools: each row's own first cells (`firsts`, under `names`),
   * then what both have: the policy's limit, the org's, its source, each environment's
   * (the provider's view), key overrides, the provider's controls.
   */
  function limitTable(names, items, firsts) {
    // The provider's view: "Limit" and "Source" are the org's override for all
    // environments; each environment's column is what a key of it gets.
    const perEnvironment = provider && items.every((b) => b.byEnvironment && b.environmentOverrides);
    const rows = items.map((b, i) => [
      ...firsts[i],
      String(b.policyLimit),
      h("strong", { dataset: { effective: b.name }, text: String(b.limit) }),
      b.overridden
        ? h("span", { class: "pill running", dataset: { overridden: b.name }, title: `since ${when(b.override && b.override.updatedAt)}`, text: "override" })
        : h("span", { class: "pill", dataset: { overridden: b.name }, text: "policy" }),
      ...(perEnvironment ? [...ENVIRONMENTS.map(([env]) => environmentLimit(b, env)), environmentOverrides(b)] : []),
      keyOverrides(b),
      ...(provider ? [overrideControls(b)] : []),
    ]);
    const headings = [
      ...names,
      "Policy limit",
      perEnvironment ? "All environments" : "Limit",
      "Source",
      ...(perEnvironment ? [...ENVIRONMENTS.map(([, label]) => label), "Environment overrides"] : []),
      "Key overrides",
      ...(provider ? [""] : []),
    ];
    return table(headings, rows);
  }

  return { load, choose };
}
