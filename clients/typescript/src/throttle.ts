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
 * Requests in flight: every request `acquire` lets go counts against its route until its
 * answer is observed or it `failed`, and each bucket's count is that of the routes known
 * to hit it. A request sent just before a window's end may be decided after it, in the
 * next window, so a fixed window that rolls over starts with `limit - inFlight` left, not
 * `limit` (a request out at the boundary may count in either window: it is counted in
 * both). For the same reason a window first learned from an answer starts with its
 * `remaining` less the requests still out, and an answer about an earlier window than the
 * one already known changes nothing. Answers then correct the figures.
 *
 * The first request on a route the throttle knows nothing about goes alone; the others
 * wait for its answer, or for the client's own per-attempt timeout (`probeTimeout`) in
 * case neither an answer nor a failure is ever reported.
 *
 * Clock skew: `X-RateLimit-Reset` is absolute, on the server's clock; the `RateLimit`
 * field's `t` is relative, so the reset is kept within `[now + t - 1, now + t]`.
 *
 * Plain data with the time passed in (Unix seconds); the client does the waiting.
 */

/** While the first request on a route is out, others re-check this often (seconds) … */
export const PROBE_WAIT = 0.02;
/**
 * … for at most `probeTimeout` (the client passes its per-attempt timeout; this, its
 * default one, when none is given); then they go regardless (an answer may never come).
 */
export const PROBE_TIMEOUT = 30.0;

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

/**
 * The server's announced limits, per bucket, and the buckets of each route. Every request
 * `acquire` lets go must end in exactly one `observe` or `failed` call for its route: that
 * is how its in-flight count is given back.
 */
export class Throttle {
  /** Bucket name (or `"route:" + route` without `RateLimit` items) → its window. */
  private readonly windows = new Map<string, Window>();
  /** Route → the windows its requests count against. */
  private readonly routes = new Map<string, string[]>();
  /** route → when its first request left, while its answer is awaited. */
  private readonly probing = new Map<string, number>();
  /** Routes whose answers carry no rate-limit headers. */
  private readonly unlimited = new Set<string>();
  /** Route → requests let go and not yet answered or failed. */
  private readonly inFlight = new Map<string, number>();

  /**
   * @param probeTimeout how long (seconds) the first request on an unknown route holds the
   *   others back at most: the client's per-attempt timeout, after which it has an answer
   *   or has failed.
   */
  constructor(private readonly probeTimeout: number = PROBE_TIMEOUT) {}

  /**
   * Reserve one request on `route` (one in each of its buckets): 0 when it may go now (it
   * is counted in flight until `observe` or `failed` for `route`), else seconds to wait
   * first.
   */
  acquire(route: string, now: number): number {
    const names = this.routes.get(route);
    if (names === undefined) {
      if (!this.unlimited.has(route)) {
        // Nothing known yet: one request finds out the limit, the others wait rather
        // than send a burst into an unknown window.
        const started = this.probing.get(route);
        if (started !== undefined && now - started < this.probeTimeout) return PROBE_WAIT;
        this.probing.set(route, now);
      }
      this.inFlight.set(route, (this.inFlight.get(route) ?? 0) + 1);
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
        // for the reset do not all rush through at once. Requests still out may be
        // decided in it: count them in it too.
        const periods = Math.floor((now - w.resetAt) / w.window) + 1;
        w.resetAt += periods * w.window;
        w.remaining = Math.max(0, w.limit - this.out(name));
      }
      if (w.remaining <= 0) wait = Math.max(wait, w.resetAt - now, 0.001);
      held.push(w);
    }
    if (wait) return wait;
    for (const w of held) w.remaining -= 1;
    this.inFlight.set(route, (this.inFlight.get(route) ?? 0) + 1);
    return 0;
  }

  /** Requests in flight on the routes known to hit bucket `name`. */
  private out(name: string): number {
    let count = 0;
    for (const [route, n] of this.inFlight) if (this.routes.get(route)?.includes(name)) count += n;
    return count;
  }

  /** One request on `route` is no longer in flight. */
  private landed(route: string): void {
    const count = this.inFlight.get(route) ?? 0;
    // Also after forget(): a request let go before it must not go negative.
    if (count > 1) this.inFlight.set(route, count - 1);
    else this.inFlight.delete(route);
  }

  /** Learn from an answer's status and headers (lower-case names). */
  observe(route: string, status: number, headers: Record<string, string>, now: number): void {
    const limit = int(headers["x-ratelimit-limit"]);
    const remaining = int(headers["x-ratelimit-remaining"]);
    const reset = int(headers["x-ratelimit-reset"]);
    if (limit === undefined || remaining === undefined || reset === undefined) {
      this.landed(route);
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
    this.landed(route);
    this.probing.delete(route);
    // A 429 may name only the denying buckets: keep those learned before.
    const before = this.routes.get(route) ?? [];
    this.routes.set(route, [...before, ...[...learned.keys()].filter((n) => !before.includes(n))]);
    for (const [name, window] of learned) {
      const known = this.windows.get(name);
      // Resets estimated from whole seconds differ by up to one between answers of one
      // window; windows of a second or two need the tighter reading.
      const same = window.window === undefined || window.window > 2 ? 1 : 0.5;
      if (known !== undefined && Math.abs(known.resetAt - window.resetAt) < same) {
        // Same window: answers arrive out of order, and reservations made since this
        // request left are not in its count; the lower count is right.
        window.remaining = Math.min(window.remaining, known.remaining);
      } else if (known !== undefined && window.resetAt < known.resetAt) {
        // Decided in a window already over (sent before the boundary, answered after
        // it): the current one's count stands.
        continue;
      } else {
        // A window new to us: requests still out may be decided in it and are not in
        // its count.
        window.remaining = Math.max(0, window.remaining - this.out(name));
      }
      this.windows.set(name, window);
    }
  }

  /**
   * A request on `route` got no answer (it failed, timed out or was abandoned): it is no
   * longer in flight, and the next one may probe at once.
   */
  failed(route: string): void {
    this.landed(route);
    this.probing.delete(route);
  }

  /** Drop everything learned. */
  forget(): void {
    this.windows.clear();
    this.routes.clear();
    this.probing.clear();
    this.unlimited.clear();
    this.inFlight.clear();
  }
}
