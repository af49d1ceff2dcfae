// The provider API (AdminClient, with an admin token) and the self-serve API
// (`keys`, `webhooks.endpoints`, `webhooks.deliveries.replay`) against a real
// `tollhouse serve`: the provider makes an org and its first key over HTTP, then that
// org's key manages its own keys and webhook endpoints; the provider manages an org's
// webhooks per environment (`admin.webhooks`).
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";
import {
  APIError,
  AdminClient,
  AuthenticationError,
  BadRequestError,
  ConfigurationError,
  NotFoundError,
  PermissionDeniedError,
  Tollhouse,
  ValidationError,
  webhooks,
} from "@tollhouse/sdk";
import { freePort, org, startServer } from "./support.mjs";

const TOKEN = `adm_${"a".repeat(40)}`;
let server;
let admin;

before(async () => {
  server = await startServer({ env: { TOLLHOUSE_ADMIN_TOKEN: TOKEN } });
  admin = new AdminClient({ adminToken: TOKEN, baseURL: server.url });
});
after(() => server?.close());

/** A webhook receiver on loopback that answers 204 and keeps what it got. */
async function receiver() {
  const got = [];
  const http = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      got.push({ body: Buffer.concat(chunks).toString("utf8"), headers: req.headers });
      res.writeHead(204).end();
    });
  });
  const port = await freePort();
  await new Promise((r) => http.listen(port, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${port}/hooks`, got, close: () => new Promise((r) => http.close(r)) };
}

describe("AdminClient", () => {
  test("an org with its first key, more keys, limits, audit — over HTTP only", async () => {
    const id = org("prov");
    const made = await admin.orgs.create(id, { name: "Acme", firstKey: { environment: "SANDBOX", role: "root", name: "first" } });
    assert.equal(made.id, id);
    assert.equal(made.suspended, false);
    assert.match(made.firstKey.key, /^sk_test_/);
    const tollhouse = new Tollhouse({ apiKey: made.firstKey.key, baseURL: server.url });
    assert.equal((await tollhouse.rateLimit.status()).environment, "SANDBOX", "a live key");

    const prod = await admin.keys.create(id, { environment: "PRODUCTION", name: "ci", meta: { team: "x" }, expiresAt: new Date(Date.now() + 86_400_000) });
    assert.match(prod.key, /^sk_live_/);
    assert.deepEqual(prod.meta, { team: "x" });
    const pages = [];
    for await (const page of admin.keys.iter(id, { limit: 1 })) pages.push(page);
    assert.deepEqual(pages.flatMap((p) => p.data.map((k) => k.id)), [prod.id, made.firstKey.id]);
    assert.ok(pages.every((p) => p.data.every((k) => !("key" in k))), "never a secret");
    assert.deepEqual((await admin.keys.list(id, { environment: "SANDBOX" })).data.map((k) => k.id), [made.firstKey.id]);

    const limits = await admin.limits.get(id);
    const bucket = limits.buckets[0];
    const override = await admin.limits.set(id, bucket.name, 42);
    assert.equal(override.limit, 42);
    const after = (await admin.limits.get(id)).buckets.find((b) => b.name === bucket.name);
    assert.equal(after.limit, 42);
    assert.equal(after.overridden, true);
    await admin.limits.set(id, bucket.name, 7, { keyId: prod.id });
    await admin.limits.clear(id, bucket.name);
    await admin.limits.clear(id, bucket.name, { keyId: prod.id });
    assert.equal((await admin.limits.get(id)).buckets.find((b) => b.name === bucket.name).overridden, false);
    // The org's override for one environment alone.
    const sandboxOnly = await admin.limits.set(id, bucket.name, 9, { environment: "SANDBOX" });
    assert.equal(sandboxOnly.environment, "SANDBOX");
    const split = (await admin.limits.get(id)).buckets.find((b) => b.name === bucket.name);
    assert.equal(split.overridden, false, "the org's override for every environment");
    assert.deepEqual(split.environmentOverrides.map((e) => [e.environment, e.limit]), [["SANDBOX", 9]]);
    assert.deepEqual(split.byEnvironment, {
      SANDBOX: { limit: 9, overridden: true },
      PRODUCTION: { limit: bucket.policyLimit, overridden: false },
    });
    await assert.rejects(admin.limits.set(id, bucket.name, 9, { environment: "SANDBOX", keyId: prod.id }), ValidationError);
    await admin.limits.clear(id, bucket.name, { environment: "SANDBOX" });
    assert.deepEqual((await admin.limits.get(id)).buckets.find((b) => b.name === bucket.name).environmentOverrides, []);
    // An in-flight pool is overridden as a bucket is.
    const pool = limits.pools[0];
    assert.equal((await admin.limits.set(id, pool.name, 6, { environment: "PRODUCTION" })).bucket, pool.name);
    const raised = (await admin.limits.get(id)).pools.find((p) => p.name === pool.name);
    assert.deepEqual([raised.limit, raised.overridden], [pool.policyLimit, false]);
    assert.deepEqual(raised.byEnvironment, {
      SANDBOX: { limit: pool.policyLimit, overridden: false },
      PRODUCTION: { limit: 6, overridden: true },
    });
    await admin.limits.clear(id, pool.name, { environment: "PRODUCTION" });
    assert.deepEqual((await admin.limits.get(id)).pools.find((p) => p.name === pool.name).environmentOverrides, []);

    const rotated = await admin.keys.rotate(prod.id, { overlapSeconds: 0 });
    assert.equal(rotated.replaces.id, prod.id);
    assert.match(rotated.key, /^sk_live_/);
    assert.equal((await admin.keys.revoke(rotated.id)).status, "revoked");

    assert.equal((await admin.orgs.update(id, { suspended: true })).suspended, true);
    assert.equal((await admin.orgs.update(id, { suspended: false, name: "Acme Inc" })).name, "Acme Inc");
    assert.equal((await admin.orgs.get(id)).name, "Acme Inc");
    assert.ok((await admin.orgs.list({ limit: 100 })).data.some((o) => o.id === id));

    const actions = [];
    for await (const page of admin.audit.iter({ org: id, limit: 2 })) actions.push(...page.data.map((e) => e.action));
    for (const action of ["org.created", "key.created", "limit.set", "limit.cleared", "key.rotated", "key.revoked", "org.updated"]) {
      assert.ok(actions.includes(action), `${action} in ${actions}`);
    }
    const created = await admin.audit.list({ org: id, action: "key.created" });
    assert.ok(created.data.every((e) => e.action === "key.created" && e.org === id));
  });

  test("bad input: typed errors", async () => {
    assert.throws(() => new AdminClient({ adminToken: "sk_test_nope", baseURL: server.url }), ConfigurationError);
    const saved = process.env.TOLLHOUSE_ADMIN_TOKEN;
    delete process.env.TOLLHOUSE_ADMIN_TOKEN;
    try {
      assert.throws(() => new AdminClient({ baseURL: server.url }), (e) => e instanceof ConfigurationError && /TOLLHOUSE_ADMIN_TOKEN/.test(e.message));
    } finally {
      if (saved !== undefined) process.env.TOLLHOUSE_ADMIN_TOKEN = saved;
    }
    const id = org("dup");
    await admin.orgs.create(id);
    await assert.rejects(admin.orgs.create(id), (e) => e instanceof APIError && e.status === 409 && e.code === "CONFLICT");
    await assert.rejects(admin.orgs.get(org("nobody")), NotFoundError);
    await assert.rejects(admin.keys.revoke("key_nope"), NotFoundError);
    await assert.rejects(admin.keys.create(id, { environment: "STAGING" }), (e) => e instanceof ValidationError && /environment/.test(e.detail));
    const stranger = new AdminClient({ adminToken: `adm_${"z".repeat(40)}`, baseURL: server.url });
    await assert.rejects(stranger.orgs.list(), AuthenticationError);
  });
});

describe("self-serve: an org's own keys and webhooks", () => {
  let id;
  let root;
  let tollhouse;

  before(async () => {
    id = org("self");
    const made = await admin.orgs.create(id, { firstKey: { environment: "SANDBOX", role: "root" } });
    root = made.firstKey;
    tollhouse = new Tollhouse({ apiKey: root.key, baseURL: server.url });
  });

  test("keys: list, create, rotate, revoke; never above the caller", async () => {
    const listed = await tollhouse.keys.list();
    assert.deepEqual(listed.map((k) => k.id), [root.id]);
    assert.ok(listed.every((k) => !("secret" in k)));
    const member = await tollhouse.keys.create({ name: "reporting", role: "member" });
    assert.match(member.secret, /^sk_test_/);
    assert.equal(member.environment, "SANDBOX");
    const weak = new Tollhouse({ apiKey: member.secret, baseURL: server.url });
    await assert.rejects(weak.keys.list(), PermissionDeniedError);
    await assert.rejects(tollhouse.keys.create({ environment: "PRODUCTION" }), PermissionDeniedError);

    const manager = await tollhouse.keys.create({ name: "ops", role: "manager", expiresAt: new Date(Date.now() + 3_600_000) });
    const managerClient = new Tollhouse({ apiKey: manager.secret, baseURL: server.url });
    await assert.rejects(managerClient.keys.create({ role: "root" }), (e) => e instanceof PermissionDeniedError && /role/i.test(e.detail));

    const rotated = await tollhouse.keys.rotate(member.id, { overlapSeconds: 0 });
    assert.equal(rotated.replaces.id, member.id);
    await assert.rejects(weak.rateLimit.status(), AuthenticationError);
    const revoked = await tollhouse.keys.revoke(rotated.id);
    assert.equal(revoked.status, "revoked");
    await assert.rejects(tollhouse.keys.revoke("key_nope"), NotFoundError);
    const other = await admin.orgs.create(org("other"), { firstKey: { environment: "SANDBOX", role: "root" } });
    await assert.rejects(tollhouse.keys.revoke(other.firstKey.id), NotFoundError, "another org's key is not found");
  });

  test("webhook endpoints: create, update, test (signed ping), rotate the secret, replay, delete", async () => {
    const hooks = await receiver();
    try {
      const endpoint = await tollhouse.webhooks.endpoints.create({ url: hooks.url, eventTypes: ["score.completed"] });
      assert.match(endpoint.secret, /^whsec_/);
      assert.equal(endpoint.environment, "SANDBOX");
      assert.deepEqual((await tollhouse.webhooks.endpoints.list()).map((e) => e.id), [endpoint.id]);

      const ping = await tollhouse.webhooks.endpoints.test(endpoint.id);
      assert.equal(ping.eventType, "ping");
      assert.equal(ping.attempts[0].statusCode, 204);
      const event = await webhooks.verify(hooks.got[0].body, hooks.got[0].headers, endpoint.secret);
      assert.equal(event.type, "ping");

      const rotated = await tollhouse.webhooks.endpoints.rotateSecret(endpoint.id, { overlapSeconds: 60 });
      assert.notEqual(rotated.secret, endpoint.secret);
      assert.ok(rotated.previousSecretExpiresAt);
      const replayed = await tollhouse.webhooks.deliveries.replay(ping.id);
      assert.equal(replayed.messageId, ping.messageId);
      assert.notEqual(replayed.id, ping.id);
      const last = hooks.got.at(-1);
      // Both secrets sign during the overlap.
      await webhooks.verify(last.body, last.headers, rotated.secret);
      await webhooks.verify(last.body, last.headers, endpoint.secret);
      const deliveries = await tollhouse.webhooks.deliveries.list();
      assert.ok(deliveries.some((d) => d.id === replayed.id));

      const disabled = await tollhouse.webhooks.endpoints.update(endpoint.id, { enabled: false, eventTypes: null });
      assert.equal(disabled.enabled, false);
      assert.equal(disabled.eventTypes, null);
      assert.equal((await tollhouse.webhooks.endpoints.delete(endpoint.id)).id, endpoint.id);
      assert.deepEqual(await tollhouse.webhooks.endpoints.list(), []);
      await assert.rejects(tollhouse.webhooks.endpoints.delete(endpoint.id), NotFoundError);
      await assert.rejects(tollhouse.webhooks.endpoints.create({ url: "not a url" }), BadRequestError);
    } finally {
      await hooks.close();
    }
  });
});

describe("admin.webhooks: an org's endpoints and deliveries, per environment", () => {
  test("create, list, test (signed ping), rotate, deliveries, replay, update, delete", async () => {
    const hooks = await receiver();
    try {
      const id = org("hooks");
      await admin.orgs.create(id);
      const live = { environment: "PRODUCTION" };
      const sandbox = { environment: "SANDBOX" };
      const endpoint = await admin.webhooks.endpoints.create(id, { url: hooks.url, ...live });
      assert.match(endpoint.secret, /^whsec_/);
      assert.deepEqual(
        [endpoint.org, endpoint.environment, endpoint.url, endpoint.enabled, endpoint.eventTypes, endpoint.disabledAt],
        [id, "PRODUCTION", hooks.url, true, null, null],
      );
      const listed = await admin.webhooks.endpoints.list(id, live);
      assert.deepEqual(listed.map((e) => e.id), [endpoint.id]);
      assert.ok(listed.every((e) => !("secret" in e)), "never a secret after creation");
      assert.deepEqual(await admin.webhooks.endpoints.list(id, sandbox), [], "kept per environment");

      const ping = await admin.webhooks.endpoints.test(id, endpoint.id, live);
      assert.deepEqual([ping.eventType, ping.endpointId, ping.jobId], ["ping", endpoint.id, null]);
      assert.equal(ping.attempts[0].statusCode, 204);
      assert.equal(hooks.got.length, 1);
      assert.equal((await webhooks.verify(hooks.got[0].body, hooks.got[0].headers, endpoint.secret)).type, "ping");

      const rotated = await admin.webhooks.endpoints.rotateSecret(id, endpoint.id, { ...live, overlapSeconds: 60 });
      assert.equal(rotated.id, endpoint.id);
      assert.match(rotated.secret, /^whsec_/);
      assert.notEqual(rotated.secret, endpoint.secret);
      assert.ok(rotated.previousSecretExpiresAt);

      const deliveries = await admin.webhooks.deliveries.list(id, live);
      assert.deepEqual(deliveries.map((d) => d.id), [ping.id]);
      assert.deepEqual(await admin.webhooks.deliveries.list(id, sandbox), []);
      assert.deepEqual(await admin.webhooks.deliveries.list(id, { ...live, jobId: "job_other" }), [], "only that job's");
      const replayed = await admin.webhooks.deliveries.replay(id, ping.id, live);
      assert.notEqual(replayed.id, ping.id);
      assert.equal(replayed.messageId, ping.messageId);
      assert.equal(replayed.attempts[0].statusCode, 204);
      assert.equal(hooks.got.length, 2);
      const last = hooks.got.at(-1);
      assert.equal(last.headers["webhook-id"], hooks.got[0].headers["webhook-id"], "the same event again");
      // Both secrets sign during the overlap.
      await webhooks.verify(last.body, last.headers, rotated.secret);
      await webhooks.verify(last.body, last.headers, endpoint.secret);
      assert.deepEqual((await admin.webhooks.deliveries.list(id, live)).map((d) => d.id), [replayed.id, ping.id], "newest first");

      // Another environment's id is not found, like an unknown one.
      await assert.rejects(admin.webhooks.endpoints.update(id, endpoint.id, { ...sandbox, enabled: false }), NotFoundError);
      await assert.rejects(admin.webhooks.endpoints.test(id, endpoint.id, sandbox), NotFoundError);
      await assert.rejects(admin.webhooks.deliveries.replay(id, ping.id, sandbox), NotFoundError);

      const filtered = await admin.webhooks.endpoints.update(id, endpoint.id, { ...live, eventTypes: ["score.completed"] });
      assert.deepEqual(filtered.eventTypes, ["score.completed"]);
      assert.equal(filtered.enabled, true);
      const disabled = await admin.webhooks.endpoints.update(id, endpoint.id, { ...live, enabled: false });
      assert.equal(disabled.enabled, false);
      assert.ok(disabled.disabledAt);
      assert.deepEqual(disabled.eventTypes, ["score.completed"], "unchanged when not given");
      await assert.rejects(admin.webhooks.endpoints.test(id, endpoint.id, live), (e) => e instanceof BadRequestError && e.status === 400);
      await assert.rejects(admin.webhooks.deliveries.replay(id, ping.id, live), (e) => e instanceof BadRequestError && e.status === 400);
      assert.equal(hooks.got.length, 2, "nothing sent to a disabled endpoint");
      const every = await admin.webhooks.endpoints.update(id, endpoint.id, { ...live, enabled: true, eventTypes: null });
      assert.deepEqual([every.enabled, every.eventTypes], [true, null]);

      assert.equal((await admin.webhooks.endpoints.delete(id, endpoint.id, live)).id, endpoint.id);
      assert.deepEqual(await admin.webhooks.endpoints.list(id, live), []);
      await assert.rejects(admin.webhooks.endpoints.delete(id, endpoint.id, live), NotFoundError);

      const actions = (await admin.audit.list({ org: id, limit: 100 })).data.map((e) => e.action);
      for (const action of ["webhook.added", "webhook.tested", "webhook.secret_rotated", "webhook.replayed", "webhook.updated", "webhook.removed"]) {
        assert.ok(actions.includes(action), `${action} in ${actions}`);
      }
    } finally {
      await hooks.close();
    }
  });

  test("bad input: unknown org, wrong environment, bad URL", async () => {
    const id = org("hooks-bad");
    await admin.orgs.create(id);
    const nobody = org("nobody");
    await assert.rejects(admin.webhooks.endpoints.list(nobody, { environment: "SANDBOX" }), (e) => e instanceof NotFoundError && e.status === 404);
    await assert.rejects(admin.webhooks.deliveries.list(nobody, { environment: "SANDBOX" }), (e) => e instanceof NotFoundError && e.status === 404);
    await assert.rejects(
      admin.webhooks.endpoints.create(nobody, { url: "http://127.0.0.1:9/hooks", environment: "SANDBOX" }),
      (e) => e instanceof NotFoundError && e.status === 404,
    );
    await assert.rejects(admin.webhooks.endpoints.delete(id, "we_nope", { environment: "SANDBOX" }), NotFoundError);
    await assert.rejects(admin.webhooks.deliveries.replay(id, "dlv_nope", { environment: "SANDBOX" }), NotFoundError);
    // The server's answer to an environment that is not SANDBOX or PRODUCTION: 400 naming it.
    await assert.rejects(
      admin.webhooks.endpoints.list(id, { environment: "STAGING" }),
      (e) => e instanceof BadRequestError && e.status === 400 && /environment/.test(e.detail),
    );
    await assert.rejects(
      admin.webhooks.deliveries.list(id, { environment: "staging" }),
      (e) => e instanceof BadRequestError && e.status === 400,
    );
    await assert.rejects(admin.webhooks.endpoints.create(id, { url: "not a url", environment: "SANDBOX" }), BadRequestError);
    assert.deepEqual(await admin.webhooks.endpoints.list(id, { environment: "SANDBOX" }), [], "nothing made");
  });
});

describe("limits and fair use: the org's own view and the provider's", () => {
  test("client.limits.get, analytics.fairUse and admin.orgs.fairUse agree", async () => {
    const id = org("fair");
    const made = await admin.orgs.create(id, { firstKey: { environment: "SANDBOX", role: "root" } });
    const bucket = (await admin.limits.get(id)).buckets[0];
    await admin.limits.set(id, bucket.name, 77);
    const tollhouse = new Tollhouse({ apiKey: made.firstKey.key, baseURL: server.url, tenantId: "acme" });

    const limits = await tollhouse.limits.get();
    assert.equal(limits.org, id);
    assert.equal(limits.environment, "SANDBOX");
    const mine = limits.buckets.find((b) => b.name === bucket.name);
    assert.equal(mine.limit, 77);
    assert.equal(mine.overridden, true);
    assert.notEqual(mine.policyLimit, 77);
    assert.ok(limits.pools.length > 0);

    const before = await tollhouse.analytics.fairUse({ timeRange: "24h" });
    const loop0 = before.signals.find((s) => s.signal === "regeneration_loop");
    assert.deepEqual([loop0.value, loop0.status], [0, "ok"]);
    // Criteria generated four times for one jobId: a regeneration loop (threshold 3).
    for (let i = 0; i < 4; i++) await tollhouse.criteria.generate({ jobId: "job_loop", title: "Backend Engineer", description: "Python and SQL." });
    const own = await tollhouse.analytics.fairUse({ timeRange: "24h" });
    assert.equal(own.timeRange, "24h");
    assert.equal(own.environment, "SANDBOX");
    const loop = own.signals.find((s) => s.signal === "regeneration_loop");
    assert.deepEqual([loop.value, loop.threshold, loop.status, loop.action], [4, 3, "flagged", "flag"]);
    assert.deepEqual(loop.involved, [{ id: "job_loop", count: 4 }]);
    assert.equal(loop.involvedCount, 1);
    assert.ok(loop.firstSeen && loop.lastSeen && loop.firstSeen <= loop.lastSeen);
    assert.equal(typeof loop.detail, "object");

    const theirs = await admin.orgs.fairUse(id, { environment: "SANDBOX", timeRange: "24h" });
    assert.equal(theirs.org, id);
    assert.deepEqual(theirs.signals, own.signals, "the same answer as the org's own key reads");
    const production = await admin.orgs.fairUse(id, { environment: "PRODUCTION" });
    assert.equal(production.timeRange, "24h");
    assert.equal(production.signals.find((s) => s.signal === "regeneration_loop").status, "ok");

    await assert.rejects(admin.orgs.fairUse(org("nobody"), { environment: "SANDBOX" }), NotFoundError);
    await assert.rejects(admin.orgs.fairUse(id, { environment: "STAGING" }), BadRequestError);
    await assert.rejects(tollhouse.analytics.fairUse({ timeRange: "2d" }), ValidationError);
    const member = await admin.keys.create(id, { environment: "SANDBOX", role: "member" });
    const memberClient = new Tollhouse({ apiKey: member.key, baseURL: server.url });
    await assert.rejects(memberClient.limits.get(), PermissionDeniedError);
    assert.equal((await memberClient.analytics.fairUse({ timeRange: "1h" })).environment, "SANDBOX", "any role");
  });
});
