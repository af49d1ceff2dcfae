// The pure parts (retry decisions, throttle, base-URL rotation, error shapes, response
// checks) and the send loop against a scripted HTTP server on loopback.
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";
import {
  APIError,
  AuthenticationError,
  BaseURLs,
  COOL_DOWN_SECONDS,
  ConfigurationError,
  DEFAULT_RETRY,
  NotFoundError,
  RateLimitError,
  ServerError,
  Throttle,
  Tollhouse,
  TransportError,
  UnexpectedResponseError,
  ValidationError,
  apiError,
  backoff,
  checkShape,
  chooseBaseURL,
  decide,
  otherAvailable,
  parseRetryAfter,
} from "@tollhouse/sdk";
import { freePort } from "./support.mjs";

const fixed = () => 0.5;
const base = { policy: DEFAULT_RETRY, random: fixed, now: 1_000, idempotent: true };

describe("decide", () => {
  test("429 waits Retry-After plus jitter, then at least the backoff", () => {
    const first = decide({ ...base, retry: 0, status: 429, headers: { "retry-after": "2" } });
    assert.deepEqual([first.retry, first.delay], [true, 2 + 0.5 * DEFAULT_RETRY.retryAfterJitter]);
    const later = decide({ ...base, retry: 4, status: 429, headers: { "retry-after": "1" } });
    assert.ok(later.delay >= backoff(4, DEFAULT_RETRY, fixed));
  });
  test("429 with a Retry-After beyond maxRetryAfter is not waited out", () => {
    assert.equal(decide({ ...base, retry: 0, status: 429, headers: { "retry-after": "600" } }).retry, false);
  });
  test("503 always, 502/504 only when idempotent, 500 and 4xx never", () => {
    assert.equal(decide({ ...base, idempotent: false, retry: 0, status: 503 }).retry, true);
    assert.equal(decide({ ...base, idempotent: false, retry: 0, status: 502 }).retry, false);
    assert.equal(decide({ ...base, retry: 0, status: 504 }).retry, true);
    assert.equal(decide({ ...base, retry: 0, status: 500 }).retry, false);
    assert.equal(decide({ ...base, retry: 0, status: 404 }).retry, false);
  });
  test("connection failures: not sent always, maybe sent only when idempotent; bounded", () => {
    assert.equal(decide({ ...base, idempotent: false, retry: 0, failure: "not_sent" }).retry, true);
    assert.equal(decide({ ...base, idempotent: false, retry: 0, failure: "maybe_sent" }).retry, false);
    assert.equal(decide({ ...base, retry: DEFAULT_RETRY.maxRetries, failure: "not_sent" }).retry, false);
  });
  test("backoff grows exponentially within [c/2, c], capped", () => {
    const lows = [0, 1, 2, 3].map((r) => backoff(r, DEFAULT_RETRY, () => 0));
    assert.deepEqual(lows, [0.25, 0.5, 1, 2]);
    assert.equal(backoff(30, DEFAULT_RETRY, () => 0.999999) <= DEFAULT_RETRY.backoffMax, true);
  });
  test("Retry-After: seconds, an HTTP-date, nonsense", () => {
    assert.equal(parseRetryAfter("7", 0), 7);
    assert.equal(parseRetryAfter("Thu, 01 Jan 1970 00:00:10 GMT", 4), 6);
    assert.equal(parseRetryAfter("-1", 0), undefined);
    assert.equal(parseRetryAfter("soon", 0), undefined);
  });
});

