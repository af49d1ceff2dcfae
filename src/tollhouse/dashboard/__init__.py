"""The usage dashboard: a static single-page app served at ``/dashboard`` without a key.

The page is public static content (HTML, CSS, ES modules and the vendored uPlot build).
It signs in with an API key kept in the browser's session storage and reads everything
through the public API — call counts, the analytics catalogue, scoring volume (their
shapes are in docs/api-shapes.md), the rate-limit status, the queue and webhook
deliveries — each call carrying the key in ``X-API-Key``. Nothing here touches storage or
identities.

:class:`Tollhouse <tollhouse.http.app.Tollhouse>` puts ``/dashboard`` and ``/dashboard/…``
in the gateway's route table as keyless endpoints (under ``[platform] prefix`` when set).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from tollhouse.http.asgi import Receive, Scope, Send

__all__ = ["PREFIX", "DashboardApp", "is_dashboard_path"]

#: The dashboard's mount point.
PREFIX: Final = "/dashboard"
_PREFIX_LEN: Final = len(PREFIX)

_TYPES: Final[dict[str, str]] = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
    "md": "text/markdown; charset=utf-8",
    "LICENSE": "text/plain; charset=utf-8",
}

#: Scripts and styles only from here; data only from this origin; no framing; the sign-in
#: form can never be submitted anywhere (the key stays out of URLs and request bodies).
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_COMMON: Final[list[tuple[bytes, bytes]]] = [
    (b"cache-control", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def is_dashboard_path(path: str) -> bool:
    """``/dashboard`` or anything under ``/dashboard/`` (not ``/dashboards``)."""
    return path.startswith(PREFIX) and (len(path) == _PREFIX_LEN or path[_PREFIX_LEN] == "/")


def _load_static() -> dict[str, tuple[bytes, bytes]]:
    """Every file of the static folder: relative path → (body, content type)."""
    files: dict[str, tuple[bytes, bytes]] = {}
    root = resources.files(__name__).joinpath("static")

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
                continue
            suffix = child.name.rsplit(".", 1)[-1]
            kind = _TYPES.get(suffix)
            if kind is not None:
                files[name] = (child.read_bytes(), kind.encode())

    walk(root, "")
    return files


class DashboardApp:
    """Raw ASGI: ``GET``/``HEAD`` of the dashboard's static files, from memory.

    ``/dashboard`` redirects to ``/dashboard/`` (so the page's relative URLs resolve under
    any ``root_path``), ``/dashboard/`` is ``index.html``; unknown files are 404 and other
    methods 405. Files are read once, on the first request.
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, bytes]] | None = None

    def files(self) -> dict[str, tuple[bytes, bytes]]:
        """The static files (loaded on first use)."""
        if self._files is None:
            self._files = _load_static()
        return self._files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed", [(b"allow", b"GET, HEAD")])
            return
        rest = path[_PREFIX_LEN:]
        if not rest:
            target = (scope.get("root_path", "") + PREFIX + "/").encode()
            await _plain(send, 308, b"", [(b"location", target)])
            return
        name = rest[1:] or "index.html"
        found = self.files().get(name)
        if found is None:
            await _plain(send, 404, b"not found: " + name.encode(errors="replace"))
            return
        body, kind = found
        headers = [
            (b"content-type", kind),
            (b"content-length", str(len(body)).encode()),
            *_COMMON,
        ]
        if name == "index.html":
            headers.append((b"content-security-policy", _CSP.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


async def _plain(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *_COMMON,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
