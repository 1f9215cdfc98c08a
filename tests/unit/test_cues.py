"""Live cues without a broker: the director's side (dashboard.cues: validation, the rate
budget, what is published and answered) and the capture side (capture.cues.CueBoard: the
cue in force per performer, a page's "shown" on the session clock, once per cue)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from capture import cues as capture_cues
from capture import signaling
from capture.cues import PAGE_QUEUE, CueBoard, CueFollower, CueQueue, CueShownError, page_cue
from dashboard import cues as dashboard_cues
from dashboard.cues import CueDesk, CueRefused, build_cues
from dashboard.server import ActionError
from streams import records
from streams.kafka import topics
from streams.settings import Settings
from taggers.clock import ClockEstimate
from taggers.vocabulary import load_vocabulary

T0 = 1_764_115_200_000_000


def scene(state: records.SessionState = "live") -> records.SessionRecord:
    return records.SessionRecord(
        ts_us=T0,
        session_id="s-1",
        created_ts_us=T0,
        prompt="Two strangers share an umbrella",
        roster=[
            records.Performer(performer_id="alice", display_name="Alice"),
            records.Performer(performer_id="bob", display_name="Bob"),
        ],
        vocabulary=load_vocabulary(None),
        state=state,
        topics=records.SessionTopics(audio="a", video="v", prosody="p", face="f"),
    )


def ids() -> Any:
    counter = iter(range(1000))
    return lambda: f"id-{next(counter):08d}"


# ---------------------------------------------------------------- dashboard: validation


def test_an_emotion_cue_to_one_performer_is_one_record_stamped_when_sent() -> None:
    message = {"to": "bob", "kind": "emotion", "label": "laughter", "intensity": "strong"}
    [cue] = build_cues(message, scene(), sent_by="director", ts_us=T0 + 5, new_id=ids())
    assert (cue.performer_id, cue.kind, cue.label, cue.intensity) == (
        "bob",
        "emotion",
        "laughter",
        "strong",
    )
    assert (cue.ts_us, cue.sent_by, cue.group_id, cue.shown_ts_us) == (
        T0 + 5,
        "director",
        None,
        None,
    )
    assert cue.key == b"s-1/bob"


def test_a_cue_to_all_is_one_record_per_performer_sharing_a_group() -> None:
    message = {"to": "all", "kind": "text", "text": "  Whisper the next line  "}
    cues = build_cues(message, scene(), sent_by="director", ts_us=T0, new_id=ids())
    assert [cue.performer_id for cue in cues] == ["alice", "bob"]
    assert len({cue.cue_id for cue in cues}) == 2
    assert cues[0].group_id is not None
    assert cues[0].group_id == cues[1].group_id
    assert {cue.text for cue in cues} == {"Whisper the next line"}
    assert {cue.label for cue in cues} == {None}


def test_a_clear_carries_neither_label_nor_text() -> None:
    message = {"to": "alice", "kind": "clear", "label": "laughter", "text": "x"}
    [cue] = build_cues(message, scene(), sent_by="director", ts_us=T0)
    assert (cue.kind, cue.label, cue.text) == ("clear", None, "")


@pytest.mark.parametrize(
    ("message", "code", "detail"),
    [
        ({"to": "carol", "kind": "emotion", "label": "laughter"}, "unknown_performer", "alice"),
        ({"to": "bob", "kind": "emotion", "label": "glee"}, "unknown_label", "laughter"),
        ({"to": "bob", "kind": "emotion"}, "unknown_label", "None"),
        ({"to": "bob", "kind": "text", "text": "x" * 201}, "text_too_long", "200"),
        ({"to": "bob", "kind": "text", "text": "   "}, "malformed", "text"),
        ({"to": "bob", "kind": "text", "text": 5}, "malformed", "text"),
        ({"to": "bob", "kind": "dance"}, "malformed", "kind"),
        ({"kind": "clear"}, "malformed", "performer"),
        ({"to": "", "kind": "clear"}, "malformed", "performer"),
        (
            {"to": "bob", "kind": "emotion", "label": "laughter", "intensity": "loud"},
            "malformed",
            "",
        ),
    ],
)
def test_bad_cues_are_refused_with_a_code_and_a_reason(
    message: dict[str, Any], code: str, detail: str
) -> None:
    with pytest.raises(CueRefused) as refused:
        build_cues(message, scene(), sent_by="director", ts_us=T0)
    assert refused.value.code == code
    assert detail in refused.value.message


@pytest.mark.parametrize("state", ["ended", "archived"])
def test_no_cue_goes_to_a_session_that_is_over(state: records.SessionState) -> None:
    with pytest.raises(CueRefused) as refused:
        build_cues({"to": "bob", "kind": "clear"}, scene(state), sent_by="d", ts_us=T0)
    assert refused.value.code == "session_ended"


# ---------------------------------------------------------------- dashboard: the desk


@dataclass
class FakeProducer:
    """Takes records like aiokafka's producer; ``fail`` makes the broker refuse."""

    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    fail: bool = False
    #: Keys whose records the broker refuses (after taking the others).
    refuse_keys: set[bytes] = field(default_factory=set)

    async def send(self, topic: str, value: bytes, *, key: bytes, headers: Any) -> Any:
        if self.fail or key in self.refuse_keys:
            raise ConnectionError("broker away")
        self.sent.append((topic, key, value))

        async def delivered() -> None:
            return None

        return delivered()


