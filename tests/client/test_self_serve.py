"""The SDK's self-serve namespaces against a real `tollhouse serve`, sync and async:
``client.keys`` and ``client.webhooks.endpoints`` / ``.deliveries`` (replay included),
with a real receiver checking the signatures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.client.conftest import KeyMaker
from tests.client.support import open_client
from tests.conftest import Server, serve_in_thread
from tollhouse.client import (
    ApiKey,
    AuthenticationError,
    PermissionDeniedError,
    WebhookEndpoint,
)
from tollhouse.webhooks import verify

KINDS = ("sync", "async")

pytestmark = pytest.mark.integration


class Receiver:
    """Records each request's headers and body; answers 200 ``ok``."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with self.lock:
            self.got.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as url:  # type: ignore[arg-type]
        yield r, url


@pytest.mark.parametrize("kind", KINDS)
def test_keys_namespace(kind: str, default_server: Server, make_keys: KeyMaker) -> None:
    made = make_keys([(f"sdk-keys-{kind}", "root"), (f"sdk-keys-{kind}", "member")])
    root = made[(f"sdk-keys-{kind}", "root")]["key"]
    member = made[(f"sdk-keys-{kind}", "member")]["key"]
    with open_client(kind, api_key=root, base_url=default_server.url) as c:
        key = c.keys.create(name="sdk", role="manager")
        assert isinstance(key, ApiKey) and key.secret and key.secret.startswith("sk_test_")
        listed = {k.id: k for k in c.keys.list()}
        assert listed[key.id].secret is None and listed[key.id].name == "sdk"
        rotated = c.keys.rotate(key.id, overlap_seconds=0)
        assert rotated.replaces is not None and rotated.replaces.id == key.id
        assert rotated.secret and rotated.role == "manager"
        revoked = c.keys.revoke(rotated.id)
        assert revoked.status == "revoked" and revoked.revoked_at is not None
        with pytest.raises(PermissionDeniedError):
            c.keys.create(role="root", environment="PRODUCTION")
    with open_client(kind, api_key=rotated.secret, base_url=default_server.url) as gone:
        assert _refused(gone)
    with (
        open_client(kind, api_key=member, base_url=default_server.url) as c,
        pytest.raises(PermissionDeniedError),
    ):
        c.keys.list()


def _refused(client: Any) -> bool:
    """Ask until the revoked key is refused (evicted in the server's process at once)."""
    for _ in range(50):
        try:
            client.rate_limit_status()
        except AuthenticationError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("kind", KINDS)
def test_webhooks_namespace(
    kind: str,
    default_server: Server,
    make_keys: KeyMaker,
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    root = make_keys([(f"sdk-hooks-{kind}", "root")])[(f"sdk-hooks-{kind}", "root")]["key"]
    with open_client(kind, api_key=root, base_url=default_server.url) as c:
        endpoint = c.webhooks.endpoints.create(url + f"/sdk-{kind}", event_types=["score.failed"])
        assert isinstance(endpoint, WebhookEndpoint) and endpoint.secret
        assert endpoint.event_types == ("score.failed",)
        assert [e.id for e in c.webhooks.endpoints.list()] == [endpoint.id]
        ping = c.webhooks.endpoints.test(endpoint.id)
        assert ping.event_type == "ping" and ping.status == "delivered"
        assert ping.attempts[0].status_code == 200 and ping.attempts[0].response_body == "ok"
        headers, body = rec.got[-1]
        assert verify(body, headers, endpoint.secret)["type"] == "ping"
        rotated = c.webhooks.endpoints.rotate_secret(endpoint.id, overlap_seconds=600)
        assert rotated.secret and rotated.previous_secret_expires_at is not None
        again = c.webhooks.deliveries.replay(ping.id)
        assert again.message_id == ping.message_id and again.id != ping.id
        headers, body = rec.got[-1]
        verify(body, headers, endpoint.secret)  # the old secret, during the overlap
        verify(body, headers, rotated.secret)
        assert {d.id for d in c.webhooks.deliveries.list()} >= {ping.id, again.id}
        off = c.webhooks.endpoints.update(endpoint.id, enabled=False, every_event=True)
        assert not off.enabled and off.event_types is None
        assert c.webhooks.endpoints.delete(endpoint.id).id == endpoint.id
        assert c.webhooks.endpoints.list() == []
