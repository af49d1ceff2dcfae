// tollhouse dashboard: sign-in, the range picker and every panel, from the public API.
import { ApiError, createApi } from "./api.js";
import { empty, failed, gauge, h, loading, rankedRows, readyPanel, round, table, timeSeries } from "./charts.js";
import { createFairUse, fairUseHeadline, signalsTable } from "./fairuse.js";
import { createLimits } from "./limits.js";
import { copyText, createPortal } from "./portal.js";

const KEY_STORAGE = "tollhouse.dashboard.apiKey";
const RANGES = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400 };
const DEFAULT_RANGE = "24h";
const STATUS_EVERY_MS = 3000; // the status bucket allows 2/s: one call every 3 s is far below
const QUEUE_EVERY_MS = 5000;
const RECENT_JOBS = 8;
// The pages of an admin token (the provider's): every other page is one org's own data.
const PROVIDER_TABS = ["limits", "fair-use"];

const $ = (selector) => document.querySelector(selector);
const chart = (name) => document.querySelector(`[data-chart="${name}"]`);
// The API answers where the dashboard is mounted: /dashboard/../ (any root path).
const apiRoot = new URL("../", document.baseURI).href.replace(/\/$/, "");
const tryCommand = (path, extra = "") => `curl -s ${apiRoot}${path} -H "X-API-Key: $TOLLHOUSE_API_KEY"${extra}`;
const SCORE_COMMAND = tryCommand(
  "/v1/score",
  ` -H "X-Tenant-Id: acme" -H "Content-Type: application/json" -d '{"applicationId":"app_1","jobId":"job_1","candidate":{"name":"Ada","resume":"Python and Redis"}}'`,
);

const state = {
  api: null,
  range: DEFAULT_RANGE,
  generation: 0, // bumps on sign-in / sign-out: answers for an older session are dropped
  rangeLoads: 0, // bumps on every range load: answers for an older range are dropped
  timers: new Set(),
  statusPolls: 0,
  limited: new Map(), // source → seconds it is waiting after a 429
  portal: null, // the Keys and Webhooks pages of the signed-in key
  limits: null, // the Limits page
  fairUse: null, // the provider's Fair use page
  provider: false, // signed in with an admin token: the Limits and Fair use pages of every org
  tab: "usage",
};

// ---- session --------------------------------------------------------------------------------

function banner() {
  const el = $("[data-banner]");
  if (state.limited.size === 0) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  const wait = Math.max(...state.limited.values());
  el.hidden = false;
  el.textContent = `Rate limited, retrying in ${Math.ceil(wait)} s…`;
}

function apiFor(key) {
  // One rate-limit callback per source, so concurrent panels report their own waits.
  const clients = new Map();
  const client = (source) => {
    if (!clients.has(source)) {
      const onRateLimited = (wait) => {
        if (wait === null) state.limited.delete(source);
        else state.limited.set(source, wait);
        banner();
      };
      clients.set(source, createApi(key, { onRateLimited }));
    }
    return clients.get(source);
  };
  return {
    get: (source, path, params, options) => client(source).get(path, params, options),
    send: (method, path, body) => client("portal").send(method, path, body),
  };
}

