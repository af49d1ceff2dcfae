// The batch guidance's high-volume `ScoringClient`, on the SDK: the client-side
// concurrency cap, `Retry-After` plus jitter on 429 and exponential backoff are the
// SDK's; candidates go out 100 per request, each exactly once; results arrive by webhook.
//
//   TOLLHOUSE_API_KEY=sk_test_… TOLLHOUSE_URL=http://127.0.0.1:8000 \
//   WEBHOOK_PORT=9000 WEBHOOK_SECRET=whsec_… CANDIDATES=500 node examples/scoring-client.mjs
//
// (`tollhouse webhooks add --org ORG --environment SANDBOX --url http://127.0.0.1:9000/hooks`
// first: an sk_test_ key's jobs are sandbox jobs.)
import { createServer } from "node:http";
import { Tollhouse, webhooks } from "@tollhouse/sdk";

export class ScoringClient {
  constructor({ apiKey, maxConcurrent = 50, tenantId, baseURL }) {
    this.retried429 = 0;
    this.tollhouse = new Tollhouse({
      apiKey,
      tenantId,
      baseURL,
      maxConcurrent, // client-side concurrency
      onRetry: (event) => {
        if (event.status === 429) this.retried429 += 1;
      },
    });
  }

  /** One candidate: `POST /v1/score`, retried safely (one Idempotency-Key per call). */
  scoreCandidate(payload) {
    return this.tollhouse.score.create(payload);
  }

  /** Submit all candidates; `onResult` gets each `queued` job. Results come by webhook. */
  scoreBatch(candidates, onResult) {
    return this.tollhouse.score.many(candidates, { webhook: true, onResult });
  }
}

/** A webhook receiver that checks signatures and calls `onEvent` with each new event. */
export function receiver(secret, onEvent) {
  const seen = new Set();
  return createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    try {
      const event = await webhooks.verify(Buffer.concat(chunks), req.headers, secret);
      res.writeHead(204).end();
      const id = req.headers["webhook-id"];
      if (!seen.has(id)) {
        seen.add(id); // the same webhook-id on every retry: deduplicate
        onEvent(event);
      }
    } catch {
      res.writeHead(400).end();
    }
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const total = Number(process.env.CANDIDATES ?? 100);
  const candidates = Array.from({ length: total }, (_, i) => ({
    applicationId: `app_${i}`,
    jobId: "job_1",
    candidate: { name: `Candidate ${i}`, resume: "Built Python APIs on PostgreSQL and Redis for 6 years." },
  }));
  const queued = new Set();
  const results = new Map();
  let allIn;
  let submitted = false;
  const done = new Promise((resolve) => (allIn = resolve));
  const check = () => {
    if (submitted && [...queued].every((id) => results.has(id))) allIn();
  };
  const hooks = receiver(process.env.WEBHOOK_SECRET, (event) => {
    results.set(event.data.scoringJobId, event);
    check();
  });
  await new Promise((r) => hooks.listen(Number(process.env.WEBHOOK_PORT), "127.0.0.1", r));

  const client = new ScoringClient({ apiKey: process.env.TOLLHOUSE_API_KEY, tenantId: "acme-corp", maxConcurrent: 50 });
  const first = await client.scoreCandidate({ ...candidates[0], applicationId: "app_single" });
  const summary = await client.scoreBatch(candidates, (result) => {
    queued.add(result.scoringJobId);
  });
  submitted = true;
  check();
  await done;
  hooks.close();
  console.log(
    JSON.stringify({
      single: first.status,
      accepted: summary.accepted,
      queued: queued.size,
      results: [...queued].filter((id) => results.has(id)).length,
      completed: [...queued].filter((id) => results.get(id)?.type === "score.completed").length,
      retried429: client.retried429,
    }),
  );
}
