"""Directing on the dashboard, in real Chromium with the real broker: each performer's cue
and whether their page showed it, the four lanes of the ledger, the hit rate and
confusion, the coverage matrix and the next cue, and cues sent from the page.

The records are the test's own, put on the topics the dashboard's cue desk, the capture
server and the aligner write (livetag.cues, livetag.tags, livetag.labels,
livetag.coverage), so the page is checked against numbers the test knows. The cues the
page sends go through the real cue desk onto livetag.cues, where the test reads them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from playwright.async_api import Page, WebSocket

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams import records
from streams.kafka import clients, topics
from streams.settings import Settings
from taggers import tokens
from taggers.tokens import load_secret
from tests import directing_records as made
from tests.documentation import picture_path
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_dashboard import (
    dashboard,  # noqa: F401  (the fixture)
    dashboard_url,
    director_token,
)
from tests.e2e.test_dashboard_perception import produce
from tests.gap_windows import WINDOW_US
from tests.tag_cases import tag
from tests.tag_client import wall_us

pytestmark = pytest.mark.e2e

BOTH_LAUGH = {"r1": "laughter", "r2": "laughter"}
SPLIT = {"r1": "laughter", "r2": "anger"}
LOOK = "look at the door"
ARTIFACTS = Path("test-artifacts")


def performer_tag(session_id: str, performer: str, tag_id: str, ts_us: int) -> records.TagEvent:
    """A point tag a performer put on themselves."""
    event = tag(tag_id, "point", ts_us, rater=performer, performer=performer, span_us=1_000_000)
    return event.model_copy(update={"session_id": session_id, "rater_role": "performer"})


def partner_tag(session_id: str, tag_id: str, ts_us: int) -> records.TagEvent:
    """bob, alice's scene partner, tagging her: drawn, never counted as perceived."""
    event = tag(tag_id, "point", ts_us, rater="bob", performer="alice", span_us=1_000_000)
    return event.model_copy(update={"session_id": session_id, "rater_role": "performer"})


def observer_tag(session_id: str, rater: str, tag_id: str, ts_us: int) -> records.TagEvent:
    event = tag(tag_id, "point", ts_us, rater=rater, performer="alice", span_us=1_000_000)
    return event.model_copy(update={"session_id": session_id})


def script(sid: str, now: int) -> list[tuple[str, records.AnyRecord]]:
    """What the test publishes."""
    start = (now - 12_000_000) // WINDOW_US * WINDOW_US
    laugh_sent = start - 1_000_000
    cued = made.intent(
        "laughter", cue_id="cue-alice-0002", since_us=laugh_sent + 45_000, intensity="strong"
    )
    text = made.intent(None, cue_id="cue-bob-00001", since_us=start, text=LOOK)
    sent: list[tuple[str, records.AnyRecord]] = [
        # alice: anger, shown, then replaced by laughter (strong), shown 45 ms after.
        (topics.CUES, made.cue(sid, "alice", "cue-alice-0001", now - 25_000_000, label="anger")),
        (
            topics.CUES,
            made.cue(
                sid,
                "alice",
                "cue-alice-0001",
                now - 25_000_000,
                label="anger",
                shown_after_us=60_000,
            ),
        ),
        (topics.CUES, made.cue(sid, "alice", "cue-alice-0002", laugh_sent, intensity="strong")),
        (
            topics.CUES,
            made.cue(
                sid,
                "alice",
                "cue-alice-0002",
                laugh_sent,
                intensity="strong",
                shown_after_us=45_000,
            ),
        ),
        # bob: a line of text his page has not shown yet.
        (topics.CUES, made.cue(sid, "bob", "cue-bob-00001", start, kind="text", text=LOOK)),
        # Another session's cue is not this one's.
        (topics.CUES, made.cue("another-session", "alice", "cue-other-001", now)),
    ]
    # alice: 20 windows cued laughter where the observers agreed on it, 10 where they split.
    for k in range(30):
        held = BOTH_LAUGH if k < 20 else SPLIT
        window = made.window(sid, "alice", start + k * WINDOW_US, held, cued, model_top="laughter")
        sent.append((topics.LABELS, window))
    # bob: 10 windows under his line of text, nobody tagging.
    for k in range(10):
        sent.append((topics.LABELS, made.window(sid, "bob", start + k * WINDOW_US, {}, text)))
    sent += [
        (topics.TAGS, performer_tag(sid, "alice", "tag-self-alice-1", start + 500_000)),
        (topics.TAGS, observer_tag(sid, "r1", "tag-obs-r1-00001", start + 800_000)),
        (topics.TAGS, partner_tag(sid, "tag-partner-bob1", start + 1_100_000)),
    ]
    coverage = {
        "alice": made.coverage(
            sid,
            "alice",
            start + 3_000_000,
            {
                "laughter": {
                    "intended_s": 3.0,
                    "self_tagged_s": 1.0,
                    "perceived_s": 3.0,
                    "agreed_s": 2.0,
                    "hit_s": 2.0,
                    "disputed_s": 1.0,
                },
                "anger": {"perceived_s": 1.0, "disputed_s": 1.0},
            },
            {"laughter": {"laughter": 20, "anger": 10}},
        ),
        "bob": made.coverage(
            sid,
            "bob",
            start + 1_000_000,
            {"surprise": {"intended_s": 2.0, "hit_s": 0.5, "perceived_s": 0.5, "agreed_s": 0.5}},
            {"surprise": {"surprise": 5, "(none)": 15}},
        ),
    }
    sent += [(topics.COVERAGE, record) for record in coverage.values()]
    return sent


