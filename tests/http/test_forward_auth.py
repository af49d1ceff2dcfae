"""Where the decision endpoint reads the original request (``read_original``): one way per
request, as ``[forward_auth] headers`` says — ``auto`` refuses a request carrying more than
one, a pinned way ignores the others. Through real proxies: test_forward_auth_nginx.py
and test_forward_auth_caddy.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import serve_in_thread
from tollhouse import Tollhouse
from tollhouse.errors import BadRequest, PolicyError
from tollhouse.http.forward_auth import AUTHORIZE_PATH, read_original
from tollhouse.policy.load import parse_policy

NGINX = {"X-Original-URI": "/v1/nginx?a=1", "X-Original-Method": "DELETE"}
CADDY = {"X-Forwarded-Uri": "/v1/caddy?b=2", "X-Forwarded-Method": "PUT"}


def _scope(headers: dict[str, str] | list[tuple[str, str]], path: str = AUTHORIZE_PATH) -> Any:
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"q=envoy",
        "headers": [(k.lower().encode(), v.encode()) for k, v in pairs],
    }


def _read(headers: Any, convention: str = "auto", path: str = AUTHORIZE_PATH) -> tuple[str, ...]:
    scope = _scope(headers, path)
    read_original(scope, AUTHORIZE_PATH, convention)
    return (
        scope["method"],
        scope["path"],
        scope["raw_path"].decode(),
        scope["query_string"].decode(),
    )


def _refused(headers: Any, convention: str = "auto", path: str = AUTHORIZE_PATH) -> str:
    with pytest.raises(BadRequest) as caught:
        _read(headers, convention, path)
    return str(caught.value)


def test_auto_reads_the_one_way_a_request_carries() -> None:
    assert _read(NGINX) == ("DELETE", "/v1/nginx", "/v1/nginx", "a=1")
    assert _read(CADDY) == ("PUT", "/v1/caddy", "/v1/caddy", "b=2")
    envoy = _read({"X-Original-Method": "POST"}, path=AUTHORIZE_PATH + "/v1/en%20voy")
    assert envoy == ("GET", "/v1/en voy", "/v1/en%20voy", "q=envoy")


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({**NGINX, **CADDY}, list(NGINX) + list(CADDY)),
        ({**NGINX, "X-Forwarded-Method": "GET"}, [*NGINX, "X-Forwarded-Method"]),
        ({**CADDY, "X-Original-Method": "GET"}, [*CADDY, "X-Original-Method"]),
        ({**CADDY, "X-Original-URI": "/v1/open"}, [*CADDY, "X-Original-URI"]),
    ],
)
def test_auto_refuses_more_than_one_way_naming_the_headers(
    headers: dict[str, str], named: list[str]
) -> None:
    message = _refused(headers)
    assert all(name in message for name in named), message
    assert "more than one" in message


def test_auto_refuses_a_path_header_beside_envoys_path() -> None:
    for name in ("X-Original-URI", "X-Forwarded-Uri"):
        message = _refused({name: "/v1/open"}, path=AUTHORIZE_PATH + "/v1/admin/x")
        assert name in message and AUTHORIZE_PATH in message, message


def test_a_header_sent_twice_is_refused() -> None:
    twice = [("X-Forwarded-Uri", "/v1/a"), ("X-Forwarded-Method", "GET")] * 2
    for convention in ("auto", "forwarded"):
        assert "X-Forwarded-Uri header came twice" in _refused(twice, convention)


def test_the_missing_header_of_a_pair_is_named_alone() -> None:
    for sent, missing in [
        ("X-Original-Method", "X-Original-URI"),
        ("X-Original-URI", "X-Original-Method"),
        ("X-Forwarded-Method", "X-Forwarded-Uri"),
        ("X-Forwarded-Uri", "X-Forwarded-Method"),
    ]:
        message = _refused({sent: "/v1/x" if sent.lower().endswith("uri") else "GET"})
        assert missing in message and sent not in message, message


def test_a_pinned_way_ignores_the_others() -> None:
    both = {**NGINX, **CADDY}
    assert _read(both, "original") == ("DELETE", "/v1/nginx", "/v1/nginx", "a=1")
    assert _read(both, "forwarded") == ("PUT", "/v1/caddy", "/v1/caddy", "b=2")
    envoy = _read(both, "envoy", AUTHORIZE_PATH + "/v1/e")
    assert envoy == ("GET", "/v1/e", "/v1/e", "q=envoy")
    # Asked in another way than the pinned one: refused, naming what is missing.
    assert "X-Original-URI" in _refused(CADDY, "original")
    assert "X-Forwarded-Uri" in _refused(NGINX, "forwarded")
    assert "Envoy" in _refused(NGINX, "envoy")
    for convention in ("original", "forwarded"):
        message = _refused(both, convention, AUTHORIZE_PATH + "/v1/e")
        assert f"headers = '{convention}'" in message, message


def test_the_headers_setting_is_checked_and_reaches_the_endpoint(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy('[forward_auth]\nheaders = "nginx"', "t.toml")
    assert caught.value.field == "forward_auth.headers"
    assert parse_policy("", "t").forward_auth.headers == "auto"
    config = tmp_path / "tollhouse.toml"
    config.write_text(
        f'[storage]\ndatabase_url = "sqlite:///{tmp_path / "t.db"}"\n'
        '[proxy]\ntrusted_proxies = ["127.0.0.1/32"]\n'
        '[forward_auth]\nheaders = "forwarded"\n'
    )
    with serve_in_thread(Tollhouse(config=config)) as url:
        asked = url + AUTHORIZE_PATH
        # Pinned to Caddy's and Traefik's way: nginx's headers beside them are ignored
        # (the decision goes on to the key: 401), and alone they are not that way (400).
        both = httpx.get(asked, headers={**NGINX, **CADDY})
        alone = httpx.get(asked, headers=NGINX)
    assert both.json()["error"]["code"] == "UNAUTHORIZED"
    assert alone.status_code == 400
    assert "X-Forwarded-Uri" in alone.json()["error"]["message"]