@dataclass
class FakeServer:
    settings: Settings
    record: records.SessionRecord | None
    producer: FakeProducer = field(default_factory=FakeProducer)
    refusals: Counter[str] = field(default_factory=Counter)
    director_actions: dict[str, Any] = field(default_factory=dict)

    def session(self, session_id: str) -> records.SessionRecord | None:
        return self.record


@dataclass
class FakeFeed:
    session_id: str = "s-1"


@dataclass
class FakeClaims:
    participant_id: str = "director"


@dataclass
class FakeClient:
    feed: FakeFeed = field(default_factory=FakeFeed)
    claims: FakeClaims = field(default_factory=FakeClaims)


def desk(rate_per_s: float = 10.0, record: records.SessionRecord | None = None) -> CueDesk:
    settings = Settings.model_construct(cue_rate_per_s=rate_per_s)
    return CueDesk(cast(Any, FakeServer(settings, record or scene())))


async def test_the_desk_publishes_each_cue_keyed_by_its_performer_and_answers_their_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A clock that moves 3 ms a reading: stamped at one, published by the next.
    clock = iter(range(T0, T0 + 10**9, 3_000))
    monkeypatch.setattr(dashboard_cues, "now_us", lambda: next(clock))
    cues = desk()
    message = {"type": "cue", "to": "all", "kind": "emotion", "label": "sadness", "request_id": 7}
    reply = await cues.handle(cast(Any, FakeClient()), message)
    sent = cast(FakeServer, cues.server).producer.sent
    assert [(topic, key) for topic, key, _ in sent] == [
        (topics.CUES, b"s-1/alice"),
        (topics.CUES, b"s-1/bob"),
    ]
    published = [records.decode(records.Cue, value) for _, _, value in sent]
    assert reply["type"] == "cue_sent"
    assert reply["request_id"] == 7
    assert reply["cue_ids"] == {cue.performer_id: cue.cue_id for cue in published}
    assert reply["group_id"] == published[0].group_id == published[1].group_id
    assert {cue.ts_us for cue in published} == {reply["ts_us"]}
    assert {cue.sent_by for cue in published} == {"director"}
    assert cues.published == 2
    figures = cues.metrics()
    assert figures["published"] == 2
    assert figures["publish_ms_median"] == figures["publish_ms_max"] == 3.0
    assert "partial" not in reply
    assert "partial" not in figures


async def test_a_cue_to_all_half_taken_names_what_made_it_and_what_did_not() -> None:
    cues = desk()
    server = cast(FakeServer, cues.server)
    server.producer.refuse_keys = {b"s-1/alice"}
    reply = await cues.handle(
        cast(Any, FakeClient()), {"type": "cue", "to": "all", "kind": "text", "text": "go"}
    )
    [(_, key, value)] = server.producer.sent
    assert key == b"s-1/bob"
    assert reply["type"] == "cue_sent"
    assert reply["partial"] is True
    assert reply["failed"] == ["alice"]
    assert reply["cue_ids"] == {"bob": records.decode(records.Cue, value).cue_id}
    assert cues.published == 1
    assert cues.metrics()["partial"] == 1
    assert cues.metrics()["records_failed"] == 1
    # None taken: unavailable, naming who.
    server.producer.refuse_keys = {b"s-1/alice", b"s-1/bob"}
    with pytest.raises(ActionError) as refused:
        await cues.handle(cast(Any, FakeClient()), {"type": "cue", "to": "all", "kind": "clear"})
    assert refused.value.code == "unavailable"
    assert "alice" in refused.value.message
    assert "bob" in refused.value.message
    assert cues.metrics()["records_failed"] == 3


