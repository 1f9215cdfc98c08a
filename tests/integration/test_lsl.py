"""The LSL bridge on loopback with the real broker: records produced onto a session's
topics come out of LSL inlets with the same values, declared channels and mapped times;
markers from an LSL stream become tags."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pylsl  # type: ignore[import-untyped]
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from streams import records, session_clock
from streams.bridges import lsl
from streams.bridges.lsl import BLENDSHAPE_NAMES, MarkerInletOptions, run_bridge
from streams.kafka import clients, sessions, topics
from streams.settings import Settings
from taggers.outbox import TagOutbox

pytestmark = pytest.mark.integration

VOCABULARY = [
    records.VocabularyEntry(label="laughter", hotkey="l", colour="#f5b700"),
    records.VocabularyEntry(label="hesitation", hotkey="h", colour="#7a7a7a"),
]
#: One machine, loopback only (no multicast): a resolver finds an outlet by asking
#: 127.0.0.1 on each port of the range, so every outlet and resolver (two ports each by
#: default) must fit in it. liblsl reads the file once per process, at its first use,
#: and a unit test's StreamInfo may come first in the same run: so it is set here, when
#: the module is collected, before any test runs. The bridge's processes inherit it.
LSL_CONFIG = Path(__file__).with_name("lsl_api.cfg")
os.environ["LSLAPICFG"] = str(LSL_CONFIG)


# ---------------------------------------------------------------- LSL side (blocking: threads)


class Inlet:
    """One resolved stream: its full description and the samples pulled so far."""

    def __init__(self, source_id: str, timeout_s: float = 30.0, *, subscribe: bool = True) -> None:
        found = pylsl.resolve_byprop("source_id", source_id, 1, timeout_s)
        assert found, f"no LSL stream with source_id {source_id} within {timeout_s} s"
        self.inlet = pylsl.StreamInlet(found[0], max_buflen=60)
        self.info = self.inlet.info(10.0)
        self.xml = ET.fromstring(self.info.as_xml())
        if subscribe:
            self.subscribe()

    def subscribe(self) -> None:
        """From here on, what is pushed is queued for this inlet."""
        self.inlet.open_stream(10.0)

    def text(self, path: str) -> str:
        value = self.xml.findtext(path)
        assert value is not None, path
        return value

    @property
    def offset_us(self) -> int:
        return int(self.text("desc/clock/offset_us"))

    def channel_labels(self) -> list[str]:
        return [c.findtext("label") or "" for c in self.xml.findall("desc/channels/channel")]

    def pull(self, count: int, timeout_s: float = 20.0) -> list[tuple[list[Any], float]]:
        """``count`` samples, then half a second more to show nothing else comes."""
        out: list[tuple[list[Any], float]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            sample, stamp = self.inlet.pull_sample(0.2)
            if sample is not None:
                out.append((sample, stamp))
        extra_until = time.monotonic() + 0.5
        while time.monotonic() < extra_until:
            sample, stamp = self.inlet.pull_sample(0.1)
            if sample is not None:
                out.append((sample, stamp))
        return out


async def open_inlets(*source_ids: str) -> dict[str, Inlet]:
    """Resolved and described first, then subscribed together (as a recorder does when
    it starts), so they connect within moments of each other."""
    opened = await asyncio.gather(
        *(asyncio.to_thread(Inlet, sid, subscribe=False) for sid in source_ids)
    )
    await asyncio.gather(*(asyncio.to_thread(inlet.subscribe) for inlet in opened))
    return dict(zip(source_ids, opened, strict=True))


def naive_offset_us() -> float:
    """The test's own reading of wall clock minus LSL clock: a pause between the two
    reads (a busy machine) only makes it smaller, so the largest of many counts."""
    return max(time.time() * 1e6 - pylsl.local_clock() * 1e6 for _ in range(200))


def same(left: list[float], right: list[float]) -> bool:
    return len(left) == len(right) and all(
        (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(left, right, strict=True)
    )


# ---------------------------------------------------------------- Kafka side


async def send(producer: AIOKafkaProducer, topic: str, record: records.AnyRecord) -> None:
    message = records.encode(record)
    await producer.send_and_wait(topic, message.value, key=message.key, headers=message.headers)


def hops_record(sid: str, performer: str, t0: int, first: int) -> records.ProsodyHops:
    hops = []
    for n in range(first, first + 10):
        voiced = n % 4 != 3
        hops.append(
            records.ProsodyHop(
                ts_us=t0 + n * 10_000 + (n % 3),  # capture stamps, not a fixed grid
                f0_hz=180.0 + n if voiced else None,
                voicing_probability=0.9 if voiced else 0.1,
                voiced=voiced,
                loudness_db=-20.0 - n / 4,
                voice_quality=records.VoiceQuality(
                    hnr_db=12.5, jitter_local=0.01, shimmer_local=None
                )
                if n % 10 == 9
                else None,
            )
        )
    return records.ProsodyHops(
        ts_us=hops[0].ts_us, session_id=sid, performer_id=performer, hops=hops
    )


def face_frames(sid: str, t0: int) -> list[records.FaceFrame]:
    common: dict[str, Any] = {"session_id": sid, "performer_id": "alice"}
    return [
        records.FaceFrame(
            ts_us=t0,
            video_seq=0,
            face_present=True,
            landmarks=records.Landmarks.from_xyz(np.zeros((478, 3), dtype=np.float32)),
            blendshapes={"mouthSmileLeft": 0.75, "jawOpen": 0.25, "_neutral": 0.5},
            head_pose=records.HeadPose(yaw_deg=10.0, pitch_deg=-2.5, roll_deg=1.25),
            **common,
        ),
        records.FaceFrame(ts_us=t0 + 66_667, video_seq=1, face_present=False, **common),
        records.FaceFrame(
            ts_us=t0 + 133_333, video_seq=2, face_present=None, skipped="late", **common
        ),
    ]


def window(sid: str, ts_us: int, revision: int) -> records.LabelWindow:
    raters = []
    if revision:
        raters = [
            records.RaterLabels(
                rater_id="director",
                rater_role="director",
                labels=[
                    records.ActiveLabel(label="hesitation", intensity="normal", tag_id="t-1a2b3c4d")
                ],
            )
        ]
    return records.LabelWindow(
        ts_us=ts_us,
        session_id=sid,
        performer_id="alice",
        window_us=100_000,
        features=records.WindowFeatures(
            f0_mean_hz=185.5, loudness_mean_db=-21.0, voiced_fraction=0.75, prosody_hops=10
        ),
        raters=raters,
        consensus="hesitation" if revision else None,
        consensus_agreement=1.0 if revision else None,
        correction=revision > 0,
        revision=revision,
        missing={} if revision else {"face": "late"},
    )


def tag(
    sid: str, performer: str, tag_id: str, ts_us: int, action: str, **fields: Any
) -> records.TagEvent:
    """A director's tag (label laughter unless given; a point spans 500 ms)."""
    if action != "undo":
        fields.setdefault("label", "laughter")
    if action == "point":
        fields.setdefault("span_us", 500_000)
    return records.TagEvent(
        ts_us=ts_us,
        session_id=sid,
        performer_id=performer,
        tag_id=tag_id,
        rater_id="director",
        rater_role="director",
        action=action,
        timing=records.TagTiming(
            client_press_ts_us=ts_us - 1_000,
            clock_offset_us=1_000,
            rtt_us=400,
            clock_uncertainty_us=200,
        ),
        received_ts_us=ts_us + 30_000,
        **fields,
    )