describe("Throttle", () => {
  const headers = (remaining, reset) => ({
    "x-ratelimit-limit": "2",
    "x-ratelimit-remaining": String(remaining),
    "x-ratelimit-reset": String(reset),
    ratelimit: `"rate_limit_status";r=${remaining};t=1`,
    "ratelimit-policy": `"rate_limit_status";q=2;w=1`,
  });
  test("the first request probes, the others wait for its answer", () => {
    const t = new Throttle();
    assert.equal(t.acquire("GET /x", 100), 0);
    assert.ok(t.acquire("GET /x", 100) > 0);
    t.observe("GET /x", 200, headers(1, 101), 100);
    assert.equal(t.acquire("GET /x", 100), 0);
    assert.ok(t.acquire("GET /x", 100.1) > 0, "window used up: wait for the reset");
    assert.equal(t.acquire("GET /x", 101.01), 0, "a fresh window after the reset");
  });
  test("routes sharing a bucket see each other's use", () => {
    // Submissions and status reads both count against "scoring".
    const answer = (left, other) => ({
      "x-ratelimit-limit": "3",
      "x-ratelimit-remaining": String(left),
      "x-ratelimit-reset": "160",
      "ratelimit-policy": `"scoring";q=3;w=60, "${other}";q=50;w=1`,
      ratelimit: `"scoring";r=${left};t=60, "${other}";r=40;t=1`,
    });
    const t = new Throttle();
    t.observe("POST /v1/score/batch", 202, answer(2, "intake"), 100);
    t.observe("GET /v1/score", 200, answer(1, "reads"), 100.1);
    assert.equal(t.acquire("GET /v1/score", 100.2), 0, "the last one");
    const wait = t.acquire("POST /v1/score/batch", 100.2);
    assert.ok(wait > 59 && wait <= 60, `"scoring" is used up, whichever route used it (${wait})`);
  });
  test("a rollover counts the requests still in flight in the new window too", () => {
    // Limit 2 per 1 s; the window ends at 101.
    const t = new Throttle();
    t.observe("GET /x", 200, headers(2, 101), 100.5);
    assert.equal(t.acquire("GET /x", 100.99), 0);
    assert.equal(t.acquire("GET /x", 100.99), 0, "two out at the boundary");
    assert.ok(t.acquire("GET /x", 101.01) > 0, "limit 2 - 2 in flight: none may go");
    t.observe("GET /x", 200, headers(0, 101), 101.02);
    assert.ok(t.acquire("GET /x", 101.03) > 0, "an answer from the earlier window is no news");
    t.observe("GET /x", 200, headers(1, 102), 101.04);
    assert.ok(t.acquire("GET /x", 101.05) > 0, "counted in both: the lower count stands");
    assert.equal(t.acquire("GET /x", 102.01), 0, "nothing out: the next window is whole");
    assert.equal(t.acquire("GET /x", 102.01), 0);
    assert.ok(t.acquire("GET /x", 102.01) > 0);
  });
  test("a new window learned from an answer counts the others in flight", () => {
    const t = new Throttle();
    t.observe("GET /x", 200, headers(2, 101), 100.5);
    assert.equal(t.acquire("GET /x", 100.99), 0);
    assert.equal(t.acquire("GET /x", 100.99), 0);
    t.observe("GET /x", 200, headers(1, 102), 101.01);
    assert.ok(t.acquire("GET /x", 101.02) > 0, "one left, one still out");
  });
  test("a slow first answer keeps the others waiting, up to the timeout", () => {
    const t = new Throttle(30);
    assert.equal(t.acquire("GET /x", 100), 0);
    assert.ok(t.acquire("GET /x", 102.5) > 0, "past 2 s, within the timeout");
    assert.ok(t.acquire("GET /x", 129.9) > 0);
    t.observe("GET /x", 200, headers(1, 130), 129.95);
    assert.equal(t.acquire("GET /x", 129.96), 0, "the answer came: the one left");
    const d = new Throttle();
    d.acquire("GET /x", 100);
    assert.ok(d.acquire("GET /x", 102.5) > 0, "the default outlasts 2 s too");
    const short = new Throttle(5);
    assert.equal(short.acquire("GET /x", 100), 0);
    assert.equal(short.acquire("GET /x", 105), 0, "no word within the timeout: go");
  });
  test("a failed request frees its in-flight count", () => {
    const t = new Throttle();
    t.observe("GET /x", 200, headers(2, 101), 100.5);
    assert.equal(t.acquire("GET /x", 100.99), 0);
    assert.equal(t.acquire("GET /x", 100.99), 0);
    t.failed("GET /x");
    assert.equal(t.acquire("GET /x", 101.01), 0, "limit 2 - 1 in flight");
    assert.ok(t.acquire("GET /x", 101.01) > 0);
    for (let i = 0; i < 3; i += 1) t.failed("GET /x"); // more than were out: not below zero
    assert.equal(t.acquire("GET /x", 102.01), 0);
    assert.equal(t.acquire("GET /x", 102.01), 0);
    assert.ok(t.acquire("GET /x", 102.01) > 0);
  });
  test("a route without rate-limit headers is never held", () => {
    const t = new Throttle();
    t.acquire("GET /q", 5);
    t.observe("GET /q", 200, {}, 5);
    assert.equal(t.acquire("GET /q", 5), 0);
    assert.equal(t.acquire("GET /q", 5), 0);
  });
});

