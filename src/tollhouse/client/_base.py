"""Everything the sync and async clients share — all but the send loop.

An endpoint call is an :class:`Operation`: method, path, query, body, whether repeating
it is harmless, and how to parse its answer. The functions at the bottom build one per
endpoint. :class:`ClientCore` holds a client's settings and turns an operation into
request arguments, and an answer (or a connection failure) into the next step: wait and
retry, return a parsed model, or raise a typed error. The clients' loops only send,
sleep, and ask the core.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
import orjson

from tollhouse.client import _admin_models as am
from tollhouse.client import _models as m
from tollhouse.client._errors import (
    ClientError,
    TollhouseAPIError,
    TransportError,
    UnexpectedResponse,
    default_code,
    error_class,
)
from tollhouse.client._inputs import (
    EventInput,
    ScoreInput,
    epoch,
    event_body,
    score_body,
    wire_time,
)
from tollhouse.client._instances import INSTANCE_FAILURE_STATUSES, Instances, parse_base_urls
from tollhouse.client._parse import Fields
from tollhouse.client._retry import Failure, RetryPolicy, decide
from tollhouse.client._throttle import Throttle

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
ENV_API_KEY = "TOLLHOUSE_API_KEY"
ENV_BASE_URL = "TOLLHOUSE_URL"
USER_AGENT = "tollhouse-python/0.1.0"
TENANT_HEADER = "X-Tenant-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "idempotent-replayed"
REQUEST_ID_HEADER = "x-request-id"
#: Seconds an idle pooled connection is kept: under ``tollhouse serve``'s 5 s keep-alive
#: (and httpx's own 5 s), so the client never reuses a connection at the instant the
#: server closes it, which fails that request.
KEEPALIVE_EXPIRY = 4.0
#: Events one ``POST /v1/events`` takes; longer lists are sent in several requests.
MAX_EVENTS_PER_REQUEST = 1000
#: Items one ``POST /v1/score/batch`` takes.
MAX_BATCH_ITEMS = 100

TimeRange = Literal["1h", "24h", "7d", "30d", "90d"]
"""The scoring-volume shape's lookback windows (``timeRange``)."""
Label = Literal["ACCOUNTS", "ENDPOINTS", "DBS", "SCENARIOS", "RECO_TYPES", "CHAT", "LLM"]
"""The call-counts shape's labels."""
Time = datetime | float
"""A point in time: an aware datetime or Unix seconds."""


