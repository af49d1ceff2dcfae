"""Receiving tollhouse webhooks: check a request's Standard Webhooks signature.

tollhouse signs every delivery with the endpoint's ``whsec_…`` secret::

    webhook-id:        msg_…          the event's id, the same on every retry (deduplicate on it)
    webhook-timestamp: 1735689600     Unix seconds of this attempt
    webhook-signature: v1,<base64>    HMAC-SHA256 of "{id}.{timestamp}.{body}", keyed with
                                      the base64-decoded part of the secret

:func:`verify` recomputes the signature over the raw body, compares it in constant time
and refuses a timestamp more than ``tolerance`` seconds away from now (a replayed
request), then returns the parsed JSON. It depends on the standard library only, so a
receiver needs nothing else from tollhouse::

    from tollhouse.webhooks import WebhookVerificationError, verify

    @app.post("/hooks")
    async def hook(request: Request) -> Response:
        try:
            event = verify(await request.body(), request.headers, SECRET)
        except WebhookVerificationError:
            return Response(status_code=400)
        ...  # event["type"] == "score.completed", event["data"]["result"] ...
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from tollhouse.errors import TollhouseError

__all__ = [
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "sign",
    "verify",
]

SECRET_PREFIX = "whsec_"
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
#: Seconds a timestamp may be away from now (Standard Webhooks: 5 minutes).
DEFAULT_TOLERANCE = 300


class WebhookVerificationError(TollhouseError):
    """A webhook request is not authentic: a header is missing, the signature does not
    match, or the timestamp is outside the tolerance."""


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        key = secret
    else:
        body = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "the webhook secret must be whsec_<base64>, as `tollhouse webhooks add` printed it"
            ) from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _bytes(payload: bytes | str) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def sign(payload: bytes | str, secret: str | bytes, message_id: str, timestamp: int) -> str:
    """The ``webhook-signature`` value tollhouse sends: ``v1,<base64 HMAC-SHA256>``.

    Useful to test a receiver.

    Args:
        payload: the raw body.
        secret: the endpoint's ``whsec_…`` secret (or the raw key bytes).
        message_id: the ``webhook-id``.
        timestamp: the ``webhook-timestamp`` (Unix seconds).
    """
    signed = f"{message_id}.{timestamp}.".encode() + _bytes(payload)
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str | bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Any:
    """Check a webhook request and return its JSON payload.

    Args:
        payload: the raw request body, exactly as received (re-serialised JSON will not
            match the signature).
        headers: the request headers (any mapping; names are matched case-insensitively).
        secret: the endpoint's ``whsec_…`` secret (or the raw key bytes).
        tolerance: seconds the ``webhook-timestamp`` may differ from now.
        now: the current Unix time (tests); default the system clock.

    Returns:
        The parsed JSON body, e.g. ``{"type": "score.completed", "timestamp", "data"}``.

    Raises:
        WebhookVerificationError: a header is missing or malformed, no ``v1`` signature
            matches, the timestamp is too old or too new, or the body is not JSON.
        ValueError: the secret itself is not ``whsec_<base64>``.
    """
    key = _key(secret)
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in (HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE) if not lower.get(h)]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    message_id, raw_ts, signatures = (
        lower[HEADER_ID],
        lower[HEADER_TIMESTAMP],
        lower[HEADER_SIGNATURE],
    )
    try:
        timestamp = int(raw_ts.strip())
    except ValueError:
        raise WebhookVerificationError(
            f"{HEADER_TIMESTAMP} {raw_ts!r} is not Unix seconds"
        ) from None
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError(
            f"{HEADER_TIMESTAMP} is {current - timestamp:.0f} s old (tolerance {tolerance:g} s): "
            "a stale or replayed request"
        )
    if timestamp > current + tolerance:
        raise WebhookVerificationError(
            f"{HEADER_TIMESTAMP} is {timestamp - current:.0f} s in the future "
            f"(tolerance {tolerance:g} s); check the clocks"
        )
    body = _bytes(payload)
    expected = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    # The header may carry several signatures (secret rotation), space-separated.
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            break
    else:
        raise WebhookVerificationError(
            "no v1 signature matches: wrong secret, or the body was changed on the way "
            "(verify the raw bytes, before any parsing)"
        )
    try:
        return json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