test("chooseBaseURL: round robin, passing over instances cooling down (pure)", () => {
  assert.equal(chooseBaseURL(0, [0, 0, 0], 10), 0);
  assert.equal(chooseBaseURL(2, [0, 0, 0], 10), 2);
  assert.equal(chooseBaseURL(0, [15, 0, 0], 10), 1);
  assert.equal(chooseBaseURL(2, [0, 0, 15], 10), 0, "wraps round");
  assert.equal(chooseBaseURL(0, [15, 0, 0], 15), 0, "its cool-down is over");
  assert.equal(chooseBaseURL(0, [14, 12, 13], 10), 1, "all cooling: the one back first");
  assert.equal(otherAvailable(0, [0, 15], 10), false);
  assert.equal(otherAvailable(1, [0, 15], 10), true);
});

test("BaseURLs: round robin, cool-down, an answer ends it", () => {
  const urls = new BaseURLs(["a", "b", "c"]);
  assert.deepEqual([urls.pick(0), urls.pick(0), urls.pick(0), urls.pick(0)], [0, 1, 2, 0]);
  urls.failed(1, 0);
  assert.deepEqual([urls.pick(1), urls.pick(1), urls.pick(1)], [2, 0, 2]);
  assert.deepEqual(urls.cooling(1), ["b"]);
  assert.equal(urls.otherAvailable(0, 1), true);
  urls.failed(0, 1);
  urls.failed(2, 2);
  assert.equal(urls.pick(3), 1, "all cooling down: the one back first");
  assert.equal(urls.pick(COOL_DOWN_SECONDS), 1, "b is back");
  urls.answered(0);
  assert.deepEqual(urls.cooling(COOL_DOWN_SECONDS), ["c"]);
});

describe("apiError: both error shapes", () => {
  test("the envelope", () => {
    const e = apiError(
      429,
      { "x-request-id": "req_h", "retry-after": "3" },
      JSON.stringify({ error: { type: "t", code: "RATE_LIMITED", status: 429, message: "slow down", requestId: "req_b" } }),
    );
    assert.ok(e instanceof RateLimitError && e instanceof APIError);
    assert.deepEqual([e.status, e.code, e.detail, e.requestId, e.type, e.retryAfter], [429, "RATE_LIMITED", "slow down", "req_b", "t", 3]);
  });
  test('{"detail": "…"} and the 422 detail list', () => {
    const a = apiError(404, { "x-request-id": "req_1" }, '{"detail": "Unknown metric \'x\'"}');
    assert.ok(a instanceof NotFoundError);
    assert.deepEqual([a.code, a.detail, a.requestId], ["NOT_FOUND", "Unknown metric 'x'", "req_1"]);
    const b = apiError(422, {}, JSON.stringify({ detail: [{ loc: ["query", "page_size"], msg: "too big", type: "x" }] }));
    assert.ok(b instanceof ValidationError);
    assert.equal(b.detail, "page_size: too big");
  });
  test("a body that is not JSON, and 5xx", () => {
    const e = apiError(502, {}, "<html>bad gateway</html>");
    assert.ok(e instanceof ServerError);
    assert.deepEqual([e.code, e.detail], ["UPSTREAM_UNAVAILABLE", "<html>bad gateway</html>"]);
  });
});

test("checkShape names the JSON path", () => {
  const schema = { $ref: "#/components/schemas/BatchAccepted" };
  const good = { results: [{ index: 0, scoringJobId: "sj", status: "queued", queuePosition: 1, estimatedWaitSeconds: 0 }], accepted: 1, rejected: 0 };
  checkShape(good, schema, "POST /v1/score/batch");
  const bad = structuredClone(good);
  bad.results[0].queuePosition = "first";
  assert.throws(() => checkShape(bad, schema, "POST /v1/score/batch"), (e) => {
    assert.ok(e instanceof UnexpectedResponseError);
    assert.equal(e.path, "results[0].queuePosition");
    assert.match(e.message, /results\[0\]\.queuePosition: expected an integer, got a string/);
    return true;
  });
  assert.throws(() => checkShape({ results: [] }, schema, "x"), (e) => e.path === "accepted" && /missing/.test(e.message));
});

