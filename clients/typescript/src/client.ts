/**
 * `Tollhouse`: a typed client for every public endpoint, grouped as the Python SDK
 * groups them. Each method builds an `Operation` and hands it to the shared send loop
 * (core.ts).
 */
import { ScoreApiMany, type ManyOptions, type ManySummary } from "./bulk.js";
import {
  type ClientOptions,
  Core,
  MAX_BATCH_ITEMS,
  MAX_STATUS_IDS,
  MAX_EVENTS_PER_REQUEST,
  type Operation,
  type RequestOptions,
  newIdempotencyKey,
} from "./core.js";

export { MAX_BATCH_ITEMS, MAX_EVENTS_PER_REQUEST, MAX_STATUS_IDS, newIdempotencyKey };
import { ConfigurationError } from "./errors.js";
import type {
  AnalyticsResponse,
  ApiKey,
  ApiKeyCreated,
  ApiKeyRotated,
  Environment,
  Role,
  WebhookEndpoint,
  WebhookEndpointCreated,
  ArchiveResult,
  CallCounts,
  Criterion,
  Event,
  EventsIngested,
  FairUse,
  GeneratedCriteria,
  Health,
  InterviewQuestions,
  Job,
  JobCriteria,
  JobStatuses,
  Label,
  LabelCounts,
  Limits,
  QueuePage,
  RateLimitStatus,
  ScoreAccepted,
  ScoreBatchResult,
  ScoreRequest,
  ScoringVolume,
  Time,
  TimeRange,
  WebhookDelivery,
} from "./types.js";
import { verify, type VerifyOptions, type WebhookHeaders } from "./webhooks.js";

/** @internal One path parameter, encoded whole so `/` or `?` in an id cannot change the route. */
export function seg(value: string, name: string): string {
  if (typeof value !== "string" || value === "") {
    throw new ConfigurationError(`${name} must be a non-empty string`);
  }
  return encodeURIComponent(value);
}

/** @internal ISO 8601 for the metrics catalogue and body fields (`Z` for a Date). */
export function isoTime(value: Time, name: string): string {
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) throw new ConfigurationError(`${name} is an invalid Date`);
    return value.toISOString();
  }
  if (typeof value === "number") return new Date(value * 1000).toISOString();
  return value;
}

/** Unix seconds for call counts. */
function epoch(value: Time | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (value instanceof Date) return value.getTime() / 1000;
  if (typeof value === "string") {
    const at = Date.parse(value);
    if (Number.isNaN(at)) throw new ConfigurationError(`${name}: ${JSON.stringify(value)} is not a time`);
    return at / 1000;
  }
  return value;
}

export interface ScoreOptions extends RequestOptions {
  /** Your own `Idempotency-Key` (default: a fresh one per call, reused by its retries). */
  idempotencyKey?: string;
}

export interface RangeOptions extends RequestOptions {
  start?: Time;
  end?: Time;
}

export interface MetricOptions extends RequestOptions {
  timeStart: Time;
  timeEnd: Time;
  page?: number;
  pageSize?: number;
}

/**
 * A tollhouse API client.
 *
 * ```ts
 * const tollhouse = new Tollhouse({ apiKey: "sk_test_…", tenantId: "acme" });
 * const volume = await tollhouse.analytics.scoringVolume({ timeRange: "7d" });
 * ```
 *
 * It waits out 429s (`Retry-After` plus jitter), backs off exponentially on 502/503/504
 * and connection failures, holds requests back while the server says a window is used
 * up, caps the requests in flight, fails over between several base URLs, and throws
 * typed errors ({@link APIError} and its subclasses) once the retries are used up.
 */
export class Tollhouse {
  /** @internal */
  readonly core: Core;
  /** The `X-Tenant-Id` sent, if any. */
  readonly tenantId: string | undefined;