async function signIn(key, { remembered = false } = {}) {
  const error = $("[data-signin-error]");
  error.hidden = true;
  const api = apiFor(key);
  const now = Math.floor(Date.now() / 1000);
  // An admin token is the provider's: the provider API, not an org's data.
  const provider = key.startsWith("adm_");
  try {
    if (provider) await api.get("signin", "v1/admin/orgs", { limit: 1 });
    // Call counts need root or manager: the same check the dashboard's panels need.
    else await api.get("signin", "call-counts/historical/", { start_timestamp: now - 60, end_timestamp: now });
  } catch (err) {
    if (remembered) sessionStorage.removeItem(KEY_STORAGE);
    showSignIn();
    error.hidden = false;
    if (err instanceof ApiError && err.status === 401) {
      error.textContent = `This key was not accepted (${err.message}). Check it, or create one with: tollhouse keys create --org ORG --role manager`;
    } else if (err instanceof ApiError && err.status === 403) {
      error.textContent = `This key cannot read usage: the dashboard needs a root or manager key. (${err.message})`;
    } else {
      error.textContent = `Could not sign in: ${err.message}`;
    }
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  state.api = api;
  state.provider = provider;
  state.portal = provider ? null : createPortal(api, messageFor);
  state.limits = createLimits(api, { provider }, messageFor);
  state.fairUse = provider ? createFairUse(api, messageFor) : null;
  showBoard();
}

function showSignIn() {
  stopAll();
  state.api = null;
  $("[data-signin]").hidden = false;
  $("[data-board]").hidden = true;
  $("[data-tabs]").hidden = true;
  for (const view of document.querySelectorAll("[data-view]")) view.hidden = true;
  for (const box of document.querySelectorAll("[data-new-secret], [data-new-whsec]")) box.hidden = true;
  state.portal = null;
  state.limits = null;
  state.fairUse = null;
  state.provider = false;
  $("[data-signout]").hidden = true;
  $("[data-who]").hidden = true;
  $("#api_key").value = "";
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  for (const el of document.querySelectorAll("[data-chart]")) {
    el.replaceChildren();
    delete el.dataset.state;
  }
  showSignIn();
  $("#api_key").focus();
}

function stopAll() {
  state.generation += 1;
  for (const timer of state.timers) clearTimeout(timer);
  state.timers.clear();
  state.limited.clear();
  banner();
}

function later(fn, ms) {
  const timer = setTimeout(() => {
    state.timers.delete(timer);
    fn();
  }, ms);
  state.timers.add(timer);
}

function showBoard() {
  $("[data-signin]").hidden = true;
  $("[data-tabs]").hidden = false;
  $("[data-signout]").hidden = false;
  // The provider sees its own pages only; an org sees its fair use on the Usage board.
  for (const button of document.querySelectorAll("[data-tab]")) {
    const providers = PROVIDER_TABS.includes(button.dataset.tab);
    button.hidden = state.provider ? !providers : button.dataset.tab === "fair-use";
  }
  selectTab(state.provider ? "limits" : "usage");
}

// ---- pages: usage (the board), keys, webhooks -------------------------------------------

function selectTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  }
  $("[data-board]").hidden = tab !== "usage";
  for (const view of document.querySelectorAll("[data-view]")) view.hidden = view.dataset.view !== tab;
  stopAll();
  if (tab === "usage") {
    selectRange(state.range);
    pollStatus(state.generation);
    pollQueue(state.generation);
  } else if (tab === "keys") {
    state.portal.loadKeys();
  } else if (tab === "limits") {
    state.limits.load();
  } else if (tab === "fair-use") {
    state.fairUse.load();
  } else {
    state.portal.loadWebhooks();
  }
}

// ---- range ----------------------------------------------------------------------------------

function rangeFromHash() {
  const match = /range=(\w+)/.exec(window.location.hash);
  return match && RANGES[match[1]] ? match[1] : DEFAULT_RANGE;
}

