// The scoring-volume shape's example, with tollhouse: scoring volume over the last 7 days.
//   TOLLHOUSE_API_KEY=sk_test_… TOLLHOUSE_URL=http://127.0.0.1:8000 node examples/scoring-volume.mjs
import { Tollhouse } from "@tollhouse/sdk";

const tollhouse = new Tollhouse({
  apiKey: process.env.TOLLHOUSE_API_KEY, // "sk_test_..."
  tenantId: "acme-corp",
});

const volume = await tollhouse.analytics.scoringVolume({ timeRange: "7d" });
console.log(JSON.stringify(volume));
