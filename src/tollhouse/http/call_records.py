"""The meter's record of one answered call, made by the gateway after the answer.

Kept apart from the gateway's steps: it is what metering needs of a request (identity,
route template, status, duration, the policy's call-count labels), not how the request
is admitted. :func:`call_record` runs once per metered request, so it builds one
:class:`~tollhouse.metering.record.CallRecord` positionally and nothing else; the
per-minute aggregation and the raw call log are the meter's, off the request path
(:mod:`tollhouse.metering.aggregator`, :mod:`tollhouse.metering.flusher`).
"""

from __future__ import annotations

from time import perf_counter
from urllib.parse import parse_qs

from tollhouse.http.asgi import Scope
from tollhouse.identifiers import LABEL_VALUE
from tollhouse.keys.model import Identity
from tollhouse.metering.record import CallRecord
from tollhouse.policy.match import RouteMatch

__all__ = ["call_record", "label_values"]


def call_record(
    identity: Identity,
    match: RouteMatch,
    method: str,
    status: int,
    arrived: float,
    t0: float,
    scope: Scope,
) -> CallRecord:
    """The metering record of one answered call.

    Args:
        identity: the caller (its org, environment, key and tenant).
        match: the policy's match of the request (route template, group, labels).
        method: the request's method.
        status: the answer's status (0: not known yet, forward-auth).
        arrived: when the request arrived, epoch seconds.
        t0: ``perf_counter()`` at arrival (the duration is measured from it).
        scope: the request's scope (its labels and request id).
    """
    labels = match.path_labels
    if labels or match.header_labels or match.query_labels:
        # A value its rule refuses was answered 400 at the door: not recorded.
        labels = {k: v for k, v in label_values(scope, match).items() if LABEL_VALUE.admits(v)}
    group = match.endpoint_group
    # Positional: this runs once per request.
    return CallRecord(
        arrived,
        identity.org,
        identity.environment,
        identity.key_id,
        identity.tenant,
        group.key if group is not None else None,
        method,
        match.template,
        status,
        (perf_counter() - t0) * 1000.0,
        labels,
        scope["state"]["request_id"],
    )


def label_values(scope: Scope, match: RouteMatch) -> dict[str, str]:
    """The call-count labels of a request (``[[labels]]`` of the policy): from its path,
    headers and query, by label name."""
    labels = dict(match.path_labels)
    if match.header_labels:
        wanted = dict((h, name) for name, h in match.header_labels)
        for h, value in scope["headers"]:
            name = wanted.get(h)
            if name is not None:
                labels[name] = value.decode("latin-1")
    if match.query_labels:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        for name, key in match.query_labels:
            values = query.get(key)
            if values:
                labels[name] = values[0]
    return labels
