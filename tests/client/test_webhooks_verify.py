"""tollhouse.webhooks.verify against signatures made by the reference `standardwebhooks`
package (and by tollhouse's own sender)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from tollhouse.errors import TollhouseError
from tollhouse.jobs.webhooks import new_secret, signed_headers
from tollhouse.webhooks import WebhookVerificationError, sign, verify

NOW = 1_800_000_000
BODY = (
    b'{"type":"score.completed","timestamp":"2027-01-15T08:00:00.000Z",'
    b'"data":{"scoringJobId":"sj_1"}}'
)


def reference_headers(
    secret: str, body: bytes, msg_id: str = "msg_1", ts: int = NOW
) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


@pytest.fixture
def secret() -> str:
    return new_secret()


def test_a_reference_signature_verifies(secret: str) -> None:
    payload = verify(BODY, reference_headers(secret, BODY), secret, now=NOW)
    assert payload["type"] == "score.completed" and payload["data"]["scoringJobId"] == "sj_1"
    # str bodies, mixed-case header names and the raw key bytes work too.
    mixed = {k.title(): v for k, v in reference_headers(secret, BODY).items()}
    raw_key = base64.b64decode(secret.removeprefix("whsec_"))
    assert verify(BODY.decode(), mixed, raw_key, now=NOW) == payload


def test_tollhouse_signs_what_the_reference_verifies(secret: str) -> None:
    ours = sign(BODY, secret, "msg_1", NOW)
    assert ours == reference_headers(secret, BODY)["webhook-signature"]
    sender = signed_headers(secret, "msg_1", NOW, BODY)  # what the server sends
    assert verify(BODY, sender, secret, now=NOW)["data"]["scoringJobId"] == "sj_1"
    # The reference checks the clock itself, so give it a fresh timestamp.
    fresh = int(datetime.now(UTC).timestamp())
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(fresh)}
    headers["webhook-signature"] = sign(BODY, secret, "msg_2", fresh)
    assert Webhook(secret).verify(BODY, headers)["type"] == "score.completed"


def test_a_tampered_body_is_refused(secret: str) -> None:
    headers = reference_headers(secret, BODY)
    with pytest.raises(WebhookVerificationError, match="no v1 signature matches"):
        verify(BODY.replace(b"sj_1", b"sj_2"), headers, secret, now=NOW)


def test_a_wrong_secret_is_refused(secret: str) -> None:
    headers = reference_headers(secret, BODY)
    with pytest.raises(WebhookVerificationError):
        verify(BODY, headers, new_secret(), now=NOW)


def test_a_changed_id_or_timestamp_is_refused(secret: str) -> None:
    headers = reference_headers(secret, BODY)
    with pytest.raises(WebhookVerificationError):
        verify(BODY, {**headers, "webhook-id": "msg_other"}, secret, now=NOW)
    with pytest.raises(WebhookVerificationError):
        verify(BODY, {**headers, "webhook-timestamp": str(NOW + 1)}, secret, now=NOW)


def test_stale_and_future_timestamps_are_refused(secret: str) -> None:
    headers = reference_headers(secret, BODY)
    assert verify(BODY, headers, secret, now=NOW + 300)  # at the edge: accepted
    with pytest.raises(WebhookVerificationError, match="301 s old"):
        verify(BODY, headers, secret, now=NOW + 301)
    with pytest.raises(WebhookVerificationError, match="in the future"):
        verify(BODY, headers, secret, now=NOW - 301)
    assert verify(BODY, headers, secret, now=NOW + 3000, tolerance=3600)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_named(secret: str, missing: str) -> None:
    headers = reference_headers(secret, BODY)
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=missing):
        verify(BODY, headers, secret, now=NOW)


def test_malformed_headers(secret: str) -> None:
    headers = reference_headers(secret, BODY)
    with pytest.raises(WebhookVerificationError, match="Unix seconds"):
        verify(BODY, {**headers, "webhook-timestamp": "yesterday"}, secret, now=NOW)
    for garbage in ("v1", "v1,!!!", "v2," + headers["webhook-signature"][3:], ""):
        with pytest.raises(WebhookVerificationError):
            verify(BODY, {**headers, "webhook-signature": garbage}, secret, now=NOW)


def test_any_of_several_signatures_may_match(secret: str) -> None:
    headers = reference_headers(secret, BODY)
    old = sign(BODY, new_secret(), "msg_1", NOW)  # e.g. during a secret rotation
    both = {**headers, "webhook-signature": f"{old} v1a,xyz {headers['webhook-signature']}"}
    assert verify(BODY, both, secret, now=NOW)["type"] == "score.completed"


def test_a_signed_body_that_is_not_json(secret: str) -> None:
    body = b"not json"
    with pytest.raises(WebhookVerificationError, match="not JSON"):
        verify(body, reference_headers(secret, body), secret, now=NOW)


def test_errors_belong_to_the_tree_and_bad_secrets_are_value_errors() -> None:
    assert issubclass(WebhookVerificationError, TollhouseError)
    with pytest.raises(ValueError, match="whsec_"):
        verify(BODY, {}, "whsec_***", now=NOW)
