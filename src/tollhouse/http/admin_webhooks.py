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
caller's address, in the change's own transaction
(:class:`~tollhouse.jobs.webhook_store.WebhookStore`).
The handlers are the self-serve API's (:class:`~tollhouse.http.webhook_routes.WebhookRoutes`)
with the scope taken from the path and query, and this API's own wording.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from tollhouse.errors import BadRequest, ValidationFailed
from tollhouse.http.admin_input import MAX_OVERLAP_SECONDS
from tollhouse.http.answers import json_response
from tollhouse.http.webhook_routes import SECRET_OVERLAP_DEFAULT, WebhookCaller, WebhookRoutes
from tollhouse.identifiers import SCORING_JOB_ID
from tollhouse.jobs.model import iso
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import Endpoint, delivery_json, endpoint_json
from tollhouse.json_reader import json_integer
from tollhouse.keys.model import ENVIRONMENTS

if TYPE_CHECKING:
    from tollhouse.http.admin import AdminRoutes

__all__ = ["AdminWebhookRoutes", "admin_endpoint_json"]


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
    if value not in ENVIRONMENTS:
        shown = "missing" if value is None else repr(value[:40])
        raise BadRequest(
            f'query parameter "environment" is required: SANDBOX or PRODUCTION ({shown}); '
            "an org's webhooks are kept per environment"
        )
    return value


class AdminWebhookRoutes(WebhookRoutes):
    """The provider API's webhook handlers (see the module's notes).

    Args:
        admin: the provider API (its admin-token check, body reader and org store).
        webhooks: endpoints and deliveries.
    """

    disabled_error = BadRequest
    url_required = "url is required: an absolute http:// or https:// URL."
    enabled_problem = "enabled must be true or false."

    def __init__(self, admin: AdminRoutes, webhooks: WebhookStore) -> None:
        self.admin = admin
        self.webhooks = webhooks

    async def caller(self, request: Request, what: str) -> WebhookCaller:
        """The admin token's id (any admin token may manage any org's ``what``), and the
        org (which must exist) and environment of the request's path and query."""
        who = await self.admin.caller(request)
        org_id = self.admin.org_of(request)
        environment = _environment(request)
        await self.admin.orgs.require(org_id)
        return WebhookCaller(org_id, environment, who.actor, who.address)

    async def body_of(self, request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
        body = await self.admin.body_of(request)
        extra = sorted(set(body) - set(allowed))
        if extra:
            raise ValidationFailed(
                f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(allowed)}."
            )
        return body

    def overlap_of(self, body: dict[str, Any]) -> timedelta:
        # An integer as JSON Schema counts them: 3600.0 too (never a boolean).
        overlap = json_integer(body.get("overlapSeconds", SECRET_OVERLAP_DEFAULT))
        if overlap is None or not 0 <= overlap <= MAX_OVERLAP_SECONDS:
            raise ValidationFailed(
                f"overlapSeconds must be an integer from 0 to {MAX_OVERLAP_SECONDS}."
            )
        return timedelta(seconds=overlap)

    def shown(self, endpoint: Endpoint) -> dict[str, Any]:
        return admin_endpoint_json(endpoint)

    async def deliveries(self, request: Request) -> Response:
        """``GET …/webhooks/deliveries?environment=&jobId=``: newest first (the latest
        100), with their attempts."""
        who = await self.caller(request, "webhook deliveries")
        job_id = request.query_params.get("jobId") or None
        if job_id is not None:
            problem = SCORING_JOB_ID.problem(job_id)
            if problem is not None:
                raise BadRequest(f'query parameter "jobId" {problem}')
        found = await self.webhooks.deliveries(who.org, job_id, environment=who.environment)
        return json_response({"data": [delivery_json(d) for d in found]})

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
