"""The director's scenario editor: the library on ``livetag.scenarios``, listed, checked,
saved and deleted from the dashboard.

Messages from a director's page (``request_id``, a number or a short string, is echoed in
each answer):

- ``{"type": "scenario_list"}`` -> ``{"type": "scenarios", "scenarios": [...]}``: each
  scenario's id, title, parts, duration, targets, who saved it and when.
- ``{"type": "scenario_get", "scenario_id": ID}`` -> ``{"type": "scenario", "scenario_id":
  ID, "text": TOML}``: the scenario as the editor shows it.
- ``{"type": "scenario_check", "text": TOML}`` -> ``{"type": "scenario_checked", "ok":
  true, "scenario": {...}}`` or ``"ok": false`` with ``"error": {"line": N | null,
  "reason": ..., "message": "LINE: reason"}``. The scenario's emotions must be in this
  session's vocabulary.
- ``{"type": "scenario_save", "text": TOML, "editing": ID | null}`` -> ``{"type":
  "scenario_saved", "ok": true, "scenario_id": ID, "scenarios": [...]}``, or ``"ok":
  false`` and the error as for a check. ``editing`` is the id the editor opened: saving
  under another id that the library already has is refused (``"code": "exists"``), so
  a new scenario never replaces one by accident.
- ``{"type": "scenario_delete", "scenario_id": ID}`` -> ``{"type": "scenario_deleted",
  "scenario_id": ID, "scenarios": [...]}``.

These messages carry a whole scenario: they may be up to MAX_SCENARIO_MESSAGE_BYTES, the
dashboard's other messages no more than its usual cap.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from dashboard.server import ActionError, DashboardClient, DashboardServer, echoed_request_id
from streams import records
from streams.kafka.scenarios import ScenarioLibrary, delete_scenario, publish_scenario
from streams.scenarios import MAX_SCENARIO_BYTES, ScenarioError, parse_scenario, scenario_to_toml
from taggers.vocabulary import DEFAULT_VOCABULARY

#: The largest scenario message a page may send: a scenario's text (as JSON, its quotes
#: and line ends escaped) and a few fields. Scenarios longer than this are loaded from
#: files (livetag scenarios load).
MAX_SCENARIO_MESSAGE_BYTES: Final = 32 * 1024
#: How long a save or a delete may wait for the broker before the director hears it failed.
PUBLISH_TIMEOUT_S = 5.0
#: Where the editor's text comes from, in its errors.
EDITOR_SOURCE = "editor"


class ScenarioDesk:
    """The scenario actions of a dashboard server and the library they work on (started
    and stopped with the server)."""

    def __init__(self, server: DashboardServer) -> None:
        self.server = server
        self.library = ScenarioLibrary(
            server.settings, dead_letters=server.producer, service="livetag-dashboard"
        )
        #: Scenarios saved and deleted from this server since start.
        self.saved = 0
        self.deleted = 0

    async def start(self) -> None:
        await self.library.start()

    async def stop(self) -> None:
        await self.library.stop()

    # ---------------------------------------------------------------- actions

    async def list_scenarios(
        self, client: DashboardClient, message: dict[str, Any]
    ) -> dict[str, Any]:
        return self._reply(message, {"type": "scenarios", "scenarios": self.listing()})

    async def get_scenario(
        self, client: DashboardClient, message: dict[str, Any]
    ) -> dict[str, Any]:
        scenario = self._known(message)
        return self._reply(
            message,
            {
                "type": "scenario",
                "scenario_id": scenario.scenario_id,
                "text": scenario_to_toml(scenario),
            },
        )

    async def check(self, client: DashboardClient, message: dict[str, Any]) -> dict[str, Any]:
        try:
            scenario = self._parse(client, message)
        except ScenarioError as exc:
            return self._reply(message, {"type": "scenario_checked", **_failure(exc)})
        return self._reply(
            message,
            {"type": "scenario_checked", "ok": True, "scenario": scenario.model_dump()},
        )

    async def save(self, client: DashboardClient, message: dict[str, Any]) -> dict[str, Any]:
        editing = message.get("editing")
        if editing is not None and not isinstance(editing, str):
            raise ActionError("malformed", "editing is the id of the scenario opened, or null")
        try:
            scenario = self._parse(client, message)
        except ScenarioError as exc:
            self.server.refusals["bad_scenario"] += 1
            return self._reply(message, {"type": "scenario_saved", **_failure(exc)})
        if scenario.scenario_id != editing and self.library.get(scenario.scenario_id):
            self.server.refusals["scenario_exists"] += 1
            reason = (
                f"scenario_id: the library already has a scenario {scenario.scenario_id!r}: "
                "open it to change it, or give this one another scenario_id"
            )
            return self._reply(
                message,
                {
                    "type": "scenario_saved",
                    "ok": False,
                    "code": "exists",
                    "error": {"line": None, "reason": reason, "message": reason},
                },
            )
        record = await self._publish(
            publish_scenario(self.server.producer, scenario, client.claims.participant_id)
        )
        self.library.add(record)
        self.saved += 1
        return self._reply(
            message,
            {
                "type": "scenario_saved",
                "ok": True,
                "scenario_id": scenario.scenario_id,
                "ts_us": record.ts_us,
                "scenarios": self.listing(),
            },
        )

    async def delete(self, client: DashboardClient, message: dict[str, Any]) -> dict[str, Any]:
        scenario = self._known(message)
        record = await self._publish(
            delete_scenario(self.server.producer, scenario, client.claims.participant_id)
        )
        self.library.add(record)
        self.deleted += 1
        return self._reply(
            message,
            {
                "type": "scenario_deleted",
                "scenario_id": scenario.scenario_id,
                "scenarios": self.listing(),
            },
        )

    # ---------------------------------------------------------------- helpers

    def listing(self) -> list[dict[str, Any]]:
        """The library as the editor lists it, by id."""
        return [
            {
                "scenario_id": record.scenario.scenario_id,
                "title": record.scenario.title,
                "parts": [role.name for role in record.scenario.roles],
                "duration_s": record.scenario.duration_s,
                "targets": sorted(record.scenario.labels()),
                "saved_by": record.saved_by,
                "ts_us": record.ts_us,
            }
            for record in self.library.current_records()
        ]

    def _known(self, message: dict[str, Any]) -> records.Scenario:
        scenario_id = message.get("scenario_id")
        if not isinstance(scenario_id, str) or not scenario_id:
            raise ActionError("malformed", "name the scenario: scenario_id")
        scenario = self.library.get(scenario_id)
        if scenario is None:
            self.server.refusals["unknown_scenario"] += 1
            raise ActionError("unknown_scenario", f"no scenario {scenario_id!r} in the library")
        return scenario

    def _parse(self, client: DashboardClient, message: dict[str, Any]) -> records.Scenario:
        text = message.get("text")
        if not isinstance(text, str):
            raise ActionError("malformed", "send the scenario's TOML as text")
        session = self.server.session(client.feed.session_id)
        vocabulary = session.vocabulary if session is not None else DEFAULT_VOCABULARY
        return parse_scenario(
            text,
            fmt="toml",
            path=EDITOR_SOURCE,
            vocabulary_labels=[entry.label for entry in vocabulary],
        )

    async def _publish(self, sending: Any) -> records.ScenarioRecord:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                record: records.ScenarioRecord = await sending
        except Exception as exc:
            raise ActionError("unavailable", f"the library was not changed: {exc!r}") from None
        return record

    @staticmethod
    def _reply(message: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        request_id = echoed_request_id(message)
        if request_id is not None:
            reply["request_id"] = request_id
        return reply


def _failure(exc: ScenarioError) -> dict[str, Any]:
    line = "" if exc.line is None else f"line {exc.line}: "
    return {
        "ok": False,
        "code": "bad_scenario",
        "error": {"line": exc.line, "reason": exc.reason, "message": f"{line}{exc.reason}"},
    }


def register(server: DashboardServer) -> ScenarioDesk:
    """Give ``server`` the scenario actions, and room for their larger messages."""
    desk = ScenarioDesk(server)
    actions = {
        "scenario_list": desk.list_scenarios,
        "scenario_get": desk.get_scenario,
        "scenario_check": desk.check,
        "scenario_save": desk.save,
        "scenario_delete": desk.delete,
    }
    for name, handler in actions.items():
        server.director_actions[name] = handler
    for name in ("scenario_check", "scenario_save"):
        server.message_limits[name] = MAX_SCENARIO_MESSAGE_BYTES
    assert MAX_SCENARIO_MESSAGE_BYTES <= MAX_SCENARIO_BYTES  # what the editor sends, it reads
    return desk
