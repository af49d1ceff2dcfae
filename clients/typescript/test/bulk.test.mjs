// score.many against a real `tollhouse serve`: within the limits, each candidate once,
// outcomes 100 jobs per status read (GET /v1/score?ids=) rather than a poll per job,
// through a server restart.
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { after, before, test } from "node:test";
import { ConfigurationError, Tollhouse } from "@tollhouse/sdk";
import { DESCRIPTION, TITLE, candidate, org, startServer } from "./support.mjs";

let server;

before(async () => {
  server = await startServer();
});
after(() => server?.close());

async function client(label, extra = {}) {
  const key = await server.key(org(label), "root");
  const tollhouse = new Tollhouse({ apiKey: key, baseURL: server.url, tenantId: "acme", ...extra });
  await tollhouse.criteria.generate({ jobId: "job_1", title: TITLE, description: DESCRIPTION });
  return tollhouse;
}

/** Every job of the client's org, from the queue listing. */
async function jobs(tollhouse) {
  const all = [];
  for await (const page of tollhouse.queue.pages({ limit: 100 })) all.push(...page.data);
  return all;
}

test("polling: every outcome, repeats dropped, rejects named, no 429, few status reads", async () => {
  const statuses = [];
  const reads = [];
  const recording = (input, init) => {
    const url = new URL(String(input));
    if (init?.method === "GET" && url.pathname.startsWith("/v1/score")) reads.push(url);
    return fetch(input, init);
  };
  const tollhouse = await client("many", { onRetry: (e) => statuses.push(e), fetch: recording });
  const input = Array.from({ length: 230 }, (_, i) => candidate(i, "job_1"));
  input.push(candidate(3, "job_1")); // a repeat
  input.push({ applicationId: "app_bad", jobId: "job_1", candidate: { name: "No resume" } });
  const outcomes = [];
  const summary = await tollhouse.score.many(input, { chunkSize: 50, onResult: (o) => outcomes.push(o) });
  assert.equal(summary.read, 232);
  assert.equal(summary.duplicates, 1);
  assert.deepEqual([summary.accepted, summary.rejected, summary.completed, summary.failed], [230, 1, 230, 0]);
  assert.equal(outcomes.length, 231);
  assert.equal(new Set(outcomes.map((o) => o.key)).size, 231);
  const bad = outcomes.find((o) => o.status === "rejected");
  assert.equal(bad.applicationId, "app_bad");
  assert.match(bad.error.message, /resume/);
  for (const o of outcomes.filter((o) => o.status === "completed")) assert.equal(typeof o.job.result.score, "number");
  assert.deepEqual(statuses.filter((e) => e.status === 429).map((e) => e.route), []);
  // Outcomes come from GET /v1/score?ids=, up to 100 jobs per read: at most
  // ceil(230 / 100) = 3 reads per round, far fewer reads than jobs, no poll per job.
  assert.ok(summary.statusRequests < 230 / 4, `${summary.statusRequests} status reads for 230 jobs`);
  assert.ok(reads.length > 0 && reads.every((u) => u.pathname === "/v1/score"), reads.map(String).join(" "));
  const sizes = reads.map((u) => u.searchParams.get("ids").split(",").length);
  assert.ok(sizes.every((n) => n >= 1 && n <= 100), String(sizes));
  assert.equal(reads.length, summary.statusRequests);
  assert.equal((await jobs(tollhouse)).length, 230);
});

test("the same runId again replays the same jobs instead of scoring twice", async () => {
  const tollhouse = await client("rerun");
  const input = Array.from({ length: 40 }, (_, i) => candidate(i, "job_1"));
  const first = new Map();
  await tollhouse.score.many(input, { runId: "run-1", webhook: true, chunkSize: 20, onResult: (o) => first.set(o.key, o.scoringJobId) });
  const second = new Map();
  await tollhouse.score.many(input, { runId: "run-1", webhook: true, chunkSize: 20, onResult: (o) => second.set(o.key, o.scoringJobId) });
  assert.equal(first.size, 40);
  assert.deepEqual([...second.entries()].sort(), [...first.entries()].sort());
  assert.equal((await jobs(tollhouse)).length, 40);
});

test("a server restart mid-run: the run completes, each candidate scored once", async () => {
  const refused = [];
  const tollhouse = await client("restart", {
    retry: { backoffBase: 0.2, backoffMax: 2 },
    maxRetries: 8,
    onRetry: (e) => e.status === undefined && refused.push(e.reason),
  });
  const input = Array.from({ length: 200 }, (_, i) => candidate(i, "job_1"));
  const outcomes = [];
  let restarted;
  const summary = await tollhouse.score.many(input, {
    chunkSize: 20,
    maxPending: 60,
    onResult: (o) => {
      outcomes.push(o);
      if (outcomes.length === 5) {
        restarted = (async () => {
          await server.stop();
          await server.start();
        })();
      }
    },
  });
  await restarted;
  assert.ok(refused.length > 0, "the run met the server down");
  assert.equal(summary.completed, 200);
  assert.equal(new Set(outcomes.map((o) => o.key)).size, 200);
  assert.equal(outcomes.length, 200);
  const listed = await jobs(tollhouse);
  assert.equal(listed.length, 200, "no candidate was submitted twice");
  assert.equal(new Set(listed.map((j) => j.applicationId)).size, 200);
});

test("aborting a run: AbortError, one listener on the shared signal, none left after", async () => {
  const warnings = [];
  const onWarning = (warning) => warnings.push(warning);
  process.on("warning", onWarning);
  try {
    // 16 batches in flight, each waiting on the one signal (throttled, sending, or
    // waiting for a slot), plus the run's own wait: more than Node's 10 per target.
    const tollhouse = await client("abort", { maxConcurrent: 16 });
    const controller = new AbortController();
    const input = Array.from({ length: 400 }, (_, i) => candidate(i, "job_1"));
    const outcomes = [];
    const run = tollhouse.score.many(input, {
      webhook: true,
      chunkSize: 5,
      signal: controller.signal,
      onResult: (o) => {
        outcomes.push(o);
        if (outcomes.length === 10) controller.abort();
      },
    });
    await assert.rejects(run, (e) => e.name === "AbortError");
    assert.ok(outcomes.length >= 10 && outcomes.length < 400, `${outcomes.length} outcomes`);
    assert.equal(getEventListeners(controller.signal, "abort").length, 0);

    // A run that ends normally leaves no listener on its signal either.
    const kept = new AbortController();
    const summary = await tollhouse.score.many(input.slice(0, 30), { webhook: true, chunkSize: 5, runId: "kept", signal: kept.signal });
    assert.equal(summary.accepted, 30);
    assert.equal(getEventListeners(kept.signal, "abort").length, 0);
    // Warnings are emitted on a later tick.
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(
      warnings.filter((w) => w.name === "MaxListenersExceededWarning").map(String),
      [],
    );
  } finally {
    process.off("warning", onWarning);
  }
});

test("candidates that are not iterable: a ConfigurationError naming the argument", async () => {
  const tollhouse = new Tollhouse({ apiKey: "sk_test_unused", baseURL: server.url });
  for (const bad of [42, null, undefined, "app_1", { applicationId: "app_1" }]) {
    assert.throws(
      () => tollhouse.score.many(bad),
      (e) => e instanceof ConfigurationError && /^score\.many: candidates must be an Iterable or AsyncIterable/.test(e.message),
      String(bad),
    );
  }
  assert.throws(() => tollhouse.score.many(42), /not 42$/);
});
