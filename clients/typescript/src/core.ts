/**
 * The send loop every call goes through: throttle → pick a base URL → concurrency slot →
 * fetch (with a per-attempt timeout and the caller's AbortSignal) → learn from the answer
 * → retry, return the checked body, or throw a typed error. Everything it decides is
 * decided by the pure parts: `decide()` (retry.ts), `Throttle` (throttle.ts),
 * `BaseURLs` (below), `apiError()` (errors.ts), `checkShape()` (validate.ts).
 */
import {
  ConfigurationError,
  TransportError,
  UnexpectedResponseError,
  apiError,
} from "./errors.js";
import { DEFAULT_RETRY, type Failure, type RetryPolicy, decide } from "./retry.js";
import { Throttle } from "./throttle.js";
import { checkShape, responseSchema } from "./validate.js";

export const DEFAULT_BASE_URL = "http://127.0.0.1:8000";
export const ENV_API_KEY = "TOLLHOUSE_API_KEY";
export const ENV_BASE_URL = "TOLLHOUSE_URL";
export const USER_AGENT = "tollhouse-typescript/0.1.0";
/** Seconds a base URL that failed is passed over (while another one is available). */
export const COOL_DOWN_SECONDS = 5;
/** Statuses that say an instance (or what is behind it) is failing, not the request. */
export const INSTANCE_FAILURE_STATUSES: ReadonlySet<number> = new Set([502, 503, 504]);

/** The longest `timeoutMs`: timers fire at once beyond it (a signed 32-bit count of ms). */
export const MAX_TIMEOUT_MS = 2_147_483_647;

/** Events one `POST /v1/events` takes; longer lists are sent in several requests. */
export const MAX_EVENTS_PER_REQUEST = 1000;
/** Items one `POST /v1/score/batch` takes. */
export const MAX_BATCH_ITEMS = 100;
/** The most job ids `GET /v1/score?ids=` answers in one request. */
export const MAX_STATUS_IDS = 100;

/** A fresh `Idempotency-Key` for one logical call (its retries reuse it). */
export function newIdempotencyKey(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c?.randomUUID) return `sdk-${c.randomUUID()}`;
  const bytes = new Uint8Array(16);
  if (c?.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return `sdk-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Per-call options every method takes last. */
export interface RequestOptions {
  /** Cancels the call, its retries and its waits. */
  signal?: AbortSignal;
}

/** Passed to `onRetry` before the client waits to send a call again. */
export interface RetryEvent {
  route: string;
  /** Which retry this will be (1 for the first). */
  retry: number;
  /** Seconds the client waits first (0 when it moves to another base URL). */
  delay: number;
  reason: string;
  status?: number;
  requestId?: string;
  /** The base URL the failed attempt went to. */
  baseURL: string;
}

/** Passed to `onThrottle` before the client holds a request back. */
export interface ThrottleEvent {
  route: string;
  /** Seconds the client waits before checking again. */
  delay: number;
}

export interface ClientOptions {
  /** The secret (`sk_test_…`/`sk_live_…`); default `TOLLHOUSE_API_KEY` (Node). */
  apiKey?: string;
  /** Sent as `X-Tenant-Id` on every request. */
  tenantId?: string;
  /**
   * The API's base URL, or several: round robin; an instance that gets no answer or a
   * 502/503/504 is passed over for `COOL_DOWN_SECONDS` while another is available, and
   * the request moves to the next one when the retry rules allow sending it again.
   * Default `TOLLHOUSE_URL` (Node, comma-separated for several), then
   * `http://127.0.0.1:8000`.
   */
  baseURL?: string | readonly string[];
  /** Retries per call: an integer, 0 or more (default 5). */
  maxRetries?: number;
  /** Requests in flight at once, per client: an integer, 1 or more (default 10). */
  maxConcurrent?: number;
  /** Milliseconds per attempt: above 0, at most 2 147 483 647 (default 30 000). */
  timeoutMs?: number;
  /** The fetch to send with (default the global one). */
  fetch?: typeof fetch;
  /** Hold requests back while `X-RateLimit-Remaining` is 0 (default true). */
  throttle?: boolean;
  /** The rest of the retry policy (seconds). */
  retry?: Partial<RetryPolicy>;
  /** Check success bodies against the OpenAPI document (default true). */
  validate?: boolean;
  onRetry?: (event: RetryEvent) => void;
  onThrottle?: (event: ThrottleEvent) => void;
  /** For tests: a fixed random source, a fake wait, and a clock (Unix seconds). */
  random?: () => number;
  sleep?: (seconds: number, signal?: AbortSignal) => Promise<void>;
  clock?: () => number;
}