  readonly rateLimit: RateLimitApi;
  readonly score: ScoreApi;
  readonly criteria: CriteriaApi;
  readonly analytics: AnalyticsApi;
  readonly callCounts: CallCountsApi;
  readonly events: EventsApi;
  readonly queue: QueueApi;
  readonly webhooks: WebhooksApi;
  readonly keys: KeysApi;
  readonly limits: LimitsApi;
  readonly platform: PlatformApi;

  constructor(options: ClientOptions = {}, shared?: Core) {
    this.core = shared ?? new Core(options);
    this.tenantId = options.tenantId;
    this.rateLimit = new RateLimitApi(this);
    this.score = new ScoreApi(this);
    this.criteria = new CriteriaApi(this);
    this.analytics = new AnalyticsApi(this);
    this.callCounts = new CallCountsApi(this);
    this.events = new EventsApi(this);
    this.queue = new QueueApi(this);
    this.webhooks = new WebhooksApi(this);
    this.keys = new KeysApi(this);
    this.limits = new LimitsApi(this);
    this.platform = new PlatformApi(this);
  }

  /** The base URLs, in rotation order. */
  get baseURLs(): readonly string[] {
    return this.core.baseURLs.urls;
  }

  /** A client for another tenant sharing this one's limits, throttling and concurrency cap. */
  withTenant(tenantId: string | undefined): Tollhouse {
    return new Tollhouse(tenantId === undefined ? {} : { tenantId }, this.core);
  }

  /** @internal Send one operation; its checked body. */
  async call<T>(op: Operation, options?: RequestOptions): Promise<T> {
    return (await this.core.send<T>(op, this.tenantId, options)).body;
  }

  /** `GET /healthz`: whether the server serves. */
  health(options?: RequestOptions): Promise<Health> {
    return this.call({ method: "GET", path: "/healthz", route: "GET /healthz", idempotent: true }, options);
  }
}

/** `client.rateLimit`. */
export class RateLimitApi {
  constructor(private readonly c: Tollhouse) {}

  /** `GET /v1/rate-limit/status`: every bucket and pool of the caller's org. */
  status(options?: RequestOptions): Promise<RateLimitStatus> {
    const route = "GET /v1/rate-limit/status";
    return this.c.call({ method: "GET", path: "/v1/rate-limit/status", route, idempotent: true }, options);
  }
}

/** `client.score`: scoring jobs. */
export class ScoreApi {
  constructor(private readonly c: Tollhouse) {}

  /** `POST /v1/score`: queue one application (idempotent through its `Idempotency-Key`). */
  async create(request: ScoreRequest, options?: ScoreOptions): Promise<ScoreAccepted> {
    const answer = await this.c.core.send<ScoreAccepted>(
      {
        method: "POST",
        path: "/v1/score",
        route: "POST /v1/score",
        body: request,
        idempotent: false,
        idempotencyKey: options?.idempotencyKey ?? newIdempotencyKey(),
      },
      this.c.tenantId,
      options,
    );
    return { ...answer.body, replayed: answer.headers["idempotent-replayed"] === "true" };
  }

  /** `POST /v1/score/batch`: queue 1–100 applications in one request. */
  async batch(items: readonly ScoreRequest[], options?: ScoreOptions): Promise<ScoreBatchResult> {
    if (!Array.isArray(items) || items.length < 1 || items.length > MAX_BATCH_ITEMS) {
      throw new ConfigurationError(`a batch takes 1 to ${MAX_BATCH_ITEMS} items, not ${items?.length}`);
    }
    const answer = await this.c.core.send<ScoreBatchResult>(
      {
        method: "POST",
        path: "/v1/score/batch",
        route: "POST /v1/score/batch",
        body: { items },
        idempotent: false,
        idempotencyKey: options?.idempotencyKey ?? newIdempotencyKey(),
      },
      this.c.tenantId,
      options,
    );
    return { ...answer.body, replayed: answer.headers["idempotent-replayed"] === "true" };
  }

