"""The model lane's pluggable raters: checking ratings, mapping classes to the session's
vocabulary and the valence/arousal plane, loading by setting (a fake rater behind a real
entry point), and the HTTP rater against a small local aiohttp server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from streams.features import expression_model, model_rater
from streams.features.model_rater import (
    FER_VALENCE_AROUSAL,
    BoundRater,
    FaceSample,
    FrameReading,
    HttpRater,
    ModelRaterError,
    RaterChoice,
    Rating,
    RatingError,
    Unread,
    check_probabilities,
    choose_rater,
    load_rater,
)
from streams.settings import Settings
from taggers.vocabulary import DEFAULT_VOCABULARY

DEFAULT_LABELS = [entry.label for entry in DEFAULT_VOCABULARY]
FER = expression_model.CLASSES


def sample() -> FaceSample:
    rgb = np.zeros((120, 160, 3), dtype=np.uint8)
    rgb[30:90, 50:110] = (200, 150, 100)
    landmarks = np.array([[50 / 160, 30 / 120, 0], [110 / 160, 90 / 120, 0]], dtype=np.float32)
    return FaceSample(
        session_id="s-1",
        performer_id="alice",
        ts_us=1_000_000,
        rgb=rgb,
        landmarks=landmarks,
        blendshapes={"mouthSmileLeft": 0.5},
    )


def one_hot(name: str) -> dict[str, float]:
    return {c: float(c == name) for c in FER}


class Scripted:
    """A rater that answers what the test says (FER2013's classes and tables)."""

    name = "scripted"
    classes: Sequence[str] = FER
    labels: Mapping[str, Sequence[str]] = model_rater.FER_LABELS
    valence_arousal: Mapping[str, tuple[float, float]] = FER_VALENCE_AROUSAL

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.closed = False

    def rate(self, face: FaceSample) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def close(self) -> None:
        self.closed = True


class SmileRater(Scripted):
    """What the fake entry point makes: always a smile."""

    name = "smile-meter"

    def __init__(self) -> None:
        super().__init__(one_hot("happy"))


def not_a_rater() -> object:
    return object()


# ---------------------------------------------------------------- checking ratings


def test_probabilities_within_the_tolerance_are_rescaled_to_one() -> None:
    checked = check_probabilities({"happy": 0.6, "neutral": 0.41}, FER)
    assert checked == pytest.approx({"happy": 0.6 / 1.01, "neutral": 0.41 / 1.01})


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({}, "no class probabilities"),
        ({"happy": 0.5}, "sum to 0.5000"),
        ({"joyful": 1.0}, "not one of the rater's"),
        ({"happy": float("nan"), "sad": 1.0}, "outside"),
        ({"happy": 1.2, "sad": -0.2}, "outside"),
        ({"happy": True}, "not a number"),
        (["happy"], "no class probabilities"),
    ],
)
def test_a_rating_that_is_no_distribution_is_refused(answer: Any, reason: str) -> None:
    with pytest.raises(RatingError, match=reason):
        check_probabilities(answer, FER)


# ---------------------------------------------------------------- the vocabulary and V/A maps


def test_fer_classes_map_to_the_default_vocabulary() -> None:
    bound = BoundRater(Scripted(), DEFAULT_LABELS, name="scripted")
    assert {c: bound.label_of(c) for c in FER} == {
        "angry": "anger",
        "disgust": "disgust",
        "fear": "fear",
        "happy": "amusement",  # a smile, not an audible laugh
        "sad": "sadness",
        "surprise": "surprise",
        "neutral": None,
    }


def test_the_first_candidate_the_vocabulary_has_wins_then_the_class_name() -> None:
    bound = BoundRater(Scripted(), ["joy", "happy", "neutral", "calm"], name="scripted")
    assert bound.label_of("happy") == "happy"  # listed before joy
    assert bound.label_of("neutral") == "neutral"
    assert bound.label_of("angry") is None
    assert bound.label_of("calm") == "calm", "a class without an entry maps by its name"


def test_a_reading_sums_the_classes_of_each_label_and_keeps_unmapped_ones() -> None:
    bound = BoundRater(Scripted(), DEFAULT_LABELS, name="scripted")
    reading = bound.reading({"happy": 0.5, "neutral": 0.3, "sad": 0.2})
    assert reading.class_probabilities == pytest.approx({"happy": 0.5, "neutral": 0.3, "sad": 0.2})
    assert reading.probabilities == pytest.approx({"amusement": 0.5, "sadness": 0.2})
    # The proxy: the probability-weighted mean of the classes' points.
    assert reading.valence == pytest.approx(0.5 * 0.8 + 0.2 * -0.6)
    assert reading.arousal == pytest.approx(0.5 * 0.4 + 0.2 * -0.4)


