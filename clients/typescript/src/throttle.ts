/**
 * Proactive throttling: stay inside a limit the server has announced instead of learning
 * about it from a 429 (the Python SDK's `Throttle`, same rules).
 *
 * Every limited answer carries `X-RateLimit-Limit/Remaining/Reset` for the tightest
 * bucket the route hit, and the IETF `RateLimit`/`RateLimit-Policy` fields for every
 * bucket. The throttle remembers each bucket's window by name (how many requests are
 * left and when it resets) and which buckets each route (`"GET /v1/score/{scoringJobId}"`)
 * hit. Before a request it reserves one in every bucket of the route, or says how long to
 * wait for the reset when one of them has none left. Buckets are shared: routes counting
 * against one bucket (submissions and status reads against `scoring`) see each other's
 * use. An answer without `RateLimit` items is kept per route, from the trio alone.
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

/** The server's announced limits, per bucket, and the buckets of each route. */
export class Throttle {
  /** Bucket name (or `"route:" + route` without `RateLimit` items) → its window. */
  private readonly windows = new Map<string, Window>();
  /** Route → the windows its requests count against. */
  private readonly routes = new Map<string, string[]>();
  /** route → when its first request left, while its answer is awaited. */
  private readonly probing = new Map<string, number>();
  /** Routes whose answers carry no rate-limit headers. */
  private readonly unlimited = new Set<string>();

  /** Reserve one request on `route` (one in each of its buckets): 0 when it may go now, else seconds to wait first. */
  acquire(route: string, now: number): number {
    const names = this.routes.get(route);
    if (names === undefined) {
      if (this.unlimited.has(route)) return 0;
      // Nothing known yet: one request finds out the limit, the others wait briefly
      // rather than send a burst into an unknown window.
      const started = this.probing.get(route);
      if (started !== undefined && now - started < PROBE_TIMEOUT) return PROBE_WAIT;
      this.probing.set(route, now);
      return 0;
    }
    let wait = 0;
    const held: Window[] = [];
    for (const name of names) {
      const w = this.windows.get(name);
      if (w === undefined) continue;
      if (now >= w.resetAt) {
        if (w.window === undefined) {
          // Window length unknown: forget it and let the next answer teach us.
          this.windows.delete(name);
          continue;
        }
        // Fixed windows follow one another: assume a fresh one, so callers that waited
        // for the reset do not all rush through at once.
        const periods = Math.floor((now - w.resetAt) / w.window) + 1;
        w.resetAt += periods * w.window;
        w.remaining = w.limit;
      }
      if (w.remaining <= 0) wait = Math.max(wait, w.resetAt - now, 0.001);
      held.push(w);
    }
    if (wait) return wait;
    for (const w of held) w.remaining -= 1;
    return 0;
  }

  /** Learn from an answer's status and headers (lower-case names). */
  observe(route: string, status: number, headers: Record<string, string>, now: number): void {
    const limit = int(headers["x-ratelimit-limit"]);
    const remaining = int(headers["x-ratelimit-remaining"]);
    const reset = int(headers["x-ratelimit-reset"]);
    if (limit === undefined || remaining === undefined || reset === undefined) {
      this.probing.delete(route);
      if (status >= 200 && status < 300) this.unlimited.add(route);
      return;
    }
    const learned = new Map<string, Window>();
    // The IETF items: one per bucket the request counted against.
    const current = parseStructured(headers["ratelimit"]);
    const policy = parseStructured(headers["ratelimit-policy"]);
    for (const [name, params] of Object.entries(current)) {
      const r = int(params.r);
      const t = int(params.t);
      const quota = int(policy[name]?.q);
      if (r === undefined || t === undefined) continue;
      const tightest = r === remaining && (quota === undefined || quota === limit);
      const q = quota ?? (tightest ? limit : undefined);
      if (q === undefined) continue;
      // The absolute reset names the tightest bucket's moment; the relative t (whole
      // seconds, rounded up) bounds it against clock skew.
      const base = tightest ? reset : now + t;
      const w = int(policy[name]?.w);
      learned.set(name, {
        limit: q,
        remaining: Math.max(r, 0),
        resetAt: Math.min(Math.max(base, now + t - 1), now + t),
        window: w ? w : undefined,
      });
    }
    if (learned.size === 0) {
      // Without a relative reset, distrust an absolute one far off (skew).
      const resetAt = reset - now > 3600 ? now + 1 : reset;
      learned.set("route:" + route, { limit, remaining: Math.max(remaining, 0), resetAt, window: undefined });
    }
    this.probing.delete(route);
    for (const [name, window] of learned) {
      const known = this.windows.get(name);
      // Resets estimated from whole seconds differ by up to one between answers of one
      // window; windows of a second or two need the tighter reading.
      const same = window.window === undefined || window.window > 2 ? 1 : 0.5;
      if (known !== undefined && Math.abs(known.resetAt - window.resetAt) < same) {
        // Same window: answers arrive out of order, and reservations made since this
        // request left are not in its count; the lower count is right.
        window.remaining = Math.min(window.remaining, known.remaining);
      }
      this.windows.set(name, window);
    }
    // A 429 may name only the denying buckets: keep those learned before.
    const before = this.routes.get(route) ?? [];
    this.routes.set(route, [...before, ...[...learned.keys()].filter((n) => !before.includes(n))]);
  }

  /** A request got no answer: let the next one probe at once. */
  failed(route: string): void {
    this.probing.delete(route);
  }

  /** Drop everything learned. */
  forget(): void {
    this.windows.clear();
    this.routes.clear();
    this.probing.clear();
    this.unlimited.clear();
  }
}
