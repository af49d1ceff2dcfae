/**
 * The SDK's errors, under one root.
 *
 * ```
 * TollhouseError                    anything the SDK throws
 * ├── ConfigurationError            bad settings (no API key …), before any request
 * ├── TransportError                no answer: refused, reset, timed out (after retries)
 * ├── UnexpectedResponseError       a 2xx whose body is not what the API documents (.path)
 * ├── WebhookVerificationError      a webhook request that is not authentic
 * └── APIError                      .status .code .message .requestId .type .body .headers .attempts
 *     ├── BadRequestError      400  BAD_REQUEST, TENANT_REQUIRED, a `detail` 400
 *     ├── AuthenticationError  401
 *     ├── PermissionDeniedError 403
 *     ├── NotFoundError        404
 *     ├── ValidationError      422  VALIDATION_FAILED, IDEMPOTENCY_KEY_REUSED
 *     ├── RateLimitError       429  after the retries (.retryAfter)
 *     └── ServerError          5xx
 * ```
 *
 * An `APIError` is built from either error shape the server uses: the error envelope
 * `{"error": {"type", "code", "status", "message", "requestId"}}` and the metrics
 * catalogue shape's `{"detail": "…"}` / `{"detail": [{"loc", "msg", "type"}]}`. Where the
 * body has no code or request id, the status and the `X-Request-Id` header supply them.
 */
import { parseRetryAfter } from "./retry.js";

/** Root of everything the SDK throws. */
export class TollhouseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The client's settings cannot work (e.g. no API key); thrown before any request. */
export class ConfigurationError extends TollhouseError {}

/** The request got no HTTP answer (connection refused or reset, timeout), after retries. */
export class TransportError extends TollhouseError {
  /** Requests sent, the failed retries included. */
  readonly attempts: number;
  /** The underlying error (fetch's TypeError, a timeout …). */
  readonly cause: unknown;

  constructor(message: string, options: { attempts: number; cause?: unknown }) {
    super(message);
    this.attempts = options.attempts;
    this.cause = options.cause;
  }
}

/** A successful answer whose body does not have the documented shape. */
export class UnexpectedResponseError extends TollhouseError {
  /** Where in the body, e.g. `results[3].queuePosition` (`""` for the body itself). */
  readonly path: string;
  /** The body as received (parsed JSON, or the text when it was not JSON). */
  readonly body: unknown;

  constructor(message: string, options: { path?: string; body?: unknown } = {}) {
    super(message);
    this.path = options.path ?? "";
    this.body = options.body;
  }
}

/** A webhook request is not authentic (header missing, signature or timestamp wrong). */
export class WebhookVerificationError extends TollhouseError {}

export interface APIErrorInit {
  status: number;
  code: string;
  message: string;
  requestId?: string | undefined;
  type?: string | undefined;
  body?: unknown;
  headers?: Record<string, string>;
  attempts?: number;
}

/** The API answered with an error status. */
export class APIError extends TollhouseError {
  /** The HTTP status. */
  readonly status: number;
  /** `RATE_LIMITED`, `NOT_FOUND` …; derived from the status for a `{"detail"}` body. */
  readonly code: string;
  /** The envelope's `requestId`, else the `X-Request-Id` header. */
  readonly requestId: string | undefined;
  /** The envelope's `type` URI, if any. */
  readonly type: string | undefined;
  /** The parsed JSON body (or its text when it was not JSON). */
  readonly body: unknown;
  /** The answer's headers, lower-case names. */
  readonly headers: Readonly<Record<string, string>>;
  /** Requests sent for this call, retries included. */
  readonly attempts: number;
  /** The server's message alone (`message` also carries status, code and request id). */
  readonly detail: string;

  constructor(init: APIErrorInit) {
    super(
      `${init.status} ${init.code}: ${init.message}` + (init.requestId ? ` [${init.requestId}]` : ""),
    );
    this.status = init.status;
    this.code = init.code;
    this.detail = init.message;
    this.requestId = init.requestId;
    this.type = init.type;
    this.body = init.body;
    this.headers = { ...(init.headers ?? {}) };
    this.attempts = init.attempts ?? 1;
  }
}

