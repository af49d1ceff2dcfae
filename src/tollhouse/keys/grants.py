"""What a key may do to the keys of its own org (the self-serve API): pure checks.

Only ``root`` and ``manager`` keys manage keys. A key never makes a key more privileged
than itself: not a role above its own (:data:`~tollhouse.keys.model.ROLES` is in order of
privilege), and not a PRODUCTION key when it is a SANDBOX one. Each check returns the
reason for a refusal, worded for the 403 the caller sees, or None; :func:`check_grant`
raises it with its own code (``ROLE_ESCALATION``, ``ENVIRONMENT_ESCALATION``). The
provider API (admin tokens) is not bound by them.
"""

from __future__ import annotations

from tollhouse.errors import EnvironmentEscalation, RoleEscalation
from tollhouse.keys.model import ROLES

__all__ = ["MANAGING_ROLES", "check_grant", "grant_refusal", "management_refusal"]

#: The roles that may manage their org's keys and webhook endpoints.
MANAGING_ROLES: frozenset[str] = frozenset({"root", "manager"})
#: Environments in order of privilege: a key may make keys of its own or a lower one.
_ENVIRONMENT_RANK = {"PRODUCTION": 0, "SANDBOX": 1}


def management_refusal(role: str, what: str) -> str | None:
    """Why a key of ``role`` may not manage ``what`` (e.g. ``"keys"``), or None."""
    if role in MANAGING_ROLES:
        return None
    return (
        f"This key's role {role!r} may not manage {what}; "
        f"allowed roles: {', '.join(sorted(MANAGING_ROLES))}."
    )


def grant_refusal(
    caller_role: str, caller_environment: str, role: str, environment: str
) -> str | None:
    """Why a key (``caller_role``, ``caller_environment``) may not create a key of
    ``role`` in ``environment``, or None when it may.

    Both ``role`` and ``environment`` must be known values (checked before).
    """
    if ROLES.index(role) < ROLES.index(caller_role):
        return (
            f"A {caller_role} key cannot create a {role} key: a key never grants a role "
            f"above its own (roles from most to least privileged: {', '.join(ROLES)})."
        )
    if _ENVIRONMENT_RANK[environment] < _ENVIRONMENT_RANK[caller_environment]:
        return (
            f"A {caller_environment} key cannot create a {environment} key: sign in with a "
            f"{environment} key to make one."
        )
    return None


def check_grant(caller_role: str, caller_environment: str, role: str, environment: str) -> None:
    """:func:`grant_refusal` as an error.

    Raises:
        RoleEscalation: ``role`` ranks above ``caller_role``.
        EnvironmentEscalation: a SANDBOX key asked for a PRODUCTION key.
    """
    refusal = grant_refusal(caller_role, caller_environment, role, environment)
    if refusal is None:
        return
    if ROLES.index(role) < ROLES.index(caller_role):
        raise RoleEscalation(refusal)
    raise EnvironmentEscalation(refusal)
