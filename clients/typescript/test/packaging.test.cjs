// The CommonJS build loads with require(), and both builds ship their .d.ts files.
const assert = require("node:assert/strict");
const { existsSync, readFileSync } = require("node:fs");
const { join } = require("node:path");
const { test } = require("node:test");

const root = join(__dirname, "..");

test("require('@tollhouse/sdk') gives the same API as the ES module build", async () => {
  const cjs = require("@tollhouse/sdk");
  const esm = await import("@tollhouse/sdk");
  assert.equal(typeof cjs.Tollhouse, "function");
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).filter((k) => k !== "default").sort());
  assert.ok(new cjs.Tollhouse({ apiKey: "k" }).score);
});

test("types for both builds, and no runtime dependencies", () => {
  for (const build of ["esm", "cjs"]) assert.ok(existsSync(join(root, "dist", build, "index.d.ts")), build);
  const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  assert.equal(manifest.dependencies, undefined);
  assert.deepEqual(Object.keys(manifest.devDependencies).sort(), ["@types/node", "openapi-typescript", "standardwebhooks", "typescript"]);
});