function selectRange(range) {
  state.range = range;
  history.replaceState(null, "", `#range=${range}`);
  for (const button of document.querySelectorAll("[data-range]")) {
    button.setAttribute("aria-pressed", String(button.dataset.range === range));
  }
  const end = Math.floor(Date.now() / 1000);
  const start = end - RANGES[range];
  const fmt = (s) => new Date(s * 1000).toLocaleString("en", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  const label = $("[data-range-label]");
  label.textContent = `${fmt(start)} – ${fmt(end)}`;
  label.dataset.range = range;
  label.dataset.start = String(start);
  label.dataset.end = String(end);
  loadRange(range, start, end);
}

function loadRange(range, start, end) {
  const generation = state.generation;
  const load = ++state.rangeLoads;
  const current = () => generation === state.generation && load === state.rangeLoads;
  const guard = (name, work) => {
    const el = chart(name);
    loading(el);
    return work(el).catch((err) => {
      if (current()) failed(el, messageFor(err));
    });
  };
  const timeStart = new Date(start * 1000).toISOString();
  const timeEnd = new Date(end * 1000).toISOString();
  const stamps = { start_timestamp: start, end_timestamp: end };

  const endpoints = state.api.get("endpoints", "call-counts/historical/ENDPOINTS/", { ...stamps, amt: 128 });
  guard("calls-by-group", async (el) => renderCalls(el, await endpoints, current, [start, end]));
  guard("top-endpoints", async (el) => renderTopEndpoints(el, await endpoints, current));
  guard("top-accounts", async (el) => {
    const body = await state.api.get("accounts", "call-counts/historical/ACCOUNTS/", { ...stamps, amt: 128 });
    if (current()) renderTopAccounts(el, body);
  });
  guard("status-classes", async (el) => {
    const body = await metric("api_calls_by_status_class", timeStart, timeEnd);
    if (current()) renderStatusClasses(el, body);
  });
  guard("latency", async (el) => {
    const body = await metric("api_latency_percentiles", timeStart, timeEnd);
    if (current()) renderLatency(el, body);
  });
  guard("scoring-volume", async (el) => {
    const body = await state.api.get("scoring", "v1/analytics/scoring-volume", { timeRange: range });
    if (current()) renderScoring(el, body);
  });
  guard("fair-use", async (el) => {
    let body;
    try {
      body = await state.api.get("fair-use", "v1/analytics/fair-use", { timeRange: range });
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        throw new Error("This server has no fair-use signals (GET /v1/analytics/fair-use); upgrade tollhouse to see this panel.");
      }
      throw err;
    }
    if (current()) renderFairUse(el, body);
  });
}

async function metric(name, timeStart, timeEnd) {
  try {
    return await state.api.get(name, `v1/analytics/${name}`, { time_start: timeStart, time_end: timeEnd });
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      throw new Error(`This server has no "${name}" analytics metric (GET /v1/analytics/${name}); upgrade tollhouse to see this panel.`);
    }
    throw err;
  }
}

/**
 * The text to show for a failed call (a 401 signs out first). `change`: the call was a
 * change (create, rotate, revoke…), whose refusal reads in the server's words alone — the
 * panel wording below is for reads.
 */
function messageFor(err, { change = false } = {}) {
  if (err instanceof ApiError) {
    if (err.status === 401) {
      signOut();
      const error = $("[data-signin-error]");
      error.hidden = false;
      error.textContent = `Signed out: the key is no longer accepted (${err.message}).`;
      return err.message;
    }
    if (change) return err.message;
    if (err.status === 403) return `This key's role cannot read this panel (${err.message}).`;
    if (err.status === 429) return "Rate limited; this panel will refresh with the next range change.";
    return `${err.status}: ${err.message}`;
  }
  return err.message || String(err);
}

// ---- panels over the range ------------------------------------------------------------------

function seriesTotal(series) {
  return series.counts.reduce((a, b) => a + (b || 0), 0);
}

function renderCalls(el, body, current, xRange) {
  if (!current()) return;
  const series = (body.series || []).filter((s) => seriesTotal(s) > 0);
  if (!series.length || !body.timestamps.length) {
    empty(el, "No calls in this range yet — make one and it shows up here within seconds:", tryCommand("/v1/rate-limit/status"));
    return;
  }
  timeSeries(el, body.timestamps, series.map((s) => ({ label: s.key, values: s.counts })), { yLabel: "calls", xRange });
}

function renderTopEndpoints(el, body, current) {
  if (!current()) return;
  const rows = (body.series || []).map((s) => ({ key: s.key, label: s.key, sublabel: s.description, value: seriesTotal(s) })).filter((r) => r.value > 0);
  if (!rows.length) {
    empty(el, "No calls in this range yet — try:", tryCommand("/v1/rate-limit/status"));
    return;
  }
  rankedRows(el, rows);
}

function renderTopAccounts(el, body) {
  const rows = (body.series || []).map((s) => ({ key: s.key, label: s.description || s.key, sublabel: s.key, value: seriesTotal(s) })).filter((r) => r.value > 0);
  if (!rows.length) {
    empty(el, "No key has made calls in this range yet — try:", tryCommand("/v1/rate-limit/status"));
    return;
  }
  rankedRows(el, rows);
}

