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
        out["ratings"] += rating_rows(performer, seconds)
        out["cues"] += cues(performer)
        for k in range(int(seconds * 10)):
            reading = model_reading(performer, T0 + k * 100_000, k)
            out["model"].append(reading)
            out["labels"].append(
                records.LabelWindow(
                    ts_us=T0 + k * 100_000,
                    window_us=100_000,
                    features=records.WindowFeatures(loudness_mean_db=-25.5),
                    raters=[],
                    consensus=None,
                    # The perception fields of every third window: a trace with its lag
                    # correction, and the model's estimate.
                    ratings=[] if k % 3 else [_trace(k)],
                    models=[]
                    if k % 3 or reading.top_label is None
                    else [
                        records.ModelEstimate(
                            model=reading.model,
                            probabilities=reading.probabilities,
                            top_label=reading.top_label,
                            valence=reading.valence,
                            arousal=reading.arousal,
                            frames_read=reading.frames_read,
                        )
                    ],
                    **common,
                )
            )
    for rater, lag_us in (("r1", 420_000), ("r3", 250_000)):
        out["rater_lags"].append(
            records.RaterLag(
                ts_us=T0 + 1_900_000,
                session_id=SID,
                rater_id=rater,
                rater_role="observer",
                applied=records.LagCorrection(
                    method="consensus", lag_us=lag_us, spread_us=60_000, confidence=0.75
                ),
                estimates=[
                    records.LagCorrection(
                        method="consensus", lag_us=lag_us, spread_us=60_000, confidence=0.75
                    ),
                    records.LagCorrection(method="calibration", lag_us=300_000, confidence=0.5),
                ],
                evidence={"consensus": 40, "calibration": 8},
            )
        )
    return out


def cues(performer: str) -> list[records.Cue]:
    """The director's cues to a performer as the archive keeps them (the record the page
    showed, else the one sent): laughter to everyone at 300 ms, shown 80 ms later; a line
    of text at 1.2 s, shown; a clear at 1.8 s the page never said it showed."""
    common = {"session_id": SID, "performer_id": performer, "sent_by": "dora"}

    def shown(at_us: int) -> dict[str, Any]:
        return {
            "shown_ts_us": at_us,
            "shown": records.CueShown(
                client_shown_ts_us=at_us - 1_500, clock_offset_us=1_500, rtt_us=4_000
            ),
        }

    return [
        records.Cue(
            ts_us=T0 + 300_000,
            cue_id=f"cue-{performer}-laughter",
            group_id="group-laughter",
            kind="emotion",
            label="laughter",
            intensity="strong",
            **common,
            **shown(T0 + 380_000),
        ),
        records.Cue(
            ts_us=T0 + 1_200_000,
            cue_id=f"cue-{performer}-text",
            kind="text",
            text="slower, let it land",
            **common,
            **shown(T0 + 1_250_000),
        ),
        records.Cue(ts_us=T0 + 1_800_000, cue_id=f"cue-{performer}-clear", kind="clear", **common),
    ]


def rating_rows(performer: str, seconds: float) -> list[store.RatingSampleRow]:
    """Continuous ratings of a performer: r1 on the valence/arousal pad, r3 the intensity
    of laughter, both at 20 Hz in 1 s batches, as the archive keeps them (one row per
    sample)."""
    rows: list[store.RatingSampleRow] = []
    for rater, mode in (("r1", "valence_arousal"), ("r3", "intensity")):
        for second in range(int(seconds)):
            batch_id = f"batch-{performer}-{rater}-{second:04d}"
            for index in range(20):
                step = second * 20 + index
                values: dict[str, float | int] = (
                    {"valence": round(0.05 * (step % 20) - 0.5, 4), "arousal": 0.25}
                    if mode == "valence_arousal"
                    else {"intensity": round(step / 40, 4)}
                )
                rows.append(
                    store.RatingSampleRow(
                        ts_us=T0 + step * 50_000,
                        session_id=SID,
                        performer_id=performer,
                        rater_id=rater,
                        rater_role="observer",
                        mode=mode,
                        label="laughter" if mode == "intensity" else None,
                        basis="frame_on_screen",
                        client_ts_us=T0 - 1_500 + step * 50_000,
                        batch_id=batch_id,
                        sample_index=index,
                        rate_hz=20,
                        clock_offset_us=1_500,
                        clock_uncertainty_us=451,
                        reaction_lag_us=300_000,
                        received_ts_us=T0 + (second + 1) * 1_000_000 + 30_000,
                        **values,
                    )
                )
    return rows