  /** `GET /v1/score/{scoringJobId}`. */
  get(scoringJobId: string, options?: RequestOptions): Promise<Job> {
    return this.c.call(
      {
        method: "GET",
        path: `/v1/score/${seg(scoringJobId, "scoringJobId")}`,
        route: "GET /v1/score/{scoringJobId}",
        idempotent: true,
      },
      options,
    );
  }

  /**
   * `GET /v1/score?ids=`: up to 100 jobs in one request (one poll's cost): the jobs found,
   * in the order asked (`data`), and the ids the key's org and environment have no job of
   * (`notFound`).
   */
  async getMany(scoringJobIds: readonly string[], options?: RequestOptions): Promise<JobStatuses> {
    const ids = [...new Set(scoringJobIds)];
    if (ids.length < 1 || ids.length > MAX_STATUS_IDS) {
      throw new ConfigurationError(`getMany takes 1 to ${MAX_STATUS_IDS} ids, not ${ids.length}`);
    }
    for (const id of ids) {
      if (typeof id !== "string" || !id || id.includes(",")) {
        throw new ConfigurationError(`scoringJobIds: ${JSON.stringify(id)} is not a scoring job id`);
      }
    }
    return this.c.call(
      { method: "GET", path: "/v1/score", route: "GET /v1/score", query: { ids: ids.join(",") }, idempotent: true },
      options,
    );
  }

  /** `GET /v1/score/application/{applicationId}`: the application's latest job. */
  byApplication(applicationId: string, options?: RequestOptions): Promise<Job> {
    return this.c.call(
      {
        method: "GET",
        path: `/v1/score/application/${seg(applicationId, "applicationId")}`,
        route: "GET /v1/score/application/{applicationId}",
        idempotent: true,
      },
      options,
    );
  }

  /**
   * Score many candidates within the limits: batches of 100, never one candidate twice,
   * outcomes to `onResult`. With `webhook: true` it only submits (outcomes `queued`; your
   * receiver collects the results); otherwise it learns outcomes 100 jobs per request
   * (`GET /v1/score?ids=`), not one poll per job. See docs/sdk.md.
   */
  many(
    candidates: Iterable<ScoreRequest> | AsyncIterable<ScoreRequest>,
    options: ManyOptions = {},
  ): Promise<ManySummary> {
    return new ScoreApiMany(this.c, candidates, options).run();
  }
}

/** `client.criteria`: a job posting's criteria. */
export class CriteriaApi {
  constructor(private readonly c: Tollhouse) {}

  /** `POST /v1/criteria/generate`. */
  generate(posting: { jobId: string; title: string; description: string }, options?: RequestOptions): Promise<GeneratedCriteria> {
    return this.c.call(
      {
        method: "POST",
        path: "/v1/criteria/generate",
        route: "POST /v1/criteria/generate",
        body: posting,
        // Generating again replaces the job's criteria with the same derived ones.
        idempotent: true,
      },
      options,
    );
  }

  /** `POST /v1/criteria/questions`. */
  questions(posting: { jobId: string; title: string; description: string }, options?: RequestOptions): Promise<InterviewQuestions> {
    return this.c.call(
      { method: "POST", path: "/v1/criteria/questions", route: "POST /v1/criteria/questions", body: posting, idempotent: true },
      options,
    );
  }

  /** `GET /v1/jobs/{jobId}/criteria`. */
  get(jobId: string, options?: RequestOptions): Promise<JobCriteria> {
    return this.c.call(
      { method: "GET", path: `/v1/jobs/${seg(jobId, "jobId")}/criteria`, route: "GET /v1/jobs/{jobId}/criteria", idempotent: true },
      options,
    );
  }

