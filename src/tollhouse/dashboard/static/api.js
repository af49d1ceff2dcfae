// The dashboard's only way to data: tollhouse's public API, the key in X-API-Key.

/** An answer other than 2xx: `status` and the server's message (envelope or detail). */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function messageOf(body, response) {
  if (body && typeof body === "object") {
    if (body.error && typeof body.error.message === "string") return body.error.message;
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail) && body.detail[0] && body.detail[0].msg) {
      return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    }
  }
  return `${response.status} ${response.statusText || "error"}`;
}

function retryAfterSeconds(response, attempt) {
  const header = Number(response.headers.get("retry-after"));
  const base = Number.isFinite(header) && header > 0 ? header : Math.min(2 ** attempt, 30);
  return base + Math.random() * 0.5;
}

/**
 * A client for one key. `onRateLimited(waitSeconds | null)` is told when a 429 makes it
 * wait (and with null once an answer gets through).
 */
export function createApi(key, { base, onRateLimited = () => {} } = {}) {
  const root = base || new URL("../", document.baseURI);

  async function get(path, params = {}, { retries = 4 } = {}) {
    const url = new URL(path, root);
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    for (let attempt = 0; ; attempt++) {
      const response = await fetch(url, {
        headers: { "X-API-Key": key, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
      });
      if (response.status === 429 && attempt < retries) {
        const wait = retryAfterSeconds(response, attempt);
        onRateLimited(wait);
        await sleep(wait * 1000);
        continue;
      }
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      if (response.status !== 429) onRateLimited(null);
      if (!response.ok) {
        const error = new ApiError(response.status, messageOf(body, response), body);
        if (response.status === 429) error.retryAfter = retryAfterSeconds(response, attempt);
        throw error;
      }
      return body;
    }
  }

  /** One change (POST, PATCH, DELETE) with a JSON body; never repeated (not idempotent). */
  async function send(method, path, body) {
    const response = await fetch(new URL(path, root), {
      method,
      headers: { "X-API-Key": key, Accept: "application/json", "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      answer = null;
    }
    if (!response.ok) throw new ApiError(response.status, messageOf(answer, response), answer);
    return answer;
  }

  return { get, send };
}