/** 400: the request is malformed, or `X-Tenant-Id` is missing (`TENANT_REQUIRED`). */
export class BadRequestError extends APIError {}
/** 401: no key, or a key that is unknown or revoked. */
export class AuthenticationError extends APIError {}
/** 403: the key's role may not call this endpoint. */
export class PermissionDeniedError extends APIError {}
/** 404: no such job, application, criterion, metric or label (for this org). */
export class NotFoundError extends APIError {}
/** 422: a field is missing or wrong; the message names it. */
export class ValidationError extends APIError {}
/** 429 after the retries the policy allows (or a `Retry-After` longer than it accepts). */
export class RateLimitError extends APIError {
  /** Seconds the server asked to wait (`Retry-After`), or undefined. */
  get retryAfter(): number | undefined {
    return parseRetryAfter(this.headers["retry-after"], Date.now() / 1000);
  }
}
/** 5xx: the API or its upstream failed (after the retries allowed for this call). */
export class ServerError extends APIError {}

const BY_STATUS: Record<number, typeof APIError> = {
  400: BadRequestError,
  401: AuthenticationError,
  403: PermissionDeniedError,
  404: NotFoundError,
  422: ValidationError,
  429: RateLimitError,
};

/** Codes for bodies without one (`{"detail": …}`), as the envelope names them. */
const CODES: Record<number, string> = {
  400: "BAD_REQUEST",
  401: "UNAUTHORIZED",
  403: "FORBIDDEN",
  404: "NOT_FOUND",
  405: "METHOD_NOT_ALLOWED",
  413: "PAYLOAD_TOO_LARGE",
  422: "VALIDATION_FAILED",
  429: "RATE_LIMITED",
  500: "INTERNAL",
  502: "UPSTREAM_UNAVAILABLE",
  503: "SERVICE_UNAVAILABLE",
  504: "UPSTREAM_TIMEOUT",
};

function text(value: unknown): string | undefined {
  return typeof value === "string" && value ? value : undefined;
}

/** `{"loc": ["query", "page_size"], "msg": "…"}` → `page_size: …`. */
function detailItem(item: unknown): string {
  if (item === null || typeof item !== "object") return String(item);
  const { loc, msg } = item as { loc?: unknown; msg?: unknown };
  const where = Array.isArray(loc)
    ? loc
        .slice(1)
        .filter((p) => p !== null && p !== undefined)
        .join(".")
    : "";
  const message = msg === undefined ? "" : String(msg);
  return where ? `${where}: ${message}` : message;
}

/**
 * The typed error of an error answer, from either error shape.
 *
 * @param status the HTTP status.
 * @param headers the answer's headers, lower-case names.
 * @param raw the body's text.
 * @param attempts requests sent for this call.
 */
export function apiError(
  status: number,
  headers: Record<string, string>,
  raw: string,
  attempts = 1,
): APIError {
  let requestId = headers["x-request-id"];
  let code = CODES[status] ?? `HTTP_${status}`;
  let message = `HTTP ${status}`;
  let type: string | undefined;
  let body: unknown = undefined;
  if (raw) {
    try {
      body = JSON.parse(raw);
    } catch {
      body = raw;
      if (raw.trim()) message = raw.trim().slice(0, 500);
    }
  }
  if (body !== null && typeof body === "object" && !Array.isArray(body)) {
    const { error: envelope, detail } = body as { error?: unknown; detail?: unknown };
    if (envelope !== null && typeof envelope === "object") {
      const e = envelope as Record<string, unknown>;
      code = text(e.code) ?? code;
      message = text(e.message) ?? message;
      type = text(e.type);
      requestId = text(e.requestId) ?? requestId;
    } else if (typeof detail === "string") {
      message = detail;
    } else if (Array.isArray(detail)) {
      message = detail.map(detailItem).join("; ") || message;
    }
  }
  const Kind = BY_STATUS[status] ?? (status >= 500 ? ServerError : APIError);
  return new Kind({ status, code, message, requestId, type, body, headers, attempts });
}
