"""The canonical request path: one spelling per resource, matched and forwarded.

An upstream that routes leniently (case-insensitive, trailing slash optional, ``//``
collapsed, percent-escapes decoded) resolves many spellings to one resource. If the
gateway matched its policy on the spelling as received, ``/v1/expensive/`` could reach
the resource of ``/v1/expensive`` without its bucket. So the gateway matches on the
canonical path and rewrites the request to it: the inner app receives exactly the path
the policy was matched on.

Canonical form of a raw path (the bytes of the request target before ``?``):

* escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded and every other
  escape is written in upper case (RFC 3986 §6.2.2): ``/v1/%65xpensive`` → ``/v1/expensive``;
* refused outright (:class:`PathRefused`, 400): an encoded slash (``%2F``), a backslash
  (``\\`` or ``%5C``, a separator to some servers), and a ``.`` or ``..`` segment in any
  spelling (``%2e``, ``.%2E``, …) — each makes the path mean different things to
  different servers, so no single canonical path exists;
* empty segments are removed: ``//v1//x`` → ``/v1/x``;
* with ``trailing_slash = "ignore"`` a trailing ``/`` is removed (``/`` itself stays);
  with ``"strict"`` it is kept, once.

Case is not folded here: which segments are literals (and so may be respelled) is only
known once a pattern matched; :mod:`tollhouse.policy.match` does that part and
:func:`respell` applies it to the raw path.

Everything here is pure: plain values in, plain values out.
"""

from __future__ import annotations

import re
from typing import AnyStr
from urllib.parse import quote

from tollhouse.errors import BadRequest

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
#: RFC 3986 unreserved characters: their escapes mean the same as the character itself.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DOTS = (b".", b"..")
#: Characters a path segment may carry unescaped besides unreserved ones (RFC 3986 pchar).
_SEGMENT_SAFE = ":@!$&'()*+,;=~"


class PathRefused(BadRequest):
    """The request path has no single canonical form (400 ``BAD_REQUEST``)."""


def needs_canonical(raw: bytes, strict: bool) -> bool:
    """Whether ``raw`` may differ from its canonical form (or be refused).

    The cheap check the gateway runs on every request: False means ``raw`` is canonical
    as it is, so :func:`canonical` would return it unchanged. True only means "look
    closer" (``/.well-known`` is canonical but says True).

    Args:
        raw: the raw path, as ASGI's ``scope["raw_path"]``.
        strict: ``trailing_slash = "strict"``.
    """
    # Searched as text: latin-1 maps byte to character one to one, and str searches are
    # several times cheaper than bytes ones.
    text = raw.decode("latin-1")
    return (
        "//" in text
        or "%" in text
        or "/." in text
        or "\\" in text
        or (not strict and text[-1:] == "/" and len(text) > 1)
    )


def _normalise_escape(m: re.Match[bytes]) -> bytes:
    value = int(m.group(1), 16)
    if value in _UNRESERVED:
        return bytes((value,))
    return m.group(0).upper()


def canonical(path: str, raw: bytes, strict: bool) -> tuple[str, bytes]:
    """The canonical form of one request path.

    Args:
        path: the percent-decoded path (ASGI's ``scope["path"]``); it is given the same
            segment changes as ``raw``, so it stays the decoding the server made.
        raw: the raw path (ASGI's ``scope["raw_path"]``); the refusals are decided here,
            since ``path`` no longer shows an encoded ``/``.
        strict: ``trailing_slash = "strict"`` (keep one trailing ``/``).

    Returns:
        ``(path, raw)`` in canonical form; the very arguments when nothing changes.

    Raises:
        PathRefused: an encoded slash, a backslash, or a dot segment.
    """
    if b"%" in raw:
        raw = _ESCAPE.sub(_normalise_escape, raw)
        if b"%2F" in raw:
            raise PathRefused('The path must not contain an encoded "/" (%2F).')
        if b"%5C" in raw:
            raise PathRefused('The path must not contain "\\" (%5C).')
    if b"\\" in raw:
        raise PathRefused('The path must not contain "\\" (%5C).')
    segments = raw.split(b"/")
    if b"." in raw and any(s in _DOTS for s in segments):
        # The policy is matched on this path; a server that resolves dot segments would
        # act on another one. Refuse rather than guess which.
        raise PathRefused('The path must not contain "." or ".." segments.')
    if raw[:1] != b"/":
        return path, raw  # not an origin-form path ("*"): no segments to tidy
    # Without an encoded "/", the decoded path has the very same segments as the raw one:
    # both get the same changes.
    if path[:1] == "/":
        path = _tidy(path, "/", strict)
    return path, _tidy(raw, b"/", strict)


def _tidy(path: AnyStr, slash: AnyStr, strict: bool) -> AnyStr:
    """Drop empty segments; keep one trailing slash when ``strict``."""
    body = path.split(slash)[1:]
    kept = [s for s in body if s]
    tidy = slash + slash.join(kept)
    if strict and kept and not body[-1]:
        tidy += slash
    return path if tidy == path else tidy


def encode_path(path: str) -> bytes:
    """A raw path for a decoded one, for servers that give no ``raw_path``."""
    return quote(path, safe="/" + _SEGMENT_SAFE).encode("ascii")


def quote_segment(text: str) -> bytes:
    """One path segment as it is written in a raw path (UTF-8, percent-encoded)."""
    return quote(text, safe=_SEGMENT_SAFE).encode("ascii")


def respell(raw: bytes, spellings: tuple[tuple[int, str, bool], ...]) -> bytes:
    """``raw`` with some segments respelled as a matched pattern writes them.

    Args:
        raw: a canonical raw path.
        spellings: ``(index, text, whole)`` per segment to respell, ``index`` counted
            from the first segment after the leading ``/``. ``whole``: the segment
            becomes ``text``; otherwise its first ``len(text)`` bytes do (a prefix
            pattern's partial segment, made only of unreserved characters).
    """
    segments = raw.split(b"/")
    for index, text, whole in spellings:
        i = index + 1
        if i >= len(segments):
            continue
        if whole:
            segments[i] = quote_segment(text)
        else:
            segments[i] = text.encode("ascii") + segments[i][len(text) :]
    return b"/".join(segments)
