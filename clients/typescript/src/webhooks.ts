/**
 * Receiving tollhouse webhooks: check a request's Standard Webhooks signature.
 *
 * ```
 * webhook-id:        msg_…        the event's id, the same on every retry (deduplicate on it)
 * webhook-timestamp: 1735689600   Unix seconds of this attempt
 * webhook-signature: v1,<base64>  HMAC-SHA256 of "{id}.{timestamp}.{body}", keyed with the
 *                                 base64-decoded part of the endpoint's whsec_… secret
 * ```
 *
 * Uses Web Crypto (browsers, Node ≥ 18), so it is asynchronous.
 */
import { WebhookVerificationError } from "./errors.js";

export const SECRET_PREFIX = "whsec_";
/** Seconds a timestamp may be away from now (Standard Webhooks: 5 minutes). */
export const DEFAULT_TOLERANCE = 300;

/** Headers as a `Headers`, a plain object (any case) or Node's `IncomingHttpHeaders`. */
export type WebhookHeaders =
  | Headers
  | Record<string, string | readonly string[] | undefined>;

export interface VerifyOptions {
  /** Seconds the `webhook-timestamp` may differ from now (default 300). */
  tolerance?: number;
  /** The current Unix time in seconds (tests). */
  now?: number;
}

/** Web Crypto: the global one, or Node 18's from node:crypto. */
export async function subtle(): Promise<SubtleCrypto> {
  const found = (globalThis as { crypto?: Crypto }).crypto?.subtle;
  if (found) return found;
  // Node 18 has Web Crypto, but not on globalThis. The name is held in a variable so
  // browser bundlers do not try to resolve a Node module.
  const name = "node:crypto";
  const mod = (await import(/* webpackIgnore: true */ name)) as { webcrypto: Crypto };
  return mod.webcrypto.subtle;
}

function base64ToBytes(text: string): Uint8Array<ArrayBuffer> | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return undefined;
  try {
    const binary = atob(text + "=".repeat((4 - (text.length % 4)) % 4));
    return Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
  } catch {
    return undefined;
  }
}

function bytesToBase64(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

function secretKey(secret: string): Uint8Array<ArrayBuffer> {
  const raw = secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret;
  const key = base64ToBytes(raw);
  if (key === undefined) {
    throw new TypeError("the webhook secret must be whsec_<base64>, as `tollhouse webhooks add` printed it");
  }
  if (key.length === 0) throw new TypeError("the webhook secret is empty");
  return key;
}

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name) ?? undefined;
  for (const [key, value] of Object.entries(headers as Record<string, unknown>)) {
    if (key.toLowerCase() !== name) continue;
    if (Array.isArray(value)) return value.join(", ");
    return typeof value === "string" ? value : undefined;
  }
  return undefined;
}

const encoder = new TextEncoder();

function concat(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

async function hmacKey(secret: string, usage: "sign" | "verify"): Promise<CryptoKey> {
  return (await subtle()).importKey("raw", secretKey(secret), { name: "HMAC", hash: "SHA-256" }, false, [usage]);
}

/**
 * The `webhook-signature` value tollhouse sends (`v1,<base64>`): to test a receiver.
 */
export async function sign(body: string | Uint8Array, secret: string, messageId: string, timestamp: number): Promise<string> {
  const payload = concat(encoder.encode(`${messageId}.${timestamp}.`), typeof body === "string" ? encoder.encode(body) : body);
  const digest = await (await subtle()).sign("HMAC", await hmacKey(secret, "sign"), payload);
  return `v1,${bytesToBase64(new Uint8Array(digest))}`;
}

/**
 * Check a webhook request and return its parsed JSON.
 *
 * @param body the raw request body, exactly as received (JSON parsed and serialised
 *   again will not match).
 * @param headers the request's headers (names in any case).
 * @param secret the endpoint's `whsec_…` secret.
 * @throws WebhookVerificationError a header is missing or malformed, no `v1` signature
 *   matches, the timestamp is outside the tolerance, or the body is not JSON.
 * @throws TypeError the secret itself is not `whsec_<base64>`.
 */
export async function verify(
  body: string | Uint8Array,
  headers: WebhookHeaders,
  secret: string,
  options: VerifyOptions = {},
): Promise<unknown> {
  const key = await hmacKey(secret, "verify");
  const id = header(headers, "webhook-id");
  const rawTimestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  const missing = [
    ["webhook-id", id],
    ["webhook-timestamp", rawTimestamp],
    ["webhook-signature", signatures],
  ]
    .filter(([, value]) => !value)
    .map(([name]) => name);
  if (missing.length) throw new WebhookVerificationError(`missing header(s): ${missing.join(", ")}`);
  if (!/^\s*[0-9]+\s*$/.test(rawTimestamp as string)) {
    throw new WebhookVerificationError(`webhook-timestamp ${JSON.stringify(rawTimestamp)} is not Unix seconds`);
  }
  const timestamp = Number((rawTimestamp as string).trim());
  const tolerance = options.tolerance ?? DEFAULT_TOLERANCE;
  const now = options.now ?? Date.now() / 1000;
  if (timestamp < now - tolerance) {
    throw new WebhookVerificationError(
      `webhook-timestamp is ${Math.round(now - timestamp)} s old (tolerance ${tolerance} s): a stale or replayed request`,
    );
  }
  if (timestamp > now + tolerance) {
    throw new WebhookVerificationError(
      `webhook-timestamp is ${Math.round(timestamp - now)} s in the future (tolerance ${tolerance} s); check the clocks`,
    );
  }
  const bytes = typeof body === "string" ? encoder.encode(body) : new Uint8Array(body);
  const signed = concat(encoder.encode(`${id}.${timestamp}.`), bytes);
  const crypto = await subtle();
  let matched = false;
  // Several signatures may be given (secret rotation), space-separated.
  for (const candidate of (signatures as string).split(/\s+/)) {
    const [version, value] = candidate.split(",", 2);
    if (version !== "v1" || !value) continue;
    const given = base64ToBytes(value);
    // subtle.verify compares in constant time.
    if (given && (await crypto.verify("HMAC", key, given, signed))) {
      matched = true;
      break;
    }
  }
  if (!matched) {
    throw new WebhookVerificationError(
      "no v1 signature matches: wrong secret, or the body was changed on the way (verify the raw bytes, before any parsing)",
    );
  }
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new WebhookVerificationError("the signed body is not JSON");
  }
}

/** `webhooks.verify(body, headers, secret)` and `webhooks.sign(…)`, without a client. */
export const webhooks = { verify, sign };
