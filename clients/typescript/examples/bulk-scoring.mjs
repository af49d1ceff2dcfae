// score.many at scale, for benchmarks/bulk_scoring.py: submit CANDIDATES candidates and
// learn every outcome, then print the figures as one JSON line.
//
//   TOLLHOUSE_API_KEY=sk_test_… TOLLHOUSE_URL=http://127.0.0.1:8000 CANDIDATES=3000 \
//   node examples/bulk-scoring.mjs
//
// (criteria for "job_1" must exist: `POST /v1/criteria/generate` first.)
import { Tollhouse } from "@tollhouse/sdk";

const total = Number(process.env.CANDIDATES ?? 3000);
let refused = 0;
let batches = 0;
let statusReads = 0;
const recording = (input, init) => {
  const url = new URL(String(input));
  if (url.pathname === "/v1/score/batch") batches += 1;
  if (init?.method === "GET" && url.pathname.startsWith("/v1/score")) statusReads += 1;
  return fetch(input, init).then((answer) => {
    if (answer.status === 429) refused += 1;
    return answer;
  });
};
const tollhouse = new Tollhouse({ tenantId: "acme", fetch: recording });
const candidates = Array.from({ length: total }, (_, i) => ({
  applicationId: `app_${i}`,
  jobId: "job_1",
  candidate: { name: `Candidate ${i}`, resume: "Built Python APIs on PostgreSQL and Redis for 6 years." },
}));
const start = performance.now();
let submitted;
let completed = 0;
const summary = await tollhouse.score.many(candidates, {
  onResult: (o) => {
    if (o.status === "completed") completed += 1;
  },
  onProgress: (s) => {
    if (submitted === undefined && s.accepted + s.rejected === total) submitted = performance.now();
  },
});
const end = performance.now();
console.log(
  JSON.stringify({
    sdk: "typescript",
    candidates: total,
    submissionSeconds: ((submitted ?? end) - start) / 1000,
    totalSeconds: (end - start) / 1000,
    batches,
    statusReads,
    refused429: refused,
    completed,
    known: summary.completed + summary.failed + summary.rejected,
  }),
);
