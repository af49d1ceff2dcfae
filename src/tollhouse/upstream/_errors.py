"""What can go wrong talking to an upstream, as one small tree under ``TollhouseError``::

    UpstreamError
    ├── UpstreamConnectError      no connection (refused, unknown host, TLS failure)
    ├── UpstreamConnectTimeout    no connection within the connect timeout
    ├── UpstreamPoolTimeout       every pooled connection stayed busy for the pool timeout
    ├── UpstreamReadTimeout       the upstream was silent for the read timeout
    └── UpstreamProtocolError     the answer is not valid HTTP/1.1
        └── UpstreamDisconnected  the upstream closed before the answer was complete

The messages name the upstream's address: they are for logs, not for callers.
"""

from __future__ import annotations

from tollhouse.errors import TollhouseError


class UpstreamError(TollhouseError):
    """The exchange with the upstream failed."""


class UpstreamConnectError(UpstreamError):
    """No connection could be opened."""


class UpstreamConnectTimeout(UpstreamError):
    """No connection was opened within the connect timeout."""


class UpstreamPoolTimeout(UpstreamError):
    """Every pooled connection stayed busy for the whole pool timeout."""


class UpstreamReadTimeout(UpstreamError):
    """The upstream sent nothing for the read timeout while an answer was awaited."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's answer is not valid HTTP/1.1."""


class UpstreamDisconnected(UpstreamProtocolError):
    """The upstream closed the connection before its answer was complete."""
