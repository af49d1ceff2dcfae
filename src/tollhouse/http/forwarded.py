"""Client addresses behind trusted proxies (``[proxy] trusted_proxies``).

A request that reaches tollhouse through a load balancer comes from the balancer's
address; the client's is in ``X-Forwarded-For``. Those headers are believed only from the
peers the policy names, with uvicorn's ``forwarded_allow_ips`` rule: the client is the
right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy (a chain of trusted
proxies is walked back), and the scheme is ``X-Forwarded-Proto``'s. From any other peer the
headers are ignored here and replaced by the reverse proxy.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from tollhouse.errors import ConfigError
from tollhouse.memo import remember

__all__ = ["TrustedProxies"]

Scope = dict[str, Any]

#: Most peer addresses whose trust is remembered; a full memo starts over.
_TRUSTED_MEMO = 4096


class TrustedProxies:
    """The peers whose ``X-Forwarded-*`` headers are believed.

    Args:
        cidrs: networks or single addresses, e.g. ``["10.0.0.0/8", "127.0.0.1"]``.

    Raises:
        ConfigError: an entry is not an IP network.
    """

    def __init__(self, cidrs: tuple[str, ...] | list[str]) -> None:
        networks = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"[proxy] trusted_proxies: {cidr!r} is not an IP network or address "
                    "(write it like '10.0.0.0/8' or '127.0.0.1')"
                ) from None
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        """True when ``host`` (an IP address as text) is in a trusted network."""
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host.strip().strip("[]"))
        except ValueError:
            found = False
        else:
            found = any(address in network for network in self.networks)
        return remember(self._cache, _TRUSTED_MEMO, host, found)

    def resolve(self, scope: Any) -> None:
        """Rewrite ``scope["client"]`` and ``scope["scheme"]`` from a trusted peer's headers.

        The peer as connected is kept in ``scope["state"]["peer"]`` for the proxy, which
        appends it to the forwarded chain.
        """
        client = scope.get("client")
        if not client or not self.trusts(str(client[0])):
            return
        chain: list[bytes] = []
        proto: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                chain.append(value)
            elif name == b"x-forwarded-proto":
                proto = value
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["peer"] = client
        if chain:
            hosts = [h.strip() for h in b",".join(chain).decode("latin-1").split(",")]
            hosts = [h for h in hosts if h]
            for host in reversed(hosts):
                if not self.trusts(host):
                    scope["client"] = (host, 0)
                    break
            else:
                if hosts:
                    scope["client"] = (hosts[0], 0)
        if proto is not None:
            scheme = proto.decode("latin-1").split(",")[-1].strip().lower()
            if scheme in ("http", "https"):
                scope["scheme"] = scheme
