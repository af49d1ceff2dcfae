/**
 * When to retry and how long to wait: pure functions of the attempt, the answer and a
 * random source (the scoring API shape's advice: respect `Retry-After`, add jitter, back
 * off exponentially when failures repeat). The same rules as the Python SDK's `decide()`.
 *
 * | failure | retried? | wait |
 * | --- | --- | --- |
 * | 429 | always (refused before the API ran) | `Retry-After` + U(0, jitter); from the 2nd retry at least the backoff |
 * | 429, `Retry-After` > `maxRetryAfter` | no | — |
 * | 503 | always | backoff, at least `Retry-After` |
 * | 502, 504 | idempotent calls only | backoff |
 * | connection refused / not sent | always | backoff (another base URL first, if any) |
 * | timeout, reset mid-way | idempotent calls only | backoff |
 * | other 4xx, 500 | never | — |
 */

/** How a client retries. Times in seconds. */
export interface RetryPolicy {
  /** Retries after the first attempt (0 disables retrying). */
  maxRetries: number;
  /** Ceiling of the first backoff; it doubles per retry. */
  backoffBase: number;
  /** Largest backoff. */
  backoffMax: number;
  /** At most this much is added to a `Retry-After`. */
  retryAfterJitter: number;
  /** A `Retry-After` longer than this is not waited out: the error is thrown at once. */
  maxRetryAfter: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  maxRetries: 5,
  backoffBase: 0.5,
  backoffMax: 30,
  retryAfterJitter: 0.5,
  maxRetryAfter: 120,
});

/** How a request failed without an HTTP answer. */
export type Failure = "not_sent" | "maybe_sent";

export interface RetryDecision {
  retry: boolean;
  /** Seconds to wait first. */
  delay: number;
  /** Why, for hooks and errors (`"429 Retry-After 1 s"`, `"retries used up (5)"`). */
  reason: string;
}

/** A random number in [0, 1). */
export type Random = () => number;

/** The wait before retry number `retry` (0-based): exponential with equal jitter. */
export function backoff(retry: number, policy: RetryPolicy, random: Random): number {
  const ceiling = Math.min(policy.backoffMax, policy.backoffBase * 2 ** Math.min(retry, 62));
  return ceiling / 2 + random() * (ceiling / 2);
}

const DIGITS = /^[0-9]+$/;

/** `Retry-After` as seconds from `now` (Unix seconds): delta-seconds or an HTTP-date. */
export function parseRetryAfter(value: string | null | undefined, now: number): number | undefined {
  if (value === null || value === undefined) return undefined;
  const text = value.trim();
  if (DIGITS.test(text)) return Number(text);
  if (!/[a-z]/i.test(text)) return undefined;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at / 1000 - now);
}

export interface DecideInput {
  /** Retries already made for this call (0 after the first attempt). */
  retry: number;
  policy: RetryPolicy;
  random: Random;
  /** Unix seconds (for an HTTP-date `Retry-After`). */
  now: number;
  /** Whether doing the call twice is harmless. */
  idempotent: boolean;
  /** The answer's status, when there was one. */
  status?: number;
  /** The answer's headers, lower-case names. */
  headers?: Record<string, string>;
  /** How it failed, when there was no answer. */
  failure?: Failure;
}

const RETRY_STATUSES = new Set([502, 503, 504]);

/** Whether to retry after an attempt, and after how long. */
export function decide(input: DecideInput): RetryDecision {
  const { retry, policy, random, status, failure } = input;
  const usedUp = { retry: false, delay: 0, reason: `retries used up (${policy.maxRetries})` };
  if (status !== undefined && status >= 200 && status < 400) {
    return { retry: false, delay: 0, reason: "success" };
  }
  if (failure !== undefined) {
    if (failure === "maybe_sent" && !input.idempotent) {
      return { retry: false, delay: 0, reason: "not idempotent; the request may have been processed" };
    }
    if (retry >= policy.maxRetries) return usedUp;
    return { retry: true, delay: backoff(retry, policy, random), reason: `connection failure (${failure})` };
  }
  if (status === undefined) throw new TypeError("an answer's status or a failure is required");
  const retryAfter = parseRetryAfter(input.headers?.["retry-after"], input.now);
  if (status === 429) {
    if (retry >= policy.maxRetries) return usedUp;
    if (retryAfter === undefined) {
      return { retry: true, delay: backoff(retry, policy, random), reason: "429 without Retry-After" };
    }
    if (retryAfter > policy.maxRetryAfter) {
      return {
        retry: false,
        delay: 0,
        reason: `Retry-After ${retryAfter} s exceeds maxRetryAfter ${policy.maxRetryAfter} s`,
      };
    }
    // The first retry waits what the server asked (plus jitter); when 429s repeat, the
    // exponential backoff takes over if it is longer.
    let wait = retry === 0 ? retryAfter : Math.max(retryAfter, backoff(retry, policy, random));
    wait += random() * policy.retryAfterJitter;
    return { retry: true, delay: wait, reason: `429 Retry-After ${retryAfter} s` };
  }
  if (RETRY_STATUSES.has(status)) {
    if (status !== 503 && !input.idempotent) {
      return { retry: false, delay: 0, reason: `${status} on a call that is not idempotent` };
    }
    if (retry >= policy.maxRetries) return usedUp;
    let wait = backoff(retry, policy, random);
    if (retryAfter !== undefined && retryAfter <= policy.maxRetryAfter) wait = Math.max(wait, retryAfter);
    return { retry: true, delay: wait, reason: String(status) };
  }
  return { retry: false, delay: 0, reason: `${status} is not retried` };
}