async def test_a_delivery_not_confirmed_in_time_is_reported_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dashboard_cues, "PUBLISH_TIMEOUT_S", 0.05)
    cues = desk()
    server = cast(FakeServer, cues.server)
    never = asyncio.get_running_loop().create_future()

    async def stuck(topic: str, value: bytes, *, key: bytes, headers: Any) -> Any:
        return never

    server.producer.send = stuck  # type: ignore[method-assign]
    with pytest.raises(ActionError) as refused:
        await cues.handle(cast(Any, FakeClient()), {"type": "cue", "to": "bob", "kind": "clear"})
    assert "not confirmed in time" in refused.value.message
    # The delivery itself is left to the producer (it may still land), not cancelled.
    assert not never.cancelled()


async def test_the_budgets_of_ended_sessions_and_idle_directors_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [T0]
    monkeypatch.setattr(dashboard_cues, "now_us", lambda: now[0])
    cues = desk(rate_per_s=2.0)  # a full budget after 1 s unused
    message = {"type": "cue", "to": "bob", "kind": "clear"}
    for director in ("d-1", "d-2"):
        await cues.handle(cast(Any, FakeClient(claims=FakeClaims(director))), message)
    assert cues.metrics()["budgets"] == 2
    now[0] += dashboard_cues.PRUNE_EVERY_US
    await cues.handle(cast(Any, FakeClient(claims=FakeClaims("d-1"))), message)
    assert cues.metrics()["budgets"] == 1  # d-2 idle: dropped; d-1 used now
    cast(FakeServer, cues.server).record = scene("ended")
    now[0] += dashboard_cues.PRUNE_EVERY_US
    cues._prune(now[0])
    assert cues.metrics()["budgets"] == 0


async def test_a_director_over_the_rate_budget_is_refused_and_counted() -> None:
    cues = desk(rate_per_s=3.0)
    client = cast(Any, FakeClient())
    message = {"type": "cue", "to": "bob", "kind": "text", "text": "louder"}
    for _ in range(3):  # a burst of a second's worth passes
        await cues.handle(client, message)
    with pytest.raises(ActionError) as refused:
        await cues.handle(client, message)
    assert refused.value.code == "rate_limited"
    server = cast(FakeServer, cues.server)
    assert server.refusals["rate_limited"] == 1
    assert len(server.producer.sent) == 3
    # Another director of the session has a budget of their own.
    other = cast(Any, FakeClient(claims=FakeClaims("director-2")))
    assert (await cues.handle(other, message))["type"] == "cue_sent"


async def test_refusals_are_counted_by_code_malformed_left_to_the_dashboard() -> None:
    cues = desk()
    client = cast(Any, FakeClient())
    server = cast(FakeServer, cues.server)
    with pytest.raises(ActionError) as refused:
        await cues.handle(client, {"type": "cue", "to": "zed", "kind": "clear"})
    assert refused.value.code == "unknown_performer"
    with pytest.raises(ActionError) as malformed:
        await cues.handle(client, {"type": "cue", "to": "bob", "kind": "hum"})
    assert malformed.value.code == "malformed"
    # The dashboard's message handler counts malformed messages itself (once).
    assert server.refusals == Counter({"unknown_performer": 1})
    assert server.producer.sent == []


async def test_a_broker_that_refuses_makes_the_cue_unavailable() -> None:
    cues = desk()
    server = cast(FakeServer, cues.server)
    server.producer.fail = True
    with pytest.raises(ActionError) as refused:
        await cues.handle(cast(Any, FakeClient()), {"type": "cue", "to": "bob", "kind": "clear"})
    assert refused.value.code == "unavailable"
    assert "broker away" in refused.value.message
    assert server.refusals["unavailable"] == 1


async def test_an_unknown_session_is_refused() -> None:
    cues = desk()
    cast(FakeServer, cues.server).record = None
    with pytest.raises(ActionError) as refused:
        await cues.handle(cast(Any, FakeClient()), {"type": "cue", "to": "bob", "kind": "clear"})
    assert refused.value.code == "unknown_session"


def test_registering_gives_the_server_its_cue_action() -> None:
    from dashboard import cues

    server = FakeServer(Settings.model_construct(), scene())
    registered = cues.register(cast(Any, server))
    assert server.director_actions["cue"] == registered.handle


# ---------------------------------------------------------------- capture: the board