  /** `POST /v1/jobs/{jobId}/criteria`: add one criterion (not idempotent). */
  add(jobId: string, criterion: { name: string; description?: string; weight?: number }, options?: RequestOptions): Promise<Criterion> {
    // /v1/jobs/{jobId}/criteria rather than /v1/criteria/{jobId}: a job named "generate"
    // or "questions" would hit the AI routes under the latter.
    return this.c.call(
      {
        method: "POST",
        path: `/v1/jobs/${seg(jobId, "jobId")}/criteria`,
        route: "POST /v1/jobs/{jobId}/criteria",
        body: criterion,
        idempotent: false,
      },
      options,
    );
  }

  /** `PATCH /v1/criteria/{jobId}/{criterionId}`. */
  update(
    jobId: string,
    criterionId: string,
    changes: { name?: string; description?: string; weight?: number },
    options?: RequestOptions,
  ): Promise<Criterion> {
    return this.c.call(
      {
        method: "PATCH",
        path: `/v1/criteria/${seg(jobId, "jobId")}/${seg(criterionId, "criterionId")}`,
        route: "PATCH /v1/criteria/{jobId}/{criterionId}",
        body: changes,
        idempotent: true,
      },
      options,
    );
  }

  /** `PATCH /v1/jobs/{jobId}/criteria`: change several criteria at once. */
  updateMany(
    jobId: string,
    changes: ReadonlyArray<{ id: string; name?: string; description?: string; weight?: number }>,
    options?: RequestOptions,
  ): Promise<JobCriteria> {
    return this.c.call(
      {
        method: "PATCH",
        path: `/v1/jobs/${seg(jobId, "jobId")}/criteria`,
        route: "PATCH /v1/jobs/{jobId}/criteria",
        body: { criteria: changes },
        idempotent: true,
      },
      options,
    );
  }

  /** `DELETE /v1/criteria/{jobId}[/{criterionId}]`. */
  async delete(jobId: string, criterionId?: string, options?: RequestOptions): Promise<void> {
    const one = criterionId !== undefined;
    await this.c.call(
      {
        method: "DELETE",
        path: `/v1/criteria/${seg(jobId, "jobId")}` + (one ? `/${seg(criterionId, "criterionId")}` : ""),
        route: one ? "DELETE /v1/criteria/{jobId}/{criterionId}" : "DELETE /v1/criteria/{jobId}",
        idempotent: true,
      },
      options,
    );
  }

  /** `POST /v1/jobs/{jobId}/criteria/archive`. */
  archive(jobId: string, options?: RequestOptions): Promise<ArchiveResult> {
    return this.c.call(
      {
        method: "POST",
        path: `/v1/jobs/${seg(jobId, "jobId")}/criteria/archive`,
        route: "POST /v1/jobs/{jobId}/criteria/archive",
        // Archiving again is a no-op that reports the first time.
        idempotent: true,
      },
      options,
    );
  }
}

/** `client.analytics`: the scoring-volume and metrics catalogue shapes. */
export class AnalyticsApi {
  constructor(private readonly c: Tollhouse) {}

  /** `GET /v1/analytics/scoring-volume?timeRange=`. */
  scoringVolume(params: { timeRange: TimeRange } & RequestOptions): Promise<ScoringVolume> {
    return this.c.call(
      {
        method: "GET",
        path: "/v1/analytics/scoring-volume",
        route: "GET /v1/analytics/scoring-volume",
        query: { timeRange: params.timeRange },
        idempotent: true,
      },
      params,
    );
  }

  /**
   * `GET /v1/analytics/fair-use?timeRange=`: every fair-use signal of the key's org and
   * environment over the range ending now — value, threshold, status (`ok` / `watch` /
   * `flagged`), action, the jobIds or keys involved, first and last seen. Any role.
   */
  fairUse(params: { timeRange: TimeRange } & RequestOptions): Promise<FairUse> {
    return this.c.call(
      {
        method: "GET",
        path: "/v1/analytics/fair-use",
        route: "GET /v1/analytics/fair-use",
        query: { timeRange: params.timeRange },
        idempotent: true,
      },
      params,
    );
  }

