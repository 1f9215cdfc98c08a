"""Who may read the ``/metrics`` routes of the capture server and the dashboard, and how
they fail.

The metrics name sessions and participants and show who is connected: by default they are
served to loopback clients only (a scraper or the dashboard on the same machine), and not
to a request a proxy forwarded (it arrives from loopback too). With
``metrics_token`` set they are served to any address that sends
``Authorization: Bearer <metrics_token>``, and to no one without it. A handler that fails
answers 500 with the reason and the server goes on; a scrape beyond
``MAX_CONCURRENT_SCRAPES`` at once is turned away (503) rather than queued on the event
loop the call runs on.
"""

from __future__ import annotations

import hmac
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from streams.settings import Settings, is_loopback

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_CONCURRENT_SCRAPES = 8
#: Headers a reverse proxy adds to what it forwards (RFC 7239 and the common de-facto ones).
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def metrics_headers(settings: Settings) -> dict[str, str]:
    """What a livetag service sends to read another's metrics (the dashboard polls the
    capture server's)."""
    if settings.metrics_token is None:
        return {}
    return {"Authorization": f"Bearer {settings.metrics_token.get_secret_value()}"}


class MetricsGuard:
    """Wraps metrics handlers: access by address or token, bounded concurrency, failures
    answered with a reason. Refusals are counted by code in ``refusals``."""

    def __init__(self, settings: Settings, refusals: Counter[str]) -> None:
        token = settings.metrics_token
        self._token = None if token is None else token.get_secret_value().encode()
        self.refusals = refusals
        self.failures = 0  # handler failures answered with 500
        self._in_flight = 0
        if self._token is None and (settings.public_url or settings.dashboard_public_url):
            log.warning(
                "a public URL is set but metrics_token is not: metrics are refused to "
                "requests with a forwarding header, but a proxy that adds none makes every "
                "client look local; set metrics_token"
            )

    def wrap(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            refused = self._refusal(request)
            if refused is not None:
                return refused
            if self._in_flight >= MAX_CONCURRENT_SCRAPES:
                return self._refuse(
                    503, "metrics_busy", f"{MAX_CONCURRENT_SCRAPES} scrapes are running: retry"
                )
            self._in_flight += 1
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception as exc:
                # A bug or odd state must cost this answer, never the server.
                self.failures += 1
                log.exception("%s failed", request.path)
                return web.json_response(
                    {
                        "type": "error",
                        "code": "internal",
                        "message": f"metrics failed: {type(exc).__name__}: {exc}",
                    },
                    status=500,
                )
            finally:
                self._in_flight -= 1

        return guarded

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self._token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), self._token
            ):
                return None
            response = self._refuse(
                401,
                "metrics_unauthorized",
                "metrics need the header 'Authorization: Bearer <metrics_token>'",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="livetag metrics"'
            return response
        if any(header in request.headers for header in FORWARDING_HEADERS):
            # A reverse proxy on this machine makes every client a loopback peer; the
            # header it adds says the request came from elsewhere.
            return self._refuse(
                403,
                "metrics_forbidden",
                "a proxied request is not this machine's; set metrics_token to read the "
                "metrics through a proxy",
            )
        if is_loopback(request.remote):
            return None
        return self._refuse(
            403,
            "metrics_forbidden",
            "metrics are served to this machine only; set metrics_token to read them "
            "from elsewhere",
        )

    def _refuse(self, status: int, code: str, message: str) -> web.Response:
        self.refusals[code] += 1
        return web.json_response({"type": "error", "code": code, "message": message}, status=status)