def cue(
    cue_id: str, ts_us: int, performer: str = "bob", kind: records.CueKind = "emotion"
) -> records.Cue:
    return records.Cue(
        ts_us=ts_us,
        session_id="s-1",
        performer_id=performer,
        cue_id=cue_id,
        kind=kind,
        label="laughter" if kind == "emotion" else None,
        text="go on" if kind == "text" else "",
        sent_by="director",
    )


# A page whose clock runs 2 s behind the session clock, synced over a 4 ms round trip.
ESTIMATE = ClockEstimate(
    offset_us=2_000_000,
    drift_ppm=0.0,
    rtt_us=4_000,
    uncertainty_us=2_000,
    samples=8,
    at_us=T0,
    drift_error_ppm=0.0,
)


def test_the_newest_cue_of_each_performer_stands_and_is_shown_once() -> None:
    board = CueBoard()
    first, second = cue("cue-aaaaaaaa", T0), cue("cue-bbbbbbbb", T0 + 1000)
    assert board.take(first) == first
    assert board.take(second) == second
    assert board.take(second) is None  # read again (at-least-once): not news
    assert board.current("s-1", "bob") == second
    assert board.current("s-1", "alice") is None
    # An older cue read late is no news, and does not replace the one that stands.
    assert board.take(cue("cue-cccccccc", T0 + 500)) is None
    assert board.current("s-1", "bob") == second
    clear = cue("cue-dddddddd", T0 + 2000, kind="clear")
    assert board.take(clear) == clear
    assert board.current("s-1", "bob") == clear  # a page that rejoins drops its cue
    board.forget_sessions(["s-1"])
    assert board.current("s-1", "bob") is None
    assert board.repeats == 1


def test_a_pages_shown_time_is_put_on_the_session_clock_once_per_cue() -> None:
    board = CueBoard()
    sent = cue("cue-aaaaaaaa", T0)
    board.take(sent)
    shown_on_page = T0 + 40_000 - 2_000_000  # 40 ms after sending, on the page's clock
    record = board.shown(
        session_id="s-1",
        performer_id="bob",
        cue_id=sent.cue_id,
        client_shown_us=shown_on_page,
        estimate=ESTIMATE,
        received_us=T0 + 45_000,
    )
    assert record is not None
    assert record.shown_ts_us == T0 + 40_000
    assert record.shown == records.CueShown(
        client_shown_ts_us=shown_on_page, clock_offset_us=2_000_000, rtt_us=4_000
    )
    assert record.model_dump(exclude={"shown_ts_us", "shown"}) == sent.model_dump(
        exclude={"shown_ts_us", "shown"}
    )
    again = board.shown(
        session_id="s-1",
        performer_id="bob",
        cue_id=sent.cue_id,
        client_shown_us=shown_on_page + 5,
        estimate=ESTIMATE,
        received_us=T0 + 50_000,
    )
    assert again is None
    # Its own shown record read back changes nothing.
    assert board.take(record) is None


def test_a_shown_time_within_the_clock_error_is_pulled_between_sent_and_received() -> None:
    board = CueBoard()
    board.take(cue("cue-aaaaaaaa", T0))
    record = board.shown(
        session_id="s-1",
        performer_id="bob",
        cue_id="cue-aaaaaaaa",
        client_shown_us=T0 - 3_000 - 2_000_000,  # "3 ms before it was sent"
        estimate=ESTIMATE,
        received_us=T0 + 30_000,
    )
    assert record is not None
    assert record.shown_ts_us == T0


@pytest.mark.parametrize(
    ("cue_id", "performer", "client_us", "code"),
    [
        ("cue-zzzzzzzz", "bob", T0 - 2_000_000, "unknown_cue"),
        ("cue-aaaaaaaa", "alice", T0 - 2_000_000, "unknown_cue"),  # not this page's cue
        ("cue-aaaaaaaa", "bob", T0 + 5_000_000, "bad_time"),  # after it was received
        ("cue-aaaaaaaa", "bob", T0 - 3_000_000, "bad_time"),  # a second before it was sent
    ],
)
def test_a_shown_that_makes_no_record_is_refused(
    cue_id: str, performer: str, client_us: int, code: str
) -> None:
    board = CueBoard()
    board.take(cue("cue-aaaaaaaa", T0))
    with pytest.raises(CueShownError) as refused:
        board.shown(
            session_id="s-1",
            performer_id=performer,
            cue_id=cue_id,
            client_shown_us=client_us,
            estimate=ESTIMATE,
            received_us=T0 + 100_000,
        )
    assert refused.value.code == code