@dataclass(frozen=True, slots=True)
class Operation(Generic[T]):
    """One endpoint call, before any I/O.

    Attributes:
        method: HTTP method.
        path: the path with its parameters filled in and quoted.
        route: the path template (``"GET /v1/score/{scoringJobId}"``): throttling key.
        parse: builds the result from a successful answer.
        params: query parameters.
        json: the JSON body.
        idempotent: whether sending it twice is harmless (decides which failures retry).
        idempotency_key: sent as ``Idempotency-Key``; makes a POST idempotent.
    """

    method: str
    path: str
    route: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str | int | float] | None = None
    json: Any = None
    idempotent: bool = True
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Passed to ``on_retry`` before the client waits to send a call again.

    Attributes:
        route: the call's path template.
        retry: which retry this will be (1 for the first).
        delay: seconds the client waits first.
        reason: e.g. ``"429 Retry-After 1 s"``.
        status: the status that caused it (None for a connection failure).
        request_id: the failed answer's ``X-Request-Id``, if any.
        base_url: the base URL the failed attempt went to.
    """

    route: str
    retry: int
    delay: float
    reason: str
    status: int | None = None
    request_id: str | None = None
    base_url: str | None = None


@dataclass(frozen=True, slots=True)
class ThrottleEvent:
    """Passed to ``on_throttle`` before the client holds a request back.

    Either the route's window is used up (``X-RateLimit-Remaining: 0``) and the wait
    lasts until its reset, or the route's first request is still out and the others
    re-check after a few milliseconds (so a burst does not hit an unknown limit at once).

    Attributes:
        route: the call's path template.
        delay: seconds the client waits before checking again.
    """

    route: str
    delay: float


@dataclass(frozen=True, slots=True)
class Pages(Generic[T]):
    """A paged listing before any I/O: its first call, and the call for the page after
    a given one (None after the last). The clients' page loops only send and yield.

    Attributes:
        first: the first page's call.
        after: the next page's call, from the page just read.
    """

    first: Operation[T]
    after: Callable[[T], Operation[T] | None]


@dataclass(slots=True)
class Call(Generic[T]):
    """One call's way through the send loop: the operation and what happened so far.

    Attributes:
        op: the endpoint call.
        retries: retries spent (of the policy's ``max_retries``).
        attempts: requests sent (or tried).
        hops: attempts moved to another instance without spending a retry.
        instance: the index of the base URL of the latest attempt.
    """

    op: Operation[T]
    retries: int = 0
    attempts: int = 0
    hops: int = 0
    instance: int = 0


@dataclass(slots=True)
class ClientCore:
    """A client's settings and the decisions made from them (no I/O).

    Attributes:
        api_key: the secret (``sk_test_…``/``sk_live_…``).
        instances: the API's base URLs (one or several) and their rotation.
        tenant_id: sent as ``X-Tenant-Id`` on every request when set.
        retry: the retry policy.
        throttle: proactive throttling state, or None when disabled.
        rng: randomness for jitter.
        clock: Unix time.
        on_retry: called before each retry's wait.
        on_throttle: called before each throttling wait.
    """

    api_key: str
    instances: Instances
    tenant_id: str | None
    retry: RetryPolicy
    throttle: Throttle | None
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    on_retry: Callable[[RetryEvent], None] | None = None
    on_throttle: Callable[[ThrottleEvent], None] | None = None

    # --- before sending ------------------------------------------------------------------

    def throttle_wait(self, op: Operation[Any]) -> float:
        """Seconds to wait before ``op`` may be sent (0: go now, one request reserved)."""
        if self.throttle is None:
            return 0.0
        wait = self.throttle.acquire(op.route, self.clock())
        if wait > 0:
            # A little jitter so callers that waited together do not arrive together.
            wait += self.rng.uniform(0, min(0.05, wait))
            logger.debug("throttled", extra={"route": op.route, "delay": wait})
            if self.on_throttle is not None:
                self.on_throttle(ThrottleEvent(op.route, wait))
        return wait

    @property
    def base_url(self) -> str:
        """The first base URL."""
        return self.instances.urls[0]

    def start(self, op: Operation[T]) -> Call[T]:
        """A call of ``op``, before its first attempt."""
        return Call(op)

    def next_attempt(self, call: Call[Any]) -> dict[str, Any]:
        """Choose the instance for the call's next attempt; the request's arguments."""
        call.instance = self.instances.pick(self.clock())
        call.attempts += 1
        return self.request_args(call.op, self.instances.urls[call.instance])

    def request_args(self, op: Operation[Any], base_url: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.build_request`` (or the async one)."""
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self.tenant_id is not None:
            headers[TENANT_HEADER] = self.tenant_id
        if op.idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = op.idempotency_key
        args: dict[str, Any] = {
            "method": op.method,
            "url": (base_url or self.base_url) + op.path,
            "headers": headers,
        }
        if op.params:
            args["params"] = dict(op.params)
        if op.json is not None:
            args["content"] = orjson.dumps(op.json)
            headers["Content-Type"] = "application/json"
        return args

    # --- after an attempt ----------------------------------------------------------------

    def after_answer(self, call: Call[Any], response: httpx.Response) -> float | None:
        """Learn from an answer; return the seconds to wait before the next attempt, or
        None (the answer is final)."""
        op, now = call.op, self.clock()
        status, headers = response.status_code, response.headers
        if status in INSTANCE_FAILURE_STATUSES:
            self.instances.failed(call.instance, now)
        else:
            self.instances.answered(call.instance)
        if self.throttle is not None:
            self.throttle.observe(op.route, status, headers, now)
        if status < 400:
            return None
        decision = decide(
            retry=call.retries,
            policy=self.retry,
            rng=self.rng,
            now=now,
            idempotent=op.idempotent or op.idempotency_key is not None,
            status=status,
            headers=headers,
        )
        if not decision.retry:
            return None
        delay, reason = decision.delay, decision.reason
        if status in INSTANCE_FAILURE_STATUSES and self.instances.other_available(
            call.instance, now
        ):
            # This instance is failing; another one may answer at once.
            delay, reason = 0.0, f"{reason}; failing over"
        return self._retrying(call, delay, reason, status, headers.get(REQUEST_ID_HEADER))

    def abandoned(self, call: Call[Any]) -> None:
        """An attempt the throttle let go ended in neither an answer nor a transport
        failure (cancelled, interrupted, a request that could not be built or read)."""
        if self.throttle is not None:
            self.throttle.failed(call.op.route)

    def after_failure(self, call: Call[Any], exc: httpx.TransportError) -> float | None:
        """Decide on an attempt that got no answer; the seconds to wait before the next
        attempt, or None (raise :meth:`transport_error`)."""
        op, now = call.op, self.clock()
        if self.throttle is not None:
            self.throttle.failed(op.route)
        failure = failure_kind(exc)
        if failure is None:
            return None
        self.instances.failed(call.instance, now)
        other = self.instances.other_available(call.instance, now)
        if failure is Failure.NOT_SENT and other and call.hops < len(self.instances.urls) - 1:
            # Nothing was sent: another instance takes it at once, without spending a
            # retry (at most once per other instance, so a call cannot hop forever).
            call.hops += 1
            self._retrying(call, 0.0, f"failing over: {exc!r}", spend=False)
            return 0.0
        decision = decide(
            retry=call.retries,
            policy=self.retry,
            rng=self.rng,
            now=now,
            idempotent=op.idempotent or op.idempotency_key is not None,
            failure=failure,
        )
        if not decision.retry:
            return None
        delay = 0.0 if other else decision.delay
        return self._retrying(call, delay, f"{decision.reason}: {exc!r}")

    def _retrying(
        self,
        call: Call[Any],
        delay: float,
        reason: str,
        status: int | None = None,
        request_id: str | None = None,
        *,
        spend: bool = True,
    ) -> float:
        event = RetryEvent(
            call.op.route,
            call.retries + 1,
            delay,
            reason,
            status,
            request_id,
            self.instances.urls[call.instance],
        )
        if spend:
            call.retries += 1
        logger.info(
            "retrying",
            extra={
                "route": event.route,
                "retry": event.retry,
                "delay": round(event.delay, 3),
                "reason": event.reason,
                "request_id": event.request_id,
                "base_url": event.base_url,
            },
        )
        if self.on_retry is not None:
            self.on_retry(event)
        return delay

    def finish(self, call: Call[T], response: httpx.Response) -> T:
        """The parsed result of a final answer, or its typed error."""
        if response.status_code >= 400:
            raise api_error(response, call.attempts)
        return call.op.parse(response)

    def transport_error(self, call: Call[Any], exc: httpx.TransportError) -> TransportError:
        """The error for a call that got no answer."""
        op, attempts = call.op, call.attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        base = self.instances.urls[call.instance]
        return TransportError(
            f"{op.method} {base}{op.path} failed{tries}: {exc!r}", attempts=attempts
        )


def failure_kind(exc: httpx.TransportError) -> Failure | None:
    """Whether a failed request may have reached the server; None: not worth retrying."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Failure.NOT_SENT
    if isinstance(exc, httpx.ProxyError):
        return Failure.NOT_SENT
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return None  # a bad URL or request: sending it again changes nothing
    return Failure.MAYBE_SENT


def resolve_settings(
    api_key: str | None, base_url: str | Sequence[str] | None
) -> tuple[str, tuple[str, ...]]:
    """The key and base URLs: arguments, else ``TOLLHOUSE_API_KEY`` / ``TOLLHOUSE_URL``
    (comma-separated for several), else :data:`DEFAULT_BASE_URL`.

    Raises:
        ClientError: no key anywhere.
        ValueError: a base URL that is not an http(s) URL.
    """
    key = api_key or os.environ.get(ENV_API_KEY)
    if not key:
        raise ClientError(
            f"No API key: pass api_key=... or set {ENV_API_KEY} "
            "(create one with `tollhouse keys create --org ORG`)."
        )
    return key, parse_base_urls(base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL)


class ClientBase:
    """What both clients hold and build the same way, and what is read from it (no I/O).

    The subclasses add the HTTP client, the concurrency gate, the way to wait, and the
    send and page loops.
    """

    _core: ClientCore
    _timeout: float
    _max_concurrency: int
    _owns_http: bool

    def _configure(
        self,
        api_key: str | None,
        base_url: str | Sequence[str] | None,
        *,
        tenant_id: str | None,
        timeout: float,
        max_retries: int | None,
        max_concurrency: int,
        throttle: bool,
        retry: RetryPolicy | None,
        on_retry: Callable[[RetryEvent], None] | None,
        on_throttle: Callable[[ThrottleEvent], None] | None,
        rng: random.Random | None,
        clock: Callable[[], float] | None,
        owns_http: bool,
    ) -> httpx.Limits:
        """Check and keep the settings; return the connection limits for an own httpx
        client (as many connections as requests may be in flight)."""
        key, urls = resolve_settings(api_key, base_url)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        # bool is an int: True seconds is a mistake, not a timeout.
        number = not isinstance(timeout, bool) and isinstance(timeout, int | float)
        if not (number and 0 < timeout < math.inf):
            raise ValueError(f"timeout must be a number of seconds above 0, not {timeout!r}")
        policy = retry or RetryPolicy()
        if max_retries is not None:
            policy = dataclasses.replace(policy, max_retries=max_retries)
        self._core = ClientCore(
            api_key=key,
            instances=Instances(urls),
            tenant_id=tenant_id,
            retry=policy,
            # A first request still unanswered after the per-attempt timeout has failed:
            # the longest it holds the others back.
            throttle=Throttle(probe_timeout=timeout) if throttle else None,
            rng=rng or random.Random(),
            clock=clock or time.time,
            on_retry=on_retry,
            on_throttle=on_throttle,
        )
        self._timeout = timeout
        self._max_concurrency = max_concurrency
        self._owns_http = owns_http
        return httpx.Limits(
            max_connections=max_concurrency,
            max_keepalive_connections=max_concurrency,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        )

    @property
    def base_url(self) -> str:
        """The API's (first) base URL."""
        return self._core.base_url

    @property
    def base_urls(self) -> tuple[str, ...]:
        """Every base URL, in rotation order."""
        return self._core.instances.urls

    @property
    def tenant_id(self) -> str | None:
        """The ``X-Tenant-Id`` sent, if any."""
        return self._core.tenant_id

    def with_tenant(self, tenant_id: str | None) -> Self:
        """A client for another tenant, sharing this one's connections, limits and state.

        Closing it does nothing; close the original.
        """
        clone = copy.copy(self)
        clone._core = dataclasses.replace(self._core, tenant_id=tenant_id)
        clone._owns_http = False
        return clone

    def _fixed_end(self, end: Time | None) -> Time:
        """A range's end for a paged read: given, or now — fixed at the first request so
        every page describes the same range."""
        return end if end is not None else self._core.clock()


# --- answers -----------------------------------------------------------------------------


def json_body(response: httpx.Response) -> Any:
    """The answer's JSON.

    Raises:
        UnexpectedResponse: the body is not JSON.
    """
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.text[:500]
        raise UnexpectedResponse(
            f"{response.status_code} answer is not JSON: {text!r}", body=response.text
        ) from None


def fields(response: httpx.Response) -> Fields:
    """The answer's JSON object, for typed reads."""
    return Fields(json_body(response))


def api_error(response: httpx.Response, attempts: int = 1) -> TollhouseAPIError:
    """The typed error of an error answer, from either error shape.

    The error envelope ``{"error": {"type", "code", "status", "message", "requestId"}}``
    and the metrics catalogue shape's ``{"detail": "…"}`` or
    ``{"detail": [{"loc", "msg", "type"}]}`` (docs/api-shapes.md).
    """
    status = response.status_code
    headers = {k.lower(): v for k, v in response.headers.items()}
    request_id = headers.get(REQUEST_ID_HEADER)
    code = default_code(status)
    message = response.reason_phrase or f"HTTP {status}"
    kind: str | None = None
    try:
        body: Any = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = response.text
        if body.strip():
            message = body.strip()[:500]
    if isinstance(body, Mapping):
        envelope = body.get("error")
        detail = body.get("detail")
        if isinstance(envelope, Mapping):
            code = _str(envelope.get("code")) or code
            message = _str(envelope.get("message")) or message
            kind = _str(envelope.get("type"))
            request_id = _str(envelope.get("requestId")) or request_id
        elif isinstance(detail, str):
            message = detail
        elif isinstance(detail, list):
            message = "; ".join(_detail_item(item) for item in detail) or message
    return error_class(status)(
        status,
        code,
        message,
        request_id=request_id,
        type=kind,
        body=body,
        headers=headers,
        attempts=attempts,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _detail_item(item: Any) -> str:
    """``{"loc": ["query", "page_size"], "msg": "…"}`` → ``page_size: …``."""
    if not isinstance(item, Mapping):
        return str(item)
    loc = item.get("loc")
    where = ".".join(str(p) for p in loc[1:] if p is not None) if isinstance(loc, list) else ""
    msg = str(item.get("msg", ""))
    return f"{where}: {msg}" if where else msg


def _replayed(response: httpx.Response) -> bool:
    value: str = response.headers.get(REPLAYED_HEADER, "")
    return value.lower() == "true"


# --- operations, one per endpoint --------------------------------------------------------


def _seg(value: str, name: str) -> str:
    """One path parameter, quoted so that ``/`` or ``?`` in an id cannot change the route."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return quote(value, safe="")


def _no_content(response: httpx.Response) -> None:
    return None


def health() -> Operation[m.Health]:
    return Operation("GET", "/healthz", "GET /healthz", lambda r: m.parse_health(fields(r)))


def rate_limit_status() -> Operation[m.RateLimitStatus]:
    return Operation(
        "GET",
        "/v1/rate-limit/status",
        "GET /v1/rate-limit/status",
        lambda r: m.parse_rate_limit_status(fields(r)),
    )


def new_idempotency_key() -> str:
    """A fresh ``Idempotency-Key`` for one logical call (its retries reuse it)."""
    return "sdk-" + uuid.uuid4().hex


def score(
    item: ScoreInput, idempotency_key: str | None, default_job_id: str | None = None
) -> Operation[m.ScoreAccepted]:
    return Operation(
        "POST",
        "/v1/score",
        "POST /v1/score",
        lambda r: m.parse_score_accepted(fields(r), _replayed(r)),
        json=score_body(item, default_job_id),
        idempotent=False,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def score_batch(
    items: Sequence[ScoreInput], idempotency_key: str | None, default_job_id: str | None = None
) -> Operation[m.ScoreBatchResult]:
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise ValueError(f"a batch takes 1 to {MAX_BATCH_ITEMS} items, not {len(items)}")
    return Operation(
        "POST",
        "/v1/score/batch",
        "POST /v1/score/batch",
        lambda r: m.parse_score_batch(fields(r), _replayed(r)),
        json={"items": [score_body(i, default_job_id) for i in items]},
        idempotent=False,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def get_score(scoring_job_id: str) -> Operation[m.ScoreJob]:
    return Operation(
        "GET",
        f"/v1/score/{_seg(scoring_job_id, 'scoring_job_id')}",
        "GET /v1/score/{scoringJobId}",
        lambda r: m.parse_score_job(fields(r)),
    )


#: ``GET /v1/score?ids=``: the most ids one call answers.
MAX_STATUS_IDS = 100


def get_scores(scoring_job_ids: Sequence[str]) -> Operation[m.ScoreJobs]:
    ids = list(dict.fromkeys(scoring_job_ids))
    if not 1 <= len(ids) <= MAX_STATUS_IDS:
        raise ValueError(f"get_scores takes 1 to {MAX_STATUS_IDS} ids, not {len(ids)}")
    for i in ids:
        _seg(i, "scoring_job_ids[]")
        if "," in i:
            raise ValueError(f"scoring job ids hold no comma: {i!r}")
    return Operation(
        "GET",
        "/v1/score",
        "GET /v1/score",
        lambda r: m.parse_score_jobs(fields(r)),
        params={"ids": ",".join(ids)},
    )


def get_score_by_application(application_id: str) -> Operation[m.ScoreJob]:
    return Operation(
        "GET",
        f"/v1/score/application/{_seg(application_id, 'application_id')}",
        "GET /v1/score/application/{applicationId}",
        lambda r: m.parse_score_job(fields(r)),
    )


def webhook_deliveries(job_id: str | None) -> Operation[list[m.WebhookDelivery]]:
    return Operation(
        "GET",
        "/v1/webhooks/deliveries",
        "GET /v1/webhooks/deliveries",
        lambda r: m.parse_deliveries(fields(r)),
        params={"jobId": job_id} if job_id else None,
    )


# the self-serve API: keys and webhook endpoints ----------------------------------------


def list_keys() -> Operation[list[m.ApiKey]]:
    return Operation("GET", "/v1/keys", "GET /v1/keys", lambda r: m.parse_api_keys(fields(r)))


def create_key(
    name: str, role: str, environment: str | None, expires_at: datetime | str | None
) -> Operation[m.ApiKey]:
    body: dict[str, Any] = {"name": name, "role": role}
    if environment is not None:
        body["environment"] = environment
    if expires_at is not None:
        body["expiresAt"] = wire_time(expires_at)
    return Operation(
        "POST",
        "/v1/keys",
        "POST /v1/keys",
        lambda r: m.parse_api_key(fields(r)),
        json=body,
        idempotent=False,  # a second key each time
    )


def revoke_key(key_id: str) -> Operation[m.ApiKey]:
    return Operation(
        "DELETE",
        f"/v1/keys/{_seg(key_id, 'key_id')}",
        "DELETE /v1/keys/{keyId}",
        lambda r: m.parse_api_key(fields(r)),
    )


def _overlap(overlap_seconds: int | None) -> dict[str, Any]:
    return {} if overlap_seconds is None else {"overlapSeconds": overlap_seconds}


def rotate_key(key_id: str, overlap_seconds: int | None) -> Operation[m.ApiKey]:
    return Operation(
        "POST",
        f"/v1/keys/{_seg(key_id, 'key_id')}/rotate",
        "POST /v1/keys/{keyId}/rotate",
        lambda r: m.parse_api_key(fields(r)),
        json=_overlap(overlap_seconds),
        idempotent=False,  # each rotation makes another key
    )


ENDPOINTS_PATH = "/v1/webhooks/endpoints"


def list_endpoints() -> Operation[list[m.WebhookEndpoint]]:
    return Operation(
        "GET",
        ENDPOINTS_PATH,
        "GET " + ENDPOINTS_PATH,
        lambda r: m.parse_webhook_endpoints(fields(r)),
    )


def endpoint_body(url: str, event_types: Sequence[str] | None) -> dict[str, Any]:
    """The body that registers a webhook endpoint (self-serve and provider API alike)."""
    body: dict[str, Any] = {"url": url}
    if event_types is not None:
        body["eventTypes"] = list(event_types)
    return body


def endpoint_patch(
    enabled: bool | None, event_types: Sequence[str] | None, every_event: bool
) -> dict[str, Any]:
    """The PATCH body of a webhook endpoint (self-serve and provider API alike): only what
    is given changes; ``every_event`` sends ``"eventTypes": null`` (every type)."""
    body: dict[str, Any] = {}
    if enabled is not None:
        body["enabled"] = enabled
    if every_event:
        body["eventTypes"] = None
    elif event_types is not None:
        body["eventTypes"] = list(event_types)
    return body


def create_endpoint(url: str, event_types: Sequence[str] | None) -> Operation[m.WebhookEndpoint]:
    return Operation(
        "POST",
        ENDPOINTS_PATH,
        "POST " + ENDPOINTS_PATH,
        lambda r: m.parse_webhook_endpoint(fields(r)),
        json=endpoint_body(url, event_types),
        idempotent=False,
    )


def _endpoint_path(endpoint_id: str, action: str = "") -> str:
    return f"{ENDPOINTS_PATH}/{_seg(endpoint_id, 'endpoint_id')}{action}"


def update_endpoint(
    endpoint_id: str, enabled: bool | None, event_types: Sequence[str] | None, every_event: bool
) -> Operation[m.WebhookEndpoint]:
    return Operation(
        "PATCH",
        _endpoint_path(endpoint_id),
        "PATCH /v1/webhooks/endpoints/{endpointId}",
        lambda r: m.parse_webhook_endpoint(fields(r)),
        json=endpoint_patch(enabled, event_types, every_event),
    )


def delete_endpoint(endpoint_id: str) -> Operation[m.WebhookEndpoint]:
    return Operation(
        "DELETE",
        _endpoint_path(endpoint_id),
        "DELETE /v1/webhooks/endpoints/{endpointId}",
        lambda r: m.parse_webhook_endpoint(fields(r)),
    )


def rotate_endpoint_secret(
    endpoint_id: str, overlap_seconds: int | None
) -> Operation[m.WebhookEndpoint]:
    return Operation(
        "POST",
        _endpoint_path(endpoint_id, "/rotate-secret"),
        "POST /v1/webhooks/endpoints/{endpointId}/rotate-secret",
        lambda r: m.parse_webhook_endpoint(fields(r)),
        json=_overlap(overlap_seconds),
        idempotent=False,  # each call makes another secret
    )


def ping_endpoint(endpoint_id: str) -> Operation[m.WebhookDelivery]:
    return Operation(
        "POST",
        _endpoint_path(endpoint_id, "/test"),
        "POST /v1/webhooks/endpoints/{endpointId}/test",
        lambda r: m.parse_delivery(fields(r)),
        idempotent=False,
    )


def replay_delivery(delivery_id: str) -> Operation[m.WebhookDelivery]:
    return Operation(
        "POST",
        f"/v1/webhooks/deliveries/{_seg(delivery_id, 'delivery_id')}/replay",
        "POST /v1/webhooks/deliveries/{deliveryId}/replay",
        lambda r: m.parse_delivery(fields(r)),
        idempotent=False,
    )


def queue(status: str | None, limit: int | None, cursor: str | None) -> Operation[m.QueuePage]:
    params: dict[str, str | int | float] = {}
    if status is not None:
        params["status"] = status
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    return Operation(
        "GET",
        "/v1/queue",
        "GET /v1/queue",
        lambda r: m.parse_queue_page(fields(r)),
        params=params,
    )


def queue_pages(status: str | None, limit: int | None) -> Pages[m.QueuePage]:
    """Every page of ``GET /v1/queue``, following ``nextCursor``."""

    def after(page: m.QueuePage) -> Operation[m.QueuePage] | None:
        if not page.has_more or not page.next_cursor:
            return None
        return queue(status, limit, page.next_cursor)

    return Pages(queue(status, limit, None), after)


# criteria -------------------------------------------------------------------------------


def _posting(job_id: str, title: str, description: str) -> dict[str, str]:
    return {"jobId": job_id, "title": title, "description": description}


def generate_criteria(job_id: str, title: str, description: str) -> Operation[m.JobCriteria]:
    return Operation(
        "POST",
        "/v1/criteria/generate",
        "POST /v1/criteria/generate",
        lambda r: m.parse_job_criteria(fields(r)),
        json=_posting(job_id, title, description),
        # Generating again replaces the job's criteria with the same derived ones.
        idempotent=True,
    )


def generate_questions(
    job_id: str, title: str, description: str
) -> Operation[m.InterviewQuestions]:
    return Operation(
        "POST",
        "/v1/criteria/questions",
        "POST /v1/criteria/questions",
        lambda r: m.parse_questions(fields(r)),
        json=_posting(job_id, title, description),
    )


def get_criteria(job_id: str) -> Operation[m.JobCriteria]:
    return Operation(
        "GET",
        f"/v1/jobs/{_seg(job_id, 'job_id')}/criteria",
        "GET /v1/jobs/{jobId}/criteria",
        lambda r: m.parse_job_criteria(fields(r)),
    )


def _changes(name: str | None, description: str | None, weight: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if description is not None:
        body["description"] = description
    if weight is not None:
        body["weight"] = weight
    return body


def add_criterion(
    job_id: str, name: str, description: str | None, weight: float | None
) -> Operation[m.Criterion]:
    # /v1/jobs/{jobId}/criteria rather than /v1/criteria/{jobId}: a job named "generate"
    # or "questions" would hit the AI routes under the latter.
    return Operation(
        "POST",
        f"/v1/jobs/{_seg(job_id, 'job_id')}/criteria",
        "POST /v1/jobs/{jobId}/criteria",
        lambda r: m.parse_criterion(fields(r)),
        json={"name": name, **_changes(None, description, weight)},
        idempotent=False,  # each call adds one more criterion
    )


def update_criterion(
    job_id: str,
    criterion_id: str,
    name: str | None,
    description: str | None,
    weight: float | None,
) -> Operation[m.Criterion]:
    return Operation(
        "PATCH",
        f"/v1/criteria/{_seg(job_id, 'job_id')}/{_seg(criterion_id, 'criterion_id')}",
        "PATCH /v1/criteria/{jobId}/{criterionId}",
        lambda r: m.parse_criterion(fields(r)),
        json=_changes(name, description, weight),
    )


def update_criteria(job_id: str, changes: Iterable[Mapping[str, Any]]) -> Operation[m.JobCriteria]:
    return Operation(
        "PATCH",
        f"/v1/jobs/{_seg(job_id, 'job_id')}/criteria",
        "PATCH /v1/jobs/{jobId}/criteria",
        lambda r: m.parse_job_criteria(fields(r)),
        json={"criteria": [dict(c) for c in changes]},
    )


def delete_criteria(job_id: str, criterion_id: str | None) -> Operation[None]:
    if criterion_id is None:
        path = f"/v1/criteria/{_seg(job_id, 'job_id')}"
        route = "DELETE /v1/criteria/{jobId}"
    else:
        path = f"/v1/criteria/{_seg(job_id, 'job_id')}/{_seg(criterion_id, 'criterion_id')}"
        route = "DELETE /v1/criteria/{jobId}/{criterionId}"
    return Operation("DELETE", path, route, _no_content)


def archive_criteria(job_id: str) -> Operation[m.ArchiveResult]:
    return Operation(
        "POST",
        f"/v1/jobs/{_seg(job_id, 'job_id')}/criteria/archive",
        "POST /v1/jobs/{jobId}/criteria/archive",
        lambda r: m.parse_archive(fields(r)),
        # Archiving again is a no-op that reports the first time.
        idempotent=True,
    )


# analytics ------------------------------------------------------------------------------


def scoring_volume(time_range: str) -> Operation[m.ScoringVolume]:
    return Operation(
        "GET",
        "/v1/analytics/scoring-volume",
        "GET /v1/analytics/scoring-volume",
        lambda r: m.parse_scoring_volume(fields(r)),
        params={"timeRange": time_range},
    )


def fair_use(time_range: str) -> Operation[m.FairUse]:
    return Operation(
        "GET",
        "/v1/analytics/fair-use",
        "GET /v1/analytics/fair-use",
        lambda r: m.parse_fair_use(fields(r)),
        params={"timeRange": time_range},
    )


def limits() -> Operation[am.OrgLimits]:
    return Operation("GET", "/v1/limits", "GET /v1/limits", lambda r: am.parse_limits(fields(r)))


def metric(
    name: str,
    time_start: datetime | str,
    time_end: datetime | str,
    page: int | None,
    page_size: int | None,
) -> Operation[m.MetricResult]:
    params: dict[str, str | int | float] = {
        "time_start": wire_time(time_start),
        "time_end": wire_time(time_end),
    }
    if page is not None:
        params["page"] = page
    if page_size is not None:
        params["page_size"] = page_size
    return Operation(
        "GET",
        f"/v1/analytics/{_seg(name, 'name')}",
        "GET /v1/analytics/{metric}",
        lambda r: m.parse_metric(fields(r)),
        params=params,
    )


def metric_pages(
    name: str, time_start: datetime | str, time_end: datetime | str, page_size: int | None
) -> Pages[m.MetricResult]:
    """Every page of a paginated metric (``api_calls_log``), from page 1 to ``pages``.

    A metric that is not paginated is one page.
    """

    def after(result: m.MetricResult) -> Operation[m.MetricResult] | None:
        page, pages = result.page, result.pages
        if page is None or pages is None or page >= pages:
            return None
        return metric(name, time_start, time_end, page + 1, page_size)

    return Pages(metric(name, time_start, time_end, 1, page_size), after)


def _range(start: Time | None, end: Time | None) -> dict[str, str | int | float]:
    params: dict[str, str | int | float] = {}
    s, e = epoch(start), epoch(end)
    if s is not None:
        params["start_timestamp"] = s
    if e is not None:
        params["end_timestamp"] = e
    return params


def historical(start: Time | None, end: Time | None) -> Operation[m.CallCounts]:
    return Operation(
        "GET",
        "/call-counts/historical/",
        "GET /call-counts/historical/",
        lambda r: m.parse_call_counts(fields(r)),
        params=_range(start, end),
    )


def by_label(
    label: str, start: Time | None, end: Time | None, amt: int | None, cursor: str | None
) -> Operation[m.LabelCounts]:
    params = _range(start, end)
    if amt is not None:
        params["amt"] = amt
    if cursor is not None:
        params["cursor"] = cursor
    return Operation(
        "GET",
        f"/call-counts/historical/{_seg(label, 'label')}/",
        "GET /call-counts/historical/{label}/",
        lambda r: m.parse_label_counts(fields(r)),
        params=params,
    )


def label_pages(
    label: str, start: Time | None, end: Time | None, amt: int | None
) -> Pages[m.LabelCounts]:
    """Every page of a label, following ``next_cursor`` (``end`` must be fixed: see
    :meth:`ClientBase._fixed_end`)."""

    def after(page: m.LabelCounts) -> Operation[m.LabelCounts] | None:
        if not page.has_next or not page.next_cursor:
            return None
        return by_label(label, start, end, amt, page.next_cursor)

    return Pages(by_label(label, start, end, amt, None), after)


def by_scenario(
    reco_type: str, name: str, start: Time | None, end: Time | None
) -> Operation[m.CallCounts]:
    return Operation(
        "GET",
        f"/call-counts/historical/SCENARIOS/{_seg(reco_type, 'reco_type')}/{_seg(name, 'name')}/",
        "GET /call-counts/historical/SCENARIOS/{reco_type}/{name}/",
        lambda r: m.parse_call_counts(fields(r)),
        params=_range(start, end),
    )


def ingest_events(events: Sequence[EventInput]) -> Operation[m.EventsIngested]:
    return Operation(
        "POST",
        "/v1/events",
        "POST /v1/events",
        lambda r: m.parse_events_ingested(fields(r)),
        json=[event_body(e) for e in events],
        # Idempotent per (org, event id): a repeated event is counted as a duplicate.
        idempotent=True,
    )


def event_chunks(events: Iterable[EventInput]) -> list[list[EventInput]]:
    """Events in requests of at most :data:`MAX_EVENTS_PER_REQUEST`."""
    chunks: list[list[EventInput]] = [[]]
    for event in events:
        if len(chunks[-1]) == MAX_EVENTS_PER_REQUEST:
            chunks.append([])
        chunks[-1].append(event)
    return chunks if chunks[0] else []


def sum_ingested(results: Iterable[m.EventsIngested]) -> m.EventsIngested:
    """The totals of several ingest answers."""
    received = inserted = duplicates = 0
    for r in results:
        received += r.received
        inserted += r.inserted
        duplicates += r.duplicates
    return m.EventsIngested(received, inserted, duplicates)
