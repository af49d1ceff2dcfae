/**
 * Proactive throttling: stay inside a limit the server has announced instead of learning
 * about it from a 429 (the Python SDK's `Throttle`, same rules).
 *
 * Every limited answer carries `X-RateLimit-Limit/Remaining/Reset` for the tightest
 * bucket the route hit, and the IETF `RateLimit`/`RateLimit-Policy` fields for every
 * bucket. The throttle remembers, per route (`"GET /v1/score/{scoringJobId}"`), the
 * tightest window: how many requests are left and when it resets. Before a request it
 * reserves one, or says how long to wait for the reset when none are left.
 *
 * Clock skew: `X-RateLimit-Reset` is absolute, on the server's clock; the `RateLimit`
 * field's `t` is relative, so the reset is kept within `[now + t - 1, now + t]`.
 *
 * Plain data with the time passed in (Unix seconds); the client does the waiting.
 */

/** While the first request on a route is out, others re-check this often (seconds) … */
export const PROBE_WAIT = 0.02;
/** … for at most this long; then they go regardless (an answer may never come). */
export const PROBE_TIMEOUT = 2.0;

interface Window {
  limit: number;
  remaining: number;
  /** Local clock, Unix seconds. */
  resetAt: number;
  /** Length in seconds, when `RateLimit-Policy` named it. */
  window: number | undefined;
}

const ITEM = /^\s*"?([^";,]+)"?\s*((?:;\s*[a-z]+\s*=\s*[^;,]+)*)/;
const PARAM = /;\s*([a-z]+)\s*=\s*([^;,]+)/g;

/** `"a";r=1;t=2, "b";r=5;t=60` → `{a: {r: "1", t: "2"}, b: {…}}`. */
export function parseStructured(value: string | undefined): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  if (!value) return out;
  for (const part of value.split(",")) {
    const m = ITEM.exec(part);
    if (!m || m[1] === undefined) continue;
    const params: Record<string, string> = {};
    for (const p of (m[2] ?? "").matchAll(PARAM)) {
      if (p[1] !== undefined && p[2] !== undefined) params[p[1]] = p[2].trim();
    }
    out[m[1].trim()] = params;
  }
  return out;
}

function int(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  return /^-?[0-9]+$/.test(text) ? Number(text) : undefined;
}

/** Per-route view of the server's announced limits. */
export class Throttle {
  private readonly windows = new Map<string, Window>();
  /** route → when its first request left, while its answer is awaited. */
  private readonly probing = new Map<string, number>();
  /** Routes whose answers carry no rate-limit headers. */
  private readonly unlimited = new Set<string>();

  /** Reserve one request on `route`: 0 when it may go now, else seconds to wait first. */
  acquire(route: string, now: number): number {
    const w = this.windows.get(route);
    if (w === undefined) {
      if (this.unlimited.has(route)) return 0;
      // Nothing known yet: one request finds out the limit, the others wait briefly
      // rather than send a burst into an unknown window.
      const started = this.probing.get(route);
      if (started !== undefined && now - started < PROBE_TIMEOUT) return PROBE_WAIT;
      this.probing.set(route, now);
      return 0;
    }
    if (now >= w.resetAt) {
      if (w.window === undefined) {
        this.windows.delete(route);
        return 0;
      }
      // Fixed windows follow one another: assume a fresh one, so callers that waited for
      // the reset do not all rush through at once.
      const periods = Math.floor((now - w.resetAt) / w.window) + 1;
      w.resetAt += periods * w.window;
      w.remaining = w.limit;
    }
    if (w.remaining > 0) {
      w.remaining -= 1;
      return 0;
    }
    return Math.max(w.resetAt - now, 0.001);
  }

  /** Learn from an answer's status and headers (lower-case names). */
  observe(route: string, status: number, headers: Record<string, string>, now: number): void {
    const limit = int(headers["x-ratelimit-limit"]);
    let remaining = int(headers["x-ratelimit-remaining"]);
    const reset = int(headers["x-ratelimit-reset"]);
    if (limit === undefined || remaining === undefined || reset === undefined) {
      this.probing.delete(route);
      if (status >= 200 && status < 300) this.unlimited.add(route);
      return;
    }
    let resetAt = reset;
    let window: number | undefined;
    const current = parseStructured(headers["ratelimit"]);
    const policy = parseStructured(headers["ratelimit-policy"]);
    let matched = false;
    for (const [name, params] of Object.entries(current)) {
      if (int(params.r) !== remaining) continue;
      const quota = int(policy[name]?.q);
      if (quota !== undefined && quota !== limit) continue;
      const t = int(params.t);
      if (t !== undefined) resetAt = Math.min(Math.max(resetAt, now + t - 1), now + t);
      const w = int(policy[name]?.w);
      window = w ? w : undefined;
      matched = true;
      break;
    }
    // Without a relative reset, distrust an absolute one far off (skew).
    if (!matched && resetAt - now > 3600) resetAt = now + 1;
    this.probing.delete(route);
    const known = this.windows.get(route);
    if (known !== undefined && Math.abs(known.resetAt - resetAt) < 0.5) {
      // Same window: answers arrive out of order, and reservations made since this
      // request left are not in its count; the lower count is right.
      remaining = Math.min(remaining, known.remaining);
    }
    this.windows.set(route, { limit, remaining: Math.max(remaining, 0), resetAt, window });
  }

  /** A request got no answer: let the next one probe at once. */
  failed(route: string): void {
    this.probing.delete(route);
  }

  /** Drop everything learned. */
  forget(): void {
    this.windows.clear();
    this.probing.clear();
    this.unlimited.clear();
  }
}