  /** `GET /v1/analytics/{metric}`: one catalogue metric over a time range. */
  metric(name: string, params: MetricOptions): Promise<AnalyticsResponse> {
    return this.c.call(
      {
        method: "GET",
        path: `/v1/analytics/${seg(name, "name")}`,
        route: "GET /v1/analytics/{metric}",
        query: {
          time_start: isoTime(params.timeStart, "timeStart"),
          time_end: isoTime(params.timeEnd, "timeEnd"),
          page: params.page,
          page_size: params.pageSize,
        },
        idempotent: true,
      },
      params,
    );
  }

  /** Every page of a paginated metric (`api_calls_log`), page 1 to the last. */
  async *metricPages(name: string, params: Omit<MetricOptions, "page">): AsyncGenerator<AnalyticsResponse> {
    for (let page = 1; ; page++) {
      const result = await this.metric(name, { ...params, page });
      yield result;
      const value = result.value as { page?: unknown; pages?: unknown };
      if (typeof value.pages !== "number" || typeof value.page !== "number" || value.page >= value.pages) return;
    }
  }
}

/** `client.callCounts`: the call-counts shape. */
export class CallCountsApi {
  constructor(private readonly c: Tollhouse) {}

  private range(params: RangeOptions | undefined): Record<string, number | undefined> {
    return {
      start_timestamp: epoch(params?.start, "start"),
      end_timestamp: epoch(params?.end, "end"),
    };
  }

  /** `GET /call-counts/historical/`: the org's calls over time. */
  historical(params?: RangeOptions): Promise<CallCounts> {
    return this.c.call(
      {
        method: "GET",
        path: "/call-counts/historical/",
        route: "GET /call-counts/historical/",
        query: this.range(params),
        idempotent: true,
      },
      params,
    );
  }

  /** `GET /call-counts/historical/{label}/`: one page of series. */
  byLabelPage(label: Label | string, params?: RangeOptions & { amt?: number; cursor?: string }): Promise<LabelCounts> {
    return this.c.call(
      {
        method: "GET",
        path: `/call-counts/historical/${seg(label, "label")}/`,
        route: "GET /call-counts/historical/{label}/",
        query: { ...this.range(params), amt: params?.amt, cursor: params?.cursor },
        idempotent: true,
      },
      params,
    );
  }

  /**
   * Every page of a label, following `next_cursor`. The range's end is fixed when this is
   * called (now, unless given), so every page describes the same range.
   */
  async *byLabel(label: Label | string, params?: RangeOptions & { amt?: number }): AsyncGenerator<LabelCounts> {
    const fixed = { ...params, end: params?.end ?? Date.now() / 1000 };
    let cursor: string | undefined;
    for (;;) {
      const page: LabelCounts = await this.byLabelPage(label, cursor === undefined ? fixed : { ...fixed, cursor });
      yield page;
      if (!page.has_next || !page.next_cursor) return;
      cursor = page.next_cursor;
    }
  }

  /** `GET /call-counts/historical/SCENARIOS/{reco_type}/{name}/`. */
  byScenario(recoType: string, name: string, params?: RangeOptions): Promise<CallCounts> {
    return this.c.call(
      {
        method: "GET",
        path: `/call-counts/historical/SCENARIOS/${seg(recoType, "recoType")}/${seg(name, "name")}/`,
        route: "GET /call-counts/historical/SCENARIOS/{reco_type}/{name}/",
        query: this.range(params),
        idempotent: true,
      },
      params,
    );
  }
}

/** An event as sent: `time` may also be a Date or Unix seconds. */
export type EventInput = Omit<Event, "time"> & { time: Time };

/** `client.events`: product events. */
export class EventsApi {
  constructor(private readonly c: Tollhouse) {}