/** An analytics barchart (docs/api-shapes.md) → {x: seconds[], keys: [...], values: {key: number[]}}. */
function bars(body) {
  const items = body && body.type === "barchart" ? body.value.values : [];
  const x = items.map((item) => Date.parse(item.name.length === 10 ? `${item.name}T00:00:00Z` : item.name) / 1000);
  const keys = [];
  for (const item of items) for (const k of Object.keys(item.values)) if (!keys.includes(k)) keys.push(k);
  const values = Object.fromEntries(keys.map((k) => [k, items.map((item) => item.values[k] ?? null)]));
  return { x, keys, values };
}

function hasData(values, keys) {
  return keys.some((k) => values[k].some((v) => v));
}

function renderStatusClasses(el, body) {
  const { x, keys, values } = bars(body);
  // "unknown": forward-auth calls whose access-log line never came (status 0).
  const classes = keys.filter((k) => /^([1-5]xx|unknown)$/i.test(k));
  const headline = $('[data-headline="error-rate"]');
  headline.textContent = "";
  if (!classes.length || !hasData(values, classes)) {
    empty(el, "No API calls in this range yet — try:", tryCommand("/v1/rate-limit/status"));
    return;
  }
  // Error rate: the share of 5xx answers (server errors) among the calls whose status is
  // known; 4xx (the caller's errors, 429s included) are shown as their own class and
  // share, and unknown calls as their share of all calls.
  const sumAt = (test, i) => classes.filter((k) => test.test(k)).reduce((a, k) => a + (values[k][i] || 0), 0);
  const totals = x.map((_, i) => sumAt(/xx$/i, i));
  const errors = x.map((_, i) => sumAt(/^5/, i));
  const rate = totals.map((t, i) => (t ? (100 * errors[i]) / t : null));
  const known = totals.reduce((a, b) => a + b, 0);
  const unknown = x.reduce((a, _, i) => a + sumAt(/^unknown$/i, i), 0);
  const serverErrors = errors.reduce((a, b) => a + b, 0);
  const clientErrors = x.reduce((a, _, i) => a + sumAt(/^4/, i), 0);
  const share = (n, of) => (of ? round((100 * n) / of) : 0);
  headline.textContent =
    `${share(serverErrors, known)}% errors (5xx) · ${share(clientErrors, known)}% 4xx` +
    (unknown ? ` · ${share(unknown, known + unknown)}% status unknown` : "");
  headline.dataset.value = String(known ? (100 * serverErrors) / known : 0);
  const colors = { "1xx": "#6b7280", "2xx": "#16a34a", "3xx": "#0891b2", "4xx": "#d97706", "5xx": "#dc2626", unknown: "#9ca3af" };
  timeSeries(
    el,
    x,
    [
      ...classes.map((k) => ({ label: k, values: values[k], color: colors[k.toLowerCase()], bars: true })),
      { label: "error rate (5xx)", values: rate, scale: "pct", color: "#7c3aed", dash: [4, 4] },
    ],
    { yLabel: "calls", pctLabel: "errors" },
  );
}

function renderLatency(el, body) {
  const { x, keys, values } = bars(body);
  const wanted = keys.filter((k) => /^p\d+/i.test(k));
  if (!wanted.length || !hasData(values, wanted)) {
    empty(el, "No timed API calls in this range yet — try:", tryCommand("/v1/rate-limit/status"));
    return;
  }
  timeSeries(el, x, wanted.map((k) => ({ label: k, values: values[k] })), { yLabel: "ms", unit: " ms" });
}

function renderScoring(el, body) {
  const data = body.data || [];
  const x = data.map((d) => Date.parse(d.timestamp) / 1000);
  const completed = data.map((d) => d.completed);
  const failedJobs = data.map((d) => d.failed);
  const sum = (a) => a.reduce((s, v) => s + v, 0);
  const headline = $('[data-headline="scoring"]');
  headline.textContent = "";
  if (!data.some((d) => d.total)) {
    empty(el, "No scoring jobs in this range yet — submit one:", SCORE_COMMAND);
    return;
  }
  headline.textContent = `${round(sum(completed))} completed · ${round(sum(failedJobs))} failed`;
  timeSeries(
    el,
    x,
    [
      { label: "completed", values: completed, color: "#16a34a", bars: true },
      { label: "failed", values: failedJobs, color: "#dc2626", bars: true },
    ],
    { yLabel: "jobs" },
  );
}