PAGE_STATE = """
() => {
  const h = window.livetagDashboard;
  const texts = (selector) => Array.from(document.querySelectorAll(selector), (e) => e.textContent);
  return JSON.parse(JSON.stringify({
    cues: h.cues,
    ledger: h.ledger,
    lanes: { alice: h.performers.alice.lanes, bob: h.performers.bob.lanes },
    coverageCells: h.coverageCells,
    suggestion: h.suggestion,
    hitScope: h.hitScope,
    hitRows: h.hitRows,
    confusion: h.confusion,
    nextCue: document.getElementById("next-cue-text").textContent,
    sendShown: document.getElementById("next-cue-send").checkVisibility(),
    tileControls: document.querySelector("#perf-alice .cue-emotion").checkVisibility(),
    allControls: document.querySelector("#cue-all .cue-emotion").checkVisibility(),
    cueRows: texts(".perf .cue-now"),
    scopes: texts("#hit-scopes .hit-scope"),
  }));
}
"""

READY = """() => { const h = window.livetagDashboard;
  const a = h.cues.alice, b = h.cues.bob, l = h.ledger.alice, p = h.performers.alice.lanes;
  return a && a.state === "shown" && a.current && a.current.cue_id === "cue-alice-0002"
    && b && b.state === "sent" && l && l.intent === 30 && l.agreed === 20 && l.disputed === 10
    && h.ledger.bob && h.ledger.bob.intent === 10 && h.coverage && h.coverage.suggestion
    && p && p.self >= 1 && p.observers >= 1 && p.partners >= 1 && p.measured === 30
    && p.perceived === 30; }"""

# The observer's page has had the scene's perception; an intent would have come with it.
OBSERVER_READY = """() => { const h = window.livetagDashboard;
  const l = h.ledger.alice, p = h.performers.alice && h.performers.alice.lanes;
  return l && l.perceived === 30 && l.agreed === 20 && p && p.perceived === 30
    && p.observers >= 1 && p.partners >= 1; }"""


