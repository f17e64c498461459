"""Bearer tokens: writes always need the token; reads need it when `reads_need_token` is set.

The token comes from ABRAY_TOKEN, or is generated at the first start, printed once, and kept only as a
SHA-256 hash in the database, so later starts (and restarts) accept it without printing it again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys

from sqlalchemy.orm import Session

from abray.service import store

HASH_KEY = "api_token_sha256"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_digest(session: Session, env_token: str | None, write=lambda s: print(s, file=sys.stderr, flush=True)) -> str:
    """The hash every request's token is checked against; generates the token when there is none yet."""
    if env_token:
        return digest(env_token)
    known = store.get_meta(session, HASH_KEY)
    if known:
        return known
    token = secrets.token_urlsafe(32)
    store.set_meta(session, HASH_KEY, digest(token))
    write(f"abray API token (printed once; writes need `Authorization: Bearer <token>`): {token}")
    return digest(token)


def valid(presented: str | None, expected_digest: str) -> bool:
    return presented is not None and hmac.compare_digest(digest(presented), expected_digest)