def test_two_classes_of_one_label_add_up() -> None:
    class TwoJoys(Scripted):
        classes: Sequence[str] = ("grin", "giggle", "other")
        labels: Mapping[str, Sequence[str]] = MappingProxyType(
            {"grin": ("amusement",), "giggle": ("amusement",)}
        )
        valence_arousal: Mapping[str, tuple[float, float]] = MappingProxyType({})

    reading = BoundRater(TwoJoys(), DEFAULT_LABELS, name="joys").reading(
        {"grin": 0.3, "giggle": 0.3, "other": 0.4}
    )
    assert reading.probabilities == pytest.approx({"amusement": 0.6})
    assert (reading.valence, reading.arousal) == (None, None), "no table, no proxy"


def test_the_models_own_valence_wins_and_a_partial_table_gives_no_proxy() -> None:
    bound = BoundRater(Scripted(), DEFAULT_LABELS, name="scripted")
    own = bound.reading(Rating(one_hot("happy"), valence=-0.25, arousal=0.5))
    assert (own.valence, own.arousal) == (-0.25, 0.5)

    class Partial(Scripted):
        classes: Sequence[str] = ("happy", "smirk")

    partial = BoundRater(Partial(), DEFAULT_LABELS, name="partial").reading(
        {"happy": 0.9, "smirk": 0.1}
    )
    assert (partial.valence, partial.arousal) == (None, None)


def test_a_failing_rater_fails_its_frame_with_the_reason_and_never_raises() -> None:
    bound = BoundRater(Scripted(RuntimeError("out of memory")), DEFAULT_LABELS, name="scripted")
    outcome = bound.read(sample())
    assert isinstance(outcome, Unread)
    assert (outcome.reason, outcome.model) == ("failed", "scripted")
    assert "out of memory" in outcome.detail
    bad = BoundRater(Scripted({"happy": 0.2}), DEFAULT_LABELS, name="scripted").read(sample())
    assert isinstance(bad, Unread)
    assert "sum to" in bad.detail
    assert bound.failures == 1


class Inventive(Scripted):
    """A rater that declares no classes (as an HTTP endpoint) and names a new one in each
    answer, as an endpoint that put a counter or a timestamp into its class names would."""

    classes: Sequence[str] = ()

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0

    def rate(self, face: FaceSample) -> Any:
        self.answers += 1
        return {"neutral": 0.5, f"mood-{self.answers}": 0.5}


def test_a_rater_without_classes_may_name_only_so_many_distinct_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bound = BoundRater(Inventive(), DEFAULT_LABELS, name="http-model")
    limit = model_rater.MAX_NAMED_CLASSES
    with caplog.at_level(logging.WARNING, logger=model_rater.__name__):
        outcomes = [bound.read(sample()) for _ in range(limit + 5)]
    # "neutral" and the first limit - 1 invented names are taken; every later answer fails.
    read = [o for o in outcomes if isinstance(o, FrameReading)]
    failed = [o for o in outcomes if isinstance(o, Unread)]
    assert len(read) == limit - 1
    assert len(failed) == 6
    assert all(o.reason == "failed" and o.model == "http-model" for o in failed)
    assert f"beyond the {limit} distinct" in failed[0].detail
    assert "'mood-32'" in failed[0].detail
    assert bound.failures == 6
    # One line says what happened and names the classes taken, however often it happens
    # (beside the failures' own line: the first, then every hundredth).
    beyond = [r for r in caplog.records if "named classes" in r.getMessage()]
    assert len(beyond) == 1
    assert beyond[0].levelno == logging.WARNING
    assert "'mood-1'" in beyond[0].getMessage()
    # A class already named is still read, and the readings never carry the refused names.
    assert all(len(r.class_probabilities) == 2 for r in read)
    assert isinstance(bound.reading({"neutral": 0.2, "mood-3": 0.8}), FrameReading)
    with pytest.raises(RatingError, match="beyond the"):
        bound.reading({"neutral": 0.2, "mood-99": 0.8})


def test_a_rater_with_its_own_classes_is_held_to_them_not_to_the_cap() -> None:
    many = tuple(f"c{n}" for n in range(model_rater.MAX_NAMED_CLASSES + 8))
    rater = Scripted()
    rater.classes = many
    rater.valence_arousal = {}
    bound = BoundRater(rater, DEFAULT_LABELS, name="scripted")
    for name in many:
        assert isinstance(bound.reading({name: 1.0}), FrameReading)


