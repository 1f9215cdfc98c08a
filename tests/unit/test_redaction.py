from __future__ import annotations

import io
import logging

from streams.runtime.redaction import MASK, TokenFilter, install_token_filter, mask_tokens
from taggers import tokens

SECRET = b"k" * 48


def _token() -> str:
    return tokens.issue(SECRET, session_id="s-1", role="observer", participant_id="o", ttl_s=60)


def test_tokens_are_masked_in_messages_arguments_and_tracebacks() -> None:
    token = _token()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    install_token_filter(logger)
    install_token_filter(logger)  # once per handler, however often it is installed
    assert sum(isinstance(f, TokenFilter) for f in handler.filters) == 1
    try:
        logger.warning("refused %s", f"/ws/call?token={token}")
        logger.warning(f"in the text: {token}")
        try:
            raise ValueError(f"bad token {token}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert token not in written
    assert token.split(".")[2] not in written
    assert written.count(MASK) == 3, written  # message, argument, exception text
    assert "/ws/call?token=[token]" in written


def test_text_without_tokens_is_left_alone() -> None:
    text = "capture server on http://127.0.0.1:8080 (eyJ alone is no token)"
    assert mask_tokens(text) == text