def test_the_board_forgets_the_oldest_cues_first() -> None:
    board = CueBoard(max_cues=2)
    for n in range(3):
        board.take(cue(f"cue-{n:08d}", T0 + n))
    assert len(board) == 2
    with pytest.raises(CueShownError):
        board.shown(
            session_id="s-1",
            performer_id="bob",
            cue_id="cue-00000000",
            client_shown_us=T0,
            estimate=ESTIMATE,
            received_us=T0 + 1,
        )


def test_a_page_gets_what_it_shows_of_a_cue() -> None:
    message = page_cue(cue("cue-aaaaaaaa", T0, kind="text"))
    assert message == {
        "type": "cue",
        "cue": {
            "cue_id": "cue-aaaaaaaa",
            "kind": "text",
            "label": None,
            "intensity": "normal",
            "text": "go on",
            "ts_us": T0,
        },
    }


# ---------------------------------------------------------------- capture: the follower


@dataclass
class Read:
    """A message as aiokafka's consumer hands it over."""

    value: bytes | None
    offset: int
    key: bytes | None = b"s-1/bob"
    headers: tuple[tuple[str, bytes], ...] = ()


def follower(delivered: list[records.Cue], producer: Any = None) -> CueFollower:
    open_ones = [scene(), scene("ended").model_copy(update={"created_ts_us": T0 - 10**9})]
    return CueFollower(
        Settings.model_construct(),
        producer=producer,
        deliver=delivered.append,
        open_sessions=lambda: open_ones,
    )


class FlakyBroker:
    """A producer whose broker refuses the first ``failures`` sends."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, *, key: Any, headers: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        self.sent.append(value)


async def shown_of(cues: CueFollower, cue_id: str) -> records.Cue | None:
    return cues.shown(
        session_id="s-1",
        performer_id="bob",
        cue_id=cue_id,
        client_shown_us=T0 + 30_000 - 2_000_000,
        estimate=ESTIMATE,
        received_us=T0 + 31_000,
    )


async def test_a_shown_record_the_broker_refuses_is_retried_then_may_be_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(capture_cues, "PUBLISH_BACKOFF_S", 0.0)
    broker = FlakyBroker(failures=2)
    cues = follower([], producer=broker)
    sent = cue("cue-aaaaaaaa", T0)
    cues.board.take(sent)
    record = await shown_of(cues, sent.cue_id)
    assert record is not None
    await cues._send(cues._outbox.get_nowait())
    assert len(broker.sent) == 1  # the third try
    assert cues.counts["shown_publish_retries"] == 2
    assert cues.counts["shown_published"] == 1
    # A broker away for every try: counted, and the page's next "shown" makes it again
    # (not "shown_repeated").
    other = cue("cue-bbbbbbbb", T0 + 1)
    cues.board.take(other)
    assert await shown_of(cues, other.cue_id) is not None
    broker.failures = capture_cues.PUBLISH_ATTEMPTS
    await cues._send(cues._outbox.get_nowait())
    assert cues.counts["shown_publish_failed"] == 1
    assert await shown_of(cues, other.cue_id) is not None
    assert cues.counts["shown_repeated"] == 0
    assert await shown_of(cues, other.cue_id) is None  # on its way now: once
    assert cues.counts["shown_repeated"] == 1


class SlowPage:
    """A page's connection: each send takes until ``go`` is set; ``closed`` refuses."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.go = asyncio.Event()
        self.closed = False

    async def send(self, message: dict[str, Any]) -> bool:
        await self.go.wait()
        if self.closed:
            return False
        self.got.append(message["cue"]["cue_id"])
        return True


async def test_a_slow_page_holds_up_no_other_page_and_still_gets_every_cue_in_order() -> None:
    cues = follower([])
    slow, quick = SlowPage(), SlowPage()
    quick.go.set()
    queues = {page: CueQueue(page.send, cues) for page in (slow, quick)}
    tasks = [asyncio.create_task(queue.run()) for queue in queues.values()]
    try:
        for n, cue_id in enumerate(("cue-aaaaaaaa", "cue-bbbbbbbb", "cue-cccccccc")):
            for queue in queues.values():
                queue.offer(cue(cue_id, T0 + n))
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert quick.got == ["cue-aaaaaaaa", "cue-bbbbbbbb", "cue-cccccccc"]
        assert slow.got == []  # its first send still waits; the others did not
        queues[slow].offer(cue("cue-bbbbbbbb", T0 + 1))  # already waiting: not twice
        slow.go.set()
        for _ in range(10):
            await asyncio.sleep(0)
        # Every cue, in order: each will have its shown record.
        assert slow.got == ["cue-aaaaaaaa", "cue-bbbbbbbb", "cue-cccccccc"]
        assert cues.counts["superseded"] == 0
        assert cues.counts["pushed"] == 6
        # A page gone: nothing counted as pushed, and its task ends.
        slow.closed = True
        queues[slow].offer(cue("cue-dddddddd", T0 + 9))
        await asyncio.wait_for(tasks[0], 1.0)
        assert cues.counts["pushed"] == 6
        assert cues.counts["push_to_closed_page"] == 1
    finally:
        for task in tasks:
            task.cancel()


