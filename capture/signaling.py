"""Signaling messages between a call page and the capture server (JSON over a websocket).

page -> server
  {"type": "publish", "sdp": OFFER, "page_id": ID}        send my camera and microphone
  {"type": "subscribe", "performer_id": P, "sdp": OFFER, "request_id": N}
                                                          receive performer P (recvonly)
  {"type": "clock_reply", ...}                           see taggers.clock
  {"type": "cue_shown", "cue_id": C, "client_shown_ts_us": T}
                                  a performer's page showed cue C at T on its own clock
server -> page
  {"type": "welcome", ...}    session prompt, roster, vocabulary, who you are, the day,
                              the performer's view of the scenario
  {"type": "cue", "cue": {"cue_id", "kind", "label", "intensity", "text", "ts_us"}}
                              the director's cue to this performer (kind "clear": none)
  {"type": "publish_answer", "sdp": ANSWER}
  {"type": "subscribe_answer", "performer_id": P, "sdp": ANSWER, "request_id": N}
  {"type": "performers", "live": [P, ...]}  performers whose media the server has now
  {"type": "clock_probe", ...}
  {"type": "error", "code": C, "message": M}  the connection stays open
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from streams import strict_json
from streams.errors import BadInputError
from streams.records import ParticipantId, TagId
from taggers.clock import ClockReply

MAX_SDP_CHARS = 32_000


class SignalingError(BadInputError, ValueError):
    """A message the server cannot act on; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Sdp = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SDP_CHARS)]


#: A page's own random id, the same across its reconnects (capture/static/call.js).
PageId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]


class Publish(_Message):
    type: Literal["publish"]
    sdp: Sdp
    #: Which page publishes: while it is connected, only it may replace its media.
    page_id: PageId | None = None


class Subscribe(_Message):
    type: Literal["subscribe"]
    performer_id: ParticipantId
    sdp: Sdp
    #: Echoed in the answer, so a page never applies an old answer to a newer connection.
    request_id: Annotated[int, Field(ge=0, le=2**53)] = 0


class CueShown(_Message):
    """The page painted a cue: when, on the page's own clock (the clock its clock
    replies read), so the server can put it on the session clock."""

    type: Literal["cue_shown"]
    cue_id: TagId
    client_shown_ts_us: Annotated[StrictInt, Field(ge=0, le=2**53)]


AnyPageMessage = Publish | Subscribe | ClockReply | CueShown
PageMessage = Annotated[AnyPageMessage, Field(discriminator="type")]
_page_message: TypeAdapter[AnyPageMessage] = TypeAdapter(PageMessage)


def parse_page_message(raw: str | bytes, *, max_bytes: int) -> AnyPageMessage:
    """Validate one message from a page; raises :class:`SignalingError` with the reason."""
    # In UTF-8 bytes, as the limit says: a text's length in characters may be 4x less.
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise SignalingError("too_large", f"message of {size} bytes exceeds {max_bytes}")
    try:
        document = strict_json.loads_object(raw, max_bytes=max_bytes)
    except strict_json.JsonInputError as exc:
        raise SignalingError("malformed", exc.reason) from None
    try:
        return _page_message.validate_python(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(message)"
        raise SignalingError("malformed", f"{where}: {first['msg']}") from None


def error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}