def test_a_rater_that_could_not_be_made_fails_every_frame_it_should_read() -> None:
    choice = RaterChoice("entry_point", "no-such-rater-anywhere")
    bound = BoundRater.load(choice, DEFAULT_LABELS)
    outcomes = [bound.read(sample()) for _ in range(3)]
    assert all(isinstance(o, Unread) and o.reason == "failed" for o in outcomes)
    assert all(o.model == "no-such-rater-anywhere" for o in outcomes)
    assert "could not be made" in outcomes[0].detail  # type: ignore[union-attr]


# ---------------------------------------------------------------- loading by setting


@pytest.fixture
def fake_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution on sys.path whose entry points name this module's fake raters."""
    info = tmp_path / "fake_raters-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-raters\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{model_rater.ENTRY_POINT_GROUP}]\n"
        "smiles = tests.unit.test_model_rater:SmileRater\n"
        "broken = tests.unit.test_model_rater:not_a_rater\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_none_switches_the_model_lane_off() -> None:
    assert choose_rater(Settings(model_rater="none")) is None


def test_the_built_in_rater_needs_its_model_file(tmp_path: Path) -> None:
    with pytest.raises(expression_model.ExpressionModelError, match="LIVETAG_MODEL_RATER=none"):
        choose_rater(Settings(cache_dir=tmp_path))


def test_an_unknown_rater_is_refused_with_the_known_ones(fake_entry_points: None) -> None:
    with pytest.raises(ModelRaterError, match=r"fer-mini-xception.*none.*broken.*smiles"):
        choose_rater(Settings(model_rater="frowns"))
    with pytest.raises(ModelRaterError, match="not an http"):
        choose_rater(Settings(model_rater="ftp://models.example/rate"))


def test_an_entry_point_rater_is_found_and_made(fake_entry_points: None) -> None:
    choice = choose_rater(Settings(model_rater="smiles"))
    assert choice == RaterChoice("entry_point", "smiles", None, 0.25)
    rater = load_rater(choice)
    assert isinstance(rater, SmileRater)
    bound = BoundRater.load(choice, DEFAULT_LABELS)
    reading = bound.read(sample())
    assert isinstance(reading, FrameReading)
    assert reading.model == "smile-meter", "the rater's own name"
    mapped = ["anger", "disgust", "fear", "amusement", "sadness", "surprise"]
    assert reading.probabilities == {label: float(label == "amusement") for label in mapped}


def test_a_renamed_rater_reads_under_its_new_name(fake_entry_points: None) -> None:
    choice = choose_rater(Settings(model_rater="smiles", model_rater_name="smiles-v2"))
    assert choice is not None
    reading = BoundRater.load(choice, DEFAULT_LABELS).read(sample())
    assert isinstance(reading, FrameReading)
    assert reading.model == "smiles-v2"


def test_an_entry_point_that_makes_no_rater_is_refused(fake_entry_points: None) -> None:
    choice = choose_rater(Settings(model_rater="broken"))
    assert choice is not None
    with pytest.raises(ModelRaterError, match="is no model rater"):
        load_rater(choice)
    outcome = BoundRater.load(choice, DEFAULT_LABELS).read(sample())
    assert isinstance(outcome, Unread)
    assert outcome.reason == "failed"


@pytest.mark.parametrize(
    ("attribute", "value", "reason"),
    [
        ("name", "Smile Meter", "not a rater name"),
        ("classes", "happy", "sequence of class names"),
        ("valence_arousal", {"happy": (2.0, 0.0)}, r"in \[-1, 1\]"),
    ],
)
def test_a_rater_with_bad_tables_is_refused(attribute: str, value: Any, reason: str) -> None:
    rater = Scripted()
    setattr(rater, attribute, value)
    with pytest.raises(ModelRaterError, match=reason):
        model_rater.check_rater(rater)


def test_a_crop_travels_as_a_png_of_itself() -> None:
    crop = sample().grey_crop()
    decoded = np.asarray(Image.open(io.BytesIO(model_rater.grey_png(crop))))
    assert decoded.dtype == np.uint8
    assert decoded.shape == (64, 64)
    assert np.array_equal(decoded, crop)


# ---------------------------------------------------------------- an HTTP endpoint


