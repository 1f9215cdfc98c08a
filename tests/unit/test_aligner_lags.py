"""The aligner's reaction-lag estimation (streams.labels.rater_lags): what it keeps of the
session, the corrections it chooses for raters of known lags, which it keeps in force from
round to round, and which records it publishes."""

from __future__ import annotations

import math

import pytest

from streams import records
from streams.labels.aligner_core import AlignerConfig, SessionAligner
from streams.labels.rater_lags import (
    DROP_AFTER_ROUNDS,
    HEARTBEAT_US,
    MIN_SHIFT_US,
    PUBLISH_SHIFT_US,
    AppliedLags,
    LagEvidence,
    estimate_lags,
    worth_publishing,
)
from streams.labels.reaction_lag import MIN_CONFIDENCE
from streams.settings import Settings
from tests.tag_cases import tag

SID = "s-1"
T0 = 1_700_000_000_000_000
S = 1_000_000
# Smiles every 4.3 s from 3 s on, each a bump peaking at 0.9 (the rated intensity follows it).
BUMPS_US = [3 * S + k * 4_300_000 for k in range(14)]
SCENE_US = 60 * S


def smile_at(t_us: float) -> float:
    return sum(0.9 * math.exp(-(((t_us - bump) / 600_000) ** 2)) for bump in BUMPS_US)


def face(ts_us: int) -> records.FaceFrame:
    smile = min(1.0, smile_at(ts_us - T0))
    return records.FaceFrame(
        ts_us=ts_us,
        session_id=SID,
        performer_id="alice",
        video_seq=0,
        face_present=True,
        blendshapes={"mouthSmileLeft": smile, "mouthSmileRight": smile},
    )


def hop(ts_us: int) -> records.ProsodyFrame:
    return records.ProsodyFrame(
        ts_us=ts_us,
        session_id=SID,
        performer_id="alice",
        f0_hz=None,
        voicing_probability=0.0,
        voiced=False,
        loudness_db=-40.0,
    )


def rating_batches(
    rater: str, lag_us: int, start_us: int, end_us: int
) -> list[records.RatingBatch]:
    """A rater who moves an amusement slider with the smile, ``lag_us`` late, at 20 Hz in
    batches of half a second; their own way of using the scale (gain, offset)."""
    gain, offset = {"olga": (1.0, 0.0), "pete": (0.8, 0.05), "rita": (0.9, 0.02)}[rater]
    out = []
    for first in range(start_us, end_us, 500_000):
        samples = [
            {
                "ts_us": T0 + ts,
                "client_ts_us": T0 + ts,
                "intensity": round(min(1.0, max(0.0, offset + gain * smile_at(ts - lag_us))), 3),
            }
            for ts in range(first, min(end_us, first + 500_000), 50_000)
        ]
        out.append(
            records.RatingBatch.model_validate(
                {
                    "ts_us": samples[0]["ts_us"],
                    "session_id": SID,
                    "performer_id": "alice",
                    "batch_id": f"batch-{rater}-{first}",
                    "rater_id": rater,
                    "rater_role": "observer",
                    "mode": "intensity",
                    "label": "amusement",
                    "rate_hz": 20,
                    "samples": samples,
                    "clock_offset_us": 0,
                    "clock_uncertainty_us": 500,
                    "received_ts_us": samples[-1]["ts_us"],
                }
            )
        )
    return out


def scene_evidence(history_us: int = 90 * S) -> LagEvidence:
    """Alice's smiles on video, three raters of known lags rating them."""
    evidence = LagEvidence(history_us)
    for ts in range(0, SCENE_US, 66_667):
        evidence.note_face(face(T0 + ts))
    for rater, lag in (("olga", 300_000), ("pete", 600_000), ("rita", 800_000)):
        for batch in rating_batches(rater, lag, 0, SCENE_US):
            evidence.note_ratings(batch)
    return evidence


def by_rater(found: list[records.RaterLag]) -> dict[str, records.RaterLag]:
    return {record.rater_id: record for record in found}


def test_continuous_raters_of_known_lags_get_their_lags_applied() -> None:
    found = by_rater(estimate_lags(scene_evidence().snapshot(), SID, T0 + SCENE_US))
    assert sorted(found) == ["olga", "pete", "rita"]
    for rater, lag in (("olga", 300_000), ("pete", 600_000), ("rita", 800_000)):
        record = found[rater]
        assert record.session_id == SID
        assert record.ts_us == T0 + SCENE_US
        applied = record.applied
        # Anchored on the smile the ratings follow: absolute lags, not relative ones.
        assert applied.method == "consensus"
        assert not applied.relative
        assert applied.confidence >= 0.3
        assert abs(applied.lag_us - lag) <= 60_000, (rater, applied.lag_us)
        assert record.estimates == [applied]
        assert record.evidence["consensus"] > 0


