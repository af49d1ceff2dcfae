"""Connection URLs as tollhouse shows them: in the ``serve`` banner and in error messages,
a password in the URL's user info is replaced by ``***`` (a banner or a startup error
ends up in terminals, CI logs and support tickets; the password must not)."""

from __future__ import annotations

import re

__all__ = ["shown_url"]

# ``scheme://user:password@`` or ``scheme://:password@``; the user info ends at the last
# ``@`` before the path (a password may hold ``@`` only percent-encoded, as URLs require).
_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/?#@:]*:)[^/?#]*@")


def shown_url(url: str) -> str:
    """``url`` with the password of its user info masked.

    >>> shown_url("redis://:s3cret@cache:6379/0")
    'redis://:***@cache:6379/0'
    >>> shown_url("postgresql://app:pw@db/tollhouse")
    'postgresql://app:***@db/tollhouse'
    >>> shown_url("redis+cluster://u:pw@h1:7000,h2:7001")
    'redis+cluster://u:***@h1:7000,h2:7001'
    >>> shown_url("sqlite:///./.tollhouse/tollhouse.db")
    'sqlite:///./.tollhouse/tollhouse.db'
    """
    return _PASSWORD.sub(r"\1***@", url, count=1)
