"""The webhook endpoint and delivery handlers of the self-serve API
(:mod:`tollhouse.http.portal`) and the provider API (:mod:`tollhouse.http.admin_webhooks`).

Both do the same to an org's webhooks in one environment; they differ in where that
scope comes from (the calling key's org and environment, or the admin path's org and its
``environment`` query parameter), in who the actor is (the key's id or the admin token's),
in how an endpoint is shown (the provider API adds ``org`` and ``disabledAt``) and in the
wording and status of their refusals, which each API keeps as it has always answered. A
subclass of :class:`WebhookRoutes` says those; the handlers here do the rest, so a change
to what a test, replay or rotation does is made once.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import Response

from tollhouse.errors import ApiError, BadRequest, NotFound, ValidationFailed
from tollhouse.http.answers import json_response
from tollhouse.jobs.webhook_sender import send_attempt
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import (
    KEEP,
    DeliveryTask,
    Endpoint,
    EndpointChanges,
    check_event_types,
    delivery_json,
)
from tollhouse.security.net import webhook_client

__all__ = [
    "SECRET_OVERLAP_DEFAULT",
    "WebhookCaller",
    "WebhookRoutes",
    "event_types",
    "path_id",
    "send_now",
]

#: Overlap of a webhook secret rotation when none is asked for: a day.
SECRET_OVERLAP_DEFAULT = 86400
#: Seconds the test and replay attempts may take (the sender's own timeout).
SEND_TIMEOUT = 15.0
#: Ids are short and printable: a longer one, or one with a NUL, cannot exist.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class WebhookCaller:
    """Who acts on an org's webhooks, and in which scope.

    Attributes:
        org: the org whose endpoints and deliveries the request may see.
        environment: ``SANDBOX`` or ``PRODUCTION``, likewise.
        actor: the audit log's actor (a key's id, or an admin token's).
        address: the client address, for the audit log.
    """

    org: str
    environment: str
    actor: str
    address: str | None


class WebhookRoutes(ABC):
    """The shared handlers: ``{endpointId}`` and ``{deliveryId}`` are path parameters;
    another org's or environment's id is a 404, exactly like an unknown one."""

    webhooks: WebhookStore
    #: What a test or replay of a disabled endpoint raises.
    disabled_error: ClassVar[type[ApiError]]
    #: The 422 message of a missing or malformed ``url``.
    url_required: ClassVar[str]
    #: The 422 message of an ``enabled`` that is not a boolean.
    enabled_problem: ClassVar[str]

    @abstractmethod
    async def caller(self, request: Request, what: str) -> WebhookCaller:
        """The caller and its scope; refuses a caller that may not manage ``what``
        (``"webhook endpoints"`` or ``"webhook deliveries"``)."""

    @abstractmethod
    async def body_of(self, request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
        """A request's JSON object body (empty: ``{}``) with no field outside ``allowed``."""

    @abstractmethod
    def overlap_of(self, body: dict[str, Any]) -> timedelta:
        """A secret rotation's ``overlapSeconds`` (default :data:`SECRET_OVERLAP_DEFAULT`)."""

    @abstractmethod
    def shown(self, endpoint: Endpoint) -> dict[str, Any]:
        """An endpoint as this API shows it (never its secret)."""

    async def list_endpoints(self, request: Request) -> Response:
        """``GET …/webhooks/endpoints``: the scope's endpoints, oldest first, no secrets."""
        who = await self.caller(request, "webhook endpoints")
        found = await self.webhooks.list_endpoints(who.org, environment=who.environment)
        return json_response({"data": [self.shown(e) for e in found]})

    async def add_endpoint(self, request: Request) -> Response:
        """``POST …/webhooks/endpoints`` ``{"url", "eventTypes"?}``: 201 with the ``whsec_``
        secret, once. The URL goes through the SSRF guard (400)."""
        who = await self.caller(request, "webhook endpoints")
        body = await self.body_of(request, ("url", "eventTypes"))
        url = body.get("url")
        if not isinstance(url, str) or not url.strip() or "\x00" in url:
            raise ValidationFailed(self.url_required)
        types = event_types(body.get("eventTypes"))
        try:
            added, secret = await self.webhooks.add_endpoint(
                who.org,
                url,
                environment=who.environment,
                actor=who.actor,
                event_types=types,
                address=who.address,
            )
        except ValueError as exc:  # not a URL, or the SSRF guard refused its target
            raise BadRequest(str(exc)) from None
        return json_response({**self.shown(added), "secret": secret}, 201)

    async def update_endpoint(self, request: Request) -> Response:
        """``PATCH …/webhooks/endpoints/{endpointId}`` ``{"enabled"?, "eventTypes"?}``."""
        who = await self.caller(request, "webhook endpoints")
        endpoint_id = path_id(request, "endpointId", "webhook endpoint")
        body = await self.body_of(request, ("enabled", "eventTypes"))
        enabled = body.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ValidationFailed(self.enabled_problem)
        changes = EndpointChanges(
            enabled=enabled,
            event_types=event_types(body["eventTypes"]) if "eventTypes" in body else KEEP,
        )
        updated = await self.webhooks.update_endpoint(
            endpoint_id,
            changes,
            org=who.org,
            environment=who.environment,
            actor=who.actor,
            address=who.address,
        )
        if updated is None:
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")
        return json_response(self.shown(updated))

    async def remove_endpoint(self, request: Request) -> Response:
        """``DELETE …/webhooks/endpoints/{endpointId}``: its pending deliveries end."""
        who = await self.caller(request, "webhook endpoints")
        endpoint_id = path_id(request, "endpointId", "webhook endpoint")
        removed = await self.webhooks.remove_endpoint(
            endpoint_id,
            actor=who.actor,
            org=who.org,
            environment=who.environment,
            address=who.address,
        )
        if removed is None:
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")
        return json_response(self.shown(removed))

    async def rotate_secret(self, request: Request) -> Response:
        """``POST …/webhooks/endpoints/{endpointId}/rotate-secret`` ``{"overlapSeconds"?}``:
        a new secret; the old one signs too for the overlap (default a day)."""
        who = await self.caller(request, "webhook endpoints")
        endpoint_id = path_id(request, "endpointId", "webhook endpoint")
        body = await self.body_of(request, ("overlapSeconds",))
        overlap = self.overlap_of(body)
        rotated = await self.webhooks.rotate_secret(
            endpoint_id,
            overlap,
            org=who.org,
            environment=who.environment,
            actor=who.actor,
            address=who.address,
        )
        if rotated is None:
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")
        updated, secret = rotated
        return json_response({**self.shown(updated), "secret": secret})

    async def test_endpoint(self, request: Request) -> Response:
        """``POST …/webhooks/endpoints/{endpointId}/test``: a signed ``ping``, its first
        attempt made before answering (a disabled endpoint: :attr:`disabled_error`)."""
        who = await self.caller(request, "webhook endpoints")
        endpoint_id = path_id(request, "endpointId", "webhook endpoint")
        held = self.webhooks.ping(
            endpoint_id,
            org=who.org,
            environment=who.environment,
            actor=who.actor,
            address=who.address,
        )
        return await self._send(who, held, f"webhook endpoint {endpoint_id!r} not found")

    async def replay(self, request: Request) -> Response:
        """``POST …/webhooks/deliveries/{deliveryId}/replay``: the same event (same
        ``webhook-id`` and body) as a new delivery, its first attempt made."""
        who = await self.caller(request, "webhook deliveries")
        delivery_id = path_id(request, "deliveryId", "webhook delivery")
        held = self.webhooks.replay(
            delivery_id,
            org=who.org,
            environment=who.environment,
            actor=who.actor,
            address=who.address,
        )
        return await self._send(who, held, f"webhook delivery {delivery_id!r} not found")

    async def _send(
        self, who: WebhookCaller, held: Awaitable[DeliveryTask | None], missing: str
    ) -> Response:
        """Stage a test or replay (``held``) and make its first attempt at once."""
        try:
            task = await held
        except ValueError as exc:  # the endpoint is disabled
            raise self.disabled_error(str(exc)) from None
        if task is None:
            raise NotFound(missing)
        return json_response(await send_now(self.webhooks, task, who.org, who.environment))


def path_id(request: Request, name: str, what: str) -> str:
    """An id path parameter; one that cannot exist (not 1 to 64 of ``A-Za-z0-9_-``) is a
    404, as an unknown one."""
    value = str(request.path_params[name])
    if not _ID.fullmatch(value):
        raise NotFound(f"{what} {value[:80]!r} not found")
    return value


async def send_now(
    store: WebhookStore, task: DeliveryTask, org: str, environment: str
) -> dict[str, Any]:
    """Make a held delivery's first attempt (a test or a replay); the delivery as it is
    then (a failed attempt leaves it pending, retried on the schedule)."""
    async with webhook_client(
        allow_private=store.allow_private_targets, timeout=SEND_TIMEOUT, max_connections=1
    ) as client:
        started = store.clock()
        result = await send_attempt(client, task, started)
    await store.record(task, result, started)
    [done] = await store.deliveries(org, environment=environment, delivery_id=task.id)
    return delivery_json(done)


def event_types(value: Any) -> tuple[str, ...] | None:
    """An ``eventTypes`` field (None: every type); 422 when it is not a list of types."""
    try:
        return check_event_types(value)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from None