def test_with_automatic_correction_off_the_lags_are_shown_but_not_applied() -> None:
    found = by_rater(estimate_lags(scene_evidence().snapshot(), SID, T0, auto=False))
    record = found["pete"]
    assert record.applied == records.LagCorrection(method="none", lag_us=0)
    assert [e.method for e in record.estimates] == ["consensus"]


def test_a_hotkey_rater_is_measured_on_the_smiles_they_press_for() -> None:
    evidence = scene_evidence()
    # Onsets of the smile (rising through 0.5): each bump's centre less 0.6 s * sqrt(ln 1.8).
    rise_us = round(600_000 * math.sqrt(math.log(0.9 / 0.5)))
    for k, bump in enumerate(BUMPS_US):
        at = T0 + bump - rise_us + 450_000
        pressed = tag(f"tap-{k:04d}", "point", at, span_us=1, rater="tina", label="amusement")
        # The tag service took off the 200 ms tina calibrated: her raw press is 450 ms late.
        pressed = pressed.model_copy(
            update={
                "ts_us": pressed.ts_us - 200_000,
                "timing": pressed.timing.model_copy(update={"reaction_lag_us": 200_000}),
            }
        )
        evidence.note_tag(pressed)
    record = by_rater(estimate_lags(evidence.snapshot(), SID, T0))["tina"]
    methods = {e.method: e for e in record.estimates}
    assert methods["calibration"].lag_us == 200_000
    assert abs(methods["onsets"].lag_us - 450_000) <= 20_000
    assert record.applied.method == "onsets"
    assert record.evidence["onsets"] == len(BUMPS_US)


def test_a_rater_with_nothing_but_a_calibration_keeps_it() -> None:
    evidence = LagEvidence(60 * S)
    pressed = tag("tap-0001", "point", T0, span_us=1, rater="tina")
    evidence.note_tag(
        pressed.model_copy(
            update={"timing": pressed.timing.model_copy(update={"reaction_lag_us": 250_000})}
        )
    )
    evidence.note_tag(tag("tap-0002", "point", T0, span_us=1, rater="dora"))
    found = by_rater(estimate_lags(evidence.snapshot(), SID, T0))
    assert found["tina"].applied.method == "calibration"
    assert found["tina"].applied.lag_us == 250_000
    assert found["dora"].applied == records.LagCorrection(method="none", lag_us=0)
    assert found["dora"].rater_role == "director"


def test_the_evidence_keeps_only_the_history() -> None:
    evidence = LagEvidence(10 * S)
    for ts in range(0, 30 * S, 10_000):
        evidence.note_hop(hop(T0 + ts))
    for ts in range(0, 30 * S, 66_667):
        evidence.note_face(face(T0 + ts))
    for batch in rating_batches("olga", 0, 0, 30 * S):
        evidence.note_ratings(batch)
    evidence.note_hop(hop(T0))  # late: the envelope is in order only
    snapshot = evidence.snapshot()
    # The last 10 s before the newest hop (at 29.99 s), both ends in.
    assert len(snapshot.loudness["alice"]) == 1001
    assert snapshot.loudness["alice"][0][0] == T0 + 19_990_000
    assert len(snapshot.smiles["alice"]) <= 151
    [samples] = snapshot.ratings["alice"][("intensity", "amusement")].values()
    assert samples[0][0] >= T0 + 20 * S - 50_000
    evidence.forget_performer("alice")
    assert evidence.snapshot().loudness == {}


def test_the_aligner_tells_the_evidence_what_it_aligned() -> None:
    evidence = LagEvidence(60 * S)
    aligner = SessionAligner(SID, AlignerConfig(), evidence)
    aligner.add_prosody(hop(T0), T0)
    aligner.add_face(face(T0 + 3 * S), T0)
    aligner.add_tag(tag("tap-0001", "point", T0, span_us=1, rater="olga"), T0)
    [batch] = rating_batches("olga", 0, 0, 500_000)
    aligner.add_ratings(batch, T0)
    aligner.add_ratings(batch, T0)  # a duplicate batch is no more evidence
    snapshot = evidence.snapshot()
    assert snapshot.loudness["alice"] == [(T0, -40.0)]
    assert snapshot.smiles["alice"] == [(T0 + 3 * S, pytest.approx(0.9, abs=1e-3))]
    assert [t.tag_id for t in snapshot.tags["alice"]] == ["tap-0001"]
    assert len(snapshot.ratings["alice"][("intensity", "amusement")]["olga"]) == 10
    assert snapshot.roles == {"olga": "observer"}