  /** `POST /v1/events`: store events (idempotent per id), 1,000 per request, totals summed. */
  async send(events: Iterable<EventInput>, options?: RequestOptions): Promise<EventsIngested> {
    const all = Array.from(events, (e) => ({ ...e, time: isoTime(e.time, "time") }));
    const total: EventsIngested = { received: 0, inserted: 0, duplicates: 0 };
    for (let at = 0; at < all.length; at += MAX_EVENTS_PER_REQUEST) {
      const done = await this.c.call<EventsIngested>(
        {
          method: "POST",
          path: "/v1/events",
          route: "POST /v1/events",
          body: all.slice(at, at + MAX_EVENTS_PER_REQUEST),
          // A repeated event id is counted as a duplicate, not stored twice.
          idempotent: true,
        },
        options,
      );
      total.received += done.received;
      total.inserted += done.inserted;
      total.duplicates += done.duplicates;
    }
    return total;
  }
}

export interface QueueOptions extends RequestOptions {
  /** Only jobs in this state. */
  status?: "queued" | "running" | "completed" | "failed";
  /** Jobs per page (1–100, default 20). */
  limit?: number;
  /** `nextCursor` of the previous page. */
  cursor?: string;
}

/** `client.queue`: the org's queue. */
export class QueueApi {
  constructor(private readonly c: Tollhouse) {}

  /** `GET /v1/queue`: the org's queue counts and one page of its jobs, newest first. */
  list(params?: QueueOptions): Promise<QueuePage> {
    return this.c.call(
      {
        method: "GET",
        path: "/v1/queue",
        route: "GET /v1/queue",
        query: { status: params?.status, limit: params?.limit, cursor: params?.cursor },
        idempotent: true,
      },
      params,
    );
  }

  /** Every page of `GET /v1/queue`, following `nextCursor`. */
  async *pages(params?: Omit<QueueOptions, "cursor">): AsyncGenerator<QueuePage> {
    let cursor: string | undefined;
    for (;;) {
      const page: QueuePage = await this.list(cursor === undefined ? params : { ...params, cursor });
      yield page;
      if (!page.hasMore || !page.nextCursor) return;
      cursor = page.nextCursor;
    }
  }
}

/** Overlap of a rotation: how long the old key or secret keeps working. */
export interface RotateOptions extends RequestOptions {
  /** Seconds (the server's default when omitted; 0 ends the old one at once). */
  overlapSeconds?: number;
}

function overlap(options: RotateOptions | undefined): Record<string, number> {
  return options?.overlapSeconds === undefined ? {} : { overlapSeconds: options.overlapSeconds };
}

/** ISO 8601 for a body field (`Z` for a Date). */
function wireTime(value: Time | undefined, name: string): string | undefined {
  return value === undefined ? undefined : isoTime(value, name);
}

/**
 * `client.keys`: the org's own API keys (root and manager keys; others get
 * {@link PermissionDeniedError}), within the key's org and environment.
 */
export class KeysApi {
  constructor(private readonly c: Tollhouse) {}

  /** `GET /v1/keys`: the org's keys, with `lastUsedAt`, never a secret. */
  async list(options?: RequestOptions): Promise<ApiKey[]> {
    const body = await this.c.call<{ data: ApiKey[] }>(
      { method: "GET", path: "/v1/keys", route: "GET /v1/keys", idempotent: true },
      options,
    );
    return body.data;
  }

  /**
   * `POST /v1/keys`: a new key, with its `secret` this once. Never a higher role than the
   * caller's, nor a PRODUCTION key from a SANDBOX one (403). Not sent again once it may
   * have been sent (it would make another key).
   */
  create(
    params: { name?: string; role?: Role; environment?: Environment; expiresAt?: Time | null } & RequestOptions = {},
  ): Promise<ApiKeyCreated> {
    const body: Record<string, unknown> = { role: params.role ?? "member" };
    if (params.name !== undefined) body.name = params.name;
    if (params.environment !== undefined) body.environment = params.environment;
    if (params.expiresAt !== undefined) {
      body.expiresAt = params.expiresAt === null ? null : wireTime(params.expiresAt, "expiresAt");
    }
    return this.c.call({ method: "POST", path: "/v1/keys", route: "POST /v1/keys", body, idempotent: false }, params);
  }