class Endpoint:
    """A model served over HTTP, scripted by the test: what it answers, how late."""

    def __init__(self) -> None:
        self.answer: Any = {"probabilities": {"happy": 0.7, "neutral": 0.3}}
        self.status = 200
        self.delay_s = 0.0
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def rate(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        await asyncio.sleep(self.delay_s)
        body = self.answer if isinstance(self.answer, str) else json.dumps(self.answer)
        return web.Response(status=self.status, text=body, content_type="application/json")


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, str]]:
    served = Endpoint()
    app = web.Application()
    app.router.add_post("/rate", served.rate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield served, f"http://127.0.0.1:{port}/rate"
    finally:
        await runner.cleanup()


async def read_over_http(bound: BoundRater) -> Any:
    # The rater blocks (it runs in a face worker): off this loop, which serves the endpoint.
    return await asyncio.to_thread(bound.read, sample())


async def test_an_http_rater_posts_the_crop_and_maps_the_answer(
    endpoint: tuple[Endpoint, str],
) -> None:
    served, url = endpoint
    choice = choose_rater(Settings(model_rater=url))
    assert choice == RaterChoice("http", url, None, 0.25)
    bound = BoundRater.load(choice, DEFAULT_LABELS)
    reading = await read_over_http(bound)
    assert isinstance(reading, FrameReading)
    assert reading.model == "http-model"
    assert reading.probabilities == pytest.approx({"amusement": 0.7})
    assert reading.valence == pytest.approx(0.7 * 0.8)
    headers, body = served.requests[0]
    assert headers["Content-Type"] == "image/png"
    assert (headers["X-Livetag-Performer"], headers["X-Livetag-Ts-Us"]) == ("alice", "1000000")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), sample().grey_crop())


async def test_an_http_raters_own_valence_and_arousal_are_kept(
    endpoint: tuple[Endpoint, str],
) -> None:
    served, url = endpoint
    served.answer = {"probabilities": {"calm": 1.0}, "valence": 0.3, "arousal": -0.5}
    bound = BoundRater(HttpRater(url, 1.0), ["calm"], name="http-model")
    reading = await read_over_http(bound)
    assert isinstance(reading, FrameReading)
    assert reading.probabilities == {"calm": 1.0}, "an unknown class maps by its name"
    assert (reading.valence, reading.arousal) == (0.3, -0.5)


@pytest.mark.parametrize(
    ("status", "answer", "reason"),
    [
        (500, {"error": "boom"}, "HTTP 500"),
        (200, "not json", "not JSON"),
        (200, {"happy": 1.0}, "unknown fields"),
        (200, {"probabilities": {"happy": 0.2}}, "sum to"),
        (200, {"probabilities": {"happy": 1.0}, "valence": 3}, "outside"),
    ],
)
async def test_a_bad_answer_fails_the_frame_with_its_reason(
    endpoint: tuple[Endpoint, str], status: int, answer: Any, reason: str
) -> None:
    served, url = endpoint
    served.status, served.answer = status, answer
    outcome = await read_over_http(BoundRater(HttpRater(url, 1.0), DEFAULT_LABELS, name="h"))
    assert isinstance(outcome, Unread)
    assert outcome.reason == "failed"
    assert reason in outcome.detail


async def test_a_slow_endpoint_times_out_and_then_is_paused(
    endpoint: tuple[Endpoint, str],
) -> None:
    served, url = endpoint
    served.delay_s = 2.0
    bound = BoundRater(HttpRater(url, 0.2), DEFAULT_LABELS, name="h")
    started = time.monotonic()
    outcomes = [await read_over_http(bound) for _ in range(model_rater.HTTP_FAILURES_BEFORE_PAUSE)]
    assert time.monotonic() - started < 0.2 * len(outcomes) + 1.5, "each waits its timeout only"
    assert all(isinstance(o, Unread) and o.reason == "failed" for o in outcomes)
    asked = len(served.requests)
    assert asked == model_rater.HTTP_FAILURES_BEFORE_PAUSE
    paused = await read_over_http(bound)
    assert isinstance(paused, Unread)
    assert "paused" in paused.detail
    assert len(served.requests) == asked, "a paused endpoint is not asked"


async def test_an_unreachable_endpoint_fails_the_frame() -> None:
    bound = BoundRater(HttpRater("http://127.0.0.1:9/rate", 0.5), DEFAULT_LABELS, name="h")
    outcome = await read_over_http(bound)
    assert isinstance(outcome, Unread)
    assert "unreachable" in outcome.detail