def model_reading(performer: str, ts_us: int, k: int) -> records.ModelReading:
    """The model lane's reading of one 100 ms window (every fifth has no face)."""
    if k % 5 == 0:
        return records.ModelReading(
            ts_us=ts_us,
            session_id=SID,
            performer_id=performer,
            window_us=100_000,
            model="fer-mini",
            frames_read=0,
            unread="no_face",
        )
    happy = round(0.5 + 0.02 * k, 4)
    return records.ModelReading(
        ts_us=ts_us,
        session_id=SID,
        performer_id=performer,
        window_us=100_000,
        model="fer-mini",
        frames_read=2,
        frames_thinned=k % 2,
        class_probabilities={"happy": happy, "neutral": round(1 - happy, 4)},
        probabilities={"laughter": happy},
        top_label="laughter",
        valence=0.5,
        arousal=0.25,
    )


def _trace(k: int) -> records.RaterTrace:
    return records.RaterTrace(
        rater_id="r1",
        rater_role="observer",
        mode="valence_arousal",
        mean={"valence": round(0.1 * (k % 10) - 0.5, 4), "arousal": 0.25},
        last={"valence": round(0.1 * (k % 10) - 0.45, 4), "arousal": 0.25},
        coverage=1.0,
        samples=2,
        lag=records.LagCorrection(
            method="consensus", lag_us=420_000, spread_us=60_000, confidence=0.75
        ),
    )


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
    performer, as the processors send them; rating samples in their batches; cues sent,
    then shown."""
    if kind == "ratings":
        return [rating_batch(rows) for rows in _by_batch(items)]
    if kind == "cues":
        # Each cue as sent, then again once the page showed it.
        sent = [cue.model_copy(update={"shown_ts_us": None, "shown": None}) for cue in items]
        return [*sent, *(cue for cue in items if cue.shown_ts_us is not None)]
    if kind != "prosody":
        return items
    out: list[Any] = []
    for _, hops in itertools.groupby(items, key=lambda hop: hop.performer_id):
        run = list(hops)
        out += [records.ProsodyHops.of(run[start : start + 10]) for start in range(0, len(run), 10)]
    return out


def _by_batch(rows: list[store.RatingSampleRow]) -> list[list[store.RatingSampleRow]]:
    batches: dict[str, list[store.RatingSampleRow]] = {}
    for row in rows:
        batches.setdefault(row.batch_id, []).append(row)
    return [sorted(batch, key=lambda row: row.sample_index) for batch in batches.values()]


def rating_batch(rows: list[store.RatingSampleRow]) -> records.RatingBatch:
    """The batch the tag service put on livetag.ratings, from its archived rows."""
    first = rows[0]
    return records.RatingBatch(
        ts_us=first.ts_us,
        session_id=first.session_id,
        performer_id=first.performer_id,
        batch_id=first.batch_id,
        rater_id=first.rater_id,
        rater_role=first.rater_role,
        mode=first.mode,
        label=first.label,
        rate_hz=first.rate_hz,
        samples=[
            records.RatingSample(
                ts_us=row.ts_us,
                client_ts_us=row.client_ts_us,
                basis=row.basis,
                valence=row.valence,
                arousal=row.arousal,
                intensity=row.intensity,
            )
            for row in rows
        ],
        clock_offset_us=first.clock_offset_us,
        clock_uncertainty_us=first.clock_uncertainty_us,
        reaction_lag_us=first.reaction_lag_us,
        received_ts_us=first.received_ts_us,
    )


def _copy(message: store.RawMessage) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return message.key, message.value, message.headers
