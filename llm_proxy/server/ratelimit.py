"""Rate limiting: a token bucket per API key (or per client address without keys).

Each caller may send ``auth.rate_burst`` requests at once; the bucket refills at
``auth.rate_limit`` requests per minute. A request over the limit gets 429 with
``Retry-After`` and, like every other request, its row in the audit trail.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..config import AuthConfig
from ..errors import TooManyRequests
from . import state

MAX_CALLERS = 10_000  # buckets kept; the least recently seen are forgotten first


class RateLimiter:
    """Token buckets keyed by caller; pure, with an injectable clock."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = MAX_CALLERS,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.max_callers = max_callers
        # caller → (tokens left, when last refilled), least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, caller: str) -> float:
        """Seconds until ``caller`` has a token (0 when it has one now); spends and remembers nothing."""
        found = self._buckets.get(caller)
        if found is None:
            return 0.0
        tokens, then = found
        tokens = min(self.burst, tokens + (self.clock() - then) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, caller: str) -> float:
        """Spend one token: 0 when allowed, else the seconds until a token is back."""
        now = self.clock()
        tokens, then = self._buckets.pop(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[caller] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[caller] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        # A flood of new addresses must not grow memory without bound; a
        # forgotten caller comes back with a full bucket.
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)
        return wait


def middleware(auth: AuthConfig) -> Middleware:
    """A middleware answering 429 with ``Retry-After`` when a caller is over the limit."""
    limiter = RateLimiter(auth.rate_limit, auth.rate_burst)
    exempt = frozenset(auth.exempt)

    @web.middleware
    async def limit_rate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in exempt:
            name = request.get(state.KEY_NAME)
            caller = f"key:{name}" if name is not None else f"addr:{request.remote}"
            wait = limiter.take(caller)
            if wait > 0:
                who = f"key '{name}'" if name is not None else f"client {request.remote}"
                raise TooManyRequests(
                    f"rate limit exceeded for {who}: {auth.rate_limit:g} requests per minute "
                    f"(burst {auth.rate_burst}); retry in {math.ceil(wait)} s",
                    retry_after=math.ceil(wait),
                )
        return await handler(request)

    return limit_rate