  /** `DELETE /v1/keys/{keyId}`: revoke a key; the key as it is now. */
  revoke(keyId: string, options?: RequestOptions): Promise<ApiKey> {
    return this.c.call(
      { method: "DELETE", path: `/v1/keys/${seg(keyId, "keyId")}`, route: "DELETE /v1/keys/{keyId}", idempotent: true },
      options,
    );
  }

  /** `POST /v1/keys/{keyId}/rotate`: a new key replacing this one (its `secret` once). */
  rotate(keyId: string, options?: RotateOptions): Promise<ApiKeyRotated> {
    return this.c.call(
      {
        method: "POST",
        path: `/v1/keys/${seg(keyId, "keyId")}/rotate`,
        route: "POST /v1/keys/{keyId}/rotate",
        body: overlap(options),
        idempotent: false, // each rotation makes another key
      },
      options,
    );
  }
}

/**
 * `client.limits`: the org's effective limits (root and manager keys; others get
 * {@link PermissionDeniedError}). Read-only: overrides are the API provider's to set.
 */
export class LimitsApi {
  constructor(private readonly c: Tollhouse) {}

  /**
   * `GET /v1/limits`: each bucket's and each pool's policy limit and the org's
   * (`overridden`, `override`, the `keyOverrides` of this environment's keys), and the
   * caller's `environment`.
   */
  get(options?: RequestOptions): Promise<Limits> {
    return this.c.call({ method: "GET", path: "/v1/limits", route: "GET /v1/limits", idempotent: true }, options);
  }
}

const ENDPOINTS = "/v1/webhooks/endpoints";

/** `client.webhooks.endpoints`: where the org's events are sent (root and manager keys). */
export class WebhookEndpointsApi {
  constructor(private readonly c: Tollhouse) {}

  private path(endpointId: string, action = ""): string {
    return `${ENDPOINTS}/${seg(endpointId, "endpointId")}${action}`;
  }

  /** `GET /v1/webhooks/endpoints`: the endpoints of the key's environment. */
  async list(options?: RequestOptions): Promise<WebhookEndpoint[]> {
    const body = await this.c.call<{ data: WebhookEndpoint[] }>(
      { method: "GET", path: ENDPOINTS, route: `GET ${ENDPOINTS}`, idempotent: true },
      options,
    );
    return body.data;
  }

  /**
   * `POST /v1/webhooks/endpoints`: a new endpoint with its `whsec_` secret this once. The
   * URL passes the server's SSRF guard or is a {@link BadRequestError}.
   */
  create(params: { url: string; eventTypes?: readonly string[] | null } & RequestOptions): Promise<WebhookEndpointCreated> {
    const body: Record<string, unknown> = { url: params.url };
    if (params.eventTypes !== undefined) body.eventTypes = params.eventTypes === null ? null : [...params.eventTypes];
    return this.c.call({ method: "POST", path: ENDPOINTS, route: `POST ${ENDPOINTS}`, body, idempotent: false }, params);
  }

  /**
   * `PATCH /v1/webhooks/endpoints/{endpointId}`: enable or disable it, or change its
   * event types (`null`: every type).
   */
  update(
    endpointId: string,
    changes: { enabled?: boolean; eventTypes?: readonly string[] | null } & RequestOptions,
  ): Promise<WebhookEndpoint> {
    const body: Record<string, unknown> = {};
    if (changes.enabled !== undefined) body.enabled = changes.enabled;
    if (changes.eventTypes !== undefined) body.eventTypes = changes.eventTypes === null ? null : [...changes.eventTypes];
    return this.c.call(
      { method: "PATCH", path: this.path(endpointId), route: `PATCH ${ENDPOINTS}/{endpointId}`, body, idempotent: true },
      changes,
    );
  }

