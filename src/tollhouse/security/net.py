"""Outbound target checks (SSRF): webhook URLs must not reach the provider's own network.

Integrators register webhook URLs, and tollhouse then POSTs to them from inside the
provider's network. A URL whose host resolves to loopback, link-local (cloud metadata at
169.254.169.254), private (RFC 1918, IPv6 ULA), CGNAT, unspecified, multicast or other
non-global addresses is refused — at registration and again at every delivery attempt,
unless ``[security] allow_private_targets = true`` or ``TOLLHOUSE_ALLOW_PRIVATE_TARGETS=1``.

At delivery, :class:`GuardedBackend` resolves the host once, checks every address and
connects to a checked address itself: a DNS answer that changes between the check and the
connection (rebinding) cannot redirect the attempt. The URL is untouched, so the ``Host``
header and TLS SNI still carry the registered host name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: How a refusal tells the operator to allow private targets (local development).
HOW_TO_ALLOW = (
    "to allow private targets for local development, set "
    "[security] allow_private_targets = true in the policy or TOLLHOUSE_ALLOW_PRIVATE_TARGETS=1"
)

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class TargetRefused(ValueError):
    """A webhook target that resolves to an address tollhouse must not send to."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        shown = host if host == address else f"{host} resolves to {address}"
        super().__init__(f"{shown}, a {reason} address: refused; {HOW_TO_ALLOW}")


class TargetUnresolvable(ValueError):
    """A webhook target whose host name does not resolve."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    # IPv4-compatible (deprecated ::a.b.c.d), except :: and ::1 themselves.
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be a webhook target ("loopback", "private"…), or None if it
    is a public (globally routable unicast) address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            reason = refusal_reason(inner)
            return f"{reason} (IPv4 {inner} inside IPv6)" if reason else None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared (CGNAT 100.64.0.0/10)"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-public"
    return None


def check_address(host: str, address: str) -> IPAddress:
    """The parsed ``address`` if it may be sent to.

    Raises:
        TargetRefused: it is loopback, private, link-local… (the message says which and
            how to allow it).
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    reason = refusal_reason(ip)
    if reason is not None:
        raise TargetRefused(host, str(ip), reason)
    return ip


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP), in the resolver's order.

    Raises:
        TargetUnresolvable: the name does not resolve.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetUnresolvable(f"{host}: the host name does not resolve ({exc})") from None
    out: list[str] = []
    for family, *_, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = str(sockaddr[0])
            if address not in out:
                out.append(address)
    if not out:
        raise TargetUnresolvable(f"{host}: the host name has no IPv4 or IPv6 address")
    return out


async def checked_addresses(host: str, port: int) -> list[str]:
    """Resolve ``host`` once and check every address; all must be public.

    Raises:
        TargetRefused: one of the addresses is not public.
        TargetUnresolvable: the name does not resolve.
    """
    addresses = await resolve(host, port)
    for address in addresses:
        check_address(host, address)
    return addresses


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} must be an absolute http:// or https:// URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_target(url: str, *, allow_private: bool) -> list[str]:
    """Refuse a webhook URL that is not http(s) or whose host resolves to an address that
    is not public (checked again at every delivery attempt).

    Returns:
        The addresses the host resolves to now; empty when it does not resolve (yet) or
        when ``allow_private`` skips the check: delivery attempts resolve it again.

    Raises:
        ValueError: not an http(s) URL with a host, or (:class:`TargetRefused`) one of
            its addresses is loopback, private, link-local…
    """
    host, port = _host_port(url)
    if allow_private:
        return []
    try:
        return await checked_addresses(host, port)
    except TargetUnresolvable:
        return []


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """A network backend that connects only to checked public addresses.

    ``connect_tcp`` resolves the host once, refuses the connection (as
    :class:`httpcore.ConnectError`, before any packet is sent) if any address is not
    public, and otherwise connects to the checked addresses in the resolver's order.
    """

    def __init__(
        self,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolve: Callable[[str, int], Awaitable[list[str]]] = checked_addresses,
    ) -> None:
        self._inner = inner or httpcore.AnyIOBackend()
        # Resolves and checks in one step: what it returns is what is connected to.
        self._resolve = resolve

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"{host}: resolving the host name timed out") from None
        except (TargetRefused, TargetUnresolvable) as exc:
            raise httpcore.ConnectError(str(exc)) from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhook targets are never Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over :class:`GuardedBackend`: no proxies from the environment
    (a proxy would make the connection, not tollhouse), public addresses only."""

    def __init__(self, *, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits()
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(),
        )


def webhook_client(
    *, allow_private: bool, timeout: float, max_connections: int
) -> httpx.AsyncClient:
    """The HTTP client webhook attempts are sent with: redirects never followed, and —
    unless ``allow_private`` — connections only to checked public addresses."""
    limits = httpx.Limits(max_connections=max_connections)
    transport = None if allow_private else GuardedTransport(limits=limits)
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        limits=limits,
        transport=transport,
        trust_env=allow_private,
    )
