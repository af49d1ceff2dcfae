"""TOML → :class:`~tollhouse.policy.model.Policy`, with errors that name file and field."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast

from tollhouse.errors import PolicyError
from tollhouse.keys.model import ROLES
from tollhouse.policy.model import (
    ASYNC_VALIDATORS,
    CORS_ALLOW_HEADERS,
    CORS_EXPOSE_HEADERS,
    CORS_METHODS,
    DEFAULT_DATABASE_URL,
    FAIR_USE_DEFAULTS,
    FAIR_USE_SIGNALS,
    PLATFORM_GROUPS,
    AccessRule,
    AsyncRoute,
    Bucket,
    Cors,
    EndpointGroup,
    FailedAuth,
    FairUseRule,
    ForwardAuth,
    Label,
    Limits,
    Platform,
    Policy,
    Pool,
    Proxy,
    Routing,
    Security,
    Storage,
    Upstream,
)
from tollhouse.urls import shown_url

BUILTIN = "<built-in>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
#: A serialized origin: scheme, host (a name or a bracketed IPv6 address), optional port.
#: ``[platform] prefix``: plain path segments only.
_PREFIX_SEGMENT = re.compile(r"(/[A-Za-z0-9._~-]+)+")
_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(:[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
#: What ``[cors] allow_methods = ["*"]`` stands for.
_CORS_ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: An HTTP field name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

T = TypeVar("T")


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a policy file, or the built-in default policy when ``path`` is None.

    Args:
        path: a TOML file as docs/policy.md describes.

    Returns:
        The frozen policy.

    Raises:
        PolicyError: the file is missing, not TOML, or a field is wrong; the message names
            the file, the field path and what to change.
    """
    if path is None:
        text = resources.files("tollhouse.policy").joinpath("default.toml").read_text("utf-8")
        return parse_policy(text, BUILTIN)
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise PolicyError(str(p), "", "file not found") from None
    except OSError as exc:
        raise PolicyError(str(p), "", f"cannot be read: {exc.strerror}") from None
    return parse_policy(text, str(p))


def parse_policy(text: str, source: str) -> Policy:
    """Parse policy TOML text; ``source`` names it in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, "", f"not valid TOML: {exc}") from None
    return _Reader(source).policy(raw)


def udp_address(url: str) -> tuple[str, int]:
    """``udp://HOST:PORT`` → ``(host, port)`` (``[::1]`` for IPv6).

    Raises:
        ValueError: anything else, saying what to write.
    """
    m = re.fullmatch(r"udp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})", url.strip())
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{url!r} must look like udp://127.0.0.1:5140")
    return m.group(1).strip("[]"), int(m.group(2))


def parse_duration(value: object) -> float:
    """``"1s"``, ``"60s"``, ``"1m"``, ``"1h"``, ``"1d"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "1s", "1m", "1h" or "1d"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f'{value!r} is not a duration; write e.g. "1s", "1m", "1h" or "1d"')
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


def parse_route(pattern: str) -> tuple[frozenset[str], str]:
    """Split ``"POST /v1/score"`` (or ``"POST/PATCH /v1/x"``, ``"* /v1/*"``) into methods, path.

    Raises:
        ValueError: the pattern is not ``METHOD /path``.
    """
    parts = pattern.split()
    if len(parts) != 2:
        raise ValueError(f'{pattern!r} must be "METHOD /path", e.g. "POST /v1/score"')
    methods = frozenset(m.upper() for m in parts[0].split("/") if m)
    bad = sorted(methods - METHODS)
    if not methods or bad:
        raise ValueError(f"{pattern!r}: unknown method {', '.join(bad) or parts[0]!r}")
    path = parts[1]
    if not path.startswith("/"):
        raise ValueError(f'{pattern!r}: the path must start with "/"')
    if "*" in path[:-1]:
        raise ValueError(f'{pattern!r}: "*" is only allowed at the end of the path')
    for seg in path.rstrip("*").split("/"):
        if ("{" in seg or "}" in seg) and not re.fullmatch(r"\{[A-Za-z_][A-Za-z0-9_]*\}", seg):
            raise ValueError(f"{pattern!r}: a parameter must be a whole segment like {{jobId}}")
    return methods, path


