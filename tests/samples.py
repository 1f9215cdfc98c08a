"""One valid record of every type, for tests and benchmarks."""

from __future__ import annotations

import io
import math
import struct

import numpy as np
from PIL import Image

from streams import records
from streams.kafka import topics

TS_US = 1_764_115_200_123_456


def pcm_tone(sample_count: int = 320, hz: float = 220.0) -> bytes:
    samples = (int(8000 * math.sin(2 * math.pi * hz * n / 16_000)) for n in range(sample_count))
    return struct.pack(f"<{sample_count}h", *samples)


def jpeg_frame(width: int = 64, height: int = 36) -> bytes:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (200, 80, 40)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=80)
    return out.getvalue()


SCENARIO = records.Scenario(
    scenario_id="late-friend",
    title="The late friend",
    prompt="Two old friends meet at a funeral; one of them is late.",
    roles=[
        records.ScenarioRole(
            name="the friend", brief="You are late and cannot say why.", targets=["hesitation"]
        ),
        records.ScenarioRole(name="the widower", brief="You waited.", targets=["laughter"]),
    ],
    targets=["laughter", "hesitation"],
    arc=[
        records.ArcStep(at_s=0, label="hesitation"),
        records.ArcStep(at_s=60, label="laughter", intensity="strong"),
    ],
    duration_s=180,
)


