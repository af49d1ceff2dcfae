/**
 * Checks a success body against the operation's schema from the server's OpenAPI
 * document (src/generated/schemas.ts), so a changed server fails loudly, naming the JSON
 * path (`results[3].queuePosition: expected an integer, got a string`), instead of
 * handing out half-filled objects.
 *
 * A subset of JSON Schema, the part the document uses for structure: `$ref`, `type`
 * (one or a list), `required`, `properties`, `additionalProperties`, `items`, `allOf`,
 * and `oneOf`/`anyOf` (either branch may match). Values (`enum`, `const`, formats,
 * bounds) are not checked: a newer server may add a status or a bucket, and the SDK
 * should pass those on rather than refuse them.
 */
import { UnexpectedResponseError } from "./errors.js";
import { RESPONSES, SCHEMAS } from "./generated/schemas.js";

type Schema = Record<string, unknown>;

function kind(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "number") return Number.isInteger(value) ? "an integer" : "a number";
  if (typeof value === "object") return "an object";
  return `a ${typeof value}`;
}

const EXPECTED: Record<string, string> = {
  object: "an object",
  array: "an array",
  string: "a string",
  integer: "an integer",
  number: "a number",
  boolean: "true or false",
  null: "null",
};

function isType(value: unknown, type: string): boolean {
  switch (type) {
    case "object":
      return value !== null && typeof value === "object" && !Array.isArray(value);
    case "array":
      return Array.isArray(value);
    case "string":
      return typeof value === "string";
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "number":
      return typeof value === "number";
    case "boolean":
      return typeof value === "boolean";
    case "null":
      return value === null;
    default:
      return true;
  }
}

function join(path: string, key: string | number): string {
  if (typeof key === "number") return `${path}[${key}]`;
  return path ? `${path}.${key}` : key;
}

interface Problem {
  path: string;
  message: string;
  /** How deep it was found: among branches, the deepest problem is the telling one. */
  depth: number;
}

function resolve(schema: Schema): Schema {
  let s = schema;
  for (let hops = 0; typeof s.$ref === "string" && hops < 32; hops++) {
    const name = s.$ref.replace("#/components/schemas/", "");
    const found = SCHEMAS[name];
    if (found === undefined) return {};
    s = found as Schema;
  }
  return s;
}

function check(value: unknown, raw: Schema, path: string, depth: number): Problem | undefined {
  const schema = resolve(raw);
  const branches = (schema.oneOf ?? schema.anyOf) as Schema[] | undefined;
  if (branches) {
    let best: Problem | undefined;
    for (const branch of branches) {
      const problem = check(value, branch, path, depth);
      if (problem === undefined) {
        best = undefined;
        break;
      }
      if (best === undefined || problem.depth > best.depth) best = problem;
    }
    if (best) return best;
  }
  for (const part of (schema.allOf as Schema[] | undefined) ?? []) {
    const problem = check(value, part, path, depth);
    if (problem) return problem;
  }
  const types = schema.type === undefined ? [] : ([] as string[]).concat(schema.type as string);
  if (types.length && !types.some((t) => isType(value, t))) {
    const want = types.map((t) => EXPECTED[t] ?? t).join(" or ");
    return { path, message: `expected ${want}, got ${kind(value)}`, depth };
  }
  if (isType(value, "object")) {
    const object = value as Record<string, unknown>;
    for (const key of (schema.required as string[] | undefined) ?? []) {
      if (!(key in object)) return { path: join(path, key), message: "missing", depth: depth + 1 };
    }
    const properties = (schema.properties as Record<string, Schema> | undefined) ?? {};
    const extra = schema.additionalProperties;
    for (const [key, inner] of Object.entries(object)) {
      const sub = properties[key] ?? (extra && typeof extra === "object" ? (extra as Schema) : undefined);
      if (sub === undefined) continue;
      const problem = check(inner, sub, join(path, key), depth + 1);
      if (problem) return problem;
    }
  }
  if (Array.isArray(value) && schema.items && typeof schema.items === "object") {
    for (let i = 0; i < value.length; i++) {
      const problem = check(value[i], schema.items as Schema, join(path, i), depth + 1);
      if (problem) return problem;
    }
  }
  return undefined;
}

/** Throw {@link UnexpectedResponseError} unless `body` fits `schema`. */
export function checkShape(body: unknown, schema: unknown, what: string): void {
  const problem = check(body, (schema ?? {}) as Schema, "", 0);
  if (problem) {
    throw new UnexpectedResponseError(`${what}: ${problem.path || "body"}: ${problem.message}`, {
      path: problem.path,
      body,
    });
  }
}

/** The documented success schema of an operation (`"GET /v1/score/{scoringJobId}"`). */
export function responseSchema(route: string): unknown {
  return RESPONSES[route];
}
