"""A short scene end to end, as users run it: ``livetag up``, two performers in Chromium
watching each other, a director's dashboard, tags from every page (tests/bench/scene.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import media as test_media
from tests.bench.scene import SceneOptions, run_scene

pytestmark = pytest.mark.e2e


async def test_a_short_scene_keeps_its_connections_media_and_tags(
    media: test_media.MediaSet, tmp_path: Path
) -> None:
    options = SceneOptions(performers=2, directors=1, seconds=30.0, timeout_s=240.0)
    result = await run_scene(options, media, tmp_path / "scene")
    print(json.dumps(result))
    summary = {key: value for key, value in result.items() if key != "details"}
    assert result["connection_drops"] == 0, result["details"]["drops"]
    # Every performer watches every other one, and the director both, and the call is forked
    # to Kafka without long holes in the audio. The rates themselves are the scene
    # benchmark's figures (goal 14 fps); on this machine three browsers and livetag share two
    # cores and the rates swing between runs (8-13 fps with livetag's priority, CI's runs
    # included: a bar at 10 failed once at 9.95). The test's bars are what a call that holds
    # must give whoever has priority: video that moves for every watcher (a stalled or
    # collapsed forwarding path shows as 0-3 fps) and audio with at most short holes.
    assert result["watcher_video_fps_min"] >= 5, summary
    assert result["fork_video_fps_min"] >= 5, summary
    audio_gap_s = 0.5 if result["details"]["prioritised"] else 2.0
    assert result["audio_gap_s_total"] <= audio_gap_s, summary
    # No tag a user pressed is lost: every one is acknowledged (durably on livetag.tags).
    tags = result["details"]["tags"]
    assert result["tags_pressed"] > 0
    assert tags["acked"] == tags["pressed"], tags
    # And every one is in the labels, in the window of its instant (a tap the busy
    # page saw as a hold is looked for by its onset).
    assert result["tags_in_labels"] == result["tags_pressed"], tags
    # Every window with media in it, from each performer's first to last captured instant,
    # is on livetag.labels: the aligner waits for a feature stream that still delivers,
    # however late, gives up on one only after label_feature_wait_ms (10 s) of silence,
    # and a window whose frames were all skipped still goes out. (A window inside a hole
    # in the media has nothing to label; issue "nothing silently lost" is to mark those.)
    windows = result["details"]["label_windows"]
    assert sum(windows["missing_with_media"].values()) == 0, windows