  /** `DELETE /v1/webhooks/endpoints/{endpointId}`: remove it; the endpoint as it was. */
  delete(endpointId: string, options?: RequestOptions): Promise<WebhookEndpoint> {
    return this.c.call(
      { method: "DELETE", path: this.path(endpointId), route: `DELETE ${ENDPOINTS}/{endpointId}`, idempotent: true },
      options,
    );
  }

  /**
   * `POST /v1/webhooks/endpoints/{endpointId}/rotate-secret`: a new secret (returned this
   * once); the old one keeps signing alongside it for `overlapSeconds`.
   */
  rotateSecret(endpointId: string, options?: RotateOptions): Promise<WebhookEndpointCreated> {
    return this.c.call(
      {
        method: "POST",
        path: this.path(endpointId, "/rotate-secret"),
        route: `POST ${ENDPOINTS}/{endpointId}/rotate-secret`,
        body: overlap(options),
        idempotent: false, // each call makes another secret
      },
      options,
    );
  }

  /** `POST /v1/webhooks/endpoints/{endpointId}/test`: send a signed `ping`; its delivery after the first attempt. */
  test(endpointId: string, options?: RequestOptions): Promise<WebhookDelivery> {
    return this.c.call(
      { method: "POST", path: this.path(endpointId, "/test"), route: `POST ${ENDPOINTS}/{endpointId}/test`, idempotent: false },
      options,
    );
  }
}

/** `client.webhooks.deliveries`. */
export class WebhookDeliveriesApi {
  constructor(private readonly c: Tollhouse) {}

  /** `GET /v1/webhooks/deliveries`: the org's deliveries (of one job), newest first, with their attempts. */
  async list(params?: { jobId?: string } & RequestOptions): Promise<WebhookDelivery[]> {
    const body = await this.c.call<{ data: WebhookDelivery[] }>(
      {
        method: "GET",
        path: "/v1/webhooks/deliveries",
        route: "GET /v1/webhooks/deliveries",
        query: { jobId: params?.jobId },
        idempotent: true,
      },
      params,
    );
    return body.data;
  }

  /** `POST /v1/webhooks/deliveries/{deliveryId}/replay`: send it again as a new delivery (same message id). */
  replay(deliveryId: string, options?: RequestOptions): Promise<WebhookDelivery> {
    return this.c.call(
      {
        method: "POST",
        path: `/v1/webhooks/deliveries/${seg(deliveryId, "deliveryId")}/replay`,
        route: "POST /v1/webhooks/deliveries/{deliveryId}/replay",
        idempotent: false, // each replay is another delivery
      },
      options,
    );
  }
}

/** `client.webhooks`: endpoints, deliveries, and checking a received webhook. */
export class WebhooksApi {
  readonly endpoints: WebhookEndpointsApi;
  readonly deliveries: WebhookDeliveriesApi;

  constructor(c: Tollhouse) {
    this.endpoints = new WebhookEndpointsApi(c);
    this.deliveries = new WebhookDeliveriesApi(c);
  }

  /** Check a received webhook's Standard Webhooks signature; its parsed JSON. */
  verify(body: string | Uint8Array, headers: WebhookHeaders, secret: string, options?: VerifyOptions): Promise<unknown> {
    return verify(body, headers, secret, options);
  }
}

/** `client.platform`: about the API itself. */
export class PlatformApi {
  constructor(private readonly c: Tollhouse) {}

  /** `GET /v1/platform/openapi.json`: the server's OpenAPI document. */
  openapi(options?: RequestOptions): Promise<Record<string, unknown>> {
    return this.c.call(
      { method: "GET", path: "/v1/platform/openapi.json", route: "GET /v1/platform/openapi.json", idempotent: true },
      options,
    );
  }
}