/** The org's fair-use signals (docs/analytics.md#fair-use): one row each, ok / watch / flagged. */
function renderFairUse(el, body) {
  const signals = body.signals || [];
  const headline = $('[data-headline="fair-use"]');
  headline.textContent = "";
  if (!signals.length) {
    empty(el, "This server's policy watches no fair-use signals ([[fair_use]] tables, docs/policy.md).");
    return;
  }
  const { flagged, text } = fairUseHeadline(signals);
  headline.textContent = text;
  headline.dataset.flagged = String(flagged);
  readyPanel(el).append(...signalsTable(signals));
}

// ---- live: rate limits ----------------------------------------------------------------------

async function pollStatus(generation) {
  if (generation !== state.generation) return;
  let wait = STATUS_EVERY_MS;
  const el = chart("rate-limits");
  loading(el);
  try {
    const body = await state.api.get("status", "v1/rate-limit/status", {}, { retries: 0 });
    if (generation !== state.generation) return;
    renderStatus(el, body);
  } catch (err) {
    if (generation !== state.generation) return;
    if (err instanceof ApiError && err.status === 429) {
      wait = Math.max(wait, (err.retryAfter || 1) * 1000);
      state.limited.set("status", wait / 1000);
      banner();
    } else {
      failed(el, messageFor(err));
    }
  }
  later(() => pollStatus(generation), wait);
}

function renderStatus(el, body) {
  state.statusPolls += 1;
  const who = $("[data-who]");
  who.hidden = false;
  who.textContent = `org ${body.partnerId} · ${body.environment}`;
  const degraded = $("[data-degraded]");
  degraded.textContent = body.degraded ? "degraded: limits enforced per instance" : "healthy";
  degraded.className = `badge ${body.degraded ? "bad" : "good"}`;
  degraded.dataset.degraded = String(Boolean(body.degraded));

  const names = Object.fromEntries((body.categories || []).map((c) => [c.category, c.displayName]));
  const buckets = h("ul", { class: "gauges" });
  for (const [name, b] of Object.entries(body.buckets || {})) {
    const used = b.limit - b.remaining;
    const caption = `${round(b.remaining)} / ${round(b.limit)} left · resets in ${b.resetInSeconds}s`;
    buckets.append(gauge(names[name] || name, used, b.limit, caption, { dataset: { bucket: name, remaining: b.remaining, limit: b.limit } }));
  }
  const pools = h("ul", { class: "gauges" });
  for (const [name, p] of Object.entries(body)) {
    if (!p || typeof p !== "object" || Array.isArray(p) || !("active" in p) || !("limit" in p)) continue;
    const caption = `${round(p.active)} / ${round(p.limit)} in flight${p.retryAfterSeconds ? ` · retry in ${p.retryAfterSeconds}s` : ""}`;
    pools.append(gauge(name, p.active, p.limit, caption, { dataset: { pool: name, active: p.active, limit: p.limit } }));
  }
  const stamp = new Date(body.generatedAt || Date.now()).toLocaleTimeString("en");
  readyPanel(el).append(
    h("h3", { text: "Buckets" }),
    buckets.children.length ? buckets : h("p", { class: "note", text: "This policy defines no buckets." }),
    h("h3", { text: "In-flight pools" }),
    pools.children.length ? pools : h("p", { class: "note", text: "This policy defines no in-flight pools." }),
    h("p", { class: "note", dataset: { updated: state.statusPolls }, text: `Updated ${stamp}; refreshes every ${STATUS_EVERY_MS / 1000} s.` }),
  );
}

// ---- live: queue and recent jobs ------------------------------------------------------------

