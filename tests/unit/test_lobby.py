"""The lobby's input checks, its rule for what is worth publishing, and the face finder's
close (capture.lobby)."""

from __future__ import annotations

import threading

import pytest

from capture import signaling
from capture.lobby import (
    LEVEL_EVERY_S,
    FaceFinder,
    SnapshotError,
    _material,
    jpeg_size,
    parse_check,
)
from streams import records
from streams.settings import Settings
from tests.samples import jpeg_frame


def test_a_jpeg_s_size_is_read_from_its_header() -> None:
    assert jpeg_size(jpeg_frame(320, 180)) == (320, 180)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GIF89a....", "must be a JPEG"),
        (b"\xff\xd8\x00\x00\x00\x00", "markers are broken"),
        (b"\xff\xd8\xff\xe0\x00\x10" + b"\x00" * 14, "no frame header"),
        (b"\xff\xd8\xff\xe0\x00\x01", "markers are broken"),
    ],
)
def test_what_is_no_jpeg_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(SnapshotError, match=reason):
        jpeg_size(data)


def test_a_check_message_is_parsed_or_refused() -> None:
    raw = '{"type": "check", "camera": true, "microphone": false, "audio_level_db": -40}'
    assert parse_check(raw) == {"camera": True, "microphone": False, "level": -40.0}
    assert parse_check('{"type":"check","camera":false,"microphone":true}')["level"] is None
    for bad in (
        "{",
        '{"type": "hello"}',
        '{"type": "check", "camera": 1, "microphone": true}',
        '{"type": "check", "camera": true, "microphone": true, "audio_level_db": 40}',
        '{"type": "check", "camera": true, "microphone": true, "audio_level_db": true}',
        '{"type": "check", "camera": true, "microphone": true, "audio_level_db": "loud"}',
    ):
        with pytest.raises(signaling.SignalingError) as refused:
            parse_check(bad)
        assert refused.value.code == "malformed"


def _presence(
    *, waiting: bool = True, level: float | None = -30.0, face: bool = True, since: int = 5
) -> records.LobbyPresence:
    return records.LobbyPresence(
        ts_us=10,
        day_id="day-1",
        performer_id="ana",
        waiting=waiting,
        since_ts_us=since,
        check=records.DeviceCheck(
            camera=True, microphone=True, face_found=face, audio_level_db=level, checked_ts_us=9
        ),
    )


def test_only_material_changes_are_published() -> None:
    old = _presence()
    assert _material(None, old, age_s=0)
    assert not _material(old, _presence(), age_s=0)
    assert _material(old, _presence(waiting=False), age_s=0)
    assert _material(old, _presence(since=6), age_s=0)
    assert _material(old, _presence(face=False), age_s=0)  # at once, however recent
    # The level: a small move never, a large one once the last record is old enough.
    assert not _material(old, _presence(level=-33.0), age_s=60)
    assert not _material(old, _presence(level=-10.0), age_s=LEVEL_EVERY_S / 2)
    assert _material(old, _presence(level=-10.0), age_s=LEVEL_EVERY_S)
    assert _material(old, _presence(level=None), age_s=0)


def test_closing_the_face_finder_closes_its_model_in_the_finder_s_thread() -> None:
    closed_in: list[str] = []

    class Landmarker:
        def close(self) -> None:
            closed_in.append(threading.current_thread().name)

    finder = FaceFinder(Settings())
    finder._landmarker = Landmarker()
    finder.close()
    finder._pool.shutdown(wait=True)  # the close queued before the shutdown still runs
    assert len(closed_in) == 1
    assert closed_in[0].startswith("lobby-face")
    finder.close()  # twice: nothing more, nothing raised
    assert len(closed_in) == 1
