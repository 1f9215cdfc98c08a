"""Nothing secret in the logs: the web servers' access log without query strings (join
links carry ``?token=``), and a filter on the log handlers that masks anything shaped like
a token that reaches a log line some other way (an exception's text, a library's warning).
"""

from __future__ import annotations

import logging
import re

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

ACCESS_LOGGER = "livetag.access"
# A JWT: its header is base64url JSON, so it starts with "eyJ" ('{"').
_TOKEN = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
MASK = "[token]"


def mask_tokens(text: str) -> str:
    return _TOKEN.sub(MASK, text)


class AccessLogger(AbstractAccessLogger):
    """One DEBUG line per request: peer, method, path (never the query), status, size,
    duration. DEBUG because the dashboard polls the capture server every second."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %s %d %d %.1fms",
            request.remote,
            request.method,
            request.rel_url.path,
            response.status,
            response.body_length,
            time * 1000,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


def access_log() -> logging.Logger:
    return logging.getLogger(ACCESS_LOGGER)


class TokenFilter(logging.Filter):
    """Masks tokens in a record's message and traceback before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_tokens(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_tokens(record.exc_text)
        return True


def install_token_filter(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (the root logger by default): a
    handler's filters see the records of every logger that propagates to it."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, TokenFilter) for f in handler.filters):
            handler.addFilter(TokenFilter())
