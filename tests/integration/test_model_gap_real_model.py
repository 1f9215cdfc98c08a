"""The model gap report end to end with the real model: the test media's faces analysed by
the face landmarker and read by the FER2013 network as the model lane reads them, scripted
raters' holds, the aligner's label windows, the archive, and `export --format gap`; the
table's rows are checked against what this test works out from the holds and readings.

Needs both model files (``livetag models fetch``); no broker (the aligner and the model
lane's windows run sans I/O here, as inside the processors)."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from streams import records
from streams.archive import model_gap, store
from streams.archive.export import export_session
from streams.features import expression_model, face, face_model, model_rater, model_windows
from streams.kafka import topics
from streams.labels.aligner_core import AlignerConfig, SessionAligner
from streams.settings import Settings
from taggers.vocabulary import DEFAULT_VOCABULARY
from tests import media as test_media
from tests.bench.face import FRAME_US, jpeg_frames

pytestmark = pytest.mark.integration

SID = "s-gap-real"
T0 = 1_790_000_000_000_000  # take 1 starts here; a multiple of the window
WINDOW_US = 100_000
MS = 1_000
MODEL = expression_model.NAME


@dataclass(frozen=True)
class Hold:
    rater: str
    label: str
    start_ms: int  # from T0, on window boundaries: a hold covers whole windows
    end_ms: int


#: The crying woman of the Wolfgang clip (4.5 s from 0.5 s before take 1; the network reads
#: her as sad, with fear for a moment) and the smiling man (2.4 s; neutral, then happy):
#: what three observers held, agreeing with the model in places and not in others.
SCRIPT: dict[str, list[Hold]] = {
    "ana": [
        # Before take 1, two agree on embarrassment, which FER2013 has no class for.
        Hold("r1", "embarrassment", -500, 0),
        Hold("r2", "embarrassment", -500, 0),
        # 0-1 s: all three sadness, as the model; 1-2 s: all three fear.
        *(Hold(rater, "sadness", 0, 1_000) for rater in ("r1", "r2", "r3")),
        *(Hold(rater, "fear", 1_000, 2_000) for rater in ("r1", "r2", "r3")),
        # 2-3 s: two of three (0.6667) sadness.
        Hold("r1", "sadness", 2_000, 3_000),
        Hold("r2", "sadness", 2_000, 3_000),
        Hold("r3", "amusement", 2_000, 3_000),
        # Take 2, 3-3.5 s: a tie, no consensus; 3.5-4 s: two agree on fear.
        Hold("r1", "sadness", 3_000, 3_500),
        Hold("r2", "amusement", 3_000, 3_500),
        Hold("r1", "fear", 3_500, 4_000),
        Hold("r2", "fear", 3_500, 4_000),
    ],
    "ben": [
        # Two agree on amusement, then one rater alone: agreed with nobody.
        Hold("r1", "amusement", 0, 1_200),
        Hold("r2", "amusement", 0, 1_200),
        Hold("r1", "laughter", 1_200, 2_300),
    ],
}
TAKES = [
    records.Take(take_id=1, start_ts_us=T0, end_ts_us=T0 + 3_000_000),
    records.Take(take_id=2, start_ts_us=T0 + 3_000_000),
]


def the_session() -> records.SessionRecord:
    return records.SessionRecord(
        ts_us=T0 + 5_000_000,
        session_id=SID,
        created_ts_us=T0 - 1_000_000,
        prompt="The gap, with the real model.",
        roster=[records.Performer(performer_id=p, display_name=p.title()) for p in ("ana", "ben")],
        vocabulary=list(DEFAULT_VOCABULARY),
        state="ended",
        takes=TAKES,
        topics=topics.session_topic_names(SID),
    )


def _models() -> tuple[Path, Path]:
    try:
        return face_model.resolve(Settings()), expression_model.resolve(Settings())
    except (face_model.FaceModelError, expression_model.ExpressionModelError) as exc:
        pytest.fail(str(exc), pytrace=False)


def read_faces(
    landmarker: Path, network: Path, performer: str, video: Path, start_us: int, count: int
) -> tuple[list[records.FaceFrame], list[records.ModelReading]]:
    """The performer's face records and the model's window readings, as the processors'
    face workers and model lane make them (every frame read: no thinning here)."""
    bound = model_rater.BoundRater.load(
        model_rater.RaterChoice("builtin", str(network)),
        [entry.label for entry in DEFAULT_VOCABULARY],
    )
    lane: model_windows.ModelWindows[int] = model_windows.ModelWindows(SID, WINDOW_US, MODEL)
    frames: list[records.FaceFrame] = []
    readings: list[records.ModelReading] = []
    with face.FaceAnalyzer(landmarker, SID, performer) as analyzer:
        for seq, jpeg in enumerate(jpeg_frames(video, every=2, limit=count)):
            header = records.VideoFrameHeader(
                ts_us=start_us + seq * FRAME_US,
                session_id=SID,
                performer_id=performer,
                seq=seq,
                timing="sender_report",
                width=640,
                height=360,
            )
            analysed = analyzer.analyze_with_image(records.VideoFrame(header, jpeg))
            frames.append(analysed.record)
            outcome: model_rater.ModelOutcome
            if analysed.landmarks is None:
                outcome = model_rater.Unread("no_face", MODEL)
            else:
                outcome = bound.read(
                    model_rater.FaceSample(
                        session_id=SID,
                        performer_id=performer,
                        ts_us=header.ts_us,
                        rgb=analysed.rgb,
                        landmarks=analysed.landmarks,
                        blendshapes=analysed.record.blendshapes,
                    )
                )
            readings += lane.add(performer, header.ts_us, outcome, seq)[0]
    readings += lane.flush(performer)[0]
    bound.close()
    return frames, readings


def holds_as_tags(performer: str) -> list[records.TagEvent]:
    tags = []
    for n, hold in enumerate(SCRIPT[performer]):
        for action, at_ms in (("onset", hold.start_ms), ("offset", hold.end_ms)):
            ts_us = T0 + at_ms * MS
            onset_id = f"hold-{performer}-{n:03d}-onset"
            tags.append(
                records.TagEvent(
                    ts_us=ts_us,
                    session_id=SID,
                    performer_id=performer,
                    tag_id=onset_id if action == "onset" else f"hold-{performer}-{n:03d}-offset",
                    rater_id=hold.rater,
                    rater_role="observer",
                    action=action,
                    label=hold.label,
                    onset_tag_id=onset_id if action == "offset" else None,
                    timing=records.TagTiming(
                        client_press_ts_us=ts_us,
                        clock_offset_us=0,
                        rtt_us=800,
                        clock_uncertainty_us=400,
                    ),
                    received_ts_us=ts_us + 50_000,
                )
            )
    return tags


@dataclass
class Expected:
    """What one take's (or no-take's) tables must say."""

    rows: list[dict[str, Any]]
    read: list[tuple[str, str]]  # (human, model's answer) of every agreed window it read
    unread: int  # agreed windows the model read no frame of


def expected(readings: list[records.ModelReading], t0_us: int) -> dict[str, Expected]:
    """Per take (or no-take): worked out from the scripted holds and the model's readings
    alone. A window the model read (frames_read > 0) without a top label (its neutral
    class outweighed every label of the vocabulary) answered "(none)": a miss."""
    by_window = {(r.performer_id, r.ts_us): r for r in readings}
    out = {name: Expected([], [], 0) for name in ("take-1", "take-2", "no-take")}
    for (performer, start_us), reading in sorted(by_window.items()):
        held = {
            hold.rater: hold.label
            for hold in SCRIPT[performer]
            if T0 + hold.start_ms * MS <= start_us < T0 + hold.end_ms * MS
        }
        ranked = Counter(held.values()).most_common()
        if len(held) < 2 or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
            continue  # one rater alone, or a tie
        human, most = ranked[0]
        if most * 3 < len(held) * 2:
            continue  # fewer than two thirds
        take = next(
            (t for t in TAKES if t.start_ts_us <= start_us < (t.end_ts_us or 1 << 62)), None
        )
        group = out["no-take" if take is None else f"take-{take.take_id}"]
        if reading.frames_read == 0:
            group.unread += 1
            continue
        answer = reading.top_label or "(none)"
        group.read.append((human, answer))
        if answer == human:
            continue
        end_us = start_us + WINDOW_US
        of_human = reading.probabilities.get(human)
        if reading.top_label is None:  # what outweighed the labels: the classes outside
            said = round(max(0.0, 1 - sum(reading.probabilities.values())), 4)
        else:
            said = reading.probabilities[reading.top_label]
        group.rows.append(
            {
                "session_id": SID,
                "take_id": None if take is None else take.take_id,
                "performer_id": performer,
                "start_ts_us": start_us,
                "end_ts_us": end_us,
                "take_start_s": None if take is None else (start_us - take.start_ts_us) / 1e6,
                "take_end_s": None if take is None else (end_us - take.start_ts_us) / 1e6,
                "media_start_s": (start_us - t0_us) / 1e6,
                "media_end_s": (end_us - t0_us) / 1e6,
                "human_label": human,
                "human_agreement": round(most / len(held), 4),
                "raters": len(held),
                "model": MODEL,
                "model_label": answer,
                "model_probability": said,
                "model_probability_of_human": of_human or 0.0,
                "model_has_label": of_human is not None,
                "gap": round(1 - (of_human or 0.0), 4),
                "frames_read": reading.frames_read,
            }
        )
    return out


def kappa(pairs: list[tuple[str, str]]) -> float:
    """Cohen's kappa, written out: (p_o - p_e) / (1 - p_e)."""
    n = len(pairs)
    p_o = sum(h == m for h, m in pairs) / n
    humans, models = Counter(h for h, _ in pairs), Counter(m for _, m in pairs)
    p_e = sum(humans[label] * models[label] for label in humans) / n**2
    return (p_o - p_e) / (1 - p_e)


