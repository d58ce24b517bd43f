"""Who may read the trail through the UI: admin keys, and the session cookie a sign-in gives.

With ``auth.keys`` set, the page asks once for a key. A key with ``admin:
true`` gets a session cookie: ``name.expiry.signature``, HMAC-SHA256 over the
name, the expiry and the key's stored digest, with a secret made when the
process starts. The key itself never reaches the browser's storage; the cookie
is HttpOnly and SameSite=Strict, so no script and no other site can use it.
Changing a key's secret, removing the key or restarting the proxy ends its
sessions. Scripts may send an admin key as ``Authorization: Bearer`` instead.

Wrong keys at the sign-in count like wrong keys anywhere: ``auth.max_failures``
a minute per client address, then 429 until the minute refills.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import secrets
import time

from aiohttp import web

from ..config import AuthConfig, UiConfig
from ..server.auth import Authenticator, presented_key
from ..server.ratelimit import RateLimiter

log = logging.getLogger("llm_proxy.ui")

COOKIE = "llm_proxy_ui"
MAX_KEY = 4096  # characters of a key worth hashing at all


class Refused(Exception):
    """A sign-in or a request the UI turns away: status and message for ``{"error"}``."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class Sessions:
    """Signs and checks session cookies; answers who a request is."""

    def __init__(self, auth: AuthConfig, ui: UiConfig, required: bool) -> None:
        self.required = required
        self._auth = Authenticator(auth)
        self._digests = {k.name: k.key_sha256 for k in auth.keys}
        self._admins = frozenset(k.name for k in auth.keys if k.admin)
        self._secret = secrets.token_bytes(32)
        self.lifetime = int(ui.session_hours * 3600)
        self._guesses = RateLimiter(auth.max_failures, auth.max_failures) if auth.max_failures else None
        self._max_failures = auth.max_failures

    # -- cookies ----------------------------------------------------------------

    def issue(self, name: str, now: float | None = None) -> str:
        """A cookie value for key ``name``, good for ``ui.session_hours``."""
        expires = int((time.time() if now is None else now) + self.lifetime)
        encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
        payload = f"{encoded}.{expires}"
        return f"{payload}.{self._sign(name, payload)}"

    def _sign(self, name: str, payload: str) -> str:
        message = f"{payload}.{self._digests.get(name, '')}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def holder(self, cookie: str | None, now: float | None = None) -> str | None:
        """The admin key's name a cookie was issued to, while it is valid; else None."""
        if not cookie or len(cookie) > 1024:
            return None
        encoded, _, rest = cookie.partition(".")
        expires, _, signature = rest.partition(".")
        try:
            name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            ends = int(expires)
        except (ValueError, UnicodeDecodeError):
            return None
        if name not in self._admins or ends < (time.time() if now is None else now):
            return None
        if not hmac.compare_digest(signature, self._sign(name, f"{encoded}.{expires}")):
            return None
        return name

    # -- requests ---------------------------------------------------------------

    def reader(self, request: web.Request) -> str | None:
        """Who reads: the cookie's key, or an admin key sent as a header. Raises Refused when no one."""
        if not self.required:
            return None
        name = self.holder(request.cookies.get(COOKIE))
        if name is not None:
            return name
        if presented_key(request.headers) is not None:
            return self.admin(request, self._auth.identify(request.headers))
        raise Refused(401, "sign in with an admin API key")

    def sign_in(self, request: web.Request, key: object) -> str:
        """The admin key's name for a key typed into the page; Refused otherwise."""
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
            raise Refused(400, "'key' must be a non-empty string")
        return self.admin(request, self._auth.identify({"X-API-Key": key.strip()}))

    def admin(self, request: web.Request, name: str | None) -> str:
        """``name`` when it is an admin key's; counts a wrong key against the client's address."""
        address = request.remote or "unknown"
        if self._guesses is not None and (wait := self._guesses.wait(address)) > 0:
            raise Refused(
                429,
                f"too many wrong API keys from client {address}: {self._max_failures} per minute "
                f"(auth.max_failures); retry in {math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )
        if name is None:
            if self._guesses is not None:
                self._guesses.take(address)
            log.warning("web UI: wrong API key from %s", address)
            raise Refused(401, "wrong API key")
        if name not in self._admins:
            log.warning("web UI: key '%s' from %s is not an admin key", name, address)
            raise Refused(403, f"key '{name}' may not read the audit trail (it needs admin: true)")
        return name

    def cookie(self, response: web.StreamResponse, request: web.Request, name: str) -> None:
        """Set the session cookie for ``name`` on ``response``."""
        response.set_cookie(
            COOKIE, self.issue(name), max_age=self.lifetime, path="/ui/",
            httponly=True, samesite="Strict", secure=request.secure,
        )  # fmt: skip
