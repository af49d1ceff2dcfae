"""Key secrets: how they are made, recognised and hashed. Only hashes are stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

from tollhouse.keys.model import ENV_PREFIX, PREFIX_ENVIRONMENT, Environment

_ALPHABET = string.ascii_letters + string.digits
#: Random characters after the prefix: 32 base62 characters ≈ 190 bits.
SECRET_LENGTH = 32
#: Characters of the secret kept in clear for people to recognise a key (prefix + 4).
SHOWN_PREFIX = 12


def new_secret(env: str) -> str:
    """A fresh secret, ``sk_test_…`` for env "test", ``sk_live_…`` for "live"."""
    return ENV_PREFIX[env] + "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))


def new_key_id() -> str:
    """A public key id, ``key_`` + 16 hex characters."""
    return "key_" + secrets.token_hex(8)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of the secret: secrets carry ~190 bits, so a fast hash is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Compare two hashes in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


def environment_of(secret: str) -> Environment | None:
    """SANDBOX / PRODUCTION from the secret's prefix, or None if it is not a tollhouse key."""
    for prefix, env in PREFIX_ENVIRONMENT.items():
        if secret.startswith(prefix) and len(secret) == len(prefix) + SECRET_LENGTH:
            return env
    return None