/** One endpoint call, before any I/O. */
export interface Operation {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** The path with its parameters filled in and encoded. */
  path: string;
  /** The OpenAPI path template (`"GET /v1/score/{scoringJobId}"`): throttling and checks. */
  route: string;
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  /** Whether sending it twice is harmless (decides which failures are retried). */
  idempotent: boolean;
  /** Sent as `Idempotency-Key`; makes a POST idempotent. */
  idempotencyKey?: string;
}

/** A final answer: status, lower-case headers and the parsed, checked body. */
export interface Answer<T> {
  status: number;
  headers: Record<string, string>;
  body: T;
}

function env(name: string): string | undefined {
  const process = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  const value = process?.env?.[name];
  return value ? value : undefined;
}

/**
 * The instance for the next attempt: the first from `start` on (wrapping round) whose
 * cool-down is over at `now`; if every one is cooling down, the one that comes back
 * first. Pure.
 */
export function chooseBaseURL(start: number, coolingUntil: readonly number[], now: number): number {
  const n = coolingUntil.length;
  for (let i = 0; i < n; i++) {
    const index = (start + i) % n;
    if ((coolingUntil[index] ?? 0) <= now) return index;
  }
  let best = start % n;
  for (let i = 1; i < n; i++) {
    const index = (start + i) % n;
    if ((coolingUntil[index] ?? 0) < (coolingUntil[best] ?? 0)) best = index;
  }
  return best;
}

/** Whether an instance other than `index` is not cooling down at `now`. Pure. */
export function otherAvailable(index: number, coolingUntil: readonly number[], now: number): boolean {
  return coolingUntil.some((until, i) => i !== index && until <= now);
}

/**
 * The rotation over a client's base URLs and their cool-downs (no I/O; times are Unix
 * seconds passed in). `withTenant` copies share it.
 */
export class BaseURLs {
  readonly urls: readonly string[];
  /** Seconds a failed instance is passed over. */
  coolDown: number;
  private next = 0;
  private readonly coolingUntil: number[];

  constructor(urls: readonly string[], coolDown = COOL_DOWN_SECONDS) {
    this.urls = urls;
    this.coolDown = coolDown;
    this.coolingUntil = urls.map(() => 0);
  }

  /** The index of the instance the next attempt goes to; the rotation moves on. */
  pick(now: number): number {
    const index = chooseBaseURL(this.next, this.coolingUntil, now);
    this.next = (index + 1) % this.urls.length;
    return index;
  }

  /** The attempt sent to `index` got no answer, or a 502/503/504: cool it down. */
  failed(index: number, now: number): void {
    if (this.urls.length > 1) this.coolingUntil[index] = now + this.coolDown;
  }

  /** The instance at `index` answered (anything but a 502/503/504). */
  answered(index: number): void {
    this.coolingUntil[index] = 0;
  }

  /** Whether an instance other than `index` is not cooling down at `now`. */
  otherAvailable(index: number, now: number): boolean {
    return otherAvailable(index, this.coolingUntil, now);
  }

  /** The base URLs cooling down at `now`. */
  cooling(now: number): string[] {
    return this.urls.filter((_, i) => (this.coolingUntil[i] ?? 0) > now);
  }
}

interface AbortWatch {
  readonly callbacks: Set<() => void>;
  readonly fire: () => void;
}

const watches = new WeakMap<AbortSignal, AbortWatch>();

/**
 * Call `callback` when `signal` aborts; the function returned stops watching. However
 * many calls share one signal (a `score.many` run's batches, waits and reads), the signal
 * carries one "abort" listener, removed when the last of them stops watching — so a
 * shared signal never trips Node's MaxListenersExceededWarning and keeps no listener
 * after its calls end.
 */
