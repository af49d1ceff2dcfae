// Several base URLs against TWO real `tollhouse serve` processes on one database: round
// robin, then one is stopped mid-test and the client keeps working, and the provider's
// AdminClient too. (The pure rotation and the 502/503/504 rules are in unit.test.mjs.)
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { AdminClient, Tollhouse } from "@tollhouse/sdk";
import { DESCRIPTION, TITLE, candidate, startServer } from "./support.mjs";

const TOKEN = `adm_${"t".repeat(40)}`;
let shared;
let a;
let b;

before(async () => {
  shared = mkdtempSync(join(tmpdir(), "tollhouse-ts-shared-"));
  const env = { TOLLHOUSE_DATABASE_URL: `sqlite:///${join(shared, "tollhouse.db")}`, TOLLHOUSE_ADMIN_TOKEN: TOKEN };
  a = await startServer({ env }); // one after the other: the first makes the schema
  b = await startServer({ env });
});
after(async () => {
  await a?.close();
  await b?.close();
  if (shared) rmSync(shared, { recursive: true, force: true });
});

/** A fetch that records which instance each attempt went to. */
function recording(targets) {
  return (input, init) => {
    targets.push(new URL(String(input)).origin);
    return fetch(input, init);
  };
}

test("two instances on one database: round robin, then one stops and the client keeps working", async () => {
  const adminTargets = [];
  const admin = new AdminClient({ adminToken: TOKEN, baseURL: [a.url, b.url], fetch: recording(adminTargets) });
  const org = await admin.orgs.create("acme-ha", { firstKey: { environment: "SANDBOX", role: "root" } });
  assert.equal((await admin.orgs.get("acme-ha")).id, "acme-ha", "the second instance reads what the first wrote");
  assert.deepEqual(adminTargets, [a.url, b.url]);

  const targets = [];
  const retries = [];
  let offset = 0; // the test moves the client's clock on by adding to it
  const client = new Tollhouse({
    clock: () => Date.now() / 1000 + offset,
    apiKey: org.firstKey.key,
    baseURL: [a.url, b.url],
    tenantId: "acme",
    fetch: recording(targets),
    onRetry: (e) => retries.push(e),
  });
  // A cool-down no slow machine outlasts; the test ends it itself (below).
  client.core.baseURLs.coolDown = 3600;
  for (let i = 0; i < 4; i++) assert.equal((await client.rateLimit.status()).environment, "SANDBOX");
  assert.deepEqual(targets, [a.url, b.url, a.url, b.url], "round robin");
  await client.criteria.generate({ jobId: "job_ha", title: TITLE, description: DESCRIPTION });
  const first = await client.score.create(candidate(1, "job_ha"));

  await a.stop();
  targets.length = 0;
  // Idempotent reads, a POST with an idempotency key, and one that is not idempotent (a
  // refused connection was never sent): all answered by b.
  assert.equal((await client.score.get(first.scoringJobId)).scoringJobId, first.scoringJobId);
  const second = await client.score.create(candidate(2, "job_ha"));
  const added = await client.criteria.add("job_ha", { name: "Kubernetes", weight: 0.5 });
  assert.equal(added.name, "Kubernetes");
  for (let i = 0; i < 3; i++) assert.equal((await client.rateLimit.status()).environment, "SANDBOX");
  assert.equal(targets.filter((t) => t === a.url).length, 1, `a refused once, then was passed over: ${targets}`);
  assert.equal(targets.filter((t) => t === b.url).length, 6);
  assert.deepEqual(retries.map((e) => [e.baseURL, e.delay]), [[a.url, 0]]);
  assert.match(retries[0].reason, /failing over/);

  // The cool-down over, a is tried again (still down): one more hop, no error.
  offset += 3600;
  targets.length = 0;
  assert.equal((await client.score.get(second.scoringJobId)).scoringJobId, second.scoringJobId);
  assert.deepEqual(targets.slice(0, 2), [a.url, b.url]);

  // The provider's client fails over the same way.
  const page = await admin.keys.list("acme-ha");
  assert.equal(page.data.length, 1);
});
