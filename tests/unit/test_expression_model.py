"""The model lane's face crop and the expression model's file checks, without the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.features import expression_model
from streams.features.expression_model import CROP_MARGIN, face_crop
from streams.settings import Settings

H, W = 360, 640


def box_landmarks(left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """Landmarks (normalised x, y, z) spanning the box given in pixels: its corners and
    some points inside, as a face's 478 would."""
    xs = np.array([left, right, left, right, (left + right) / 2]) / W
    ys = np.array([top, top, bottom, bottom, (top + bottom) / 2]) / H
    return np.stack([xs, ys, np.zeros_like(xs)], axis=1).astype(np.float32)


def test_the_crop_is_the_landmarks_square_with_its_margin() -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[100:220, 300:420] = 255  # the "face": exactly the landmarks' 120 px box
    crop = face_crop(rgb, box_landmarks(300, 100, 420, 220))
    assert crop.shape == (64, 64)
    assert crop.dtype == np.uint8
    # The box fills the middle 1 / (1 + 2 * margin) of the crop: 64 / 1.2 = 53.3 px.
    inner = round(64 / (1 + 2 * CROP_MARGIN))
    edge = (64 - inner) // 2
    assert crop[edge + 1 : 64 - edge - 1, edge + 1 : 64 - edge - 1].min() == 255
    assert crop[: edge - 1].max() == 0
    assert crop[64 - edge + 1 :].max() == 0
    assert crop[:, : edge - 1].max() == 0
    assert crop[:, 64 - edge + 1 :].max() == 0


def test_a_wide_face_is_made_square_about_its_centre() -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[150:190, 200:440] = 255  # 240 x 40: the square's side is the width
    crop = face_crop(rgb, box_landmarks(200, 150, 440, 190), margin=0.0)
    rows = np.flatnonzero(crop.max(axis=1) > 127)
    cols = np.flatnonzero(crop.max(axis=0) > 127)
    assert (cols[0], cols[-1]) == (0, 63), "the width fills the square"
    # 40 of 240 px -> ~10.7 of 64 rows, centred.
    assert 9 <= len(rows) <= 12
    assert abs((rows[0] + rows[-1]) / 2 - 31.5) <= 1


def test_the_grey_is_bt601_luma() -> None:
    rgb = np.empty((H, W, 3), dtype=np.uint8)
    rgb[:] = (200, 100, 50)
    crop = face_crop(rgb, box_landmarks(100, 100, 200, 200))
    expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert set(np.unique(crop)) == {expected}


def test_downscaling_averages_instead_of_picking_pixels() -> None:
    # A one-pixel checkerboard: picking pixels (nearest neighbour) gives 0s and 255s;
    # averaging gives mid-grey everywhere.
    rows, cols = np.indices((H, W))
    rgb = np.repeat((((rows + cols) % 2) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    crop = face_crop(rgb, box_landmarks(100, 50, 356, 306), margin=0.0)  # 256 px -> 64
    assert np.abs(crop.astype(int) - 128).max() <= 1


def test_a_face_at_the_frame_edge_repeats_the_edge_pixels() -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[:, 0] = 255  # the frame's left column is white
    crop = face_crop(rgb, box_landmarks(0, 100, 100, 200))
    # The square starts left of the frame: those columns copy column 0.
    assert crop[:, 0].min() == 255
    assert crop[:, 40:].max() == 0


def test_a_box_outside_the_frame_is_refused() -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="outside the frame"):
        face_crop(rgb, box_landmarks(W + 100, 10, W + 150, 60))
    with pytest.raises(ValueError, match="non-finite"):
        face_crop(rgb, np.full((478, 3), np.nan, dtype=np.float32))


def test_a_missing_model_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(expression_model.ExpressionModelError, match="livetag models fetch"):
        expression_model.resolve(Settings(cache_dir=tmp_path))


def test_a_different_model_file_is_refused(tmp_path: Path) -> None:
    path = expression_model.cached_path(Settings(cache_dir=tmp_path))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"TFL3 but not the one")
    with pytest.raises(expression_model.ExpressionModelError, match="corrupt"):
        expression_model.resolve(Settings(cache_dir=tmp_path))