export function onAbort(signal: AbortSignal, callback: () => void): () => void {
  let watch = watches.get(signal);
  if (watch === undefined) {
    const callbacks = new Set<() => void>();
    const fire = (): void => {
      watches.delete(signal);
      for (const cb of [...callbacks]) cb();
      callbacks.clear();
    };
    watch = { callbacks, fire };
    watches.set(signal, watch);
    signal.addEventListener("abort", fire, { once: true });
  }
  const { callbacks, fire } = watch;
  // A fresh wrapper per watcher, so one callback watched twice is two watches.
  const entry = (): void => callback();
  callbacks.add(entry);
  return () => {
    if (!callbacks.delete(entry) || callbacks.size > 0) return;
    if (watches.get(signal)?.callbacks === callbacks) watches.delete(signal);
    signal.removeEventListener("abort", fire);
  };
}

/** Caps the requests in flight; waiters are served in order. */
export class Slots {
  private free: number;
  private readonly waiting: Array<() => void> = [];

  constructor(size: number) {
    this.free = size;
  }

  async acquire(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) throw abortReason(signal);
    if (this.free > 0) {
      this.free -= 1;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const grant = (): void => {
        unwatch?.();
        resolve();
      };
      const unwatch = signal
        ? onAbort(signal, () => {
            const at = this.waiting.indexOf(grant);
            if (at >= 0) this.waiting.splice(at, 1);
            reject(abortReason(signal));
          })
        : undefined;
      this.waiting.push(grant);
    });
  }

  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free += 1;
  }
}

function abortReason(signal: AbortSignal | undefined): unknown {
  return signal?.reason ?? new DOMException("This operation was aborted", "AbortError");
}

/** Wait `seconds`, or reject when `signal` aborts. */
export function sleep(seconds: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortReason(signal));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      unwatch?.();
      resolve();
    }, Math.max(0, seconds * 1000));
    const unwatch = signal
      ? onAbort(signal, () => {
          clearTimeout(timer);
          reject(abortReason(signal));
        })
      : undefined;
  });
}

/** Codes (Node's fetch, undici) meaning the request never left. */
const NOT_SENT = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EADDRNOTAVAIL",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** Whether a failed fetch may have reached the server. */
export function failureKind(error: unknown): Failure {
  let e: unknown = error;
  for (let depth = 0; depth < 4 && e !== null && typeof e === "object"; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && NOT_SENT.has(code)) return "not_sent";
    e = (e as { cause?: unknown }).cause;
  }
  return "maybe_sent";
}

class Timeout extends Error {}

