"""A small archived session built from known records, for archive, export and replay tests."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from streams import records
from streams.archive import store
from streams.kafka import topics
from taggers.vocabulary import DEFAULT_VOCABULARY

T0 = 1_790_000_000_000_000
SID = "s-archive"
PERFORMERS = ("ana", "ben")


def session() -> records.SessionRecord:
    return records.SessionRecord(
        ts_us=T0,
        session_id=SID,
        created_ts_us=T0 - 5_000_000,
        prompt="Two strangers share an umbrella.",
        roster=[records.Performer(performer_id=p, display_name=p.title()) for p in PERFORMERS],
        vocabulary=list(DEFAULT_VOCABULARY),
        state="ended",
        takes=[records.Take(take_id=1, start_ts_us=T0, end_ts_us=T0 + 2_000_000)],
        topics=topics.session_topic_names(SID),
    )


def jpeg(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((90, 160, 3), level, dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def sample_records(seconds: float = 2.0) -> dict[str, list[Any]]:
    """Per kind: what a 2 s session of two performers puts on its topics."""
    out: dict[str, list[Any]] = {k: [] for k in (*store.KINDS, "audio", "video")}
    timing = records.TagTiming(
        client_press_ts_us=T0, clock_offset_us=1_500, rtt_us=900, clock_uncertainty_us=451
    )
    for n, performer in enumerate(PERFORMERS):
        common = {"session_id": SID, "performer_id": performer}
        for k in range(int(seconds * 50)):
            pcm = (np.sin(np.arange(320) / 5 + k) * 3000).astype("<i2").tobytes()
            chunk = records.AudioChunkHeader(
                ts_us=T0 + k * 20_000, seq=k, timing="sender_report", sample_count=320, **common
            )
            out["audio"].append(records.AudioChunk(chunk, pcm))
        for k in range(int(seconds * 15)):
            header = records.VideoFrameHeader(
                ts_us=T0 + k * 66_667 + n,
                seq=k,
                timing="sender_report",
                rtp_timestamp=1000 + k * 6000,
                width=160,
                height=90,
                **common,
            )
            out["video"].append(records.VideoFrame(header, jpeg(40 + k)))
            out["face"].append(
                records.FaceFrame(
                    ts_us=header.ts_us,
                    video_seq=k,
                    face_present=k % 5 != 0,
                    **(
                        {}
                        if k % 5 == 0
                        else {
                            "landmarks": records.Landmarks.from_xyz(
                                np.full((478, 3), 0.5, dtype=np.float32)
                            ),
                            "blendshapes": {"mouthSmileLeft": 0.7, "jawOpen": 0.25},
                            "head_pose": records.HeadPose(
                                yaw_deg=1.5, pitch_deg=-2.0, roll_deg=0.5
                            ),
                        }
                    ),
                    **common,
                )
            )
        for k in range(int(seconds * 100)):
            out["prosody"].append(
                records.ProsodyFrame(
                    ts_us=T0 + k * 10_000,
                    f0_hz=180.0 + k if k % 3 else None,
                    voicing_probability=0.9 if k % 3 else 0.1,
                    voiced=bool(k % 3),
                    loudness_db=-25.5,
                    **common,
                )
            )
        for rater, label in (("r1", "laughter"), ("r2", "laughter" if n == 0 else "anger")):
            out["tags"].append(
                records.TagEvent(
                    ts_us=T0 + 500_000,
                    tag_id=f"tag-{performer}-{rater}",
                    rater_id=rater,
                    rater_role="observer",
                    action="point",
                    label=label,
                    span_us=400_000,
                    timing=timing,
                    received_ts_us=T0 + 540_000,
                    **common,
                )
            )
        for k in range(int(seconds * 10)):
            out["labels"].append(
                records.LabelWindow(
                    ts_us=T0 + k * 100_000,
                    window_us=100_000,
                    features=records.WindowFeatures(loudness_mean_db=-25.5),
                    raters=[],
                    consensus=None,
                    **common,
                )
            )
    return out


def write_sample_archive(folder: Path, *, duplicate: bool = True) -> dict[str, list[Any]]:
    """Parts as a recorder writes them (with a re-read overlap and a re-delivered record),
    then the archive built from them. Returns what went in."""
    made = sample_records()
    for kind, items in made.items():
        messages = []
        for offset, item in enumerate(carried(kind, items)):
            encoded = records.encode(item)
            messages.append(
                store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers))
            )
        half = len(messages) // 2
        store.write_part(folder, kind, 0, messages[: half + 3])
        if duplicate:
            # After a crash: the same offsets read again, and one record produced twice.
            again = messages[half:]
            again.append(store.RawMessage(0, len(messages), *_copy(messages[0])))
            store.write_part(folder, kind, 0, again)
        elif messages[half + 3 :]:
            store.write_part(folder, kind, 0, messages[half + 3 :])
    store.build_archive(folder, session(), software={"livetag": "test"})
    return made


def carried(kind: str, items: list[Any]) -> list[Any]:
    """The records that carry ``items`` on their topic: prosody hops ten to a record, per
    performer, as the processors send them."""
    if kind != "prosody":
        return items
    out: list[Any] = []
    for _, hops in itertools.groupby(items, key=lambda hop: hop.performer_id):
        run = list(hops)
        out += [records.ProsodyHops.of(run[start : start + 10]) for start in range(0, len(run), 10)]
    return out


def _copy(message: store.RawMessage) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return message.key, message.value, message.headers