async function pollQueue(generation) {
  if (generation !== state.generation) return;
  const el = chart("queue");
  loading(el);
  try {
    const body = await state.api.get("queue", "v1/queue", { limit: RECENT_JOBS });
    const jobs = body.data || [];
    const deliveries = await Promise.all(
      jobs.map((job) =>
        state.api
          .get("deliveries", "v1/webhooks/deliveries", { jobId: job.scoringJobId })
          .then((d) => d.data || [])
          .catch(() => null),
      ),
    );
    if (generation !== state.generation) return;
    renderQueue(el, body, jobs, deliveries);
  } catch (err) {
    if (generation !== state.generation) return;
    if (err instanceof ApiError && err.status === 404) {
      failed(el, "This server has no queue endpoint (GET /v1/queue); upgrade tollhouse to see this panel.");
      return; // nothing to poll
    }
    failed(el, messageFor(err));
  }
  later(() => pollQueue(generation), QUEUE_EVERY_MS);
}

function stat(label, value, key) {
  return h("div", { class: "stat", dataset: { stat: key } }, h("span", { class: "stat-value", text: value }), h("span", { class: "stat-label", text: label }));
}

function seconds(value) {
  return value === null || value === undefined ? "–" : `${round(Math.round(value * 10) / 10)} s`;
}

function attemptsText(list) {
  if (list === null) return "–";
  if (!list.length) return "no webhook";
  return list
    .map((d) => {
      const attempts = d.attempts || [];
      const last = attempts[attempts.length - 1];
      const code = last ? (last.statusCode ?? last.error ?? "") : "";
      return `${d.status} · ${attempts.length} attempt${attempts.length === 1 ? "" : "s"}${code !== "" ? ` · ${code}` : ""}`;
    })
    .join("; ");
}

function renderQueue(el, body, jobs, deliveries) {
  const q = body.queue || {};
  const depth = h(
    "div",
    { class: "stats" },
    stat("queued", round(q.queued ?? 0), "queued"),
    stat("running", `${round(q.running ?? 0)} / ${round(q.cap ?? 0)}`, "running"),
    stat("mean processing", seconds(q.meanProcessingSeconds), "mean"),
    stat("wait if submitted now", seconds(q.estimatedWaitSeconds), "wait"),
  );
  const panel = readyPanel(el);
  panel.append(depth);
  if (!jobs.length) {
    el.dataset.state = "empty";
    panel.append(h("div", { class: "empty" }, h("p", { text: "No scoring jobs yet — submit one and watch it run:" }), h("pre", {}, h("code", { text: SCORE_COMMAND }))));
    return;
  }
  const fmt = (iso) => (iso ? new Date(iso).toLocaleTimeString("en") : "–");
  const rows = jobs.map((job, i) => [
    h("code", { text: job.scoringJobId }),
    h("span", { class: `pill ${job.status}`, text: job.status }),
    fmt(job.createdAt),
    fmt(job.completedAt),
    h("span", { dataset: { webhook: job.scoringJobId }, text: attemptsText(deliveries[i]) }),
  ]);
  panel.append(table(["Job", "Status", "Created", "Finished", "Webhook attempts"], rows));
}

// ---- start ----------------------------------------------------------------------------------

function start() {
  state.range = rangeFromHash();
  $("[data-signin-form]").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#api_key").value.trim();
    if (key) signIn(key);
  });
  $("[data-signout]").addEventListener("click", signOut);
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  $("[data-key-form]").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.portal) state.portal.createKey(event.target);
  });
  $("[data-org-form]").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.limits) state.limits.choose(event.target);
  });
  $("[data-fairuse-form]").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.fairUse) state.fairUse.choose(event.target);
  });
  $("[data-endpoint-form]").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.portal) state.portal.addEndpoint(event.target);
  });
  $("[data-copy]").addEventListener("click", () => copyText($("[data-secret]"), $("[data-copied]")));
  $("[data-copy-whsec]").addEventListener("click", () => copyText($("[data-whsec]")));
  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => selectRange(button.dataset.range));
  }
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) signIn(saved, { remembered: true });
  else showSignIn();
}

start();
