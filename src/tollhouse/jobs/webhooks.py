"""Signed webhooks (Standard Webhooks): endpoints per org and environment, an outbox of
deliveries, a sender with a retry schedule, and every attempt recorded.

This module holds what a webhook *is*: the values (:class:`Endpoint`, :class:`Delivery`,
:class:`Attempt`, …), signing, the retry schedule, the checks on what an org registers
and the JSON the API shows. The rest lives one module per seam:

* :mod:`tollhouse.jobs.webhook_store` — :class:`~tollhouse.jobs.webhook_store.WebhookStore`:
  endpoints, deliveries and attempts in the SQL database (its reads in
  :mod:`tollhouse.jobs.webhook_reads`);
* :mod:`tollhouse.jobs.webhook_sender` — :func:`~tollhouse.jobs.webhook_sender.send_attempt`
  and :class:`~tollhouse.jobs.webhook_sender.WebhookSender`, the HTTP side;
* :mod:`tollhouse.jobs.outbox` — the deliveries a finished job leaves, written in its
  own transaction.

* **Environments**: an endpoint belongs to an org in one environment (SANDBOX or
  PRODUCTION); a job's events go only to the endpoints of its own org and environment,
  and a key lists only the deliveries of its own.

* **Signing**: ``webhook-id`` (the event's message id, the same for every retry),
  ``webhook-timestamp`` (Unix seconds of this attempt) and
  ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, keyed with the
  base64-decoded part of the endpoint's ``whsec_<base64>`` secret — by
  :func:`tollhouse.webhooks.sign`, the function receivers verify with. For an overlap
  after :meth:`~tollhouse.jobs.webhook_store.WebhookStore.rotate_secret` the old secret
  signs too: the header carries both signatures, space-separated (Standard Webhooks
  allows several), so a receiver verifies with either secret until the overlap ends.
* **Event types**: an endpoint with an event-type filter gets only those events
  (``ping`` test messages always go through).
* **Test and replay**: :meth:`~tollhouse.jobs.webhook_store.WebhookStore.ping` and
  :meth:`~tollhouse.jobs.webhook_store.WebhookStore.replay` stage one delivery already
  held by the caller, who sends its first attempt at once
  (:func:`~tollhouse.jobs.webhook_sender.send_attempt`,
  :meth:`~tollhouse.jobs.webhook_store.WebhookStore.record`); a failed one is retried on
  the schedule like any other.
* **Outbox**: when a job finishes, :func:`tollhouse.jobs.outbox.stage_events` writes one
  delivery per enabled endpoint of the job's org and environment in the job's own
  transaction; the body is
  fixed then, so every retry sends the same bytes. It lives in its own module because
  the queue's state machine calls it: the queue needs the outbox, not the sender.
* **Schedule**: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (±10 % jitter);
  ``Retry-After`` on a failed attempt is honoured (up to 10 h); after the last attempt
  the delivery is ``failed``.
* **410 Gone** disables the endpoint; its pending deliveries are cancelled.
* Redirects are not followed (a 3xx is a failed attempt): the signed body goes only to
  the URL the org registered.
* :class:`~tollhouse.jobs.webhook_sender.WebhookSender` runs attempts in its own tasks
  with its own concurrency, so a slow receiver never holds a job worker's slot.
"""

from __future__ import annotations

import base64
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

from tollhouse.jobs.model import PRODUCTION, iso
from tollhouse.webhooks import HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SECRET_PREFIX, sign

__all__ = [
    "KEEP",
    "Attempt",
    "AttemptResult",
    "Delivery",
    "DeliveryTask",
    "Endpoint",
    "EndpointChanges",
    "Keep",
    "check_event_types",
    "check_url",
    "delivery_json",
    "endpoint_json",
    "new_secret",
    "next_delay",
    "signed_headers",
]

#: Delay before each attempt, in seconds: attempt 1 at once, then 5 s, 5 min, 30 min, 2 h,
#: 5 h, 10 h, 10 h after the one before.
SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
#: Each delay is scaled by a random factor in 1 ± JITTER.
JITTER = 0.1
#: A receiver's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 36000.0
#: Longest URL accepted for an endpoint.
MAX_URL_CHARS = 2048
USER_AGENT = "tollhouse-webhooks/1"
#: The event type of a test message
#: (:meth:`tollhouse.jobs.webhook_store.WebhookStore.ping`); never filtered out.
PING: Final = "ping"
#: Most event types one endpoint's filter names, and the longest one.
MAX_EVENT_TYPES = 20
MAX_EVENT_TYPE_CHARS = 64

# --- signing (pure) ----------------------------------------------------------------------