async def read_cue(settings: Settings, cue_id: str, since_us: int) -> records.Cue:
    """The cue record ``cue_id`` on livetag.cues (sent, or shown), published since then."""
    consumer = clients.make_consumer(settings)
    await consumer.start()
    try:
        numbers = sorted(consumer.partitions_for_topic(topics.CUES) or ())
        assert numbers, "livetag.cues has no partitions"
        partitions = [TopicPartition(topics.CUES, n) for n in numbers]
        consumer.assign(partitions)
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, since_us // 1000))
        for partition in partitions:
            offset = found.get(partition)
            if offset is None:
                await consumer.seek_to_end(partition)
            else:
                consumer.seek(partition, offset.offset)
        async with asyncio.timeout(15):
            while True:
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    for message in batch:
                        record = records.decode(records.Cue, message.value, message.headers)
                        if record.cue_id == cue_id:
                            return record
    finally:
        await consumer.stop()


async def observer_page_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(
        """() => { const h = window.livetagDashboard; return JSON.parse(JSON.stringify({
          cues: h.cues,
          coverage: h.coverage,
          suggestion: h.suggestion,
          ledger: h.ledger.alice,
          lanes: h.performers.alice.lanes,
          cueRow: document.querySelector("#perf-alice .perf-cue").checkVisibility(),
          tileControls: document.querySelector("#perf-alice .cue-emotion").checkVisibility(),
          allControls: document.querySelector("#cue-all .cue-emotion").checkVisibility(),
          directing: document.getElementById("directing").checkVisibility(),
          sendShown: document.getElementById("next-cue-send").checkVisibility(),
        })); }"""
    )
    return state


def record_frames(page: Page) -> list[dict[str, Any]]:
    """Every message the page's dashboard websockets opened from now on receive (not the
    capture server's call and tag sockets)."""
    frames: list[dict[str, Any]] = []

    def on_frame(payload: str | bytes) -> None:
        message = json.loads(payload)
        if isinstance(message, dict):
            frames.append(message)

    def on_socket(ws: WebSocket) -> None:
        if "/ws/dashboard" in ws.url:
            ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    return frames


def intent_seen(frames: list[dict[str, Any]]) -> list[str]:
    """What of these messages tells of an intent: cues, coverage, an intent cell."""
    told = []
    for message in frames:
        if message.get("type") == "hello":
            scenario = (message.get("session") or {}).get("scenario")
            if scenario and ("arc" in scenario or "targets" in scenario):
                told.append("the scenario's arc or targets")
        if message.get("type") != "update":
            continue
        told += [key for key in ("cues", "cues_current", "coverage") if key in message]
        told += [f"intent at {row[1]}" for row in message.get("ledger", []) if row[3] is not None]
    return told


