// webhooks.verify and sign, against the reference `standardwebhooks` package.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Webhook } from "standardwebhooks";
import { WebhookVerificationError, webhooks } from "@tollhouse/sdk";

const SECRET = "whsec_" + Buffer.from("0123456789abcdef0123456789abcdef").toString("base64");
const body = JSON.stringify({ type: "score.completed", timestamp: "2026-01-01T00:00:00.000Z", data: { scoringJobId: "sj_1" } });

function signedByReference(payload = body, at = new Date()) {
  const id = "msg_" + Math.random().toString(36).slice(2);
  const signature = new Webhook(SECRET).sign(id, at, payload);
  return { "webhook-id": id, "webhook-timestamp": String(Math.floor(at.getTime() / 1000)), "webhook-signature": signature };
}

test("a signature made by standardwebhooks verifies; the JSON comes back", async () => {
  const event = await webhooks.verify(body, signedByReference(), SECRET);
  assert.equal(event.data.scoringJobId, "sj_1");
  // A Headers object and bytes work the same.
  const headers = new Headers(signedByReference());
  assert.equal((await webhooks.verify(new TextEncoder().encode(body), headers, SECRET)).type, "score.completed");
});

test("a signature made by sign() verifies with standardwebhooks", async () => {
  const id = "msg_1";
  const now = Math.floor(Date.now() / 1000);
  const signature = await webhooks.sign(body, SECRET, id, now);
  const verified = new Webhook(SECRET).verify(body, { "webhook-id": id, "webhook-timestamp": String(now), "webhook-signature": signature });
  assert.equal(verified.type, "score.completed");
});

test("several signatures: any v1 match is enough (secret rotation)", async () => {
  const headers = signedByReference();
  headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"];
  await webhooks.verify(body, headers, SECRET);
});

test("refused: changed body, wrong secret, stale or future timestamp, missing header", async () => {
  const headers = signedByReference();
  await assert.rejects(webhooks.verify(body + " ", headers, SECRET), WebhookVerificationError);
  const other = "whsec_" + Buffer.from("another secret of thirty-two by!").toString("base64");
  await assert.rejects(webhooks.verify(body, headers, other), /no v1 signature matches/);
  const old = signedByReference(body, new Date(Date.now() - 3600_000));
  await assert.rejects(webhooks.verify(body, old, SECRET), /s old/);
  const future = signedByReference(body, new Date(Date.now() + 3600_000));
  await assert.rejects(webhooks.verify(body, future, SECRET), /in the future/);
  await assert.rejects(webhooks.verify(body, { "webhook-id": "x" }, SECRET), /missing header\(s\): webhook-timestamp, webhook-signature/);
  await assert.rejects(webhooks.verify(body, headers, "whsec_not base64!"), TypeError);
});
