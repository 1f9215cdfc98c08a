"""Face analysis pieces that need no model: head-pose angles and JPEG decoding."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from streams.features import face
from streams.features.face_errors import FaceAnalysisError


def _rx(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def _ry(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _rz(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def _matrix(rotation: np.ndarray, scale: float = 1.0) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * scale
    matrix[:3, 3] = (1.5, -2.0, -40.0)  # the face somewhere in front of the camera
    return matrix


def test_identity_is_frontal() -> None:
    pose = face.head_pose(_matrix(np.eye(3)))
    assert (pose.yaw_deg, pose.pitch_deg, pose.roll_deg) == (0, 0, 0)


@pytest.mark.parametrize(
    ("yaw", "pitch", "roll"),
    [(20, 0, 0), (-30, 0, 0), (0, 15, 0), (0, -25, 0), (0, 0, 10), (25, -10, 5), (-12, 18, -7)],
)
def test_angles_round_trip(yaw: float, pitch: float, roll: float) -> None:
    # The documented decomposition: R = Ry(yaw) . Rx(-pitch) . Rz(roll); a scale in the
    # matrix (mediapipe's can carry one) must not change the angles.
    rotation = _ry(yaw) @ _rx(-pitch) @ _rz(roll)
    pose = face.head_pose(_matrix(rotation, scale=1.3))
    assert pose.yaw_deg == pytest.approx(yaw, abs=0.01)
    assert pose.pitch_deg == pytest.approx(pitch, abs=0.01)
    assert pose.roll_deg == pytest.approx(roll, abs=0.01)


def test_sign_convention() -> None:
    # Camera space: x right, y up, z towards the viewer; the face looks along its +z.
    forward = np.array([0.0, 0.0, 1.0])
    turned_right = _ry(20)  # forward now points to the image's right (+x)
    assert (turned_right @ forward)[0] > 0
    assert face.head_pose(_matrix(turned_right)).yaw_deg > 0
    chin_up = _rx(-20)  # forward now points up (+y)
    assert (chin_up @ forward)[1] > 0
    assert face.head_pose(_matrix(chin_up)).pitch_deg > 0
    ccw = _rz(20)  # the face's +x axis turns towards +y: counter-clockwise on screen
    assert face.head_pose(_matrix(ccw)).roll_deg > 0


def _jpeg(width: int, height: int) -> bytes:
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[:, : width // 2] = (200, 30, 30)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_decoder_gives_contiguous_rgb() -> None:
    decoder = face.JpegDecoder()
    rgb = decoder.decode(_jpeg(64, 48))
    assert rgb.shape == (48, 64, 3)
    assert rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous
    assert tuple(rgb[10, 5]) == pytest.approx((200, 30, 30), abs=6)
    # The size may change between frames (a browser lowering its resolution).
    assert decoder.decode(_jpeg(96, 54)).shape == (54, 96, 3)


def test_decoder_rejects_garbage_and_recovers() -> None:
    decoder = face.JpegDecoder()
    with pytest.raises(FaceAnalysisError, match="JPEG"):
        decoder.decode(b"\xff\xd8" + b"\x00" * 100)
    assert decoder.decode(_jpeg(32, 32)).shape == (32, 32, 3)