async def test_cues_the_four_lanes_hit_rate_coverage_and_the_next_cue_reach_the_page(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,  # noqa: F811  (the fixture)
    open_page: LaunchPage,
) -> None:
    session, _links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    sid = session.session_id
    sent = script(sid, wall_us())
    observer = tokens.issue(
        load_secret(capture_settings),
        session_id=sid,
        role="observer",
        participant_id="watcher",
        ttl_s=600,
    )
    async with (
        open_page(
            dashboard_url(dashboard, director_token(capture_settings, sid)), video=None, audio=None
        ) as director,
        open_page(dashboard_url(dashboard, observer), video=None, audio=None) as watcher,
    ):
        # Everything the observer's page is sent, from a fresh connection (the page keeps
        # its credential over a reload).
        observer_frames = record_frames(watcher)
        await watcher.reload()
        for page in (director, watcher):
            await page.wait_for_function(
                "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
            )
        await produce(capture_settings, sent)
        await director.wait_for_function(READY, timeout=20_000)
        state = await director.evaluate(PAGE_STATE)
        await watcher.wait_for_function(OBSERVER_READY, timeout=20_000)
        # Two more updates (health comes every second): what the director had, the
        # observer would have had by now.
        updates = await watcher.evaluate("window.livetagDashboard.updates")
        await watcher.wait_for_function(
            "(n) => window.livetagDashboard.updates > n + 1", arg=updates, timeout=10_000
        )
        seen_by_observer = await observer_page_state(watcher)
        # alice's own hit rate and confusion.
        await director.click('#hit-scopes .hit-scope[data-scope="alice"]')
        alice_rows = await director.evaluate("window.livetagDashboard.hitRows")
        alice_confusion = await director.evaluate("window.livetagDashboard.confusion")
        await director.locator("#directing").screenshot(
            path=str(picture_path("dashboard-directing.png"))
        )
        await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
        await director.locator("#perf-alice").screenshot(
            path=str(ARTIFACTS / "dashboard-directing-lanes.png")
        )
        await director.screenshot(
            path=str(ARTIFACTS / "dashboard-directing-page.png"), full_page=True
        )

        # The next cue, sent with one click: it lands on livetag.cues.
        suggestion = state["suggestion"]
        clicked_us = wall_us()
        replies = await director.evaluate("window.livetagDashboard.cueReplies.length")
        await director.click("#next-cue-send")
        await director.wait_for_function(
            "(n) => window.livetagDashboard.cueReplies.length > n", arg=replies, timeout=10_000
        )
        reply = await director.evaluate("window.livetagDashboard.cueReplies.at(-1)")
        # A tile's emotion button: strong with shift, to that performer alone.
        await director.click('#perf-bob .cue-emotion[data-label="anger"]', modifiers=["Shift"])
        await director.wait_for_function(
            "(n) => window.livetagDashboard.cueReplies.length > n + 1", arg=replies, timeout=10_000
        )
        tile_reply = await director.evaluate("window.livetagDashboard.cueReplies.at(-1)")
        # The page's own entry point, as the benchmark uses it: to everyone, and refusals.
        to_all = await director.evaluate(
            "window.livetagDashboard.cue({to: 'all', kind: 'text', text: 'slower'})"
        )
        unknown_label = await director.evaluate(
            "window.livetagDashboard.cue({to: 'alice', kind: 'emotion', label: 'glee'})"
        )
        unknown_performer = await director.evaluate(
            "window.livetagDashboard.cue({to: 'carol', kind: 'clear'})"
        )
        # Bob's tile shows the cue the page sent once it comes back from the broker.
        await director.wait_for_function(
            "() => (window.livetagDashboard.cues.bob || {}).text.includes('slower')",
            timeout=10_000,
        )
        bob_now = await director.evaluate("window.livetagDashboard.cues.bob")
        refused = await observer_refusal(watcher)

    print("page:", state)
    # Each performer's cue and its state: alice's page showed hers 45 ms after it was
    # sent; bob's line has not been shown yet.
    alice, bob = state["cues"]["alice"], state["cues"]["bob"]
    assert alice["text"] == "cue: laughter (strong) · shown after 45 ms", alice
    assert alice["kept"] == 2  # the anger cue it replaced, still in the timeline's span
    assert bob["state"] == "sent"
    assert bob["text"].startswith(f"cue: “{LOOK}” · sent ")
    assert "not shown yet" in bob["text"]
    assert state["tileControls"]
    assert state["allControls"]
    assert state["sendShown"]
    # The observer is told nothing of what was intended: no cue, no intent lane, no
    # coverage or next cue, and the page has no place for them; what the observers
    # perceived it has.
    assert [m["type"] for m in observer_frames][:1] == ["hello"], observer_frames[:1]
    assert sum(len(m.get("ledger", [])) for m in observer_frames) >= 30
    assert intent_seen(observer_frames) == []
    assert seen_by_observer["cues"] == {}
    assert seen_by_observer["coverage"] is None
    assert seen_by_observer["suggestion"] is None
    assert seen_by_observer["ledger"] == {
        "intent": 0,
        "perceived": 30,
        "agreed": 20,
        "disputed": 10,
    }
    assert seen_by_observer["lanes"]["intent"] == 0
    assert seen_by_observer["lanes"]["textMarks"] == 0
    assert not seen_by_observer["cueRow"]
    assert not seen_by_observer["tileControls"]
    assert not seen_by_observer["allControls"]
    assert not seen_by_observer["directing"]
    assert not seen_by_observer["sendShown"]
    assert refused["code"] == "forbidden", refused
    # The four lanes: intent (one run of the strong laughter cue; bob: his line as a
    # mark), self-tagged, bob's tag on his partner in a lane of its own, the observers'
    # tags and what they perceived (20 windows agreed, 10 disputed), measured (the model
    # lane).
    lanes = state["lanes"]["alice"]
    assert (lanes["intent"], lanes["self"], lanes["observers"]) == (1, 1, 1), lanes
    assert lanes["partners"] == 1, lanes
    assert (lanes["perceived"], lanes["agreed"], lanes["disputed"]) == (30, 20, 10), lanes
    assert lanes["measured"] == 30
    assert state["lanes"]["bob"]["textMarks"] == 1
    assert state["lanes"]["bob"]["intent"] == 0  # a line of text intends no emotion
    assert state["ledger"]["alice"] == {"intent": 30, "perceived": 30, "agreed": 20, "disputed": 10}
    # Hit rate over the session, and alice's own, with the top confusion.
    assert state["hitScope"] == "(session)"
    assert state["scopes"] == ["session", "alice", "bob"]
    assert state["hitRows"] == [
        ["laughter", "3.0", "67%", "anger 33%"],
        ["surprise", "2.0", "25%", "(none) 75%"],
    ]
    assert alice_rows == [["laughter", "3.0", "67%", "anger 33%"]]
    assert alice_confusion == {"laughter": {"laughter": 20, "anger": 10}}
    assert state["confusion"] == {
        "laughter": {"laughter": 20, "anger": 10},
        "surprise": {"surprise": 5, "(none)": 15},
    }
    # The coverage matrix: intended · self-tagged · agreed seconds per emotion and performer.
    assert state["coverageCells"]["alice"]["laughter"] == "3.0 · 1.0 · 2.0"
    assert state["coverageCells"]["alice"]["anger"] == "0 · 0 · 0"
    assert state["coverageCells"]["bob"]["surprise"] == "2.0 · 0 · 0.5"
    # The next cue: the vocabulary's first emotion nobody has shown with agreement yet.
    assert suggestion["label"] == "amusement", suggestion
    assert suggestion["label"] in state["nextCue"]
    assert suggestion["performer_id"] in state["nextCue"]
    # What the page sent is on livetag.cues, as sent.
    assert reply["type"] == "cue_sent", reply
    [(to, cue_id)] = reply["cue_ids"].items()
    assert to == suggestion["performer_id"]
    landed = await read_cue(capture_settings, cue_id, clicked_us - 1_000_000)
    assert (landed.session_id, landed.performer_id) == (sid, suggestion["performer_id"])
    assert (landed.kind, landed.label, landed.sent_by) == ("emotion", "amusement", "director")
    assert landed.ts_us >= clicked_us - 1_000_000
    assert tile_reply["type"] == "cue_sent"
    assert list(tile_reply["cue_ids"]) == ["bob"]
    strong = await read_cue(capture_settings, tile_reply["cue_ids"]["bob"], clicked_us - 1_000_000)
    assert (strong.label, strong.intensity) == ("anger", "strong")
    assert to_all["type"] == "cue_sent"
    assert sorted(to_all["cue_ids"]) == ["alice", "bob"]
    assert to_all["group_id"]
    assert (unknown_label["type"], unknown_label["code"]) == ("error", "unknown_label")
    assert (unknown_performer["type"], unknown_performer["code"]) == (
        "error",
        "unknown_performer",
    )
    assert bob_now["newest"]["group_id"] == to_all["group_id"]


async def observer_refusal(page: Page) -> dict[str, Any]:
    """An observer's page sending a cue anyway: the server refuses it."""
    reply: dict[str, Any] = await page.evaluate(
        "window.livetagDashboard.cue({to: 'alice', kind: 'emotion', label: 'laughter'})"
    )
    return reply
