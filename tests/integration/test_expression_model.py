"""The real FER2013 network on real faces: the test media's frames, analysed by the face
landmarker, cropped and rated as the face workers do. Needs both model files (``livetag
models fetch``): without them these tests fail with the message that names the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.features import expression_model, face, face_model, model_rater
from streams.settings import Settings
from taggers.vocabulary import DEFAULT_VOCABULARY
from tests import media as test_media
from tests.bench.face import FRAME_US, PERFORMER, SESSION, jpeg_frames, video_frame

pytestmark = pytest.mark.integration

HAPPY = expression_model.CLASSES.index("happy")
NEUTRAL = expression_model.CLASSES.index("neutral")


@pytest.fixture(scope="module")
def media() -> test_media.MediaSet:
    return test_media.prepare(test_media.default_dir())


def _models() -> tuple[Path, Path]:
    try:
        return face_model.resolve(Settings()), expression_model.resolve(Settings())
    except (face_model.FaceModelError, expression_model.ExpressionModelError) as exc:
        pytest.fail(str(exc), pytrace=False)


def _faces(path: Path, every: int) -> list[face.AnalysedFrame]:
    landmarker, _ = _models()
    seen = []
    with face.FaceAnalyzer(landmarker, SESSION, PERFORMER) as analyzer:
        for seq, jpeg in enumerate(jpeg_frames(path, every=every)):
            analysed = analyzer.analyze_with_image(video_frame(jpeg, seq, seq * every * FRAME_US))
            if analysed.landmarks is not None:
                seen.append(analysed)
    return seen


def test_the_network_gives_a_distribution_whose_happy_neutral_split_moves(
    media: test_media.MediaSet,
) -> None:
    _, network_file = _models()
    network = expression_model.ExpressionModel(network_file)
    faces = _faces(media.single_face_mp4, every=3)  # the smiling man, 24 frames
    assert len(faces) >= 20
    crops = [
        expression_model.face_crop(f.rgb, f.landmarks) for f in faces if f.landmarks is not None
    ]
    rated = np.array([network.probabilities(crop) for crop in crops])
    assert rated.shape == (len(faces), len(expression_model.CLASSES))
    assert (rated >= 0).all()
    assert (rated <= 1).all()
    assert np.allclose(rated.sum(axis=1), 1.0, atol=1e-3)
    # The class order: a smiling man reads as class 3, happy, on the whole...
    assert rated[:, HAPPY].mean() > 0.5
    # ...and not as one constant answer: his smile comes and goes, and the happy/neutral
    # split leans each way in some frames.
    split = rated[:, HAPPY] - rated[:, NEUTRAL]
    assert split.max() > 0.3, split.round(2)
    assert split.min() < 0.0, split.round(2)


def test_the_built_in_rater_maps_a_real_face_to_the_vocabulary(
    media: test_media.MediaSet,
) -> None:
    _, network_file = _models()
    choice = model_rater.RaterChoice("builtin", str(network_file))
    bound = model_rater.BoundRater.load(choice, [entry.label for entry in DEFAULT_VOCABULARY])

    def read(analysed: face.AnalysedFrame) -> model_rater.FrameReading:
        record = analysed.record
        assert analysed.landmarks is not None
        outcome = bound.read(
            model_rater.FaceSample(
                session_id=record.session_id,
                performer_id=record.performer_id,
                ts_us=record.ts_us,
                rgb=analysed.rgb,
                landmarks=analysed.landmarks,
                blendshapes=record.blendshapes,
            )
        )
        assert isinstance(outcome, model_rater.FrameReading), outcome
        return outcome

    crying = [read(f) for f in _faces(media.wolfgang_mp4, every=20)[:10]]
    smiling = [read(f) for f in _faces(media.single_face_mp4, every=6)]
    for reading in crying + smiling:
        assert reading.model == "fer-mini-xception"
        assert set(reading.class_probabilities) == set(expression_model.CLASSES)
        assert set(reading.probabilities) == {
            "anger",
            "disgust",
            "fear",
            "amusement",
            "sadness",
            "surprise",
        }
        unmapped = reading.class_probabilities["neutral"]
        assert sum(reading.probabilities.values()) + unmapped == pytest.approx(1.0)
        assert reading.valence is not None
        assert -1 <= reading.valence <= 1

    def mean(readings: list[model_rater.FrameReading], label: str) -> float:
        return float(np.mean([r.probabilities[label] for r in readings]))

    # The crying woman is sadder to the network than the smiling man, and less amused.
    assert mean(crying, "sadness") > mean(smiling, "sadness") + 0.1
    assert mean(smiling, "amusement") > mean(crying, "amusement")
