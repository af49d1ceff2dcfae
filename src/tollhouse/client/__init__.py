"""The tollhouse Python SDK: typed sync and async clients for every public endpoint.

::

    from tollhouse.client import Client

    with Client(api_key="sk_test_…", base_url="http://127.0.0.1:8000", tenant_id="acme") as c:
        status = c.rate_limit_status()
        c.criteria.generate("job_1", "Backend Engineer", "Python, PostgreSQL, 5 years.")
        for outcome in c.score_many(candidates, state="scoring.state"):
            print(outcome.key, outcome.status, outcome.score)

Both clients wait out 429s (``Retry-After`` plus jitter), back off exponentially on
repeated failures, 502/503/504 and connection errors, throttle ahead of an exhausted
window (``X-RateLimit-Remaining``/``Reset``), cap requests in flight, and raise typed
errors (:class:`TollhouseAPIError` and its subclasses) once the retries are used up.
:class:`AdminClient` and :class:`AsyncAdminClient` call the provider API
(``/v1/admin/*``) with an admin token. See ``docs/sdk.md``.
"""

from __future__ import annotations

from tollhouse.client._admin_client import (
    AdminClient,
    AuditAdmin,
    KeysAdmin,
    LimitsAdmin,
    OrgsAdmin,
)
from tollhouse.client._admin_models import (
    AdminKey,
    AuditEntry,
    BucketLimit,
    KeyOverride,
    LimitOverride,
    Org,
    OrgLimits,
    Page,
    PoolLimit,
)
from tollhouse.client._admin_ops import ENV_ADMIN_TOKEN
from tollhouse.client._async_admin_client import (
    AsyncAdminClient,
    AsyncAuditAdmin,
    AsyncKeysAdmin,
    AsyncLimitsAdmin,
    AsyncOrgsAdmin,
)
from tollhouse.client._async_client import (
    AsyncAnalyticsApi,
    AsyncCallCountsApi,
    AsyncClient,
    AsyncCriteriaApi,
    AsyncEventsApi,
    AsyncKeysApi,
    AsyncWebhookDeliveriesApi,
    AsyncWebhookEndpointsApi,
    AsyncWebhooksApi,
)
from tollhouse.client._base import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    Label,
    RetryEvent,
    ThrottleEvent,
    Time,
    TimeRange,
)
from tollhouse.client._bulk import BulkProgress, ScoreOutcome
from tollhouse.client._client import (
    AnalyticsApi,
    CallCountsApi,
    Client,
    CriteriaApi,
    EventsApi,
    KeysApi,
    WebhookDeliveriesApi,
    WebhookEndpointsApi,
    WebhooksApi,
)
from tollhouse.client._errors import (
    AuthenticationError,
    BadRequestError,
    ClientError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TollhouseAPIError,
    TransportError,
    UnexpectedResponse,
    ValidationError,
)
from tollhouse.client._inputs import Event, ScoreRequest
from tollhouse.client._journal import JournalError
from tollhouse.client._models import (
    ApiKey,
    ArchiveResult,
    BatchItem,
    BucketStatus,
    CallCounts,
    Category,
    Criterion,
    DeliveryAttempt,
    ErrorDetail,
    EventsIngested,
    Health,
    InterviewQuestions,
    JobCriteria,
    LabelCounts,
    MetricResult,
    PoolStatus,
    QueuePage,
    QueueSummary,
    RateLimitStatus,
    ScoreAccepted,
    ScoreBatchResult,
    ScoreJob,
    ScoreJobs,
    ScoringVolume,
    Series,
    VolumePoint,
    WebhookDelivery,
    WebhookEndpoint,
)
from tollhouse.client._retry import RetryDecision, RetryPolicy, backoff, decide

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_ADMIN_TOKEN",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "AdminClient",
    "AdminKey",
    "AnalyticsApi",
    "ApiKey",
    "ArchiveResult",
    "AsyncAdminClient",
    "AsyncAnalyticsApi",
    "AsyncAuditAdmin",
    "AsyncCallCountsApi",
    "AsyncClient",
    "AsyncCriteriaApi",
    "AsyncEventsApi",
    "AsyncKeysAdmin",
    "AsyncKeysApi",
    "AsyncLimitsAdmin",
    "AsyncOrgsAdmin",
    "AsyncWebhookDeliveriesApi",
    "AsyncWebhookEndpointsApi",
    "AsyncWebhooksApi",
    "AuditAdmin",
    "AuditEntry",
    "AuthenticationError",
    "BadRequestError",
    "BatchItem",
    "BucketLimit",
    "BucketStatus",
    "BulkProgress",
    "CallCounts",
    "CallCountsApi",
    "Category",
    "Client",
    "ClientError",
    "CriteriaApi",
    "Criterion",
    "DeliveryAttempt",
    "ErrorDetail",
    "Event",
    "EventsApi",
    "EventsIngested",
    "Health",
    "InterviewQuestions",
    "JobCriteria",
    "JournalError",
    "KeyOverride",
    "KeysAdmin",
    "KeysApi",
    "Label",
    "LabelCounts",
    "LimitOverride",
    "LimitsAdmin",
    "MetricResult",
    "NotFoundError",
    "Org",
    "OrgLimits",
    "OrgsAdmin",
    "Page",
    "PermissionDeniedError",
    "PoolLimit",
    "PoolStatus",
    "QueuePage",
    "QueueSummary",
    "RateLimitError",
    "RateLimitStatus",
    "RetryDecision",
    "RetryEvent",
    "RetryPolicy",
    "ScoreAccepted",
    "ScoreBatchResult",
    "ScoreJob",
    "ScoreJobs",
    "ScoreOutcome",
    "ScoreRequest",
    "ScoringVolume",
    "Series",
    "ServerError",
    "ThrottleEvent",
    "Time",
    "TimeRange",
    "TollhouseAPIError",
    "TransportError",
    "UnexpectedResponse",
    "ValidationError",
    "VolumePoint",
    "WebhookDeliveriesApi",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEndpointsApi",
    "WebhooksApi",
    "backoff",
    "decide",
]