def new_secret() -> str:
    """A new endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(
    secret: str,
    message_id: str,
    timestamp: int,
    body: bytes,
    previous_secret: str | None = None,
) -> dict[str, str]:
    """Every header of one attempt; with ``previous_secret`` (a rotation's overlap) the
    signature header carries a signature by each secret, space-separated."""
    signature = sign(body, secret, message_id, timestamp)
    if previous_secret is not None:
        signature += " " + sign(body, previous_secret, message_id, timestamp)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        HEADER_ID: message_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: signature,
    }


# --- schedule (pure) ---------------------------------------------------------------------


def next_delay(
    attempts_made: int,
    retry_after: float | None = None,
    rng: random.Random | None = None,
    schedule: Sequence[float] = SCHEDULE,
) -> float | None:
    """Seconds to wait before the next attempt after ``attempts_made`` failed ones, or None
    when the schedule is used up.

    Args:
        attempts_made: attempts so far (1 after the first).
        retry_after: the receiver's ``Retry-After``, in seconds, if it sent one.
        rng: randomness for the jitter.
        schedule: delays before each attempt (the first is the first attempt's).
    """
    if attempts_made >= len(schedule):
        return None
    r = rng.random() if rng is not None else random.random()
    delay = schedule[attempts_made] * (1 + JITTER * (2 * r - 1))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def check_url(url: str) -> str:
    """An endpoint URL as stored: ``http(s)://host…``.

    Raises:
        ValueError: not an absolute http(s) URL with a host, or too long.
    """
    text = url.strip()
    if len(text) > MAX_URL_CHARS:
        raise ValueError(f"the URL must be at most {MAX_URL_CHARS} characters")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("the URL must not carry credentials")
    return text


def check_event_types(value: Any) -> tuple[str, ...] | None:
    """An endpoint's event-type filter as stored: None (every type) or 1 to
    :data:`MAX_EVENT_TYPES` distinct names such as ``score.completed``.

    Raises:
        ValueError: not null or a non-empty list of such names.
    """
    if value is None:
        return None
    problem = (
        f'"eventTypes" must be null (every event) or a list of 1 to {MAX_EVENT_TYPES} event '
        f"types such as \"score.completed\" (letters, digits, '.', '_', '-'; at most "
        f"{MAX_EVENT_TYPE_CHARS} characters each)"
    )
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EVENT_TYPES:
        raise ValueError(problem)
    for item in value:
        if (
            not isinstance(item, str)
            or not 1 <= len(item) <= MAX_EVENT_TYPE_CHARS
            or not item.isascii()
            or not item.replace(".", "").replace("_", "").replace("-", "").isalnum()
        ):
            raise ValueError(problem)
    return tuple(dict.fromkeys(value))


# --- values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL an org receives one environment's events at (never its secret, shown once at
    creation)."""

    id: str
    org: str
    url: str
    created_at: datetime
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    environment: str = PRODUCTION
    """SANDBOX or PRODUCTION: only jobs of this environment are sent here."""
    event_types: tuple[str, ...] | None = None
    """The event types sent here; None sends every type."""
    previous_secret_expires_at: datetime | None = None
    """After a secret rotation: until when the old secret signs too."""

    @property
    def enabled(self) -> bool:
        """False once disabled (by its org, or a 410 from the receiver)."""
        return self.disabled_at is None


class Keep:
    """The type of :data:`KEEP`, :class:`EndpointChanges`' "leave as it is"."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = Keep()


@dataclass(frozen=True, slots=True)
class EndpointChanges:
    """What ``PATCH /v1/webhooks/endpoints/{id}`` changes (None: leave as it is)."""

    enabled: bool | None = None
    event_types: tuple[str, ...] | Keep | None = KEEP
    """A new filter, None for every type, :data:`KEEP` to leave it."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recorded attempt of a delivery."""

    attempt: int
    started_at: datetime
    status_code: int | None
    """The receiver's status, None when no response came (timeout, refused…)."""
    duration_ms: float
    error: str | None
    """Why it failed, None for a 2xx."""
    response_excerpt: str | None = None
    """The start of the receiver's answer (None when it sent none)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one endpoint, with its attempts."""

    id: str
    message_id: str
    endpoint_id: str
    url: str
    org: str
    job_id: str | None
    event_type: str
    status: str
    """``pending``, ``delivered``, ``failed`` (gave up or 410) or ``cancelled``."""
    attempts: tuple[Attempt, ...]
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryTask:
    """A claimed delivery, ready to send."""

    id: str
    message_id: str
    endpoint_id: str
    url: str
    secret: str
    body: bytes
    attempts: int
    """Attempts made before this one."""
    token: str
    previous_secret: str | None = None
    """The endpoint's old secret while a rotation's overlap lasts: it signs too."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one attempt went."""

    status_code: int | None
    duration_ms: float
    error: str | None
    retry_after: float | None = None
    response_excerpt: str | None = None

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300


def delivery_json(d: Delivery) -> dict[str, Any]:
    """A delivery as ``GET /v1/webhooks/deliveries`` shows it."""
    return {
        "id": d.id,
        "messageId": d.message_id,
        "endpointId": d.endpoint_id,
        "url": d.url,
        "jobId": d.job_id,
        "eventType": d.event_type,
        "status": d.status,
        "createdAt": iso(d.created_at),
        "nextAttemptAt": iso(d.next_attempt_at)
        if d.next_attempt_at and d.status == "pending"
        else None,
        "finishedAt": iso(d.finished_at) if d.finished_at else None,
        "attempts": [
            {
                "attempt": a.attempt,
                "at": iso(a.started_at),
                "statusCode": a.status_code,
                "durationMs": round(a.duration_ms, 1),
                "error": a.error,
                "responseBody": a.response_excerpt,
            }
            for a in d.attempts
        ],
    }


def endpoint_json(e: Endpoint) -> dict[str, Any]:
    """An endpoint as the self-serve API shows it (never its secret)."""
    return {
        "id": e.id,
        "url": e.url,
        "environment": e.environment,
        "enabled": e.enabled,
        "disabledReason": e.disabled_reason,
        "eventTypes": list(e.event_types) if e.event_types is not None else None,
        "createdAt": iso(e.created_at),
        "previousSecretExpiresAt": (
            iso(e.previous_secret_expires_at) if e.previous_secret_expires_at else None
        ),
    }
