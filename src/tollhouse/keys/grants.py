"""What a key may hand out: the escalation rules of keys made by keys (the self-serve API).

Pure: a key's role and environment in, the requested ones in, an error out. The provider
API (admin tokens) is not bound by them.
"""

from __future__ import annotations

from tollhouse.errors import EnvironmentEscalation, RoleEscalation
from tollhouse.keys.model import ROLES, Environment, Role


def check_grant(
    holder_role: Role, holder_environment: Environment, role: Role, environment: Environment
) -> None:
    """Refuse a key asking for a key above its own.

    Args:
        holder_role: the asking key's role.
        holder_environment: the asking key's environment.
        role: the role asked for.
        environment: the environment asked for.

    Raises:
        RoleEscalation: ``role`` ranks above ``holder_role`` (root > manager > backend >
            member).
        EnvironmentEscalation: a SANDBOX key asked for a PRODUCTION key.
    """
    if ROLES.index(role) < ROLES.index(holder_role):
        raise RoleEscalation(
            f"A {holder_role} key cannot create a {role} key: a key may only create keys "
            f"of its own role or below ({', '.join(ROLES[ROLES.index(holder_role) :])})."
        )
    if holder_environment == "SANDBOX" and environment == "PRODUCTION":
        raise EnvironmentEscalation(
            "A SANDBOX key cannot create a PRODUCTION key: use a PRODUCTION key (sk_live_…) "
            "or the provider API."
        )
