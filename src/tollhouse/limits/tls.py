"""TLS to Redis (``rediss://``, ``rediss+cluster://``): the URL's options and their check.

The URL carries the TLS options as its query, with redis-py's names::

    rediss://host:6380/0?ssl_ca_certs=/etc/tollhouse/redis-ca.pem
    rediss+cluster://host:6379,host:6379?ssl_ca_certs=/etc/tollhouse/redis-ca.pem

The server's certificate is verified, host name included, against ``ssl_ca_certs`` when
given, else against the system's CAs. A certificate that is not trusted, or a port that
does not speak TLS, is a configuration error found when the store opens — never a Redis
outage to ride out on local limits.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs

from tollhouse.errors import ConfigError
from tollhouse.settings import parse_bool
from tollhouse.urls import shown_url

__all__ = ["TLS_OPTIONS", "refusal", "refused_message", "tls_options"]

#: The TLS options a URL's query may give: redis-py's keyword arguments of the same names.
TLS_OPTIONS = {
    "ssl_ca_certs": "PEM file of the CAs that may sign the server's certificate",
    "ssl_cert_reqs": "required (the default), optional or none (no verification)",
    "ssl_check_hostname": "true (the default) or false (or 1/0, yes/no, on/off)",
    "ssl_certfile": "PEM file of a client certificate, for servers that ask for one",
    "ssl_keyfile": "PEM file of the client certificate's key",
}
_CERT_REQS = ("required", "optional", "none")
#: TLS errors a retry may fix (the connection dropped mid-handshake): not refusals.
_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ssl.SSLWantReadError)


def tls_options(url: str, query: str, *, tls: bool) -> dict[str, Any]:
    """The ``ssl_*`` options of ``url``'s ``query`` as redis-py keyword arguments, checked
    (options of other names are left to the caller).

    Args:
        url: the whole URL, for error messages.
        query: its query string (after ``?``).
        tls: whether the scheme is a TLS one (``rediss://``, ``rediss+cluster://``).

    Raises:
        ConfigError: an ``ssl_*`` option is unknown, repeated, has a bad value or is given
            without TLS, or a file it names cannot be loaded.
    """
    options: dict[str, Any] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if not name.startswith("ssl_"):
            continue
        where = f"redis_url {shown_url(url)!r}: {name}"
        if name not in TLS_OPTIONS:
            raise ConfigError(f"{where} is not a TLS option (use {', '.join(TLS_OPTIONS)})")
        if not tls:
            raise ConfigError(f"{where} needs TLS: use rediss:// or rediss+cluster://")
        if len(values) != 1 or not values[0]:
            raise ConfigError(f"{where} needs one value: {TLS_OPTIONS[name]}")
        value = values[0]
        if name == "ssl_cert_reqs":
            if value.lower() not in _CERT_REQS:
                raise ConfigError(f"{where}={value!r}: use {TLS_OPTIONS[name]}")
            options[name] = value.lower()
        elif name == "ssl_check_hostname":
            options[name] = parse_bool(value, where)
        else:
            options[name] = value
    if tls:
        _load_files(url, options)
    return options


def _load_files(url: str, options: dict[str, Any]) -> None:
    """Load the files the options name, as the connections will: a missing or unreadable
    file fails here, at start, not on the first connection."""
    context = ssl.create_default_context()
    ca = options.get("ssl_ca_certs")
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"redis_url {shown_url(url)!r}: ssl_ca_certs {ca!r} is not a readable PEM file of "
                f"CA certificates ({exc})"
            ) from None
    cert, key = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if key is not None and cert is None:
        raise ConfigError(f"redis_url {shown_url(url)!r}: ssl_keyfile needs ssl_certfile")
    if cert is not None:
        try:
            context.load_cert_chain(certfile=cert, keyfile=key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"redis_url {shown_url(url)!r}: ssl_certfile {cert!r} "
                f"(with ssl_keyfile {key!r}) is not "
                f"a readable PEM certificate and key ({exc})"
            ) from None


def refusal(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (a driver error) when retrying cannot fix it: the
    server's certificate is not trusted, or the port does not speak TLS. None otherwise."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, _TRANSIENT):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def refused_message(url: str, node: str, error: ssl.SSLError) -> str:
    """What to tell the operator when ``node`` was refused over TLS."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"redis_url {shown_url(url)!r}: the TLS certificate of {node} is not trusted "
            f"({error.verify_message}): give the CA that signed it as "
            "?ssl_ca_certs=/path/to/ca.pem, and connect by a host name or address the "
            "certificate names"
        )
    return (
        f"redis_url {shown_url(url)!r}: the TLS handshake with {node} failed "
        f"({error.reason or error}): "
        "does that port serve TLS?"
    )