def test_the_gap_table_of_the_real_model_on_the_test_media(tmp_path: Path) -> None:
    landmarker, network = _models()
    media = test_media.prepare(test_media.default_dir())
    ana_faces, ana_readings = read_faces(
        landmarker, network, "ana", media.wolfgang_mp4, T0 - 500_000, 68
    )
    ben_faces, ben_readings = read_faces(landmarker, network, "ben", media.single_face_mp4, T0, 36)
    readings = ana_readings + ben_readings
    tags = holds_as_tags("ana") + holds_as_tags("ben")

    # The aligner makes the label windows from the face frames, the tags and the readings.
    aligner = SessionAligner(SID, AlignerConfig(awaited_streams=("face",)))
    windows: list[records.LabelWindow] = []

    def keep(out: list[Any]) -> None:
        windows.extend(item for item in out if isinstance(item, records.LabelWindow))

    now = T0
    for tag in tags:
        keep(aligner.add_tag(tag, now))
    for frame in sorted(ana_faces + ben_faces, key=lambda f: f.ts_us):
        keep(aligner.add_face(frame, now))
    keep(aligner.add_model_readings(readings, now))
    keep(aligner.tick(T0 + 20_000_000))  # long after the last frame: every window is out
    newest = store.latest_labels(windows)
    assert {w.performer_id for w in newest} == {"ana", "ben"}
    assert sum(1 for w in newest if w.models) >= 40  # the model lane's readings are in

    folder = tmp_path / SID
    recorded: dict[str, Sequence[records.JsonRecord]] = {
        "face": ana_faces + ben_faces,
        "tags": tags,
        "labels": windows,
        "model": readings,
    }
    for kind, items in recorded.items():
        messages = []
        for offset, item in enumerate(items):
            encoded = records.encode(item)
            messages.append(
                store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers))
            )
        store.write_part(folder, kind, 0, messages)
    manifest = store.build_archive(folder, the_session(), software={"livetag": "test"})
    written = export_session(folder, tmp_path / "out", "gap")
    assert {path.name for path in written} >= {"take-1.csv", "take-2.csv", "no-take.csv"}

    wanted = expected(readings, manifest["t0_us"])
    # Not a vacuous check: there are gaps in both takes and before them, take 1 has agreed
    # windows read as the humans did and agreed windows the model read as no label at all
    # (the smiling man's neutral start, where the observers agreed on amusement: gap rows
    # of their own, not unread windows), and labels the model has no class for.
    assert len(wanted["take-1"].rows) >= 5
    assert wanted["take-2"].rows
    assert wanted["no-take"].rows
    assert any(h == m for h, m in wanted["take-1"].read)
    assert any(row["model_label"] == "(none)" for row in wanted["take-1"].rows)
    assert not any(row["model_has_label"] for row in wanted["no-take"].rows)
    gap = tmp_path / "out" / "model_gap"
    for name, want in wanted.items():
        table = pq.read_table(gap / f"{name}.parquet").to_pylist()
        assert [{k: v for k, v in row.items() if k != "revision"} for row in table] == want.rows
        with (gap / f"{name}.csv").open(encoding="utf-8", newline="") as handle:
            text = list(csv.DictReader(handle))
        assert [
            (r["performer_id"], int(r["start_ts_us"]), r["human_label"], r["model_label"])
            for r in text
        ] == [
            (r["performer_id"], r["start_ts_us"], r["human_label"], r["model_label"])
            for r in want.rows
        ]
        assert [float(r["gap"]) for r in text] == [r["gap"] for r in want.rows]
        # The summary over every emotion, from the same holds and readings.
        summary = pq.read_table(gap / f"{name}.summary.parquet").to_pylist()
        totals = next(r for r in summary if r["label"] == model_gap.ALL_LABELS)
        matched = sum(h == m for h, m in want.read)
        assert (
            totals["model"],
            totals["windows_agreed"],
            totals["windows_unread"],
            totals["model_agreed"],
            totals["gap_windows"],
        ) == (MODEL, len(want.read), want.unread, matched, len(want.rows)), name
        if len({h for h, _ in want.read} | {m for _, m in want.read}) > 1:
            assert totals["kappa"] == round(kappa(want.read), 4), name
        sadness = next(r for r in summary if r["label"] == "sadness")
        assert sadness["windows_agreed"] == sum(h == "sadness" for h, _ in want.read)
        assert sadness["gap_windows"] == sum(r["human_label"] == "sadness" for r in want.rows)
        assert (gap / f"{name}.png").read_bytes().startswith(b"\x89PNG")