def all_records(session_id: str = "s-1", performer_id: str = "alice") -> list[records.AnyRecord]:
    """Every record type, one each, in the order of records.JSON_RECORD_TYPES + media."""
    common = {"session_id": session_id, "performer_id": performer_id}
    landmarks = np.random.default_rng(7).random((478, 3)).astype(np.float32)
    return [
        records.SessionRecord(
            ts_us=TS_US,
            session_id=session_id,
            created_ts_us=TS_US - 1_000_000,
            prompt="Two old friends meet at a funeral; one of them is late.",
            roster=[
                records.Performer(performer_id=performer_id, display_name="Alice"),
                records.Performer(performer_id="bob", display_name="Bob"),
            ],
            vocabulary=[
                records.VocabularyEntry(label="laughter", hotkey="l", colour="#f5b700"),
                records.VocabularyEntry(label="hesitation", hotkey="h", colour="#7a7a7a"),
            ],
            state="live",
            takes=[records.Take(take_id=1, start_ts_us=TS_US - 500_000)],
            topics=topics.session_topic_names(session_id),
            scenario=SCENARIO,
            roles={performer_id: "the friend", "bob": "the widower"},
            day_id=f"day-{session_id}",
        ),
        records.ProsodyHops(
            ts_us=TS_US,
            **common,
            hops=[
                records.ProsodyHop(
                    ts_us=TS_US,
                    f0_hz=212.5,
                    voicing_probability=0.93,
                    voiced=True,
                    loudness_db=-23.4,
                    voice_quality=records.VoiceQuality(
                        hnr_db=14.2, jitter_local=0.011, shimmer_local=0.04
                    ),
                ),
                records.ProsodyHop(
                    ts_us=TS_US + 10_000,
                    f0_hz=None,
                    voicing_probability=0.12,
                    voiced=False,
                    loudness_db=-61.0,
                ),
            ],
        ),
        records.FaceFrame(
            ts_us=TS_US,
            **common,
            video_seq=42,
            face_present=True,
            landmarks=records.Landmarks.from_xyz(landmarks),
            blendshapes={"mouthSmileLeft": 0.81, "mouthSmileRight": 0.77, "eyeBlinkLeft": 0.02},
            head_pose=records.HeadPose(yaw_deg=-4.0, pitch_deg=2.5, roll_deg=0.3),
        ),
        records.TagEvent(
            ts_us=TS_US,
            **common,
            tag_id="0f8e2c1a-9b7d-4e21-8a11-5f3c2d1e0b9a",
            rater_id="director",
            rater_role="director",
            action="onset",
            label="laughter",
            intensity="strong",
            timing=records.TagTiming(
                client_press_ts_us=TS_US - 12_345_678,
                clock_offset_us=12_345_678,
                rtt_us=900,
                clock_uncertainty_us=450,
                reaction_lag_us=0,
                media_rtp_timestamp=3_000_000_000,
                media_capture_ts_us=TS_US,
                basis="frame_on_screen",
            ),
            received_ts_us=TS_US + 60_000,
        ),
        records.LabelWindow(
            ts_us=TS_US,
            **common,
            window_us=100_000,
            features=records.WindowFeatures(
                f0_mean_hz=208.0,
                loudness_mean_db=-24.0,
                voiced_fraction=0.8,
                face_present_fraction=1.0,
                top_blendshapes={"mouthSmileLeft": 0.8},
                head_pose=records.HeadPose(yaw_deg=-4.0, pitch_deg=2.5, roll_deg=0.3),
            ),
            raters=[
                records.RaterLabels(
                    rater_id="director",
                    rater_role="director",
                    labels=[
                        records.ActiveLabel(
                            label="laughter",
                            intensity="strong",
                            tag_id="0f8e2c1a-9b7d-4e21-8a11-5f3c2d1e0b9a",
                        )
                    ],
                )
            ],
            consensus="laughter",
            consensus_agreement=1.0,
            ratings=[
                records.RaterTrace(
                    rater_id="observer-1",
                    rater_role="observer",
                    mode="valence_arousal",
                    mean={"valence": 0.3, "arousal": -0.5},
                    last={"valence": 0.35, "arousal": -0.5},
                    coverage=1.0,
                    samples=2,
                    lag=records.LagCorrection(
                        method="consensus", lag_us=420_000, spread_us=80_000, confidence=0.8
                    ),
                )
            ],
            models=[
                records.ModelEstimate(
                    model="fer-mini-xception",
                    probabilities={"laughter": 0.7},
                    top_label="laughter",
                    valence=0.56,
                    arousal=0.3,
                    frames_read=2,
                )
            ],
            intent=records.Intent(
                label="laughter",
                intensity="strong",
                source="cue",
                cue=records.CueInForce(
                    cue_id="cue_0123456789",
                    kind="emotion",
                    label="laughter",
                    intensity="strong",
                    since_ts_us=TS_US - 2_000_000,
                    shown=True,
                ),
                arc_label="hesitation",
                targets=["hesitation", "laughter"],
            ),
        ),
        records.DeadLetter.of(
            ts_us=TS_US,
            source_topic=topics.session_topic("prosody", session_id),
            service="tests",
            reason="prosody_hops: not JSON",
            payload=b"\xff\xfe garbage",
            key=f"{session_id}/{performer_id}".encode(),
            partition=0,
            offset=17,
        ),
        records.PipelineCounters(
            ts_us=TS_US,
            **common,
            source="aligner",
            counters={"windows_emitted": 1200, "windows_incomplete": 3, "late_features_lost": 0},
        ),
        records.TokenRevocation(
            ts_us=TS_US,
            session_id=session_id,
            participant_id="observer-1",
            reason="left the production",
        ),
        records.RatingBatch(
            ts_us=TS_US,
            **common,
            batch_id="c1d2e3f4-0000-4000-8000-000000000001",
            rater_id="observer-1",
            rater_role="observer",
            mode="valence_arousal",
            rate_hz=20,
            samples=[
                records.RatingSample(
                    ts_us=TS_US + step * 50_000,
                    client_ts_us=TS_US - 12_345_678 + step * 50_000,
                    basis="frame_on_screen",
                    valence=0.25 + 0.1 * step,
                    arousal=-0.5,
                )
                for step in range(3)
            ],
            clock_offset_us=12_345_678,
            clock_uncertainty_us=450,
            reaction_lag_us=310_000,
            received_ts_us=TS_US + 200_000,
        ),
        records.RaterLag(
            ts_us=TS_US,
            session_id=session_id,
            rater_id="observer-1",
            rater_role="observer",
            applied=records.LagCorrection(
                method="consensus", lag_us=420_000, spread_us=80_000, confidence=0.8
            ),
            estimates=[
                records.LagCorrection(
                    method="consensus", lag_us=420_000, spread_us=80_000, confidence=0.8
                ),
                records.LagCorrection(method="calibration", lag_us=310_000, confidence=0.5),
            ],
            evidence={"consensus": 2400, "calibration": 8},
        ),
        records.ModelReading(
            ts_us=TS_US,
            **common,
            window_us=100_000,
            model="fer-mini-xception",
            frames_read=2,
            frames_thinned=1,
            class_probabilities={"happy": 0.7, "neutral": 0.2, "surprise": 0.1},
            probabilities={"laughter": 0.7},
            top_label="laughter",
            valence=0.56,
            arousal=0.3,
        ),
        records.ScenarioRecord(
            ts_us=TS_US,
            # Keyed by scenario id: named after the session, so a test that reads a shared
            # topic finds its own record among other tests'.
            scenario=SCENARIO.model_copy(update={"scenario_id": f"{session_id}-late-friend"}),
            saved_by="director",
        ),
        records.Cue(
            ts_us=TS_US,
            **common,
            cue_id="cue_0123456789",
            kind="emotion",
            label="laughter",
            intensity="strong",
            sent_by="director",
            shown_ts_us=TS_US + 80_000,
            shown=records.CueShown(
                client_shown_ts_us=TS_US + 1_080_000, clock_offset_us=-1_000_000, rtt_us=4_000
            ),
        ),
        records.Coverage(
            ts_us=TS_US,
            **common,
            window_us=100_000,
            windows=600,
            cells={
                "laughter": records.CoverageCell(
                    intended_s=20.0, self_tagged_s=12.5, perceived_s=15.0, agreed_s=9.0, hit_s=8.0
                )
            },
            confusion={"laughter": {"laughter": 80, "(none)": 120}},
        ),
        records.LobbyPresence(
            ts_us=TS_US,
            day_id=f"day-{session_id}",
            performer_id=performer_id,
            waiting=True,
            since_ts_us=TS_US - 60_000_000,
            check=records.DeviceCheck(
                camera=True,
                microphone=True,
                face_found=True,
                audio_level_db=-31.5,
                checked_ts_us=TS_US,
            ),
        ),
        records.CastingDay(
            ts_us=TS_US,
            day_id=f"day-{session_id}",
            created_ts_us=TS_US - 3_600_000_000,
            title="Improv casting, Monday",
            roster=[
                records.Performer(performer_id=performer_id, display_name="Alice"),
                records.Performer(performer_id="bob", display_name="Bob"),
            ],
            vocabulary=[records.VocabularyEntry(label="laughter", hotkey="l", colour="#f5b700")],
            scenes=[
                records.SceneRef(
                    session_id=session_id,
                    performers=[performer_id, "bob"],
                    scenario_id="late-friend",
                    roles={performer_id: "the friend", "bob": "the widower"},
                    started_ts_us=TS_US - 600_000_000,
                    ended_ts_us=TS_US - 60_000_000,
                )
            ],
        ),
        records.AudioChunk(
            records.AudioChunkHeader(
                ts_us=TS_US,
                **common,
                seq=3,
                timing="sender_report",
                sample_count=320,
                rtp_timestamp=123_456,
            ),
            pcm_tone(320),
        ),
        records.VideoFrame(
            records.VideoFrameHeader(
                ts_us=TS_US, **common, seq=5, timing="arrival_fit", width=64, height=36
            ),
            jpeg_frame(),
        ),
    ]