async def test_a_stuck_page_drops_its_oldest_waiting_cue_and_counts_it() -> None:
    cues = follower([])
    stuck = SlowPage()
    queue = CueQueue(stuck.send, cues)
    for n in range(PAGE_QUEUE + 2):
        queue.offer(cue(f"cue-{n:08d}", T0 + n))
    assert len(queue) == PAGE_QUEUE
    assert cues.counts["superseded"] == 2


async def test_the_follower_shows_news_dead_letters_garbage_and_queues_shown_records() -> None:
    delivered: list[records.Cue] = []
    cues = follower(delivered)
    partition = TopicPartition(topics.CUES, 2)
    sent = cue("cue-aaaaaaaa", T0)
    wire = records.encode(sent)
    batch = {
        partition: cast(
            Any,
            [
                Read(wire.value, 0),
                Read(b"{not a cue", 1),
                Read(wire.value, 2),  # read twice: shown once
            ],
        )
    }
    await cues._take(batch, deliver=True)
    assert delivered == [sent]
    assert cues.counts["undecodable"] == 1
    assert cues.counts["read"] == 2
    letter = cues._outbox.get_nowait()
    assert isinstance(letter, records.DeadLetter)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        topics.CUES,
        2,
        1,
    )
    assert letter.service == "livetag-capture"
    record = cues.shown(
        session_id="s-1",
        performer_id="bob",
        cue_id=sent.cue_id,
        client_shown_us=T0 + 30_000 - 2_000_000,
        estimate=ESTIMATE,
        received_us=T0 + 31_000,
    )
    assert record is not None
    assert cues._outbox.get_nowait() == record
    with pytest.raises(CueShownError):
        cues.shown(
            session_id="s-1",
            performer_id="bob",
            cue_id="cue-unknown1",
            client_shown_us=T0,
            estimate=ESTIMATE,
            received_us=T0,
        )
    assert cues.counts["shown_refused_unknown_cue"] == 1


async def test_at_start_the_follower_shows_nothing_and_reads_from_the_oldest_open_scene() -> None:
    delivered: list[records.Cue] = []
    cues = follower(delivered)
    wire = records.encode(cue("cue-aaaaaaaa", T0))
    await cues._take(
        {TopicPartition(topics.CUES, 0): cast(Any, [Read(wire.value, 0)])}, deliver=False
    )
    assert delivered == []
    assert cues.board.current("s-1", "bob") is not None
    # The ended session does not count; the open one was created at T0.
    assert cues.start_us(T0 + 60_000_000) == T0
    assert cues.start_us(T0 + 10**12) == T0 + 10**12 - 12 * 3600 * 1_000_000


# ---------------------------------------------------------------- capture: signaling


def test_a_cue_shown_message_parses() -> None:
    raw = json.dumps({"type": "cue_shown", "cue_id": "cue-aaaaaaaa", "client_shown_ts_us": 12})
    shown = signaling.parse_page_message(raw, max_bytes=1000)
    assert isinstance(shown, signaling.CueShown)
    assert (shown.cue_id, shown.client_shown_ts_us) == ("cue-aaaaaaaa", 12)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "cue_shown", "cue_id": "x", "client_shown_ts_us": 12},
        {"type": "cue_shown", "cue_id": "cue-aaaaaaaa", "client_shown_ts_us": -1},
        {"type": "cue_shown", "cue_id": "cue-aaaaaaaa", "client_shown_ts_us": 1.5},
        {"type": "cue_shown", "cue_id": "cue-aaaaaaaa"},
    ],
)
def test_a_bad_cue_shown_is_malformed(message: dict[str, Any]) -> None:
    with pytest.raises(signaling.SignalingError) as refused:
        signaling.parse_page_message(json.dumps(message), max_bytes=1000)
    assert refused.value.code == "malformed"