def test_a_dimension_whose_samples_did_not_change_is_not_estimated_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.labels import rater_lags

    calls: list[int] = []
    estimated = rater_lags.consensus_lags

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return estimated(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rater_lags, "consensus_lags", counting)
    evidence = scene_evidence()
    cache: rater_lags.ConsensusCache = {}
    first = estimate_lags(evidence.snapshot(), SID, T0, cache=cache)
    assert len(calls) == 1
    again = estimate_lags(evidence.snapshot(), SID, T0, cache=cache)
    assert len(calls) == 1, "the same samples: the estimates are taken from the cache"
    assert again == first
    for batch in rating_batches("olga", 300_000, SCENE_US, SCENE_US + S):
        evidence.note_ratings(batch)
    estimate_lags(evidence.snapshot(), SID, T0, cache=cache)
    assert len(calls) == 2


# ---------------------------------------------------------------- what is applied, and told


def correction(method: str, lag_ms: int, **fields: object) -> records.LagCorrection:
    return records.LagCorrection.model_validate(
        {"method": method, "lag_us": lag_ms * 1000, **fields}
    )


CONSENSUS_600 = correction("consensus", 600, confidence=0.41, spread_us=120_000)
CALIBRATION_0 = correction("calibration", 0)
NONE = correction("none", 0)


def test_the_settings_apply_lags_at_the_estimators_confidence_bar() -> None:
    assert Settings().rater_lag_min_confidence == MIN_CONFIDENCE


def test_a_confidence_hovering_around_the_bar_does_not_toggle_the_correction() -> None:
    applied = AppliedLags()
    assert applied.update("olga", CONSENSUS_600) == CONSENSUS_600
    # The consensus fell just under the bar: choose gave the calibration, then it was back.
    for _ in range(DROP_AFTER_ROUNDS - 1):
        assert applied.update("olga", CALIBRATION_0) == CONSENSUS_600
    assert applied.update("olga", CONSENSUS_600.model_copy(update={"confidence": 0.4})) == (
        CONSENSUS_600
    )
    # The count of rounds without it started again: two more misses keep it still.
    for _ in range(DROP_AFTER_ROUNDS - 1):
        assert applied.update("olga", NONE) == CONSENSUS_600
    assert applied.get("olga") == CONSENSUS_600


def test_a_correction_is_dropped_after_rounds_in_a_row_without_its_like() -> None:
    applied = AppliedLags()
    applied.update("olga", CONSENSUS_600)
    for _ in range(DROP_AFTER_ROUNDS - 1):
        applied.update("olga", CALIBRATION_0)
    assert applied.update("olga", CALIBRATION_0) == CALIBRATION_0
    # Once the data are confident again, they win over the calibration at once.
    assert applied.update("olga", CONSENSUS_600) == CONSENSUS_600


def test_a_confident_estimate_moves_the_correction_only_by_more_than_the_minimum_shift() -> None:
    applied = AppliedLags()
    applied.update("olga", CONSENSUS_600)
    near = correction("onsets", 600 + MIN_SHIFT_US // 1000, confidence=0.9)
    assert applied.update("olga", near) == CONSENSUS_600, "as good, and within 50 ms"
    far = correction("onsets", 600 + MIN_SHIFT_US // 1000 + 1, confidence=0.5)
    assert applied.update("olga", far) == far
    # A rater who calibrates again: a new calibration stands as high as the old one.
    applied.update("pete", correction("calibration", 250))
    assert applied.update("pete", correction("calibration", 400)).lag_us == 400_000
    # A relative consensus stands below the calibration: it does not replace it at once.
    relative = correction("consensus", 900, confidence=0.8, relative=True)
    assert applied.update("pete", relative).method == "calibration"
    # Seeded from an earlier instance: kept like one chosen here.
    applied.seed("rita", CONSENSUS_600)
    assert "rita" in applied
    assert applied.update("rita", NONE) == CONSENSUS_600


def lag_record(applied: records.LagCorrection, ts_us: int = T0) -> records.RaterLag:
    return records.RaterLag(
        ts_us=ts_us,
        session_id=SID,
        rater_id="olga",
        rater_role="observer",
        applied=applied,
        estimates=[applied],
    )


def test_a_rater_lag_goes_out_on_a_material_change_or_as_a_heartbeat() -> None:
    first = lag_record(CONSENSUS_600)
    assert worth_publishing(None, first)
    wiggle = CONSENSUS_600.model_copy(update={"confidence": 0.4123, "lag_us": 615_000})
    assert not worth_publishing(first, lag_record(wiggle, T0 + 10 * S))
    moved = CONSENSUS_600.model_copy(update={"lag_us": 600_000 + PUBLISH_SHIFT_US + 1})
    assert worth_publishing(first, lag_record(moved, T0 + 10 * S))
    assert worth_publishing(first, lag_record(correction("onsets", 600), T0 + 10 * S))
    assert worth_publishing(first, lag_record(wiggle, T0 + HEARTBEAT_US))
    assert not worth_publishing(first, lag_record(wiggle, T0 + HEARTBEAT_US - 1))
