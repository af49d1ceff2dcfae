// The SDK against a real `tollhouse serve` (built-in policy, the bundled example API),
// the examples, and the generated types against the server's OpenAPI document.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import {
  AuthenticationError,
  BadRequestError,
  ConfigurationError,
  NotFoundError,
  PermissionDeniedError,
  Tollhouse,
  ValidationError,
} from "@tollhouse/sdk";
import { generate, OUTPUTS } from "../scripts/generate-types.mjs";
import { DESCRIPTION, PACKAGE_DIR, TITLE, candidate, freePort, org, startServer } from "./support.mjs";

const run = promisify(execFile);
let server;
let root; // a root key of its own org
let member; // a member key of the same org
let tollhouse;

before(async () => {
  server = await startServer();
  const name = org("api");
  root = await server.key(name, "root");
  member = await server.key(name, "member");
  tollhouse = new Tollhouse({ apiKey: root, baseURL: server.url, tenantId: "acme" });
});
after(() => server?.close());

describe("endpoints", () => {
  test("health and rate-limit status", async () => {
    assert.equal((await tollhouse.health()).status, "ok");
    const status = await tollhouse.rateLimit.status();
    assert.equal(status.environment, "SANDBOX");
    assert.equal(status.buckets.scoring.limit, 1000);
    assert.ok(status.categories.some((c) => c.category === "criteria_generation"));
  });

  test("criteria: generate, read, add, update, archive, delete", async () => {
    const jobId = "job_crit";
    const generated = await tollhouse.criteria.generate({ jobId, title: TITLE, description: DESCRIPTION });
    assert.ok(generated.criteria.length > 0);
    assert.ok((await tollhouse.criteria.questions({ jobId, title: TITLE, description: DESCRIPTION })).questions.length > 0);
    const added = await tollhouse.criteria.add(jobId, { name: "Kindness", weight: 0.1 });
    const changed = await tollhouse.criteria.update(jobId, added.id, { weight: 0.2 });
    assert.equal(changed.weight, 0.2);
    const many = await tollhouse.criteria.updateMany(jobId, [{ id: added.id, name: "Care" }]);
    assert.ok(many.criteria.some((c) => c.name === "Care"));
    assert.ok((await tollhouse.criteria.get(jobId)).criteria.some((c) => c.id === added.id));
    await tollhouse.criteria.delete(jobId, added.id);
    assert.equal((await tollhouse.criteria.archive(jobId)).archived, true);
  });

  test("score: create (replayed with the same key), batch, get, by application, queue", async () => {
    const jobId = "job_score";
    await tollhouse.criteria.generate({ jobId, title: TITLE, description: DESCRIPTION });
    const first = await tollhouse.score.create(candidate(1, jobId), { idempotencyKey: "once-1" });
    const again = await tollhouse.score.create(candidate(1, jobId), { idempotencyKey: "once-1" });
    assert.equal(again.scoringJobId, first.scoringJobId);
    assert.deepEqual([first.replayed, again.replayed], [false, true]);
    const batch = await tollhouse.score.batch([candidate(2, jobId), { applicationId: "app_x", jobId, candidate: { name: "No resume" } }]);
    assert.deepEqual([batch.accepted, batch.rejected], [1, 1]);
    const rejected = batch.results.find((r) => r.status === "error");
    assert.match(rejected.error.message, /resume/);
    let job;
    for (let i = 0; i < 200; i++) {
      job = await tollhouse.score.get(first.scoringJobId);
      if (job.status === "completed" || job.status === "failed") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(job.status, "completed");
    assert.equal(typeof job.result.score, "number");
    assert.equal((await tollhouse.score.byApplication("app_1")).scoringJobId, first.scoringJobId);
    // Many jobs' status in one call: in the order asked; another org's ids are not found.
    const accepted = batch.results.find((r) => r.status === "queued");
    const stranger = new Tollhouse({ apiKey: await server.key(org("stranger"), "root"), baseURL: server.url, tenantId: "acme" });
    const many = await tollhouse.score.getMany([accepted.scoringJobId, first.scoringJobId, "sj_missing", first.scoringJobId]);
    assert.deepEqual(many.data.map((j) => j.scoringJobId), [accepted.scoringJobId, first.scoringJobId]);
    assert.deepEqual(many.notFound, ["sj_missing"]);
    assert.equal(many.data[1].status, "completed");
    assert.deepEqual(await stranger.score.getMany([first.scoringJobId]), { data: [], notFound: [first.scoringJobId] });
    await assert.rejects(tollhouse.score.getMany([]), ConfigurationError);
    await assert.rejects(tollhouse.score.getMany(Array.from({ length: 101 }, (_, i) => `sj_${i}`)), ConfigurationError);
    await assert.rejects(
      tollhouse.score.getMany(["not an id"]),
      (e) => e instanceof BadRequestError && e.status === 400 && /query parameter "ids"/.test(e.detail),
    );
    const page = await tollhouse.queue.list({ limit: 1 });
    assert.equal(page.data.length, 1);
    let jobs = 0;
    for await (const p of tollhouse.queue.pages({ limit: 1 })) jobs += p.data.length;
    assert.ok(jobs >= 2);
    assert.ok(Array.isArray(await tollhouse.webhooks.deliveries.list({ jobId: first.scoringJobId })));
  });

  test("analytics, call counts and events", async () => {
    const volume = await tollhouse.analytics.scoringVolume({ timeRange: "24h" });
    assert.equal(volume.granularity, "hour");
    const now = new Date();
    const hourAgo = new Date(now.getTime() - 3600_000);
    const ingested = await tollhouse.events.send([
      { id: `ev-${Date.now()}`, type: "flow_run", time: now, data: { run_id: `run-${Date.now()}`, workflow: "w", status: "succeeded", duration_ms: 10 } },
    ]);
    assert.deepEqual(ingested, { received: 1, inserted: 1, duplicates: 0 });
    const metric = await tollhouse.analytics.metric("flow_runs", { timeStart: hourAgo, timeEnd: new Date(now.getTime() + 60_000) });
    assert.ok(["simple", "empty"].includes(metric.type));
    let pages = 0;
    for await (const page of tollhouse.analytics.metricPages("api_calls_log", { timeStart: hourAgo, timeEnd: now, pageSize: 5 })) {
      pages += 1;
      if (pages >= 2) break;
    }
    assert.ok(pages >= 1);
    const counts = await tollhouse.callCounts.historical({ start: hourAgo, end: now });
    assert.equal(counts.timestamps.length, counts.counts.length);
    const keys = [];
    for await (const page of tollhouse.callCounts.byLabel("ENDPOINTS", { amt: 1 })) keys.push(...page.series.map((s) => s.key));
    assert.ok(keys.length >= 2, "more than one page, one series each");
    assert.equal(new Set(keys).size, keys.length);
    const scenario = await tollhouse.callCounts.byScenario("reco", "home");
    assert.ok(Array.isArray(scenario.counts));
    assert.equal(typeof (await tollhouse.platform.openapi()).openapi, "string");
  });
});

describe("bad input and errors", () => {
  test("an invalid timeRange: the server's 422 with its message", async () => {
    await assert.rejects(tollhouse.analytics.scoringVolume({ timeRange: "2h" }), (e) => {
      assert.ok(e instanceof ValidationError);
      assert.equal(e.code, "VALIDATION_FAILED");
      assert.match(e.detail, /timeRange/);
      assert.match(e.requestId, /^req_/);
      return true;
    });
  });

  test("a body the server rejects names the field", async () => {
    await assert.rejects(tollhouse.score.create({ applicationId: "a", jobId: "j", candidate: { name: "n" } }), (e) => {
      assert.ok(e instanceof ValidationError);
      assert.match(e.detail, /candidate\.resume|resume/);
      return true;
    });
  });

  test('{"detail"} errors of the metrics catalogue', async () => {
    const range = { timeStart: new Date(Date.now() - 3600_000), timeEnd: new Date() };
    await assert.rejects(tollhouse.analytics.metric("no_such_metric", range), (e) => e instanceof NotFoundError && /no_such_metric/.test(e.detail));
    await assert.rejects(tollhouse.analytics.metric("api_calls_log", { ...range, pageSize: 500 }), (e) => {
      assert.ok(e instanceof ValidationError);
      assert.match(e.detail, /^page_size: /);
      return true;
    });
  });

  test("no tenant, a bad key, a role that may not", async () => {
    const noTenant = new Tollhouse({ apiKey: root, baseURL: server.url });
    await assert.rejects(noTenant.score.get("sj_x"), (e) => e instanceof BadRequestError && e.code === "TENANT_REQUIRED");
    const badKey = new Tollhouse({ apiKey: "sk_test_nope", baseURL: server.url });
    await assert.rejects(badKey.rateLimit.status(), AuthenticationError);
    const weak = new Tollhouse({ apiKey: member, baseURL: server.url });
    await assert.rejects(weak.callCounts.historical(), PermissionDeniedError);
    await assert.rejects(tollhouse.score.get("sj_missing"), NotFoundError);
  });
});

describe("limits", () => {
  test("bursting a 2/s bucket: throttled ahead, not one 429", async () => {
    const statuses = [];
    let throttled = 0;
    const client = new Tollhouse({
      apiKey: root,
      baseURL: server.url,
      onRetry: (e) => statuses.push(e.status),
      onThrottle: () => (throttled += 1),
    });
    const answers = await Promise.all(Array.from({ length: 7 }, () => client.rateLimit.status()));
    assert.equal(answers.length, 7);
    assert.deepEqual(statuses.filter((s) => s === 429), []);
    assert.ok(throttled > 0);
  });

  test("without throttling the 429s are waited out and still succeed", async () => {
    const statuses = [];
    const client = new Tollhouse({ apiKey: root, baseURL: server.url, throttle: false, onRetry: (e) => statuses.push(e.status) });
    await Promise.all(Array.from({ length: 5 }, () => client.rateLimit.status()));
    assert.ok(statuses.includes(429));
  });

  test("an AbortSignal cancels throttled calls", async () => {
    const controller = new AbortController();
    // The first hold-back aborts the calls: those held back end with an AbortError.
    const client = new Tollhouse({ apiKey: root, baseURL: server.url, onThrottle: () => controller.abort() });
    const settled = await Promise.allSettled(
      Array.from({ length: 5 }, () => client.rateLimit.status({ signal: controller.signal })),
    );
    const aborted = settled.filter((s) => s.status === "rejected");
    assert.ok(aborted.length > 0);
    assert.ok(aborted.every((s) => s.reason.name === "AbortError"));
  });

  test("several base URLs: one refusing connections is failed over", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const client = new Tollhouse({ apiKey: root, baseURL: [dead, server.url], tenantId: "acme" });
    for (let i = 0; i < 3; i++) assert.equal((await client.queue.list({ limit: 1 })).data.length, 1);
  });
});

