"""What `livetag up` and `livetag worker` say of the model lane before any processor runs:
a warning when it cannot run, never a refusal (infra.up.model_lane_line,
infra.worker.ModelLaneCheck)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infra import worker
from infra.up import model_lane_line
from streams import records
from streams.features import expression_model
from streams.kafka import topics
from streams.settings import Settings

T0 = 1_764_115_200_000_000


def session(session_id: str, *, model_topic: bool = True) -> records.SessionRecord:
    names = topics.session_topic_names(session_id)
    if not model_topic:
        names = names.model_copy(update={"model": None})
    return records.SessionRecord(
        ts_us=T0,
        session_id=session_id,
        created_ts_us=T0,
        prompt="",
        roster=[records.Performer(performer_id="alice", display_name="Alice")],
        vocabulary=[],
        state="live",
        topics=names,
    )


def test_up_says_what_the_model_lane_runs_or_why_it_is_off(tmp_path: Path) -> None:
    missing = model_lane_line(Settings(cache_dir=tmp_path))
    assert missing.startswith("OFF (the processors run without it)")
    assert "livetag models fetch" in missing
    assert str(expression_model.cached_path(Settings(cache_dir=tmp_path))) in missing
    assert model_lane_line(Settings(model_rater="none")) == "off (model_rater is none)"
    url = "http://127.0.0.1:8500/rate"
    assert model_lane_line(Settings(model_rater=url)) == f"http-model (endpoint {url})"
    assert "is no model rater" in model_lane_line(Settings(model_rater="frowns"))


def test_the_worker_warns_once_per_session_of_a_model_lane_that_cannot_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lane = worker.ModelLaneCheck(Settings(cache_dir=tmp_path))
    with caplog.at_level(logging.WARNING, logger=worker.__name__):
        for _ in range(3):  # a processor restarted: said once
            lane.check(session("s-1"))
        lane.check(session("s-2"))
        # A session from before the model lane has none to warn of.
        lane.check(session("s-3", model_topic=False))
    said = [r for r in caplog.records if r.name == worker.__name__]
    assert [r.levelno for r in said] == [logging.WARNING, logging.WARNING]
    assert ["s-1" in said[0].getMessage(), "s-2" in said[1].getMessage()] == [True, True]
    assert all("livetag models fetch" in r.getMessage() for r in said)


def test_the_worker_says_nothing_of_a_model_lane_that_can_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for setting in ("none", "http://127.0.0.1:8500/rate"):
        with caplog.at_level(logging.WARNING, logger=worker.__name__):
            worker.ModelLaneCheck(Settings(model_rater=setting)).check(session("s-1"))
    assert [r for r in caplog.records if r.name == worker.__name__] == []