test("no API key: a clear error before any request", () => {
  const saved = process.env.TOLLHOUSE_API_KEY;
  delete process.env.TOLLHOUSE_API_KEY;
  let fetched = 0;
  try {
    assert.throws(
      () => new Tollhouse({ baseURL: "http://127.0.0.1:9", fetch: () => fetched++ }),
      (e) => e instanceof ConfigurationError && /TOLLHOUSE_API_KEY/.test(e.message),
    );
  } finally {
    if (saved !== undefined) process.env.TOLLHOUSE_API_KEY = saved;
  }
  assert.equal(fetched, 0);
  assert.throws(() => new Tollhouse({ apiKey: "k", baseURL: "ftp://x" }), ConfigurationError);
  assert.throws(() => new Tollhouse({ apiKey: "k", maxConcurrent: 0 }), ConfigurationError);
});

/** An HTTP server on a free loopback port running `handler`; its URL and a `close()`. */
async function serve(handler) {
  const server = createServer(handler);
  const port = await freePort();
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(r);
      }),
  };
}

const healthy = (res) => {
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ status: "ok" }));
};

test("the API key from TOLLHOUSE_API_KEY when none is passed", async () => {
  const keys = [];
  const server = await serve((req, res) => {
    keys.push(req.headers.authorization);
    healthy(res);
  });
  const saved = process.env.TOLLHOUSE_API_KEY;
  process.env.TOLLHOUSE_API_KEY = "sk_test_from_env";
  try {
    const fromEnv = new Tollhouse({ baseURL: server.url });
    assert.equal(fromEnv.core.apiKey, "sk_test_from_env");
    assert.equal((await fromEnv.health()).status, "ok");
    await new Tollhouse({ apiKey: "sk_test_passed", baseURL: server.url }).health();
  } finally {
    if (saved === undefined) delete process.env.TOLLHOUSE_API_KEY;
    else process.env.TOLLHOUSE_API_KEY = saved;
    await server.close();
  }
  assert.deepEqual(keys, ["Bearer sk_test_from_env", "Bearer sk_test_passed"], "a key passed wins over the variable");
});

