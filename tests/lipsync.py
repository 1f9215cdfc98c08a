"""Finding the lip-sync events (flash frames, beep onsets) in forked media records."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image

from streams import records


def flash_onsets(frames: Iterable[records.VideoFrame]) -> list[int]:
    """Capture instants of frames that turn bright ."""
    onsets, previous = [], False
    for frame in frames:
        image = Image.open(io.BytesIO(frame.jpeg))
        # JPEG DCT scaling: decode at 1/8 size in grey, enough for a mean luma and ~20x
        # cheaper than a full decode of thousands of frames.
        image.draft("L", (image.width // 8, image.height // 8))
        bright = float(np.asarray(image.convert("L"), dtype=np.float32).mean()) > 150
        if bright and not previous:
            onsets.append(frame.header.ts_us)
        previous = bright
    return onsets


def beep_onsets(chunks: Iterable[records.AudioChunk]) -> list[int]:
    """Capture instants of beep starts: a loud sample after >= 100 ms of quiet."""
    onsets: list[int] = []
    last_loud_us: int | None = None
    for chunk in chunks:
        samples = np.frombuffer(chunk.pcm, dtype="<i2").astype(np.float32)
        loud = np.flatnonzero(np.abs(samples) > 4000)
        if not loud.size:
            continue
        rate = chunk.header.sample_rate
        first_us = chunk.header.ts_us + int(loud[0]) * 1_000_000 // rate
        if last_loud_us is None or first_us - last_loud_us > 100_000:
            onsets.append(first_us)
        last_loud_us = chunk.header.ts_us + int(loud[-1]) * 1_000_000 // rate
    return onsets
