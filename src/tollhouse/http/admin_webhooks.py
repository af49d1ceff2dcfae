"""The provider API's webhook routes: an org's endpoints and deliveries, per environment.

What the self-serve API (:mod:`tollhouse.http.portal`) lets an org's root or manager key
do to its own webhooks, the provider does here with an admin token, for any org. Every
route is scoped by the org in its path *and* the environment in its required
``environment`` query parameter (``SANDBOX`` or ``PRODUCTION``): an endpoint or delivery
of another org or of the other environment is a 404, exactly like an unknown id. Routes
(under ``/v1/admin/orgs/{orgId}``)::

    GET    /webhooks/endpoints?environment=                   oldest first, no secrets
    POST   /webhooks/endpoints?environment=                   201, the whsec_ secret once
    PATCH  /webhooks/endpoints/{endpointId}?environment=      enabled, eventTypes
    DELETE /webhooks/endpoints/{endpointId}?environment=      its pending deliveries end
    POST   /webhooks/endpoints/{endpointId}/rotate-secret?environment=
    POST   /webhooks/endpoints/{endpointId}/test?environment= a signed ping, sent at once
    GET    /webhooks/deliveries?environment=&jobId=           newest first, with attempts
    POST   /webhooks/deliveries/{deliveryId}/replay?environment=

Each change is audited (``webhook.*``) with the admin token's id as actor and the
caller's address, in the change's own transaction (:class:`~tollhouse.jobs.webhooks.WebhookStore`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from tollhouse.errors import BadRequest, NotFound, ValidationFailed
from tollhouse.http.answers import json_response
from tollhouse.http.portal import SECRET_OVERLAP_DEFAULT, event_types, send_now
from tollhouse.identifiers import SCORING_JOB_ID
from tollhouse.jobs.model import iso
from tollhouse.jobs.webhooks import (
    KEEP,
    Endpoint,
    EndpointChanges,
    WebhookStore,
    delivery_json,
    endpoint_json,
)

if TYPE_CHECKING:
    from tollhouse.http.admin import AdminRoutes

__all__ = ["AdminWebhookRoutes", "admin_endpoint_json"]

#: Longest overlap of a secret rotation: 30 days.
MAX_OVERLAP_SECONDS = 30 * 86400
_ENVIRONMENTS = ("SANDBOX", "PRODUCTION")
#: Endpoint and delivery ids are short and printable: a longer one cannot exist.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

Handler = Callable[[Request], Awaitable[Response]]


def admin_endpoint_json(e: Endpoint) -> dict[str, Any]:
    """An endpoint as the provider API shows it: the self-serve shape with its org and
    when it was disabled (never its secret)."""
    return {
        **endpoint_json(e),
        "org": e.org,
        "disabledAt": iso(e.disabled_at) if e.disabled_at else None,
    }


def _environment(request: Request) -> str:
    value = request.query_params.get("environment")
    if value not in _ENVIRONMENTS:
        shown = "missing" if value is None else repr(value[:40])
        raise BadRequest(
            f'query parameter "environment" is required: SANDBOX or PRODUCTION ({shown}); '
            "an org's webhooks are kept per environment"
        )
    return value


def _id(request: Request, name: str, what: str) -> str:
    value = str(request.path_params[name])
    if not _ID.fullmatch(value):
        raise NotFound(f"{what} {value[:80]!r} not found")
    return value


class AdminWebhookRoutes:
    """The provider API's webhook handlers (see the module's notes).

    Args:
        admin: the provider API (its admin-token check, body reader and org store).
        webhooks: endpoints and deliveries.
    """

    def __init__(self, admin: AdminRoutes, webhooks: WebhookStore) -> None:
        self.admin = admin
        self.webhooks = webhooks

    async def _scope(self, request: Request) -> tuple[str, str]:
        """The org (which must exist) and the environment of a request."""
        org_id = self.admin.org_of(request)
        environment = _environment(request)
        await self.admin.orgs.require(org_id)
        return org_id, environment

    async def _body(self, request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
        body = await self.admin.body_of(request)
        extra = sorted(set(body) - set(allowed))
        if extra:
            raise ValidationFailed(
                f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(allowed)}."
            )
        return body

    async def list_endpoints(self, request: Request) -> Response:
        """``GET …/webhooks/endpoints?environment=``: oldest first, never a secret."""
        await self.admin.caller(request)
        org, environment = await self._scope(request)
        found = await self.webhooks.list_endpoints(org, environment=environment)
        return json_response({"data": [admin_endpoint_json(e) for e in found]})

    async def add_endpoint(self, request: Request) -> Response:
        """``POST …/webhooks/endpoints?environment=`` ``{"url", "eventTypes"?}``: 201 with
        the ``whsec_`` secret, once. The URL goes through the SSRF guard (400)."""
        who = await self.admin.caller(request)
        org, environment = await self._scope(request)
        body = await self._body(request, ("url", "eventTypes"))
        url = body.get("url")
        if not isinstance(url, str) or not url.strip() or "\x00" in url:
            raise ValidationFailed("url is required: an absolute http:// or https:// URL.")
        types = event_types(body.get("eventTypes"))
        try:
            added, secret = await self.webhooks.add_endpoint(
                org,
                url,
                environment=environment,
                actor=who.actor,
                event_types=types,
                address=who.address,
            )
        except ValueError as exc:  # not a URL, or the SSRF guard refused its target
            raise BadRequest(str(exc)) from None
        return json_response({**admin_endpoint_json(added), "secret": secret}, 201)

    async def update_endpoint(self, request: Request) -> Response:
        """``PATCH …/webhooks/endpoints/{endpointId}?environment=`` ``{"enabled"?,
        "eventTypes"?}``."""
        who = await self.admin.caller(request)
        org, environment = await self._scope(request)
        endpoint_id = _id(request, "endpointId", "webhook endpoint")
        body = await self._body(request, ("enabled", "eventTypes"))
        enabled = body.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ValidationFailed("enabled must be true or false.")
        changes = EndpointChanges(
            enabled=enabled,
            event_types=event_types(body["eventTypes"]) if "eventTypes" in body else KEEP,
        )
        updated = await self.webhooks.update_endpoint(
            endpoint_id,
            changes,
            org=org,
            environment=environment,
            actor=who.actor,
            address=who.address,
        )
        if updated is None:
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")
        return json_response(admin_endpoint_json(updated))

    async def remove_endpoint(self, request: Request) -> Response:
        """``DELETE …/webhooks/endpoints/{endpointId}?environment=``."""
        who = await self.admin.caller(request)
        org, environment = await self._scope(request)
        endpoint_id = _id(request, "endpointId", "webhook endpoint")
        removed = await self.webhooks.remove_endpoint(
            endpoint_id, actor=who.actor, org=org, environment=environment, address=who.address
        )
        if removed is None:
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")
        return json_response(admin_endpoint_json(removed))

    async def rotate_secret(self, request: Request) -> Response:
        """``POST …/{endpointId}/rotate-secret?environment=`` ``{"overlapSeconds"?}``: a
        new secret; the old one signs too for the overlap (default a day)."""
        who = await self.admin.caller(request)
        org, environment = await self._scope(request)
        endpoint_id = _id(request, "endpointId", "webhook endpoint")
        body = await self._body(request, ("overlapSeconds",))
        overlap = body.get("overlapSeconds", SECRET_OVERLAP_DEFAULT)
        if (
            isinstance(overlap, bool)
            or not isinstance(overlap, int)
            or not 0 <= overlap <= MAX_OVERLAP_SECONDS
        ):
            raise ValidationFailed(
                f"overlapSeconds must be an integer from 0 to {MAX_OVERLAP_SECONDS}."
            )
        rotated = await self.webhooks.rotate_secret(
            endpoint_id,
            timedelta(seconds=overlap),
            org=org,
            environment=environment,
            actor=who.actor,
            address=who.address,
        )
        if rotated is None:
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")
        updated, secret = rotated
        return json_response({**admin_endpoint_json(updated), "secret": secret})

    async def test_endpoint(self, request: Request) -> Response:
        """``POST …/{endpointId}/test?environment=``: a signed ``ping``, its first attempt
        made before answering (a disabled endpoint: 400)."""
        who = await self.admin.caller(request)
        org, environment = await self._scope(request)
        endpoint_id = _id(request, "endpointId", "webhook endpoint")
        try:
            task = await self.webhooks.ping(
                endpoint_id, org=org, environment=environment, actor=who.actor, address=who.address
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if task is None:
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")
        return json_response(await send_now(self.webhooks, task, org, environment))

    async def deliveries(self, request: Request) -> Response:
        """``GET …/webhooks/deliveries?environment=&jobId=``: newest first (the latest
        100), with their attempts."""
        await self.admin.caller(request)
        org, environment = await self._scope(request)
        job_id = request.query_params.get("jobId") or None
        if job_id is not None:
            problem = SCORING_JOB_ID.problem(job_id)
            if problem is not None:
                raise BadRequest(f'query parameter "jobId" {problem}')
        found = await self.webhooks.deliveries(org, job_id, environment=environment)
        return json_response({"data": [delivery_json(d) for d in found]})

    async def replay(self, request: Request) -> Response:
        """``POST …/webhooks/deliveries/{deliveryId}/replay?environment=``: the same event
        (same ``webhook-id`` and body) as a new delivery, its first attempt made."""
        who = await self.admin.caller(request)
        org, environment = await self._scope(request)
        delivery_id = _id(request, "deliveryId", "webhook delivery")
        try:
            task = await self.webhooks.replay(
                delivery_id, org=org, environment=environment, actor=who.actor, address=who.address
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if task is None:
            raise NotFound(f"webhook delivery {delivery_id!r} not found")
        return json_response(await send_now(self.webhooks, task, org, environment))

    def table(self) -> dict[str, dict[str, Handler]]:
        """Path (under ``/v1/admin``) → method → handler, for the provider API's table."""
        hooks = "/orgs/{orgId}/webhooks"
        one = hooks + "/endpoints/{endpointId}"
        return {
            hooks + "/endpoints": {"GET": self.list_endpoints, "POST": self.add_endpoint},
            one: {"PATCH": self.update_endpoint, "DELETE": self.remove_endpoint},
            one + "/rotate-secret": {"POST": self.rotate_secret},
            one + "/test": {"POST": self.test_endpoint},
            hooks + "/deliveries": {"GET": self.deliveries},
            hooks + "/deliveries/{deliveryId}/replay": {"POST": self.replay},
        }