test("maxRetries must be an integer of at least 0, timeoutMs a positive number of ms", () => {
  for (const maxRetries of [1.5, -1, "3", Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.throws(
      () => new Tollhouse({ apiKey: "k", maxRetries }),
      (e) => e instanceof ConfigurationError && /^maxRetries must be an integer of at least 0/.test(e.message),
      `maxRetries ${String(maxRetries)}`,
    );
  }
  assert.throws(() => new Tollhouse({ apiKey: "k", retry: { maxRetries: 2.5 } }), /maxRetries.*not 2\.5/);
  for (const timeoutMs of [-5, 0, "x", "100", Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31]) {
    assert.throws(
      () => new Tollhouse({ apiKey: "k", timeoutMs }),
      (e) => e instanceof ConfigurationError && /^timeoutMs must be a number of milliseconds above 0/.test(e.message),
      `timeoutMs ${String(timeoutMs)}`,
    );
  }
  assert.throws(() => new Tollhouse({ apiKey: "k", timeoutMs: "x" }), /not "x"$/);
  for (const maxConcurrent of [0, 2.5, "4"]) assert.throws(() => new Tollhouse({ apiKey: "k", maxConcurrent }), ConfigurationError);
  const ok = new Tollhouse({ apiKey: "k", maxRetries: 0, timeoutMs: 0.5 });
  assert.deepEqual([ok.core.retry.maxRetries, ok.core.timeoutMs], [0, 0.5]);
  assert.equal(new Tollhouse({ apiKey: "k", timeoutMs: 2 ** 31 - 1 }).core.timeoutMs, 2 ** 31 - 1);
  const defaults = new Tollhouse({ apiKey: "k", maxRetries: null, timeoutMs: null });
  assert.deepEqual([defaults.core.retry.maxRetries, defaults.core.timeoutMs], [5, 30_000], "null is the default");
});

test("a server that never answers: TransportError once timeoutMs has passed", async () => {
  const arrived = [];
  const server = await serve((req) => arrived.push(`${req.method} ${req.url}`)); // never answers
  try {
    const c = new Tollhouse({ apiKey: "k", baseURL: server.url, timeoutMs: 200, maxRetries: 1, retry: { backoffBase: 0.01, backoffMax: 0.02 } });
    await assert.rejects(c.health(), (e) => {
      assert.ok(e instanceof TransportError, String(e));
      assert.match(e.message, /^GET http:\/\/127\.0\.0\.1:\d+\/healthz failed after 2 attempts: no answer within 200 ms$/);
      assert.equal(e.attempts, 2);
      return true;
    });
    assert.deepEqual(arrived, ["GET /healthz", "GET /healthz"], "the timed-out read was sent again once");
  } finally {
    await server.close();
  }
});

test("maxConcurrent caps the requests in flight", async () => {
  let inFlight = 0;
  let peak = 0;
  let watched;
  const listening = [];
  const server = await serve((req, res) => {
    if (watched) listening.push(getEventListeners(watched, "abort").length);
    inFlight += 1;
    peak = Math.max(peak, inFlight);
    // Slow: the answers come after the other calls have had time to pile up.
    setTimeout(() => {
      inFlight -= 1;
      healthy(res);
    }, 50);
  });
  try {
    const c = new Tollhouse({ apiKey: "k", baseURL: server.url, maxConcurrent: 3 });
    const answers = await Promise.all(Array.from({ length: 12 }, () => c.health()));
    assert.equal(answers.length, 12);
    assert.equal(peak, 3, "never more than maxConcurrent at once, and that many when there is more to send");
    // Calls sharing one AbortSignal (sending, or waiting for a slot) put one listener on it.
    const shared = new AbortController();
    watched = shared.signal;
    await Promise.all(Array.from({ length: 12 }, () => c.health({ signal: shared.signal })));
    assert.equal(listening.length, 12);
    assert.deepEqual(new Set(listening), new Set([1]));
    assert.equal(getEventListeners(shared.signal, "abort").length, 0, "none left once the calls ended");
    watched = undefined;
    peak = 0;
    const one = new Tollhouse({ apiKey: "k", baseURL: server.url, maxConcurrent: 1 });
    await Promise.all(Array.from({ length: 4 }, () => one.health()));
    assert.equal(peak, 1);
  } finally {
    await server.close();
  }
});

describe("the send loop against a scripted server", () => {
  let server;
  let url;
  const script = [];
  const seen = [];
  before(async () => {
    server = createServer((req, res) => {
      seen.push({ method: req.method, url: req.url, key: req.headers["idempotency-key"], tenant: req.headers["x-tenant-id"] });
      const next = script.shift() ?? { status: 200, body: { status: "ok" } };
      res.writeHead(next.status, { "content-type": "application/json", "x-request-id": "req_s", ...(next.headers ?? {}) });
      res.end(typeof next.body === "string" ? next.body : JSON.stringify(next.body));
    });
    const port = await freePort();
    await new Promise((r) => server.listen(port, "127.0.0.1", r));
    url = `http://127.0.0.1:${port}`;
  });
  after(() => new Promise((r) => server.close(r)));

  const client = (extra = {}) =>
    new Tollhouse({ apiKey: "sk_test_x", baseURL: url, tenantId: "acme", retry: { backoffBase: 0.01, backoffMax: 0.02 }, ...extra });

  test("503 then 429 then success; the same Idempotency-Key on every attempt", async () => {
    seen.length = 0;
    script.push({ status: 503, body: { error: { code: "SERVICE_UNAVAILABLE", message: "x" } } });
    script.push({ status: 429, headers: { "retry-after": "0" }, body: { error: { code: "RATE_LIMITED", message: "x" } } });
    script.push({ status: 202, body: { scoringJobId: "sj_1", status: "queued", queuePosition: 1, estimatedWaitSeconds: 0 } });
    const retries = [];
    const accepted = await client({ onRetry: (e) => retries.push(e.status) }).score.create({
      applicationId: "a",
      jobId: "j",
      candidate: { name: "n", resume: "r" },
    });
    assert.equal(accepted.scoringJobId, "sj_1");
    assert.deepEqual(retries, [503, 429]);
    assert.equal(new Set(seen.map((s) => s.key)).size, 1);
    assert.ok(seen.every((s) => s.tenant === "acme"));
  });

  test("retries are bounded: the typed error carries attempts", async () => {
    for (let i = 0; i < 3; i++) script.push({ status: 503, body: { error: { code: "SERVICE_UNAVAILABLE", message: "down" } } });
    await assert.rejects(client({ maxRetries: 2 }).health(), (e) => e instanceof ServerError && e.attempts === 3 && e.detail === "down");
  });

  test("401 is not retried", async () => {
    script.push({ status: 401, body: { error: { code: "UNAUTHORIZED", message: "bad key", requestId: "req_k" } } });
    await assert.rejects(client().health(), (e) => e instanceof AuthenticationError && e.requestId === "req_k" && e.attempts === 1);
  });

  test("a body that does not match the document names the path", async () => {
    script.push({ status: 200, body: { queue: { queued: 0, running: 0, cap: 1, meanProcessingSeconds: null, estimatedWaitSeconds: 0 }, data: [{ scoringJobId: 5, status: "queued", attempts: 0, createdAt: "2026-01-01T00:00:00Z" }], hasMore: false, nextCursor: null } });
    await assert.rejects(client().queue.list(), (e) => e instanceof UnexpectedResponseError && e.path === "data[0].scoringJobId");
    script.push({ status: 200, body: "<html>proxy</html>" });
    await assert.rejects(client().queue.list(), (e) => e instanceof UnexpectedResponseError && /not JSON/.test(e.message));
  });

  test("a refused connection fails over to the next base URL", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const events = [];
    const c = new Tollhouse({ apiKey: "k", baseURL: [dead, url], onRetry: (e) => events.push(e) });
    for (let i = 0; i < 4; i++) assert.equal((await c.health()).status, "ok");
    assert.equal(events.length, 1, "the dead URL is passed over after it refused once");
    assert.match(events[0].reason, /^failing over/);
    assert.equal(events[0].baseURL, dead);
  });

  test("a 502/503/504 moves a call that is safe to send again to the next instance", async () => {
    const failing = [];
    const bad = createServer((req, res) => {
      failing.push(`${req.method} ${req.url}`);
      res.writeHead(502, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "BAD_GATEWAY", message: "upstream down" } }));
    });
    const port = await freePort();
    await new Promise((r) => bad.listen(port, "127.0.0.1", r));
    const badURL = `http://127.0.0.1:${port}`;
    try {
      const events = [];
      const waits = [];
      const options = { apiKey: "k", baseURL: [badURL, url], onRetry: (e) => events.push(e), sleep: async (s) => void waits.push(s) };
      const c = new Tollhouse(options);
      assert.equal((await c.health()).status, "ok");
      assert.deepEqual(events.map((e) => [e.status, e.delay, e.baseURL]), [[502, 0, badURL]]);
      assert.match(events[0].reason, /failing over/);
      for (let i = 0; i < 3; i++) await c.health();
      assert.equal(failing.length, 1, "passed over during its cool-down");
      assert.deepEqual(c.core.baseURLs.cooling(Date.now() / 1000), [badURL]);
      // A POST with an idempotency key is safe to send again: it moves too.
      script.push({ status: 202, body: { scoringJobId: "sj_9", status: "queued", queuePosition: 1, estimatedWaitSeconds: 0 } });
      const fresh = new Tollhouse(options);
      const accepted = await fresh.score.create({ applicationId: "a", jobId: "j", candidate: { name: "n", resume: "r" } });
      assert.equal(accepted.scoringJobId, "sj_9");
      assert.equal(failing.at(-1), "POST /v1/score");
      // One without (adding a criterion) is not: the upstream may have done it.
      await assert.rejects(
        new Tollhouse(options).criteria.add("j", { name: "n" }),
        (e) => e instanceof ServerError && e.status === 502 && e.attempts === 1,
      );
      assert.equal(failing.at(-1), "POST /v1/jobs/j/criteria");
      assert.deepEqual(waits, [], "nothing was waited for: another instance was up each time");
    } finally {
      await new Promise((r) => bad.close(r));
    }
  });

  test("nothing answers: TransportError after the retries", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const c = new Tollhouse({ apiKey: "k", baseURL: dead, maxRetries: 2, retry: { backoffBase: 0.01, backoffMax: 0.02 } });
    await assert.rejects(c.health(), (e) => e instanceof TransportError && e.attempts === 3);
  });

  test("AbortSignal cancels a call waiting for its retry", async () => {
    script.push({ status: 429, headers: { "retry-after": "30" }, body: { error: { code: "RATE_LIMITED", message: "x" } } });
    const controller = new AbortController();
    const call = client({ retry: { maxRetryAfter: 60 } }).health({ signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await assert.rejects(call, (e) => e.name === "AbortError");
    script.length = 0;
  });
});