class _Reader:
    """Walks the raw TOML dict, keeping the field path for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> PolicyError:
        return PolicyError(self.source, where, problem)

    def table(self, raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(f"{where}{key}", "must be a table, e.g. [" + key + "]")
        return value

    def array(self, raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"must be an array of tables, written [[{key}]]")
        return cast(list[dict[str, Any]], value)

    def get(
        self,
        raw: dict[str, Any],
        key: str,
        kind: type[T] | tuple[type, ...],
        where: str,
        default: Any = ...,
    ) -> Any:
        if key not in raw:
            if default is ...:
                raise self.fail(f"{where}.{key}", "is required")
            return default
        value = raw[key]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if not ok:
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.fail(f"{where}.{key}", f"must be {names}, got {value!r}")
        return value

    def unknown(self, raw: dict[str, Any], allowed: set[str], where: str) -> None:
        extra = sorted(set(raw) - allowed)
        if extra:
            raise self.fail(
                f"{where}.{extra[0]}" if where else extra[0],
                f"unknown field; expected one of: {', '.join(sorted(allowed))}",
            )

    def routes(self, raw: dict[str, Any], where: str, key: str = "routes") -> tuple[str, ...]:
        value = self.get(raw, key, list, where)
        if not value:
            raise self.fail(f"{where}.{key}", "must list at least one route")
        out = []
        for i, r in enumerate(value):
            if not isinstance(r, str):
                raise self.fail(f"{where}.{key}[{i}]", f"must be a string, got {r!r}")
            try:
                parse_route(r)
            except ValueError as exc:
                raise self.fail(f"{where}.{key}[{i}]", str(exc)) from None
            out.append(" ".join(r.split()))
        return tuple(out)

    def name(self, raw: dict[str, Any], key: str, where: str, seen: dict[str, str]) -> str:
        """The name at ``raw[key]``, checked; ``seen``: names taken so far → the field
        that took each (the name is added)."""
        value: str = self.get(raw, key, str, where)
        if not _NAME.match(value):
            raise self.fail(
                f"{where}.{key}",
                f"{value!r} must start with a letter and use only letters, digits, _ . -",
            )
        first = seen.get(value)
        if first is not None:
            problem = f"{value!r} is used twice (by {first} too); names must be unique"
            if first.partition("[")[0] != where.partition("[")[0]:
                # A limit override names a bucket or a pool by its name alone.
                problem += " across buckets and pools"
            raise self.fail(f"{where}.{key}", problem)
        seen[value] = f"{where}.{key}"
        return value

    def positive_int(self, raw: dict[str, Any], key: str, where: str, default: Any = ...) -> int:
        value: int = self.get(raw, key, int, where, default)
        if value < 1:
            raise self.fail(f"{where}.{key}", f"must be at least 1, got {value}")
        return value

    def duration(self, raw: dict[str, Any], key: str, where: str, default: Any = ...) -> float:
        if key not in raw:
            if default is ...:
                raise self.fail(f"{where}.{key}", "is required")
            return float(default)
        try:
            return parse_duration(raw[key])
        except ValueError as exc:
            raise self.fail(f"{where}.{key}", str(exc)) from None

    def policy(self, raw: dict[str, Any]) -> Policy:
        self.unknown(
            raw,
            {
                "upstream",
                "proxy",
                "forward_auth",
                "storage",
                "limits",
                "buckets",
                "pools",
                "endpoint_groups",
                "access",
                "labels",
                "async_routes",
                "security",
                "routing",
                "cors",
                "platform",
                "fair_use",
            },
            "",
        )
        names: dict[str, str] = {}
        buckets = tuple(
            self.bucket(b, f"buckets[{i}]", names) for i, b in enumerate(self.array(raw, "buckets"))
        )
        pools = tuple(
            self.pool(p, f"pools[{i}]", names) for i, p in enumerate(self.array(raw, "pools"))
        )
        groups = tuple(
            self.group(g, f"endpoint_groups[{i}]", {})
            for i, g in enumerate(self.array(raw, "endpoint_groups"))
        )
        keys = [g.key for g in groups]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise self.fail("endpoint_groups", f"key {dup!r} is used twice")
        signals: set[str] = set()
        fair_use = tuple(
            self.fair_use(f, f"fair_use[{i}]", signals, buckets, pools)
            for i, f in enumerate(self.array(raw, "fair_use"))
        )
        return Policy(
            source=self.source,
            upstream=self.upstream(self.table(raw, "upstream", "")),
            proxy=self.proxy(self.table(raw, "proxy", "")),
            forward_auth=self.forward_auth(self.table(raw, "forward_auth", "")),
            storage=self.storage(self.table(raw, "storage", "")),
            limits=self.limits(self.table(raw, "limits", "")),
            security=self.security(self.table(raw, "security", "")),
            routing=self.routing(self.table(raw, "routing", "")),
            cors=self.cors(self.table(raw, "cors", "")),
            platform=self.platform(self.table(raw, "platform", "")),
            buckets=buckets,
            pools=pools,
            endpoint_groups=groups,
            access=tuple(
                self.access(a, f"access[{i}]") for i, a in enumerate(self.array(raw, "access"))
            ),
            labels=tuple(
                self.label(a, f"labels[{i}]") for i, a in enumerate(self.array(raw, "labels"))
            ),
            async_routes=tuple(
                self.async_route(a, f"async_routes[{i}]")
                for i, a in enumerate(self.array(raw, "async_routes"))
            ),
            fair_use=fair_use,
        )

    def upstream(self, raw: dict[str, Any]) -> Upstream:
        w = "upstream"
        self.unknown(
            raw,
            {
                "url",
                "app",
                "timeout",
                "connect_timeout",
                "total_timeout",
                "pool_timeout",
                "max_connections",
                "keepalive_expiry",
                "preserve_host",
                "forward_authorization",
            },
            w,
        )
        url = self.get(raw, "url", str, w, None) or None
        app = self.get(raw, "app", str, w, None) or None
        if url and app:
            raise self.fail(f"{w}.app", "set either url or app, not both")
        if url and not re.match(r"^https?://[^/\s]+", url):
            raise self.fail(f"{w}.url", f"{url!r} must be an http:// or https:// URL with a host")
        if app and not re.fullmatch(r"[\w.]+:[\w.]+", app):
            raise self.fail(f"{w}.app", f'{app!r} must look like "package.module:app"')
        return Upstream(
            url=url,
            app=app,
            timeout=self.duration(raw, "timeout", w, 30.0),
            connect_timeout=self.duration(raw, "connect_timeout", w, 5.0),
            total_timeout=(
                self.duration(raw, "total_timeout", w) if raw.get("total_timeout") else None
            ),
            pool_timeout=self.duration(raw, "pool_timeout", w, 10.0),
            max_connections=self.positive_int(raw, "max_connections", w, 100),
            keepalive_expiry=self.duration(raw, "keepalive_expiry", w, 4.0),
            preserve_host=self.get(raw, "preserve_host", bool, w, False),
            forward_authorization=self.get(raw, "forward_authorization", bool, w, False),
        )

    def proxy(self, raw: dict[str, Any]) -> Proxy:
        w = "proxy"
        self.unknown(raw, {"trusted_proxies"}, w)
        given = self.get(raw, "trusted_proxies", list, w, [])
        cidrs: list[str] = []
        for i, cidr in enumerate(given):
            where = f"{w}.trusted_proxies[{i}]"
            if not isinstance(cidr, str):
                raise self.fail(where, f"{cidr!r} must be a string such as '10.0.0.0/8'")
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise self.fail(
                    where, f"{cidr!r} is not an IP network or address (e.g. '10.0.0.0/8')"
                ) from None
            cidrs.append(cidr.strip())
        return Proxy(trusted_proxies=tuple(cidrs))

    def forward_auth(self, raw: dict[str, Any]) -> ForwardAuth:
        w = "forward_auth"
        self.unknown(raw, {"access_log_listen", "log_wait", "headers"}, w)
        listen = self.get(raw, "access_log_listen", str, w, "").strip()
        if listen:
            try:
                udp_address(listen)
            except ValueError as exc:
                raise self.fail(f"{w}.access_log_listen", str(exc)) from None
        log_wait = self.duration(raw, "log_wait", w, 60.0)
        if log_wait <= 0:
            raise self.fail(f"{w}.log_wait", "must be more than 0")
        headers = self.get(raw, "headers", str, w, "auto")
        if headers not in ("auto", "original", "forwarded", "envoy"):
            raise self.fail(
                f"{w}.headers", f"{headers!r} must be auto, original, forwarded or envoy"
            )
        return ForwardAuth(access_log_listen=listen, log_wait=log_wait, headers=headers)

    def storage(self, raw: dict[str, Any]) -> Storage:
        w = "storage"
        self.unknown(raw, {"database_url", "redis_url"}, w)
        db = self.get(raw, "database_url", str, w, DEFAULT_DATABASE_URL)
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", db):
            raise self.fail(
                f"{w}.database_url", f"{db!r}: use sqlite:///path/file.db or postgresql://…"
            )
        redis = self.get(raw, "redis_url", str, w, "")
        if redis and not re.match(r"^rediss?(\+cluster)?://", redis):
            raise self.fail(
                f"{w}.redis_url",
                f"{shown_url(redis)!r}: use redis://host:port/db, "
                "rediss://host:port/db (TLS; the CA as "
                "?ssl_ca_certs=/path/ca.pem), redis+cluster://host:port[,host:port…], "
                "rediss+cluster://host:port[,host:port…] (TLS) or leave empty",
            )
        return Storage(database_url=db, redis_url=redis)

    def limits(self, raw: dict[str, Any]) -> Limits:
        w = "limits"
        self.unknown(
            raw,
            {
                "max_body_bytes",
                "max_header_bytes",
                "on_store_failure",
                "body_timeout",
                "body_timeout_per_mb",
                "failed_auth",
            },
            w,
        )
        failure = self.get(raw, "on_store_failure", str, w, "local")
        if failure not in ("local", "deny", "allow"):
            raise self.fail(f"{w}.on_store_failure", f"{failure!r} must be local, deny or allow")
        per_mb = raw.get("body_timeout_per_mb")
        return Limits(
            max_body_bytes=self.positive_int(raw, "max_body_bytes", w, 1_048_576),
            max_header_bytes=self.positive_int(raw, "max_header_bytes", w, 16_384),
            on_store_failure=failure,
            body_timeout=self.duration(raw, "body_timeout", w, 10.0),
            # 0 is allowed here: one deadline for every body, whatever its size.
            body_timeout_per_mb=(
                0.0
                if per_mb in (0, "0", "0s")
                else self.duration(raw, "body_timeout_per_mb", w, 5.0)
            ),
            failed_auth=self.failed_auth(raw, w),
        )

    def failed_auth(self, raw: dict[str, Any], w: str) -> FailedAuth:
        given = self.get(raw, "failed_auth", dict, w, {})
        where = f"{w}.failed_auth"
        self.unknown(given, {"limit", "window"}, where)
        limit: int = self.get(given, "limit", int, where, 20)
        if limit < 0:
            raise self.fail(f"{where}.limit", f"must be 0 (off) or more, got {limit}")
        return FailedAuth(limit=limit, window=self.duration(given, "window", where, 60.0))

    def security(self, raw: dict[str, Any]) -> Security:
        w = "security"
        self.unknown(raw, {"allow_private_targets"}, w)
        return Security(
            allow_private_targets=self.get(raw, "allow_private_targets", bool, w, False)
        )

    def routing(self, raw: dict[str, Any]) -> Routing:
        w = "routing"
        self.unknown(raw, {"trailing_slash", "case_sensitive"}, w)
        slash = self.get(raw, "trailing_slash", str, w, "ignore")
        if slash not in ("strict", "ignore"):
            raise self.fail(f"{w}.trailing_slash", f"{slash!r} must be strict or ignore")
        return Routing(
            trailing_slash=slash,
            case_sensitive=self.get(raw, "case_sensitive", bool, w, False),
        )

    def strings(self, raw: dict[str, Any], key: str, where: str, default: Any) -> list[str]:
        """A list of strings; each entry that is not one is named in the error."""
        value: list[Any] = self.get(raw, key, list, where, default)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{where}.{key}[{i}]", f"must be a string, got {item!r}")
        return value

    def cors(self, raw: dict[str, Any]) -> Cors:
        w = "cors"
        self.unknown(
            raw,
            {
                "allow_origins",
                "allow_methods",
                "allow_headers",
                "expose_headers",
                "allow_credentials",
                "max_age",
            },
            w,
        )
        origins = self.strings(raw, "allow_origins", w, [])
        allowed: list[str] = []
        for i, given in enumerate(origins):
            where = f"{w}.allow_origins[{i}]"
            if given.strip() == "*":
                if len(origins) > 1:
                    raise self.fail(where, '"*" allows every origin: list it alone')
                allowed.append("*")
                continue
            origin = given.strip().lower()
            if origin == "null":
                raise self.fail(
                    where,
                    'the "null" origin cannot be allowed: sandboxed frames and local files '
                    "of any site send it",
                )
            if "*" in origin:
                raise self.fail(
                    where, f"{given!r}: patterns are not supported; list each origin in full"
                )
            m = _ORIGIN.fullmatch(origin)
            if m is None:
                raise self.fail(
                    where,
                    f"{given!r} must be an origin, scheme://host[:port] with no path and no "
                    'trailing "/", e.g. "https://app.example.com"',
                )
            port = m.group(3)
            if port is not None and port == _DEFAULT_PORTS.get(m.group(1)):
                origin = origin[: -len(port)]  # browsers leave the default port out
            if origin not in allowed:
                allowed.append(origin)
        credentials: bool = self.get(raw, "allow_credentials", bool, w, False)
        if credentials and allowed == ["*"]:
            raise self.fail(
                f"{w}.allow_credentials",
                'cannot be true with allow_origins = ["*"]: the Fetch standard forbids '
                "credentials with a wildcard origin; list the origins instead",
            )
        methods: list[str] = []
        for i, given in enumerate(self.strings(raw, "allow_methods", w, list(CORS_METHODS))):
            method = given.strip().upper()
            if method == "*":
                methods.extend(m for m in _CORS_ALL_METHODS if m not in methods)
            elif method in _CORS_ALL_METHODS:
                if method not in methods:
                    methods.append(method)
            else:
                raise self.fail(
                    f"{w}.allow_methods[{i}]",
                    f"{given!r} must be one of {', '.join(_CORS_ALL_METHODS)} or *",
                )
        return Cors(
            allow_origins=tuple(allowed),
            allow_methods=tuple(methods),
            allow_headers=self.header_names(raw, "allow_headers", w, CORS_ALLOW_HEADERS),
            expose_headers=self.header_names(
                raw, "expose_headers", w, CORS_EXPOSE_HEADERS, credentials=credentials
            ),
            allow_credentials=credentials,
            max_age=(
                0.0
                if raw.get("max_age") == 0 and not isinstance(raw.get("max_age"), bool)
                else self.duration(raw, "max_age", w, 600.0)
            ),
        )

    def header_names(
        self,
        raw: dict[str, Any],
        key: str,
        w: str,
        default: tuple[str, ...],
        *,
        credentials: bool = False,
    ) -> tuple[str, ...]:
        """Header names (or ``["*"]`` alone), each checked, duplicates dropped."""
        given = self.strings(raw, key, w, list(default))
        names: list[str] = []
        for i, name in enumerate(given):
            where = f"{w}.{key}[{i}]"
            name = name.strip()
            if name == "*":
                if len(given) > 1:
                    raise self.fail(where, '"*" stands for every header: list it alone')
                if credentials:
                    raise self.fail(
                        where,
                        '"*" means a header named "*" to browsers when credentials are '
                        "allowed; list the header names",
                    )
            elif not _TOKEN.fullmatch(name):
                raise self.fail(where, f"{name!r} is not a header name")
            if name.lower() not in (n.lower() for n in names):
                names.append(name)
        return tuple(names)

    def bucket(self, raw: dict[str, Any], w: str, names: dict[str, str]) -> Bucket:
        self.unknown(
            raw,
            {
                "name",
                "display_name",
                "limit",
                "window",
                "routes",
                "endpoints",
                "scope",
                "algorithm",
                "cost",
                "shadow",
            },
            w,
        )
        name = self.name(raw, "name", w, names)
        scope = self.get(raw, "scope", str, w, "org")
        if scope not in ("org", "key", "tenant", "ip"):
            raise self.fail(f"{w}.scope", f"{scope!r} must be one of org, key, tenant, ip")
        algorithm = self.get(raw, "algorithm", str, w, "fixed_window")
        if algorithm not in ("fixed_window", "gcra"):
            raise self.fail(f"{w}.algorithm", f"{algorithm!r} must be fixed_window or gcra")
        routes = self.routes(raw, w)
        endpoints = self.routes(raw, w, "endpoints") if "endpoints" in raw else routes
        return Bucket(
            name=name,
            display_name=self.get(raw, "display_name", str, w, name),
            limit=self.positive_int(raw, "limit", w),
            window=self.duration(raw, "window", w),
            routes=routes,
            endpoints=endpoints,
            scope=scope,
            algorithm=algorithm,
            cost=self.positive_int(raw, "cost", w, 1),
            shadow=self.get(raw, "shadow", bool, w, False),
        )

    def pool(self, raw: dict[str, Any], w: str, names: dict[str, str]) -> Pool:
        self.unknown(raw, {"name", "limit", "routes", "lease"}, w)
        return Pool(
            name=self.name(raw, "name", w, names),
            limit=self.positive_int(raw, "limit", w),
            routes=self.routes(raw, w),
            lease=self.duration(raw, "lease", w, 300.0),
        )

    def group(self, raw: dict[str, Any], w: str, names: dict[str, str]) -> EndpointGroup:
        self.unknown(raw, {"key", "description", "routes"}, w)
        return EndpointGroup(
            key=self.name(raw, "key", w, names),
            description=self.get(raw, "description", str, w, ""),
            routes=self.routes(raw, w),
        )

    def access(self, raw: dict[str, Any], w: str) -> AccessRule:
        self.unknown(raw, {"routes", "roles", "tenant", "error_format"}, w)
        error_format = self.get(raw, "error_format", str, w, None)
        if error_format not in (None, "envelope", "detail"):
            raise self.fail(f"{w}.error_format", f"{error_format!r} must be envelope or detail")
        roles = self.get(raw, "roles", list, w, None)
        if roles is not None:
            for i, r in enumerate(roles):
                if r not in ROLES:
                    raise self.fail(f"{w}.roles[{i}]", f"{r!r} must be one of {', '.join(ROLES)}")
        tenant = self.get(raw, "tenant", str, w, "optional")
        if tenant not in ("required", "optional"):
            raise self.fail(f"{w}.tenant", f"{tenant!r} must be required or optional")
        return AccessRule(
            routes=self.routes(raw, w),
            roles=frozenset(roles) if roles is not None else None,
            tenant=tenant,
            error_format=error_format,
        )

    def label(self, raw: dict[str, Any], w: str) -> Label:
        self.unknown(raw, {"name", "source", "key", "routes"}, w)
        source = self.get(raw, "source", str, w)
        if source not in ("path", "header", "query"):
            raise self.fail(f"{w}.source", f"{source!r} must be path, header or query")
        routes = self.routes(raw, w)
        key: str = self.get(raw, "key", str, w)
        if source == "path":
            for i, r in enumerate(routes):
                if "{" + key + "}" not in r:
                    raise self.fail(
                        f"{w}.routes[{i}]", f"{r!r} has no path parameter {{{key}}} to read"
                    )
        return Label(
            name=self.name(raw, "name", w, {}),
            source=source,
            key=key.lower() if source == "header" else key,
            routes=routes,
        )

    def async_route(self, raw: dict[str, Any], w: str) -> AsyncRoute:
        self.unknown(raw, {"route", "concurrency", "handler", "validator", "id_field"}, w)
        route = self.get(raw, "route", str, w)
        try:
            parse_route(route)
        except ValueError as exc:
            raise self.fail(f"{w}.route", str(exc)) from None
        # Default: the scoring API shape's rules for a route ending in /score (as policies
        # written before validators were named expect), any JSON object otherwise.
        path = route.split()[-1].rstrip("/")
        default = "score" if path.endswith("/score") else "object"
        validator = self.get(raw, "validator", str, w, default)
        if validator not in ASYNC_VALIDATORS:
            raise self.fail(
                f"{w}.validator", f"{validator!r} must be one of {', '.join(ASYNC_VALIDATORS)}"
            )
        id_field = self.get(raw, "id_field", str, w, "applicationId").strip()
        return AsyncRoute(
            route=route,
            concurrency=self.positive_int(raw, "concurrency", w, 500),
            handler=self.get(raw, "handler", str, w, "upstream"),
            validator=validator,
            id_field=id_field,
        )

    def platform(self, raw: dict[str, Any]) -> Platform:
        w = "platform"
        self.unknown(raw, {"prefix", "disable"}, w)
        prefix = self.get(raw, "prefix", str, w, "").strip()
        if prefix == "/":
            prefix = ""
        if prefix:
            prefix = prefix.rstrip("/")
            segments = prefix.split("/")
            if (
                not prefix.startswith("/")
                or any(not s for s in segments[1:])
                or not _PREFIX_SEGMENT.fullmatch(prefix)
            ):
                raise self.fail(
                    f"{w}.prefix",
                    f"{prefix!r} must be a path such as /_tollhouse: segments of letters, "
                    "digits, '-', '_', '.' and '~'",
                )
        disable = self.strings(raw, "disable", w, [])
        for i, group in enumerate(disable):
            if group not in PLATFORM_GROUPS:
                raise self.fail(
                    f"{w}.disable[{i}]",
                    f"{group!r} is not a group; choose from {', '.join(PLATFORM_GROUPS)}",
                )
        return Platform(prefix=prefix, disable=tuple(dict.fromkeys(disable)))

    def fair_use(
        self,
        raw: dict[str, Any],
        w: str,
        seen: set[str],
        buckets: tuple[Bucket, ...],
        pools: tuple[Pool, ...],
    ) -> FairUseRule:
        self.unknown(
            raw,
            {"signal", "threshold", "window", "action", "after", "routes", "bucket", "limit"},
            w,
        )
        signal = self.get(raw, "signal", str, w)
        if signal not in FAIR_USE_SIGNALS:
            raise self.fail(
                f"{w}.signal", f"{signal!r} is not a signal; one of {', '.join(FAIR_USE_SIGNALS)}"
            )
        if signal in seen:
            raise self.fail(f"{w}.signal", f"{signal!r} is listed twice")
        seen.add(signal)
        base = FAIR_USE_DEFAULTS[signal]
        threshold = float(self.get(raw, "threshold", (int, float), w, base.threshold))
        if threshold < 0:
            raise self.fail(f"{w}.threshold", f"must be 0 or more, got {raw['threshold']!r}")
        if "after" in raw and signal != "criteria_without_scoring":
            raise self.fail(f"{w}.after", "only criteria_without_scoring has an after (T)")
        action = self.get(raw, "action", str, w, "flag")
        if action not in ("flag", "throttle"):
            raise self.fail(f"{w}.action", f"{action!r} must be flag or throttle")
        bucket: str | None = None
        limit: int | None = None
        if action == "throttle":
            bucket = self.get(raw, "bucket", str, w)
            # A bucket's or an in-flight pool's name: overrides serve both.
            if bucket not in {b.name for b in buckets} | {p.name for p in pools}:
                raise self.fail(
                    f"{w}.bucket", f"{bucket!r} is not a bucket or a pool of this policy"
                )
            limit = self.positive_int(raw, "limit", w)
        elif "bucket" in raw or "limit" in raw:
            field_name = "bucket" if "bucket" in raw else "limit"
            raise self.fail(
                f"{w}.{field_name}", 'only action = "throttle" takes a bucket and limit'
            )
        routes = self.routes(raw, w) if "routes" in raw else base.routes
        if signal == "regeneration_loop":
            for i, r in enumerate(routes):
                if "{" in r or r.endswith("*"):
                    raise self.fail(
                        f"{w}.routes[{i}]",
                        f"{r!r}: generation routes are literal paths (the jobId is read "
                        "from the JSON body)",
                    )
        return FairUseRule(
            signal=signal,
            threshold=threshold,
            window=self.duration(raw, "window", w, base.window),
            action=action,
            after=self.duration(raw, "after", w, base.after) if base.after else 0.0,
            routes=routes,
            bucket=bucket,
            limit=limit,
        )