describe("examples", () => {
  const env = (extra) => ({ ...process.env, TOLLHOUSE_URL: server.url, ...extra });

  test("the scoring-volume snippet", async () => {
    const { stdout } = await run(process.execPath, ["examples/scoring-volume.mjs"], {
      cwd: PACKAGE_DIR,
      env: env({ TOLLHOUSE_API_KEY: root }),
    });
    const volume = JSON.parse(stdout);
    assert.equal(volume.granularity, "day");
    assert.ok(volume.data.length >= 7);
  });

  test("the batch guidance's ScoringClient: every result by webhook, no 429", async () => {
    const name = org("hooks");
    const key = await server.key(name, "root");
    const port = await freePort();
    const secret = await server.webhook(name, `http://127.0.0.1:${port}/hooks`);
    const admin = new Tollhouse({ apiKey: key, baseURL: server.url, tenantId: "acme-corp" });
    await admin.criteria.generate({ jobId: "job_1", title: TITLE, description: DESCRIPTION });
    const { stdout } = await run(process.execPath, ["examples/scoring-client.mjs"], {
      cwd: PACKAGE_DIR,
      env: env({ TOLLHOUSE_API_KEY: key, WEBHOOK_PORT: String(port), WEBHOOK_SECRET: secret, CANDIDATES: "150" }),
      timeout: 90_000,
    });
    const report = JSON.parse(stdout);
    assert.deepEqual(report, { single: "queued", accepted: 150, queued: 150, results: 150, completed: 150, retried429: 0 });
  });
});

test("the generated types are those of the server's OpenAPI document", async () => {
  const document = await tollhouse.platform.openapi();
  const fresh = await generate(document);
  const stale = [];
  if (fresh.types !== readFileSync(OUTPUTS.types, "utf8")) stale.push(OUTPUTS.types);
  if (fresh.schemas !== readFileSync(OUTPUTS.schemas, "utf8")) stale.push(OUTPUTS.schemas);
  assert.deepEqual(stale, [], `out of date with the server: run npm run generate -- ${server.url}/v1/platform/openapi.json`);
  assert.ok(join(PACKAGE_DIR, "src/generated").length > 0);
});
