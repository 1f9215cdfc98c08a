"""The documented reader of a label window's ratings and model readings (docs/consumers.md,
"Continuous ratings, model readings and reaction lags in a window") runs as written on
what `livetag tail labels` prints, and prints what the windows hold."""

from __future__ import annotations

import json
import subprocess
import sys

from streams import records
from streams.labels.aligner_core import AlignerConfig, SessionAligner
from tests.documentation import marked_block

SID = "s-1"
W = 100_000
T0 = 1_700_000_000_000_000
CONFIG = AlignerConfig(awaited_streams=("prosody",), feature_wait_us=10_000_000)


def _windows() -> list[records.LabelWindow]:
    """Two windows rated by olga (a pad, corrected by 300 ms), the second read by a model
    after it went out (a revision)."""
    aligner = SessionAligner(SID, CONFIG)
    aligner.set_lag("olga", records.LagCorrection(method="consensus", lag_us=300_000))
    out: list[records.LabelWindow] = []
    for ts in range(T0, T0 + 3 * W, 10_000):
        out += aligner.add_prosody(
            records.ProsodyFrame(
                ts_us=ts,
                session_id=SID,
                performer_id="alice",
                f0_hz=None,
                voicing_probability=0.0,
                voiced=False,
                loudness_db=-30.0,
            ),
            T0,
        )
    batch = records.RatingBatch.model_validate(
        {
            "ts_us": T0 + 300_000,
            "session_id": SID,
            "performer_id": "alice",
            "batch_id": "batch-0001",
            "rater_id": "olga",
            "rater_role": "observer",
            "mode": "valence_arousal",
            "rate_hz": 20,
            "samples": [
                {
                    "ts_us": T0 + 300_000 + k * 50_000,
                    "client_ts_us": 0,
                    "valence": 0.5,
                    "arousal": v,
                }
                for k, v in enumerate((0.1, 0.3, -0.2, -0.4))
            ],
            "clock_offset_us": 0,
            "clock_uncertainty_us": 500,
            "received_ts_us": T0 + 500_000,
        }
    )
    out += [w for w in aligner.add_ratings(batch, T0) if isinstance(w, records.LabelWindow)]
    out += aligner.tick(T0 + 2 * W + CONFIG.rating_wait_us)
    reading = records.ModelReading(
        ts_us=T0 + W,
        session_id=SID,
        performer_id="alice",
        window_us=W,
        model="fer",
        frames_read=1,
        probabilities={"amusement": 0.9},
        top_label="amusement",
        valence=0.5,
    )
    out += [
        w
        for w in aligner.add_model_readings([reading], T0 + 2 * W + CONFIG.rating_wait_us)
        if isinstance(w, records.LabelWindow)
    ]
    return out


def test_the_documented_reader_prints_each_windows_ratings_and_readings() -> None:
    windows = _windows()
    assert [(w.ts_us - T0) // W for w in windows] == [0, 1, 1]
    lines = [
        json.dumps({"record_type": "label_window", **w.model_dump(mode="json")}) for w in windows
    ]
    lines.insert(1, json.dumps({"error": "not json", "record_type": "label_window"}))
    lines.append(lines[-1])  # delivered again
    printed = subprocess.run(
        [sys.executable, "-c", marked_block("ratings-example")],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    at0, at1 = f"alice {T0}", f"alice {T0 + W}"
    assert printed == [
        f"{at0} r0 olga valence_arousal arousal=+0.20 valence=+0.50 coverage=1.00 lag_ms=300",
        f"{at1} r0 olga valence_arousal arousal=-0.30 valence=+0.50 coverage=1.00 lag_ms=300",
        f"{at1} r1 olga valence_arousal arousal=-0.30 valence=+0.50 coverage=1.00 lag_ms=300",
        f"{at1} r1 fer amusement valence=0.5",
    ]
