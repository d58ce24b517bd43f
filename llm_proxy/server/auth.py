"""API keys: who may use the proxy, checked before anything else happens.

A key is accepted as ``Authorization: Bearer <key>`` (what Home Assistant and
ollama-python send) or ``X-API-Key: <key>``. The proxy keeps only each key's
SHA-256 and compares digests with :func:`hmac.compare_digest`, against every
configured key, so the time taken says nothing about which bytes matched. What
is recorded is the key's *name*; the key itself is never logged or stored.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..config import AuthConfig, Config
from ..errors import TooManyRequests, Unauthorized
from . import state
from .ratelimit import RateLimiter


class Authenticator:
    """Tells which configured key, if any, a request presents."""

    def __init__(self, auth: AuthConfig) -> None:
        self._keys = [(bytes.fromhex(k.key_sha256), k.name) for k in auth.keys]
        self.exempt = frozenset(auth.exempt)

    def identify(self, headers: Mapping[str, str]) -> str | None:
        """The name of the key the headers carry; ``None`` when there is none or it is wrong."""
        presented = presented_key(headers)
        if not presented:
            return None
        # surrogatepass: a header can decode to lone surrogates; it must still hash, not raise.
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = None
        for expected, name in self._keys:
            # No early exit: every key is compared, whatever matched.
            if hmac.compare_digest(digest, expected):
                found = name
        return found


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer`` or, failing that, ``X-API-Key``."""
    authorization = headers.get("Authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("X-API-Key", "").strip() or None


def middleware(auth: AuthConfig) -> Middleware:
    """A middleware answering 401 ``{"error": "unauthorized"}`` without a valid key.

    Authentication runs before the rate limit (which counts per key), so wrong
    keys are counted here: per client address, a token bucket of
    ``auth.max_failures`` a minute. An address out of tokens gets 429 and its
    key is not even checked, so a guess that would have been right is no use.
    """
    authenticator = Authenticator(auth)
    # The bucket table is bounded (ratelimit.MAX_CALLERS): a flood of addresses cannot grow it.
    guesses = RateLimiter(auth.max_failures, auth.max_failures) if auth.max_failures else None

    @web.middleware
    async def require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        exempt = request.path in authenticator.exempt
        address = request.remote or "unknown"
        if guesses is not None and not exempt and (wait := guesses.wait(address)) > 0:
            raise TooManyRequests(
                f"too many wrong API keys from client {address}: {auth.max_failures} per minute "
                f"(auth.max_failures); retry in {math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )
        name = authenticator.identify(request.headers)
        if name is None and not exempt:
            if guesses is not None and presented_key(request.headers) is not None:
                guesses.take(address)  # a wrong key; a missing one is no guess
            raise Unauthorized()
        if name is not None:
            request[state.KEY_NAME] = name
            exchange = request.get(state.EXCHANGE)
            if exchange is not None:
                exchange.key_name = name
        return await handler(request)

    return require_key


def exposure_warning(config: Config) -> str | None:
    """A warning when the proxy listens beyond this machine with no keys required."""
    if config.auth.keys or is_loopback(config.server.host):
        return None
    return (
        f"warning: listening on {config.server.host} without auth.keys: anyone who can reach "
        f"port {config.server.port} can use the backend. Set auth.keys, or server.host: 127.0.0.1."
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve beyond this machine
