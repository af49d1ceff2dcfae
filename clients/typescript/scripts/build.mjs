// `npm run build`: the TypeScript compiler twice — ES modules into dist/esm, CommonJS
// into dist/cjs — each with its .d.ts files. No bundler: the package has no
// dependencies to inline, and tsc's output is what both module systems load.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
rmSync(join(root, "dist"), { recursive: true, force: true });
for (const [module, out, type] of [
  ["ES2020", "dist/esm", "module"],
  ["CommonJS", "dist/cjs", "commonjs"],
]) {
  const args = ["-p", join(root, "tsconfig.json"), "--module", module, "--outDir", join(root, out)];
  if (module === "CommonJS") args.push("--moduleResolution", "node10");
  execFileSync(process.execPath, [tsc, ...args], { stdio: "inherit" });
  // Each half says which module system its .js files use, whatever the root says.
  mkdirSync(join(root, out), { recursive: true });
  writeFileSync(join(root, out, "package.json"), JSON.stringify({ type }) + "\n");
}