/** A setting's value as an error message quotes it. */
function show(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/** Settings and state shared by a client and its `withTenant` copies. */
export class Core {
  readonly apiKey: string;
  readonly baseURLs: BaseURLs;
  readonly retry: RetryPolicy;
  readonly throttle: Throttle | undefined;
  readonly slots: Slots;
  readonly timeoutMs: number;
  readonly maxConcurrent: number;
  readonly validate: boolean;
  readonly random: () => number;
  readonly wait: (seconds: number, signal?: AbortSignal) => Promise<void>;
  private readonly clock: () => number;
  private readonly fetcher: typeof fetch;
  private readonly onRetry: ((event: RetryEvent) => void) | undefined;
  private readonly onThrottle: ((event: ThrottleEvent) => void) | undefined;

  constructor(options: ClientOptions) {
    const apiKey = options.apiKey ?? env(ENV_API_KEY);
    if (!apiKey) {
      throw new ConfigurationError(
        `No API key: pass { apiKey } or set ${ENV_API_KEY} ` +
          "(create one with `tollhouse keys create --org ORG`).",
      );
    }
    this.apiKey = apiKey;
    const given = options.baseURL ?? env(ENV_BASE_URL)?.split(",") ?? [DEFAULT_BASE_URL];
    const urls = (typeof given === "string" ? [given] : [...given])
      .map((u) => u.trim().replace(/\/+$/, ""))
      .filter(Boolean);
    if (urls.length === 0) throw new ConfigurationError("baseURL: give at least one URL");
    for (const url of urls) {
      let parsed: URL;
      try {
        parsed = new URL(url);
      } catch {
        throw new ConfigurationError(`baseURL: ${JSON.stringify(url)} is not a URL`);
      }
      if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
        throw new ConfigurationError(`baseURL: ${url} is not http(s)`);
      }
    }
    this.baseURLs = new BaseURLs(urls);
    const maxConcurrent = options.maxConcurrent ?? 10;
    if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) {
      throw new ConfigurationError(`maxConcurrent must be an integer of at least 1, not ${show(maxConcurrent)}`);
    }
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    // null, like undefined, means the default (Python's max_retries=None).
    if (options.maxRetries !== undefined && options.maxRetries !== null) this.retry.maxRetries = options.maxRetries;
    if (!Number.isInteger(this.retry.maxRetries) || this.retry.maxRetries < 0) {
      throw new ConfigurationError(`maxRetries must be an integer of at least 0, not ${show(this.retry.maxRetries)}`);
    }
    const timeoutMs = options.timeoutMs ?? 30_000;
    if (typeof timeoutMs !== "number" || !(timeoutMs > 0) || timeoutMs > MAX_TIMEOUT_MS) {
      throw new ConfigurationError(
        `timeoutMs must be a number of milliseconds above 0 and at most ${MAX_TIMEOUT_MS}, not ${show(timeoutMs)}`,
      );
    }
    this.timeoutMs = timeoutMs;
    this.maxConcurrent = maxConcurrent;
    this.slots = new Slots(maxConcurrent);
    // A first request still unanswered after the timeout has failed: the longest it
    // holds the others back.
    this.throttle = options.throttle === false ? undefined : new Throttle(timeoutMs / 1000);
    this.validate = options.validate !== false;
    this.random = options.random ?? Math.random;
    this.wait = options.sleep ?? sleep;
    this.clock = options.clock ?? (() => Date.now() / 1000);
    const fetcher = options.fetch ?? (globalThis.fetch as typeof fetch | undefined);
    if (typeof fetcher !== "function") {
      throw new ConfigurationError("No fetch: use Node 18 or later, or pass { fetch }");
    }
    this.fetcher = fetcher;
    this.onRetry = options.onRetry;
    this.onThrottle = options.onThrottle;
  }

  private now(): number {
    return this.clock();
  }

  private async throttleWait(route: string, signal?: AbortSignal): Promise<void> {
    if (this.throttle === undefined) return;
    for (;;) {
      let wait = this.throttle.acquire(route, this.now());
      if (wait <= 0) return;
      // A little jitter so callers that waited together do not arrive together.
      wait += this.random() * Math.min(0.05, wait);
      this.onThrottle?.({ route, delay: wait });
      await this.wait(wait, signal);
    }
  }

  /** Send `op` until it succeeds, fails for good, or `signal` aborts. */
  async send<T>(op: Operation, tenantId: string | undefined, options?: RequestOptions): Promise<Answer<T>> {
    const signal = options?.signal;
    const idempotent = op.idempotent || op.idempotencyKey !== undefined;
    let retry = 0;
    let attempts = 0;
    // Moves to another instance that spent no retry: at most one per other instance.
    let hops = 0;
    for (;;) {
      if (signal?.aborted) throw abortReason(signal);
      await this.throttleWait(op.route, signal);
      const index = this.baseURLs.pick(this.now());
      const base = this.baseURLs.urls[index] as string;
      attempts += 1;
      let answer: { status: number; headers: Record<string, string>; text: string } | undefined;
      let error: unknown;
      try {
        await this.slots.acquire(signal);
      } catch (e) {
        // Aborted while waiting for a slot: the request the throttle let go never left.
        this.throttle?.failed(op.route);
        throw e;
      }
      try {
        answer = await this.attempt(op, base, tenantId, signal);
      } catch (e) {
        error = e;
      } finally {
        // Waits (backoff, throttling) happen outside the concurrency cap.
        this.slots.release();
      }
      if (answer === undefined) {
        this.throttle?.failed(op.route);
        if (signal?.aborted) throw abortReason(signal);
        const failure: Failure = error instanceof Timeout ? "maybe_sent" : failureKind(error);
        const now = this.now();
        this.baseURLs.failed(index, now);
        const reason = error instanceof Error ? error.message : String(error);
        const other = this.baseURLs.otherAvailable(index, now);
        if (failure === "not_sent" && other && hops < this.baseURLs.urls.length - 1) {
          // Nothing was sent: another instance takes it at once, without spending a retry.
          hops += 1;
          this.onRetry?.({ route: op.route, retry: retry + 1, delay: 0, reason: `failing over: ${reason}`, baseURL: base });
          continue;
        }
        const decision = decide({ retry, policy: this.retry, random: this.random, now, idempotent, failure });
        if (!decision.retry) {
          const tries = attempts > 1 ? ` after ${attempts} attempts` : "";
          throw new TransportError(`${op.method} ${base}${op.path} failed${tries}: ${describe(error)}`, {
            attempts,
            cause: error,
          });
        }
        // Another instance is available: go there at once instead of backing off.
        const delay = other ? 0 : decision.delay;
        this.onRetry?.({
          route: op.route,
          retry: retry + 1,
          delay,
          reason: `${decision.reason}: ${reason}`,
          baseURL: base,
        });
        if (delay > 0) await this.wait(delay, signal);
        retry += 1;
        continue;
      }
      const { status, headers, text } = answer;
      const now = this.now();
      const instanceFailed = INSTANCE_FAILURE_STATUSES.has(status);
      if (instanceFailed) this.baseURLs.failed(index, now);
      else this.baseURLs.answered(index);
      this.throttle?.observe(op.route, status, headers, now);
      if (status < 400) return { status, headers, body: this.parse<T>(op, status, text) };
      const decision = decide({ retry, policy: this.retry, random: this.random, now, idempotent, status, headers });
      if (!decision.retry) throw apiError(status, headers, text, attempts);
      // This instance is failing; another one may answer at once.
      const failover = instanceFailed && this.baseURLs.otherAvailable(index, now);
      const event: RetryEvent = {
        route: op.route,
        retry: retry + 1,
        delay: failover ? 0 : decision.delay,
        reason: failover ? `${decision.reason}; failing over` : decision.reason,
        status,
        baseURL: base,
      };
      if (headers["x-request-id"]) event.requestId = headers["x-request-id"];
      this.onRetry?.(event);
      if (event.delay > 0) await this.wait(event.delay, signal);
      retry += 1;
    }
  }

  private async attempt(
    op: Operation,
    base: string,
    tenantId: string | undefined,
    signal: AbortSignal | undefined,
  ): Promise<{ status: number; headers: Record<string, string>; text: string }> {
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.apiKey}`,
      Accept: "application/json",
    };
    // Browsers refuse to set User-Agent from script; Node sends it.
    if (typeof (globalThis as { window?: unknown }).window === "undefined") headers["User-Agent"] = USER_AGENT;
    if (tenantId !== undefined) headers["X-Tenant-Id"] = tenantId;
    if (op.idempotencyKey !== undefined) headers["Idempotency-Key"] = op.idempotencyKey;
    let body: string | undefined;
    if (op.body !== undefined) {
      body = JSON.stringify(op.body);
      headers["Content-Type"] = "application/json";
    }
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.timeoutMs);
    if (signal?.aborted) controller.abort(abortReason(signal));
    const unwatch = signal ? onAbort(signal, () => controller.abort(abortReason(signal))) : undefined;
    try {
      const response = await this.fetcher(base + op.path + queryString(op.query), {
        method: op.method,
        headers,
        body,
        signal: controller.signal,
      });
      const text = await response.text();
      const out: Record<string, string> = {};
      response.headers.forEach((value, name) => {
        out[name.toLowerCase()] = value;
      });
      return { status: response.status, headers: out, text };
    } catch (error) {
      if (timedOut) throw new Timeout(`no answer within ${this.timeoutMs} ms`);
      throw error;
    } finally {
      clearTimeout(timer);
      unwatch?.();
    }
  }

  private parse<T>(op: Operation, status: number, text: string): T {
    if (status === 204 || text === "") return undefined as T;
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new UnexpectedResponseError(
        `${op.route}: the ${status} answer is not JSON: ${JSON.stringify(text.slice(0, 200))}`,
        { body: text },
      );
    }
    if (this.validate) {
      const schema = responseSchema(op.route);
      if (schema !== undefined) checkShape(body, schema, op.route);
    }
    return body as T;
  }
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = (error as { cause?: unknown }).cause;
  const code = cause && typeof cause === "object" ? (cause as { code?: unknown }).code : undefined;
  return typeof code === "string" ? `${error.message} (${code})` : error.message;
}

function queryString(query: Operation["query"]): string {
  if (!query) return "";
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined) params.append(key, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}
