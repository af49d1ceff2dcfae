"""Failed authentications per client address (``[limits] failed_auth``).

Every key that does not authenticate counts one against its client address (the one
``[proxy] trusted_proxies`` resolves) in the limit store, so the count is shared by every
instance on one Redis. The failure that finds the address over the limit gets 429, and
the address is remembered here until its window ends: from then on, a request from it
whose key is not known valid from memory is answered 429 at once — no key is looked up,
no query made, nothing added to the key cache — so a flood of bad keys costs a dict
lookup per request. A key this instance already knows valid is still served from that
address (a client behind the same NAT as the flood keeps working).

A valid key costs nothing here: the gateway asks only for keys it does not know valid.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from tollhouse.errors import RateLimited, StorageError, Unauthorized
from tollhouse.http.counters import GatewayCounters
from tollhouse.limits.headers import retry_seconds
from tollhouse.limits.naming import failed_auth_key
from tollhouse.limits.store import BucketCheck, LimitStore
from tollhouse.policy.model import FailedAuth

__all__ = ["DENIER", "MAX_BLOCKED", "AuthFailures"]

logger = logging.getLogger(__name__)

#: The name failed-authentication refusals are counted under (``/metrics``' denials).
DENIER = "failed_auth"
#: Addresses remembered as over the limit at most; expired ones are dropped when full.
MAX_BLOCKED = 100_000
_NOT_VALID = (
    "The API key is not valid or has been revoked; check the key or create one with "
    "`tollhouse keys create`."
)


class AuthFailures:
    """Counts failed authentications per client address and refuses addresses over
    ``[limits] failed_auth``.

    Args:
        rule: the limit and window (limit 0: nothing counted, nothing refused).
        limits: the limit store the failures are counted in.
        counters: where refusals are counted (``/metrics``).
    """

    def __init__(self, rule: FailedAuth, limits: LimitStore, counters: GatewayCounters) -> None:
        self.limit = rule.limit
        self.window = rule.window
        self.limits = limits
        self.counters = counters
        #: Client address → epoch second its refusal ends. Empty in normal operation, so
        #: the gateway's test of it is one truth check.
        self.blocked: dict[str, float] = {}

    def check(self, scope: Any, now: float) -> None:
        """Refuse a request from an address over the limit (before its key is looked up).

        Raises:
            RateLimited: the address is over the limit until its window ends.
        """
        address = _address(scope)
        until = self.blocked.get(address)
        if until is None:
            return
        if until <= now:
            del self.blocked[address]
            return
        raise self._too_many(until - now)

    def refusal(self) -> Unauthorized:
        """The 401 of a key that is not valid."""
        return Unauthorized(_NOT_VALID)

    async def failed(self, scope: Any, now: float) -> NoReturn:
        """Count one failed authentication of the request's address, then refuse it: 401,
        or 429 when the address is over the limit (remembered until the window ends).

        Raises:
            Unauthorized: under the limit.
            RateLimited: over it.
        """
        address = _address(scope)
        check = BucketCheck(
            failed_auth_key(address), DENIER, self.limit, self.window, "fixed_window", 1
        )
        try:
            verdict = self.limits.decide_nowait((check,), (), now)
            if verdict is None:
                verdict = await self.limits.decide((check,), (), now)
        except StorageError:
            logger.warning("failed authentication not counted: the limit store failed")
            raise self.refusal() from None
        if verdict.allowed:
            raise self.refusal()
        blocked = self.blocked
        if len(blocked) >= MAX_BLOCKED:
            for gone in [a for a, until in blocked.items() if until <= now]:
                del blocked[gone]
            if len(blocked) >= MAX_BLOCKED:
                blocked.clear()
        blocked[address] = now + verdict.retry_after
        logger.info(
            "client address over the failed-authentication limit", extra={"client": address}
        )
        raise self._too_many(verdict.retry_after)

    def _too_many(self, wait: float) -> RateLimited:
        denied = self.counters.denied
        denied[DENIER] = denied.get(DENIER, 0) + 1
        seconds = retry_seconds(wait)
        return RateLimited(
            f"Too many failed authentications from this address; retry after {seconds} s "
            "with a valid key.",
            headers={"Retry-After": str(seconds)},
        )


def _address(scope: Any) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"
