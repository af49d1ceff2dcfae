/**
 * `@tollhouse/sdk`: a typed client for tollhouse APIs (browsers and Node ≥ 18, no
 * dependencies).
 *
 * ```ts
 * import { Tollhouse } from "@tollhouse/sdk";
 *
 * const tollhouse = new Tollhouse({ apiKey: "sk_test_…", tenantId: "acme-corp" });
 * const volume = await tollhouse.analytics.scoringVolume({ timeRange: "7d" });
 * ```
 */
export {
  Tollhouse,
  AnalyticsApi,
  CallCountsApi,
  CriteriaApi,
  EventsApi,
  PlatformApi,
  QueueApi,
  RateLimitApi,
  ScoreApi,
  WebhooksApi,
  KeysApi,
  LimitsApi,
  WebhookEndpointsApi,
  WebhookDeliveriesApi,
  MAX_BATCH_ITEMS,
  MAX_EVENTS_PER_REQUEST,
  MAX_STATUS_IDS,
  newIdempotencyKey,
  type EventInput,
  type MetricOptions,
  type QueueOptions,
  type RangeOptions,
  type RotateOptions,
  type ScoreOptions,
} from "./client.js";
export {
  AdminClient,
  AuditAdmin,
  KeysAdmin,
  LimitsAdmin,
  OrgsAdmin,
  WebhooksAdmin,
  WebhookEndpointsAdmin,
  WebhookDeliveriesAdmin,
  ENV_ADMIN_TOKEN,
  type AdminClientOptions,
  type AdminKeyInput,
  type EnvironmentOptions,
  type PageOptions,
} from "./admin.js";
export {
  DEFAULT_BASE_URL,
  ENV_API_KEY,
  ENV_BASE_URL,
  BaseURLs,
  COOL_DOWN_SECONDS,
  INSTANCE_FAILURE_STATUSES,
  chooseBaseURL,
  otherAvailable,
  type ClientOptions,
  type RequestOptions,
  type RetryEvent,
  type ThrottleEvent,
} from "./core.js";
export {
  jobStatuses,
  queueListing,
  type ManyOptions,
  type ManySummary,
  type ScoreOutcome,
  type StatusQuery,
  type StatusSource,
} from "./bulk.js";
export {
  TollhouseError,
  ConfigurationError,
  TransportError,
  UnexpectedResponseError,
  WebhookVerificationError,
  APIError,
  BadRequestError,
  AuthenticationError,
  PermissionDeniedError,
  NotFoundError,
  ValidationError,
  RateLimitError,
  ServerError,
  apiError,
} from "./errors.js";
export { DEFAULT_RETRY, backoff, decide, parseRetryAfter, type RetryDecision, type RetryPolicy } from "./retry.js";
export { Throttle, parseStructured } from "./throttle.js";
export { webhooks, verify, sign, type VerifyOptions, type WebhookHeaders } from "./webhooks.js";
export { checkShape } from "./validate.js";
export type * from "./types.js";
export { FINAL_STATUSES } from "./types.js";
export type { components, paths, operations } from "./generated/openapi.js";
