"""The director's scenario editor on the dashboard, in real Chromium with the real broker:
a bad scenario's line is shown and selected, a good one is saved into the library (on the
broker) and listed, an id already taken is refused, one opened from the list is deleted;
an observer's dashboard has no editor."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams.kafka import clients
from streams.kafka.scenarios import ScenarioLibrary, publish_scenario
from streams.scenarios import parse_scenario
from streams.settings import Settings
from taggers import tokens
from taggers.tokens import load_secret
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_dashboard import (
    dashboard,  # noqa: F401  (the fixture)
    dashboard_url,
    director_token,
)
from tests.samples import SCENARIO

pytestmark = pytest.mark.e2e

SCREENSHOT = Path("test-artifacts") / "dashboard-scenarios.png"


def _toml(scenario_id: str, arc_label: str = "amusement", title: str = "On the stairs") -> str:
    return f"""scenario_id = "{scenario_id}"
title = "{title}"
prompt = \"\"\"
Two neighbours carry a sofa up a narrow staircase.\"\"\"
duration_s = 90

[[roles]]
name = "the one below"
brief = "You carry most of the weight."
targets = ["anger"]

[[roles]]
name = "the one above"
targets = ["laughter"]

[[arc]]
at_s = 0
label = "hesitation"

[[arc]]
at_s = 30
label = "{arc_label}"
"""


async def _editor(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(
        """() => { const s = window.livetagDashboard.scenarios;
          const text = document.querySelector(".scenario-text");
          return { ...JSON.parse(JSON.stringify(s)),
            statusText: document.querySelector(".scenario-status").textContent,
            selectedLine: text.value.slice(0, text.selectionStart).split("\\n").length,
            selected: text.value.slice(text.selectionStart, text.selectionEnd) }; }"""
    )
    return state


async def _status_changes(page: Page, action: str) -> dict[str, Any]:
    """Click an editor button and wait for its answer."""
    await page.evaluate("() => { window.livetagDashboard.scenarios.lastReply = null; }")
    await page.click(f".scenario-{action}")
    await page.wait_for_function(
        "() => window.livetagDashboard.scenarios.lastReply !== null", timeout=10_000
    )
    return await _editor(page)


async def test_the_director_checks_saves_and_deletes_scenarios(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,  # noqa: F811  (the fixture)
    open_page: LaunchPage,
) -> None:
    session, _links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    sid = session.session_id
    tag = uuid.uuid4().hex[:6]
    taken = f"taken-{tag}"
    producer = clients.make_producer(capture_settings)
    await producer.start()
    try:
        await publish_scenario(
            producer, SCENARIO.model_copy(update={"scenario_id": taken}), "file:taken.toml"
        )
    finally:
        await producer.stop()
    async with open_page(
        dashboard_url(dashboard, director_token(capture_settings, sid)), video=None, audio=None
    ) as director:
        await director.wait_for_function(
            "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
        )
        await director.wait_for_selector("#scenarios:not([hidden]) summary", timeout=10_000)
        # Opening the panel lists the library.
        await director.click("#scenarios summary")
        await director.wait_for_function(
            "(id) => window.livetagDashboard.scenarios.ids.includes(id)", arg=taken, timeout=10_000
        )

        # An emotion the session's vocabulary lacks: the line is told and selected.
        new_id = f"stairs-{tag}"
        bad = _toml(new_id, arc_label="jealousy")
        await director.click(".scenario-new")
        await director.fill(".scenario-text", bad)
        state = await _status_changes(director, "check")
        line = bad.splitlines().index('label = "jealousy"') + 1
        assert state["lastError"]["line"] == line
        assert state["lastError"]["reason"].startswith(
            "arc[1].label: 'jealousy' is not in the vocabulary (known: "
        )
        assert state["statusText"].startswith(f"line {line}: arc[1].label: 'jealousy'")
        assert (state["selectedLine"], state["selected"]) == (line, 'label = "jealousy"')
        # A file that does not parse: the parser's line.
        broken = bad.replace("[[arc]]\nat_s = 30", "[[arc]\nat_s = 30")
        await director.fill(".scenario-text", broken)
        state = await _status_changes(director, "check")
        assert state["lastError"]["line"] == broken.splitlines().index("[[arc]") + 1
        assert "not TOML" in state["lastError"]["reason"]
        # Saving it is refused the same way: nothing reaches the library.
        state = await _status_changes(director, "save")
        assert state["lastReply"]["ok"] is False
        assert new_id not in state["ids"]

        # A good one: checked, saved, listed.
        good = _toml(new_id)
        await director.fill(".scenario-text", good)
        state = await _status_changes(director, "check")
        assert state["lastError"] is None
        assert state["statusText"] == f"fine: {new_id}, 2 parts, 2 arc steps"
        state = await _status_changes(director, "save")
        assert state["lastReply"]["ok"] is True
        assert new_id in state["ids"]
        assert state["editing"] == new_id
        assert await director.locator(f'.scenario-item[data-scenario-id="{new_id}"]').count() == 1

        # A new scenario under an id the library has is refused, not written over it.
        await director.click(".scenario-new")
        await director.fill(".scenario-text", _toml(taken))
        state = await _status_changes(director, "save")
        assert state["lastReply"]["code"] == "exists"
        assert f"already has a scenario '{taken}'" in state["statusText"]

        # On the broker: what the director saved, saved by the director; the other unchanged.
        library = ScenarioLibrary(capture_settings)
        await library.start()
        try:
            saved = library.record(new_id)
            assert saved is not None
            assert saved.saved_by == "director"
            assert saved.scenario == parse_scenario(good)
            assert library.get(taken) == SCENARIO.model_copy(update={"scenario_id": taken})
        finally:
            await library.stop()

        # Opened from the list, then deleted.
        await director.click(f'.scenario-item[data-scenario-id="{new_id}"] button')
        await director.wait_for_function(
            "(id) => window.livetagDashboard.scenarios.editing === id", arg=new_id
        )
        assert parse_scenario(await director.input_value(".scenario-text")) == parse_scenario(good)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        await director.locator("#scenarios").screenshot(path=str(SCREENSHOT))
        director.once("dialog", lambda dialog: dialog.accept())
        state = await _status_changes(director, "delete")
        assert state["statusText"] == f"deleted {new_id}"
        assert new_id not in state["ids"]
        assert taken in state["ids"]

    library = ScenarioLibrary(capture_settings)
    await library.start()
    try:
        gone = library.record(new_id)
        assert gone is not None
        assert gone.deleted
        assert library.get(new_id) is None
    finally:
        await library.stop()
    refused = dict(dashboard.refusals)
    assert refused.get("scenario_exists") == 1
    assert refused.get("bad_scenario") == 1


async def test_an_observers_dashboard_has_no_editor(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,  # noqa: F811  (the fixture)
    open_page: LaunchPage,
) -> None:
    session, _links = await new_session(capture_settings, capture_server, ["alice"])
    token = tokens.issue(
        load_secret(capture_settings),
        session_id=session.session_id,
        role="observer",
        participant_id="maria",
        ttl_s=600,
    )
    async with open_page(dashboard_url(dashboard, token), video=None, audio=None) as observer:
        await observer.wait_for_function(
            "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
        )
        assert await observer.locator("#scenarios").is_hidden()
        # Asked over its websocket anyway, the server refuses it.
        reply = await observer.evaluate(
            "window.livetagDashboard.scenarios.request({type: 'scenario_list'})"
        )
    assert reply["code"] == "forbidden", reply
    assert reply["request_id"].startswith("scenario-")