async def start_livetag_lsl(
    settings: Settings, tmp_path: Path, *args: str
) -> asyncio.subprocess.Process:
    # The child keeps its own copy of the log file's descriptor.
    with (tmp_path / "lsl.stderr").open("wb") as log_file:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra",
            "lsl",
            *args,
            "--bootstrap",
            settings.bootstrap_servers,
            env={
                **os.environ,
                "LIVETAG_STATE_DIR": str(tmp_path / "state"),
                "LSLAPICFG": str(LSL_CONFIG),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )


# ---------------------------------------------------------------- the tests


async def test_livetag_lsl_publishes_a_sessions_records_as_lsl_streams(
    settings: Settings, session_id: str, tmp_path: Path
) -> None:
    sid = session_id
    session = await sessions.create_session(
        settings,
        prompt="a job interview that goes sideways",
        performer_names=["Alice", "Bob"],
        vocabulary=VOCABULARY,
        session_id=sid,
    )
    process = await start_livetag_lsl(settings, tmp_path, "--session", sid)
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        inlets = await open_inlets(
            *(lsl.source_id(sid, "alice", kind) for kind in lsl.STREAM_KINDS),
            lsl.source_id(sid, "bob", "tags"),
        )
        prosody, face, labels, alice_tags = (
            inlets[lsl.source_id(sid, "alice", kind)] for kind in lsl.STREAM_KINDS
        )
        bob_tags = inlets[lsl.source_id(sid, "bob", "tags")]

        # What the streams declare.
        assert (prosody.info.type(), prosody.info.nominal_srate()) == ("Prosody", 100.0)
        assert prosody.info.channel_count() == 7
        assert prosody.channel_labels() == [c.label for c in lsl.PROSODY_CHANNELS]
        assert prosody.channel_labels()[:3] == ["f0_hz", "voicing_probability", "voiced"]
        assert (face.info.type(), face.info.nominal_srate()) == (
            "FaceExpression",
            settings.video_fps,
        )
        assert face.info.channel_count() == 4 + len(BLENDSHAPE_NAMES) == len(face.channel_labels())
        assert labels.info.nominal_srate() == pylsl.IRREGULAR_RATE
        assert labels.channel_labels()[-2:] == ["raters_laughter", "raters_hesitation"]
        assert (alice_tags.info.type(), alice_tags.info.channel_format()) == (
            "Markers",
            pylsl.cf_string,
        )
        for inlet in inlets.values():
            assert inlet.info.channel_count() == len(inlet.channel_labels())
            for channel in inlet.xml.findall("desc/channels/channel"):
                assert channel.findtext("unit")
                assert channel.findtext("type")
            assert inlet.text("desc/acquisition/session_id") == sid
            assert inlet.text("desc/acquisition/manufacturer") == "livetag"
        assert prosody.text("desc/acquisition/performer_id") == "alice"
        assert bob_tags.text("desc/acquisition/performer_name") == "Bob"
        offset_us = prosody.offset_us
        assert {inlet.offset_us for inlet in inlets.values()} == {offset_us}  # one mapping
        # The bridge's offset is the clocks' (read independently here) within a millisecond.
        assert abs(offset_us - naive_offset_us()) < 1_000

        t0 = session_clock.now_us() - 2_000_000
        first, second = hops_record(sid, "alice", t0, 0), hops_record(sid, "alice", t0, 10)
        await send(producer, session.topics.prosody, first)
        await send(producer, session.topics.prosody, second)
        await send(producer, session.topics.prosody, first)  # re-delivered: dedupe
        frames = face_frames(sid, t0)
        for frame in frames:
            await send(producer, session.topics.face, frame)
        w0, w1 = window(sid, t0 // 100_000 * 100_000, 0), window(sid, t0 // 100_000 * 100_000, 1)
        for record in (w0, w1, w1):
            await send(producer, topics.LABELS, record)
        other = window("someone-else", t0, 0)
        await send(producer, topics.LABELS, other)  # another session: not ours
        key = f"{sid}/alice".encode()
        await producer.send_and_wait(session.topics.prosody, b"\x00 not a record", key=key)
        await producer.send_and_wait(topics.LABELS, b'{"ts_us": "soon"}', key=key)
        onset = "tag-onset-0001"
        tags = [
            tag(sid, "alice", onset, t0 + 20_000, "onset", label="laughter"),
            tag(sid, "alice", "tag-offset-002", t0 + 900_000, "offset", onset_tag_id=onset),
            tag(sid, "bob", "tag-point-0003", t0 + 450_000, "point", label="hesitation"),
            tag(sid, "alice", "tag-undo-00004", t0 + 950_000, "undo", undoes_tag_id=onset),
        ]
        for event in (*tags, tags[0]):
            await send(producer, topics.TAGS, event)

        got_prosody, got_face, got_labels, got_alice_tags, got_bob_tags = await asyncio.gather(
            asyncio.to_thread(prosody.pull, 20),
            asyncio.to_thread(face.pull, 3),
            asyncio.to_thread(labels.pull, 2),
            asyncio.to_thread(alice_tags.pull, 3),
            asyncio.to_thread(bob_tags.pull, 1),
        )
        hops = first.hops + second.hops
        assert len(got_prosody) == len(hops)
        for (sample, stamp), hop in zip(got_prosody, hops, strict=True):
            assert same(sample, lsl.prosody_sample(hop))
            assert stamp == (hop.ts_us - offset_us) / 1e6
        assert got_prosody[9][0][4:6] == [12.5, 0.01]  # the hop with voice quality
        assert got_prosody[3][0][0] != got_prosody[3][0][0]  # unvoiced: F0 is NaN

        assert len(got_face) == 3
        present = dict(zip(face.channel_labels(), got_face[0][0], strict=True))
        assert present["face_present"] == 1.0
        pose = [present[f"head_{angle}_deg"] for angle in ("yaw", "pitch", "roll")]
        assert pose == [10.0, -2.5, 1.25]
        assert [present[name] for name in ("mouthSmileLeft", "jawOpen", "_neutral")] == [
            0.75,
            0.25,
            0.5,
        ]
        assert math.isnan(present["eyeBlinkLeft"])
        assert got_face[1][0][0] == 0.0
        assert all(math.isnan(v) for v in got_face[1][0][1:])
        assert all(math.isnan(v) for v in got_face[2][0])  # skipped: not analysed
        assert [stamp for _, stamp in got_face] == [(f.ts_us - offset_us) / 1e6 for f in frames]

        assert len(got_labels) == 2
        label_values = [dict(zip(labels.channel_labels(), s, strict=True)) for s, _ in got_labels]
        assert [v["revision"] for v in label_values] == [0.0, 1.0]
        assert math.isnan(label_values[0]["consensus"])
        assert label_values[0]["face_missing"] == 1.0  # late
        assert label_values[1]["consensus"] == 1.0  # hesitation
        assert label_values[1]["raters_hesitation"] == 1.0
        assert label_values[1]["f0_mean_hz"] == 185.5
        assert {stamp for _, stamp in got_labels} == {(w0.ts_us - offset_us) / 1e6}

        # Every tag arrives once, as its own JSON, at its mapped instant.
        assert [records.decode(records.TagEvent, s[0].encode()) for s, _ in got_alice_tags] == [
            tags[0],
            tags[1],
            tags[3],
        ]
        assert [records.decode(records.TagEvent, s[0].encode()) for s, _ in got_bob_tags] == [
            tags[2]
        ]
        now_offset_us = naive_offset_us()
        for (_, stamp), event in zip(
            got_alice_tags + got_bob_tags, (tags[0], tags[1], tags[3], tags[2]), strict=True
        ):
            assert stamp == (event.ts_us - offset_us) / 1e6
            assert abs(stamp - (event.ts_us - now_offset_us) / 1e6) < 0.001

        # A performer added to the roster later gets streams of their own.
        later = session.model_copy(
            update={
                "ts_us": session_clock.now_us(),
                "roster": [
                    *session.roster,
                    records.Performer(performer_id="carol", display_name="Carol"),
                ],
            }
        )
        await sessions.publish(producer, later)
        carol = (await open_inlets(lsl.source_id(sid, "carol", "tags")))[
            lsl.source_id(sid, "carol", "tags")
        ]
        carol_tag = tag(
            sid,
            "carol",
            "tag-carol-005",
            t0 + 1_500_000,
            "point",
            label="laughter",
            span_us=500_000,
        )
        await send(producer, topics.TAGS, carol_tag)
        (got_carol,) = await asyncio.to_thread(carol.pull, 1)
        assert records.decode(records.TagEvent, got_carol[0][0].encode()) == carol_tag

        # Archived: the bridge stops by itself and prints its counts.
        await sessions.publish(
            producer,
            later.model_copy(update={"ts_us": session_clock.now_us(), "state": "archived"}),
        )
        assert process.stdout is not None
        async with asyncio.timeout(30):
            out = (await process.stdout.read()).decode()
            assert await process.wait() == 0, (tmp_path / "lsl.stderr").read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await producer.stop()
        async with clients.admin_client(settings) as admin:
            await topics.delete_session_topics(admin, sid)
    counts = {tuple(line.split("\t")[:2]): int(line.split("\t")[2]) for line in out.splitlines()}
    assert counts[("samples", "prosody")] == 20
    assert counts[("samples", "face")] == 3
    assert counts[("samples", "labels")] == 2
    assert counts[("samples", "tags")] == 5
    assert counts[("malformed", "prosody")] == 1
    assert counts[("malformed", "labels")] == 1
    assert counts[("duplicates", "prosody")] == 10
    assert counts[("duplicates", "labels")] == 1
    assert counts[("duplicates", "tags")] == 1
    assert "malformed prosody record skipped" in (tmp_path / "lsl.stderr").read_text()


async def test_from_the_beginning_and_markers_from_an_lsl_stream_become_tags(
    settings: Settings, session_id: str, tmp_path: Path
) -> None:
    sid = session_id
    session = await sessions.create_session(
        settings,
        prompt="a eulogy",
        performer_names=["Alice", "Bob"],
        vocabulary=VOCABULARY,
        session_id=sid,
    )
    t0 = session_clock.now_us() - 5_000_000
    earlier_hops = hops_record(sid, "alice", t0, 0)
    earlier_tag = tag(
        sid, "alice", "tag-early-0001", t0 + 30_000, "point", label="laughter", span_us=500_000
    )
    producer = clients.make_producer(settings)
    await producer.start()
    stimuli_name = f"stimuli-{sid}"
    stimuli = await asyncio.to_thread(
        lambda: pylsl.StreamOutlet(
            pylsl.StreamInfo(
                stimuli_name, "Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string, f"stim-{sid}"
            )
        )
    )
    stop = asyncio.Event()
    bridge: asyncio.Task[lsl.BridgeCounts] | None = None
    try:
        await send(producer, session.topics.prosody, earlier_hops)
        await send(producer, topics.TAGS, earlier_tag)
        bridge = asyncio.create_task(
            run_bridge(
                settings,
                sid,
                stop=stop,
                from_beginning=True,
                marker_inlet=MarkerInletOptions(stimuli_name, "stimulus"),
                # As `livetag lsl` makes them safe: through the tag service's outbox.
                tag_sink=lambda producer: TagOutbox(
                    producer, tmp_path / "state", produce_timeout_s=2.0
                ),
                inlet_settle_s=2.0,
            )
        )
        inlets = await open_inlets(
            lsl.source_id(sid, "alice", "prosody"),
            lsl.source_id(sid, "alice", "tags"),
            lsl.source_id(sid, "bob", "tags"),
        )
        prosody, alice_tags, bob_tags = inlets.values()
        offset_us = prosody.offset_us
        # Replayed from the session's start once inlets were there.
        got_prosody = await asyncio.to_thread(prosody.pull, 10)
        assert [stamp for _, stamp in got_prosody] == [
            (hop.ts_us - offset_us) / 1e6 for hop in earlier_hops.hops
        ]
        (early,) = await asyncio.to_thread(alice_tags.pull, 1)
        assert records.decode(records.TagEvent, early[0][0].encode()) == earlier_tag

        # The bridge's inlet on the stimulus stream: a label becomes tags, anything else
        # is refused and dead-lettered.
        assert await asyncio.to_thread(stimuli.wait_for_consumers, 20.0)
        probe = clients.make_consumer(settings)
        await probe.start()
        dead = TopicPartition(topics.DEADLETTER, 0)
        probe.assign([dead])
        await probe.seek_to_end(dead)
        await probe.position(dead)
        pressed_lsl_s = pylsl.local_clock() - 0.25
        await asyncio.to_thread(stimuli.push_sample, ["laughter"], pressed_lsl_s)
        await asyncio.to_thread(stimuli.push_sample, ["gasp"], pressed_lsl_s + 0.1)
        got_alice, got_bob = await asyncio.gather(
            asyncio.to_thread(alice_tags.pull, 1), asyncio.to_thread(bob_tags.pull, 1)
        )
        marker_tags = [
            records.decode(records.TagEvent, got[0][0][0].encode()) for got in (got_alice, got_bob)
        ]
        for performer, made in zip(("alice", "bob"), marker_tags, strict=True):
            assert (made.performer_id, made.label, made.action) == (performer, "laughter", "point")
            assert (made.rater_id, made.rater_role) == ("stimulus", "observer")
            # The marker's own instant, on the session clock (one machine: one LSL clock).
            assert made.ts_us == round(pressed_lsl_s * 1e6) + offset_us
            assert made.span_us == settings.tag_default_span_ms * 1000
        try:
            letters: list[records.DeadLetter] = []
            async with asyncio.timeout(20):
                while not letters:
                    batch = await probe.getmany(dead, timeout_ms=500)
                    letters += [
                        letter
                        for message in batch.get(dead, [])
                        if (
                            letter := records.decode(records.DeadLetter, message.value)
                        ).source_topic
                        == f"lsl:{sid}:{stimuli_name}"
                    ]
        finally:
            await probe.stop()
        (letter,) = letters
        assert (
            f"'gasp' is not in session {sid}'s vocabulary (laughter, hesitation)" in letter.reason
        )
        assert json.loads(base64.b64decode(letter.payload_head_b64))["marker"] == "gasp"
        assert letter.service == "lsl-bridge"
    finally:
        stop.set()
        counts = await bridge if bridge is not None else None
        await producer.stop()
        async with clients.admin_client(settings) as admin:
            await topics.delete_session_topics(admin, sid)
    assert counts is not None
    assert (
        counts.markers_taken,
        counts.markers_refused,
        counts.tags_sent,
        counts.dead_letters,
    ) == (1, 1, 2, 1)
    assert counts.samples["prosody"] == 10
    assert counts.samples["tags"] == 3  # the early tag and the two the marker made


async def livetag_lsl(settings: Settings, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    process = await start_livetag_lsl(settings, tmp_path, *args)
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), (tmp_path / "lsl.stderr").read_text()


async def test_livetag_lsl_says_what_is_wrong_and_stops_on_sigterm_with_its_counts(
    settings: Settings, session_id: str, tmp_path: Path
) -> None:
    code, _, err = await livetag_lsl(settings, tmp_path, "--session", "no-such-one")
    assert code == 2  # bad input
    assert "Error: no session 'no-such-one' on livetag.sessions" in err
    assert "Traceback" not in err
    code, _, err = await livetag_lsl(
        settings, tmp_path, "--session", session_id, "--rater", "stimulus"
    )
    assert code == 2
    assert "--marker-inlet and --rater go together" in err
    await sessions.create_session(
        settings,
        prompt="a toast",
        performer_names=["Alice"],
        vocabulary=VOCABULARY,
        session_id=session_id,
    )
    try:
        code, _, err = await livetag_lsl(
            settings,
            tmp_path,
            "--session",
            session_id,
            "--marker-inlet",
            "stimuli",
            "--rater",
            "stimulus",
            "--performer",
            "zed",
        )
        assert code == 2
        assert f"Error: performer 'zed' is not on session {session_id}'s roster (alice)" in err
        process = await start_livetag_lsl(settings, tmp_path, "--session", session_id)
        try:
            # Resolvable: the bridge is up and reading.
            await open_inlets(lsl.source_id(session_id, "alice", "tags"))
            process.terminate()
            async with asyncio.timeout(30):
                out, _ = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, (tmp_path / "lsl.stderr").read_text()
        lines = out.decode().splitlines()
        assert "samples\ttags\t0" in lines
        assert "malformed\tprosody\t0" in lines
        assert "markers_refused\tmarkers\t0" in lines
    finally:
        async with clients.admin_client(settings) as admin:
            await topics.delete_session_topics(admin, session_id)
