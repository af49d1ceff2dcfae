// The portal pages: the org's own keys and webhook endpoints, through the self-serve API
// (/v1/keys, /v1/webhooks/endpoints, /v1/webhooks/deliveries). Root and manager keys only.
import { ApiError } from "./api.js";
import { h, table } from "./charts.js";

const $ = (selector) => document.querySelector(selector);
const when = (iso) => (iso ? new Date(iso).toLocaleString("en", { dateStyle: "medium", timeStyle: "short" }) : "–");

/**
 * The portal for one signed-in session. `api` has get(source, path, params) and
 * send(method, path, body); `onError(err, { change })` handles a 401 (signs out) and
 * returns the text to show (for a change: the server's message alone).
 */
export function createPortal(api, onError) {
  /** Say why a call failed; `change`: a send (create, rotate, revoke…), not a read. */
  const show = (selector, err, change = false) => {
    const el = $(selector);
    el.hidden = false;
    el.textContent = err instanceof ApiError ? onError(err, { change }) : String(err.message || err);
  };
  const hide = (selector) => {
    $(selector).hidden = true;
  };

  // ---- keys ---------------------------------------------------------------------------

  function showSecret(secret, note) {
    $("[data-new-secret]").hidden = false;
    $("[data-secret]").textContent = secret;
    $("[data-secret-note]").textContent = note;
    $("[data-copied]").textContent = "";
  }

  /** Reload the keys table (`keepError`: after a change that failed, keep saying why). */
  async function loadKeys(keepError = false) {
    try {
      const body = await api.get("keys", "v1/keys");
      renderKeys(body.data || []);
      if (!keepError) hide("[data-keys-error]");
    } catch (err) {
      show("[data-keys-error]", err);
    }
  }

  function keyActions(key) {
    const cell = h("span", { class: "actions", dataset: { actions: key.id } });
    if (key.status !== "active") return cell;
    const rotate = h("button", { type: "button", dataset: { rotate: key.id }, text: "Rotate" });
    const revoke = h("button", { type: "button", class: "danger", dataset: { revoke: key.id }, text: "Revoke" });
    rotate.addEventListener("click", () => rotateKey(key));
    revoke.addEventListener("click", () => {
      // Confirm in place: the key stops working at once.
      const yes = h("button", { type: "button", class: "danger", dataset: { confirmRevoke: key.id }, text: `Yes, revoke ${key.name || key.id}` });
      const no = h("button", { type: "button", text: "Cancel" });
      yes.addEventListener("click", () => revokeKey(key));
      no.addEventListener("click", () => loadKeys(true));
      cell.replaceChildren(h("span", { text: "Revoke? Calls with it are refused at once." }), yes, no);
    });
    cell.append(rotate, revoke);
    return cell;
  }

  function renderKeys(keys) {
    const rows = keys.map((k) => [
      h("span", { dataset: { keyName: k.id }, text: k.name || "(no name)" }),
      h("code", { text: k.id }),
      k.role,
      h("span", { dataset: { keyEnvironment: k.id }, text: k.environment }),
      h("code", { text: `${k.prefix}…` }),
      h("span", { class: `pill ${k.status}`, dataset: { keyStatus: k.id }, text: k.status }),
      when(k.createdAt),
      h("span", { dataset: { lastUsed: k.id }, text: when(k.lastUsedAt) }),
      h("span", { dataset: { keyExpires: k.id }, text: when(k.expiresAt) }),
      keyActions(k),
    ]);
    $("[data-keys-table]").replaceChildren(
      keys.length ? table(["Name", "Id", "Role", "Environment", "Prefix", "Status", "Created", "Last used", "Expires", ""], rows) : h("p", { class: "note", text: "No keys." }),
    );
  }

  async function createKey(form) {
    const data = new FormData(form);
    const body = { name: data.get("name").trim(), role: data.get("role") };
    if (data.get("environment")) body.environment = data.get("environment");
    if (data.get("expires")) body.expiresAt = new Date(data.get("expires")).toISOString();
    try {
      const key = await api.send("POST", "v1/keys", body);
      hide("[data-keys-error]");
      form.reset();
      showSecret(key.secret, `New ${key.role} key ${key.id}: copy it now, it is shown only once.`);
      await loadKeys();
    } catch (err) {
      show("[data-keys-error]", err, true);
    }
  }

  async function rotateKey(key) {
    try {
      const made = await api.send("POST", `v1/keys/${encodeURIComponent(key.id)}/rotate`, {});
      hide("[data-keys-error]");
      showSecret(made.secret, `New key ${made.id} replaces ${key.id} (which works until ${when(made.replaces.expiresAt || made.replaces.revokedAt)}): copy it now, it is shown only once.`);
      await loadKeys();
    } catch (err) {
      show("[data-keys-error]", err, true);
    }
  }

  async function revokeKey(key) {
    try {
      await api.send("DELETE", `v1/keys/${encodeURIComponent(key.id)}`);
      hide("[data-keys-error]");
      await loadKeys();
    } catch (err) {
      show("[data-keys-error]", err, true);
      await loadKeys(true);
    }
  }

  // ---- webhooks -----------------------------------------------------------------------

  function showWhsec(secret, note) {
    $("[data-new-whsec]").hidden = false;
    $("[data-whsec]").textContent = secret;
    $("[data-whsec-note]").textContent = note;
  }

  /** Reload both tables (`keepError`: after a change that failed, keep saying why). */
  async function loadWebhooks(keepError = false) {
    try {
      const [endpoints, deliveries] = await Promise.all([
        api.get("endpoints", "v1/webhooks/endpoints"),
        api.get("deliveries", "v1/webhooks/deliveries"),
      ]);
      renderEndpoints(endpoints.data || []);
      renderDeliveries(deliveries.data || []);
      if (!keepError) hide("[data-webhooks-error]");
    } catch (err) {
      show("[data-webhooks-error]", err);
    }
  }

  async function change(work) {
    try {
      const answer = await work();
      await loadWebhooks();
      return answer;
    } catch (err) {
      show("[data-webhooks-error]", err, true);
      await loadWebhooks(true);
      return null;
    }
  }

  function endpointActions(e) {
    const path = `v1/webhooks/endpoints/${encodeURIComponent(e.id)}`;
    const cell = h("span", { class: "actions" });
    const button = (label, data, fn, cls) => {
      const b = h("button", { type: "button", class: cls, dataset: data, text: label });
      b.addEventListener("click", fn);
      return b;
    };
    cell.append(
      button(e.enabled ? "Disable" : "Enable", { toggle: e.id }, () => change(() => api.send("PATCH", path, { enabled: !e.enabled }))),
      button("Send test", { test: e.id }, () => change(() => api.send("POST", `${path}/test`, {}))),
      button("Rotate secret", { rotateSecret: e.id }, async () => {
        const made = await change(() => api.send("POST", `${path}/rotate-secret`, {}));
        if (made) showWhsec(made.secret, `New secret of ${e.id}; the old one signs too until ${when(made.previousSecretExpiresAt)}. Shown only once.`);
      }),
      button("Remove", { remove: e.id }, () => {
        const yes = button("Yes, remove", { confirmRemove: e.id }, () => change(() => api.send("DELETE", path)), "danger");
        cell.replaceChildren(h("span", { text: "Remove? Pending deliveries are cancelled." }), yes, button("Cancel", {}, () => loadWebhooks()));
      }, "danger"),
    );
    return cell;
  }

  function renderEndpoints(endpoints) {
    const rows = endpoints.map((e) => [
      h("code", { text: e.url }),
      h("code", { text: e.id }),
      h("span", { class: `pill ${e.enabled ? "completed" : "failed"}`, dataset: { endpointState: e.id }, text: e.enabled ? "enabled" : `disabled${e.disabledReason ? ` (${e.disabledReason})` : ""}` }),
      e.eventTypes ? e.eventTypes.join(", ") : "every event",
      endpointActions(e),
    ]);
    $("[data-endpoints-table]").replaceChildren(
      endpoints.length ? table(["URL", "Id", "State", "Events", ""], rows) : h("p", { class: "note", text: "No endpoints yet: add one above." }),
    );
  }

  function renderDeliveries(deliveries) {
    const rows = deliveries.map((d) => {
      const last = d.attempts[d.attempts.length - 1];
      const replay = h("button", { type: "button", dataset: { replay: d.id }, text: "Replay" });
      replay.addEventListener("click", () => change(() => api.send("POST", `v1/webhooks/deliveries/${encodeURIComponent(d.id)}/replay`, {})));
      return [
        when(d.createdAt),
        d.eventType,
        h("code", { text: d.url }),
        h("span", { class: `pill ${d.status}`, dataset: { deliveryStatus: d.id }, text: d.status }),
        String(d.attempts.length),
        last ? String(last.statusCode ?? last.error ?? "–") : "–",
        h("span", { class: "excerpt", title: (last && last.responseBody) || "", dataset: { excerpt: d.id }, text: (last && last.responseBody) || "" }),
        h("span", { class: "actions" }, replay),
      ];
    });
    $("[data-deliveries-table]").replaceChildren(
      deliveries.length ? table(["Created", "Event", "URL", "Status", "Attempts", "Response", "Body", ""], rows) : h("p", { class: "note", text: "No deliveries yet: send a test to an endpoint." }),
    );
  }

  async function addEndpoint(form) {
    const data = new FormData(form);
    const types = String(data.get("types") || "").split(",").map((t) => t.trim()).filter(Boolean);
    const body = { url: String(data.get("url")).trim() };
    if (types.length) body.eventTypes = types;
    const made = await change(() => api.send("POST", "v1/webhooks/endpoints", body));
    if (made) {
      form.reset();
      showWhsec(made.secret, `Signing secret of ${made.id}: copy it now, it is shown only once.`);
    }
  }

  return { loadKeys, loadWebhooks, createKey, addEndpoint };
}

/** Copy the text of `source` to the clipboard; `status` says how it went. */
export async function copyText(source, status) {
  try {
    await navigator.clipboard.writeText(source.textContent);
    if (status) status.textContent = "Copied.";
  } catch {
    // No clipboard permission: select it, so Ctrl+C copies it.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    if (status) status.textContent = "Selected: press Ctrl+C to copy.";
  }
}
