// Test support: a real `tollhouse serve` in a temporary directory, keys and webhook
// endpoints made with the `tollhouse` CLI, and a free loopback port.
//
// TOLLHOUSE_BIN names the tollhouse command (default: the repository's virtualenv,
// ../../.venv/bin/tollhouse from clients/typescript).
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
export const PACKAGE_DIR = resolve(here, "..");
export const TOLLHOUSE_BIN = process.env.TOLLHOUSE_BIN || resolve(PACKAGE_DIR, "../../.venv/bin/tollhouse");
const run = promisify(execFile);

/** A free TCP port on loopback. */
export function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.unref();
    server.on("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

/** The environment for tollhouse: ours without TOLLHOUSE_* settings, plus `extra`. */
function serverEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TOLLHOUSE_")) env[k] = v;
  // Receivers on loopback (the tests' webhook receivers) are private targets.
  env.TOLLHOUSE_ALLOW_PRIVATE_TARGETS = "1";
  return { ...env, ...extra };
}

/** Run `tollhouse ARGS` in `cwd`; its stdout. */
export async function tollhouse(cwd, ...args) {
  try {
    const { stdout } = await run(TOLLHOUSE_BIN, args, { cwd, env: serverEnv(), timeout: 60_000 });
    return stdout;
  } catch (error) {
    throw new Error(`tollhouse ${args.join(" ")} failed: ${error.stderr || error.message}`);
  }
}

/**
 * `tollhouse serve` (built-in policy, SQLite, the bundled example upstream) on a free
 * port in a new temporary directory. `stop()` ends it; `start()` runs it again on the same
 * port and database (a restart). `env` adds to its environment (e.g.
 * `TOLLHOUSE_DATABASE_URL` for two servers on one database, `TOLLHOUSE_ADMIN_TOKEN`).
 */
export async function startServer({ env = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "tollhouse-ts-"));
  const port = await freePort();
  const server = {
    dir,
    port,
    url: `http://127.0.0.1:${port}`,
    proc: undefined,
    async start() {
      const log = openSync(join(dir, "serve.log"), "a");
      const proc = spawn(TOLLHOUSE_BIN, ["serve", "--port", String(port)], {
        cwd: dir,
        env: serverEnv(env),
        stdio: ["ignore", log, log],
      });
      this.proc = proc;
      const exited = new Promise((done) => proc.once("exit", done));
      this.exited = exited;
      for (let i = 0; i < 1200; i++) {
        if (proc.exitCode !== null) break;
        try {
          const answer = await fetch(`${this.url}/healthz`);
          if (answer.ok) return this;
        } catch {
          // not listening yet
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      await this.stop();
      throw new Error(`tollhouse serve did not start:\n${readFileSync(join(dir, "serve.log"), "utf8")}`);
    },
    async stop() {
      const proc = this.proc;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill("SIGTERM");
      const killer = setTimeout(() => proc.kill("SIGKILL"), 15_000);
      await this.exited;
      clearTimeout(killer);
    },
    async close() {
      await this.stop();
      rmSync(dir, { recursive: true, force: true });
    },
    /** A new key of `org` (a new org the first time); its secret. */
    async key(org, role = "root") {
      const out = await tollhouse(dir, "keys", "create", "--org", org, "--role", role, "--json");
      return JSON.parse(out).key;
    },
    /** A webhook endpoint of `org` at `url`, for the jobs of its sandbox (`sk_test_`) keys; its whsec_ secret. */
    async webhook(org, url) {
      const out = await tollhouse(dir, "webhooks", "add", "--org", org, "--url", url, "--environment", "SANDBOX", "--json");
      return JSON.parse(out).secret;
    },
  };
  return server.start();
}

/** A unique org name per test run. */
export function org(label) {
  return `${label}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

export const TITLE = "Backend Engineer";
export const DESCRIPTION = "Python, PostgreSQL and Redis; 5 years building APIs.";
export const RESUME = "Built Python APIs on PostgreSQL and Redis for 6 years.";

/** A score request for candidate `i` of `jobId`. */
export function candidate(i, jobId) {
  return { applicationId: `app_${i}`, jobId, candidate: { name: `Candidate ${i}`, resume: RESUME } };
}
