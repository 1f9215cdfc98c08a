"""The model lane's documented examples (docs/model-lane.md) run as written: the entry-point
rater is a rater, and the HTTP endpoint answers what an HTTP rater reads."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from streams.features import model_rater
from streams.features.model_rater import BoundRater, FaceSample, FrameReading, HttpRater
from taggers.vocabulary import DEFAULT_VOCABULARY
from tests.documentation import marked_block

DEFAULT_LABELS = [entry.label for entry in DEFAULT_VOCABULARY]


def face(blendshapes: dict[str, float], grey: int = 128) -> FaceSample:
    rgb = np.full((90, 120, 3), grey, dtype=np.uint8)
    return FaceSample(
        session_id="s-1",
        performer_id="alice",
        ts_us=0,
        rgb=rgb,
        landmarks=np.array([[0.3, 0.3, 0], [0.7, 0.7, 0]], dtype=np.float32),
        blendshapes=blendshapes,
    )


def run_block(marker: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "documented_example"}
    exec(compile(marked_block(marker), f"docs/model-lane.md:{marker}", "exec"), namespace)
    return namespace


def test_the_documented_entry_point_rater_is_a_rater() -> None:
    rater = run_block("model-rater-plugin")["SmileMeter"]()
    model_rater.check_rater(rater)
    bound = BoundRater(rater, DEFAULT_LABELS, name=rater.name)
    reading = bound.read(face({"mouthSmileLeft": 0.9, "mouthSmileRight": 0.7}))
    assert isinstance(reading, FrameReading)
    assert reading.model == "smile-meter"
    assert reading.probabilities == pytest.approx({"amusement": 0.8})
    assert reading.valence == pytest.approx(0.8 * 0.7)


async def test_the_documented_http_endpoint_answers_an_http_rater() -> None:
    app = run_block("model-rater-http")["app"]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/rate"
        bound = BoundRater(HttpRater(url, 2.0), DEFAULT_LABELS, name="http-model")
        reading = await asyncio.to_thread(bound.read, face({}, grey=204))
    finally:
        await runner.cleanup()
    assert isinstance(reading, FrameReading), reading
    assert reading.probabilities == pytest.approx({"amusement": 0.8}, abs=0.01)
