"""docs/forward-auth.md's configurations, checked by the tools at hand: nginx's with
``nginx -t``, the Caddyfile with ``caddy validate``, Traefik's and Envoy's (whose binaries
are not packaged here) as YAML."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

DOC = (REPO / "docs" / "forward-auth.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.DOTALL)


def documented(language: str, replace: dict[str, str]) -> str:
    """The one ``language`` block of the docs, each key of ``replace`` (found exactly
    once) replaced by its value: the configuration the proxy tests run."""
    (block,) = _blocks(language)
    for old, new in replace.items():
        assert block.count(old) == 1, (old, block)
        block = block.replace(old, new)
    return block


def test_the_yaml_configurations_parse() -> None:
    yaml = pytest.importorskip("yaml")
    traefik, envoy = (yaml.safe_load(block) for block in _blocks("yaml"))
    middleware = traefik["http"]["middlewares"]["tollhouse"]["forwardAuth"]
    assert middleware["address"].endswith("/v1/platform/authorize")
    # Traefik passes every header of the caller unless told which: an allow-list, with
    # none of the original-request headers (Traefik sets its own X-Forwarded-*).
    sent = {name.lower() for name in middleware["authRequestHeaders"]}
    assert sent == {"authorization", "x-api-key", "x-tenant-id", "x-request-id"}
    manager = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    ext_authz = manager["typed_config"]["http_filters"][0]["typed_config"]
    assert ext_authz["http_service"]["path_prefix"] == "/v1/platform/authorize"
    allowed = ext_authz["http_service"]["authorization_request"]["allowed_headers"]["patterns"]
    assert not {p["exact"] for p in allowed} & {"x-original-uri", "x-forwarded-uri"}
    # The caller's key goes to tollhouse, never to the upstream.
    (route,) = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert {"authorization", "x-api-key"} <= set(route["request_headers_to_remove"])


def test_the_nginx_configuration_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    (block,) = _blocks("nginx")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nevents {{}}\n{block}")
    checked = subprocess.run(
        [nginx, "-t", "-q", "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr


def test_the_caddyfile_passes_caddy_validate(tmp_path: Path) -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (apt-get install caddy)")
    (block,) = _blocks("caddyfile")
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text("{\n\tadmin off\n\tauto_https off\n}\n" + block)
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    checked = subprocess.run(
        [caddy, "validate", "--config", str(caddyfile), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
