"""The casting day's lobby on the capture server: performers wait here between scenes.

HTTP routes (added to the capture server's table)
  GET  /lobby                  the lobby page (a performer's day link: /lobby?token=T)
  GET  /ws/lobby               the lobby websocket (a day credential, scope "day")
  POST /api/lobby-credential   a day link exchanged for a day credential
  POST /api/lobby-token        why a day link or credential would be refused
  GET  /metrics/lobby          the lobby's counters (loopback or metrics_token)

A performer opens their day link; the page exchanges it for a credential (taggers/static/
credentials.js, the link kept in the tab's sessionStorage so a scene's call page can send
them back here), shows a camera preview, a microphone level meter and whether their face
is found. The page reports camera and microphone availability and the level (``check``
messages), and sends a small JPEG snapshot every ``lobby_face_check_interval_ms`` as a
binary message; the server looks for a face in it off the event loop (:class:`FaceFinder`,
one thread; at most one check pending per performer, the rest dropped and counted) and
answers ``{"type": "face", "face_found": ...}``.

Who waits is published on ``livetag.lobby`` (:class:`records.LobbyPresence`): on joining and
leaving, on being called into a scene, and when the check changes materially (a device or
the face found or lost; the level by LEVEL_STEP_DB, at most every LEVEL_EVERY_S), not every
second. When the director starts a scene naming a waiting performer (a new SceneRef on
``livetag.casting``), the lobby mints a session link for them and tells their page
``{"type": "scene", "session_id": ..., "url": "/join?token=..."}``; the page goes there.

A restart loses nothing: the days come back from ``livetag.casting``, and who was waiting
(and since when) from ``livetag.lobby``: a performer whose page reconnects within
STALE_AFTER_S keeps their place in the queue; one whose page does not come back is
published as gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from aiokafka import AIOKafkaProducer

from capture import signaling
from streams import records, strict_json
from streams.errors import BadInputError
from streams.kafka import casting
from streams.kafka.sessions import SessionDirectory, is_over
from streams.runtime import background
from streams.runtime.connection_gate import (
    ConnectionGate,
    failure_code,
    send_json,
    watch_websocket,
    websocket_response,
)
from streams.runtime.metrics_access import MetricsGuard
from streams.session_clock import now_us
from streams.settings import Settings
from taggers import credentials, tokens

log = logging.getLogger(__name__)

PAGES = Path(str(resources.files("capture") / "static"))
PAGE_KIND = "lobby"

#: A snapshot is a small JPEG (the page sends 320x180): anything larger is not one.
MAX_SNAPSHOT_BYTES = 256 * 1024
#: Larger pictures are refused before decoding: a small file can claim a huge image.
MAX_SNAPSHOT_PIXELS = 1920 * 1080
_MAX_MESSAGE_BYTES = 4096  # a check message is a few fields
#: The level is republished when it moved this much, at most every LEVEL_EVERY_S.
LEVEL_STEP_DB = 6.0
LEVEL_EVERY_S = 5.0
#: A performer waiting before a restart whose page is not back this long after it is gone.
STALE_AFTER_S = 15.0
#: How long a lobby page may take to come back (a reload) before it counts as gone.
LEAVE_GRACE_S = 2.0


class SnapshotError(BadInputError, ValueError):
    """A snapshot that is not a usable JPEG; says why."""


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header, without decoding it; SnapshotError when
    the bytes are no baseline or progressive JPEG."""
    if jpeg[:2] != b"\xff\xd8":
        raise SnapshotError("a snapshot must be a JPEG image")
    at = 2
    while at + 4 <= len(jpeg):
        if jpeg[at] != 0xFF:
            raise SnapshotError("the JPEG's markers are broken")
        marker = jpeg[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2  # markers without a length
            continue
        length = int.from_bytes(jpeg[at + 2 : at + 4], "big")
        # Start of frame (any but DHT C4, JPG C8, DAC CC): precision, height, width.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if at + 9 > len(jpeg):
                break
            height = int.from_bytes(jpeg[at + 5 : at + 7], "big")
            width = int.from_bytes(jpeg[at + 7 : at + 9], "big")
            return width, height
        if length < 2:
            raise SnapshotError("the JPEG's markers are broken")
        at += 2 + length
    raise SnapshotError("the JPEG has no frame header")


class FaceFinder:
    """Whether a snapshot shows a face: mediapipe's face landmarker (livetag's face
    model, the face analysis' thresholds) in IMAGE mode, which needs no frame order, so
    one landmarker serves every performer, in one thread of its own. Made at the first
    check: a capture server without a casting day never loads mediapipe."""

    def __init__(self, settings: Settings, thread_setup: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="lobby-face", initializer=thread_setup
        )
        self._landmarker: Any = None
        self._decoder: Any = None

    async def has_face(self, jpeg: bytes) -> bool:
        width, height = jpeg_size(jpeg)
        if width * height > MAX_SNAPSHOT_PIXELS or width == 0 or height == 0:
            raise SnapshotError(f"a {width}x{height} snapshot: send at most 1920x1080")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._find, jpeg)

    def _find(self, jpeg: bytes) -> bool:
        # In the finder's thread only: the landmarker and the decoder are not shared.
        import mediapipe as mp

        from streams.features.face_errors import FaceAnalysisError

        if self._landmarker is None:
            self._landmarker, self._decoder = self._make()
        try:
            rgb = self._decoder.decode(jpeg)
        except FaceAnalysisError as exc:
            raise SnapshotError(str(exc)) from None
        result = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
        return bool(result.face_landmarks)

    def _make(self) -> tuple[Any, Any]:
        from mediapipe.tasks.python import BaseOptions, vision

        from streams.features import face, face_model

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(face_model.resolve(self._settings))),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=1,
            min_face_detection_confidence=face.DETECTION_CONFIDENCE,
            min_face_presence_confidence=face.PRESENCE_CONFIDENCE,
        )
        return vision.FaceLandmarker.create_from_options(options), face.JpegDecoder()

    def close(self) -> None:
        """Close the model in its own thread, after the checks already queued (at most one
        per performer), then let the thread go: the pool refuses work once shut down."""
        with contextlib.suppress(RuntimeError):  # closed before
            self._pool.submit(self._close_model)
        self._pool.shutdown(wait=False)

    def _close_model(self) -> None:
        landmarker, self._landmarker = self._landmarker, None
        if landmarker is not None:
            landmarker.close()


@dataclass
class Performer:
    """One performer of a day as this lobby sees them."""

    day_id: str
    performer_id: str
    pages: set[LobbyPage]
    since_us: int | None = None  # waiting since (None: not waiting)
    camera: bool = False
    microphone: bool = False
    face_found: bool = False
    level_db: float | None = None
    checked_us: int | None = None
    face_pending: bool = False
    left_at: float | None = None  # loop time their last page closed

    @property
    def key(self) -> str:
        return f"{self.day_id}/{self.performer_id}"

    def check(self) -> records.DeviceCheck | None:
        if self.checked_us is None:
            return None
        return records.DeviceCheck(
            camera=self.camera,
            microphone=self.microphone,
            face_found=self.face_found,
            audio_level_db=None if self.level_db is None else round(self.level_db, 1),
            checked_ts_us=self.checked_us,
        )


def _material(
    old: records.LobbyPresence | None, new: records.LobbyPresence, *, age_s: float
) -> bool:
    """Whether ``new`` says something ``old`` (published ``age_s`` ago) did not."""
    if old is None or old.waiting != new.waiting or old.since_ts_us != new.since_ts_us:
        return True
    if (old.check is None) != (new.check is None):
        return True
    if old.check is None or new.check is None:
        return False
    before, after = old.check, new.check
    if (before.camera, before.microphone, before.face_found) != (
        after.camera,
        after.microphone,
        after.face_found,
    ):
        return True
    if (before.audio_level_db is None) != (after.audio_level_db is None):
        return True
    if before.audio_level_db is None or after.audio_level_db is None:
        return False
    moved = abs(after.audio_level_db - before.audio_level_db) >= LEVEL_STEP_DB
    return moved and age_s >= LEVEL_EVERY_S


def parse_check(raw: str | bytes) -> dict[str, Any]:
    """A lobby page's ``check`` message: camera, microphone (booleans) and audio_level_db
    (dBFS, -200..20, or null); :class:`signaling.SignalingError` ``malformed`` otherwise."""
    try:
        message = strict_json.loads_object(raw, max_bytes=_MAX_MESSAGE_BYTES)
    except strict_json.JsonInputError as exc:
        raise signaling.SignalingError("malformed", exc.reason) from None
    if message.get("type") != "check":
        raise signaling.SignalingError(
            "malformed", 'expected {"type": "check", ...} (snapshots go as binary JPEG)'
        )
    for name in ("camera", "microphone"):
        if not isinstance(message.get(name), bool):
            raise signaling.SignalingError("malformed", f"{name} must be true or false")
    level = message.get("audio_level_db")
    if level is not None:
        if (
            isinstance(level, bool)
            or not isinstance(level, int | float)
            or not math.isfinite(level)
            or not -200 <= level <= 20
        ):
            raise signaling.SignalingError(
                "malformed", "audio_level_db must be a number of dBFS (-200 to 20) or null"
            )
        level = float(level)
    return {"camera": message["camera"], "microphone": message["microphone"], "level": level}


class LobbyService:
    """The lobby of every open casting day, in the capture server."""

    def __init__(
        self,
        settings: Settings,
        *,
        access: credentials.Access,
        producer: AIOKafkaProducer,
        sessions: SessionDirectory,
        session_record: Callable[[str], Awaitable[records.SessionRecord | None]],
        gate: ConnectionGate,
        refusals: Counter[str],
        metrics_guard: MetricsGuard,
        thread_setup: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.access = access
        self._producer = producer
        self._sessions = sessions
        # The capture server's session lookup: waits a little for a record just published.
        self._session_record = session_record
        self.gate = gate
        self.refusals = refusals
        self._metrics_guard = metrics_guard
        self.days = casting.CastingDays(settings, dead_letters=producer, service="livetag-capture")
        self.board = casting.LobbyBoard(settings, dead_letters=producer, service="livetag-capture")
        self.faces = FaceFinder(settings, thread_setup)
        self.performers: dict[str, Performer] = {}
        # What this lobby published last per performer, and when (loop time).
        self._published: dict[str, tuple[records.LobbyPresence, float]] = {}
        # Performers whose presence may have changed: the writer publishes what changed.
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        # Scene links already minted, by (session, performer): a page back in the lobby
        # while its scene runs is sent the same one.
        self._scene_urls: dict[tuple[str, str], str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = 0.0
        #: What the lobby did and dropped, never reset: face checks, drops, scene calls.
        self.counters: Counter[str] = Counter()

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        await self.days.start()
        await self.board.start()
        self._started_at = asyncio.get_running_loop().time()
        self._tasks = [
            background.start(self._write_presence, "lobby-presence"),
            background.start(self._follow_days, "lobby-days"),
            # Once, STALE_AFTER_S after the start.
            asyncio.create_task(self._forget_stale(), name="lobby-stale"),
            background.start(lambda: self.access.close_revoked(self._pages), "lobby-revocations"),
        ]

    async def stop(self) -> None:
        for performer in list(self.performers.values()):
            for page in list(performer.pages):
                await page.close()
        tasks, self._tasks = self._tasks, []
        await background.cancel(*tasks)
        # The pages closed by a stop are not published as gone: they come back to the
        # restarted server and keep their place in the queue (those that do not are
        # published as gone STALE_AFTER_S after its start).
        await self.board.stop()
        await self.days.stop()
        self.faces.close()

    def add_routes(self, app: web.Application) -> None:
        app.add_routes(
            [
                web.get("/lobby", self._page),
                web.get("/ws/lobby", self._websocket),
                web.post("/api/lobby-credential", self._credential),
                web.post("/api/lobby-token", self._probe),
                web.get("/metrics/lobby", self._metrics_guard.wrap(self._metrics)),
            ]
        )

    def _pages(self) -> list[LobbyPage]:
        return [page for performer in self.performers.values() for page in performer.pages]

    # ---------------------------------------------------------------- HTTP

    async def _page(self, request: web.Request) -> web.FileResponse:
        # As the call page: the address holds the link until the page takes it out.
        return web.FileResponse(PAGES / "lobby.html", headers=credentials.PAGE_HEADERS)

    def _refuse(self, status: int, code: str, message: str, *, counted: bool) -> web.Response:
        if counted:
            self.refusals[code] += 1
        return web.json_response(signaling.error(code, message), status=status)

    async def _admit(
        self,
        request: web.Request,
        *,
        counted: bool = True,
        token: str | None = None,
        kind: credentials.Kind = "session",
    ) -> tuple[tokens.JoinToken, records.CastingDay] | web.Response:
        """A performer's day token admitted to their day's lobby, or the refusal."""
        return await credentials.admitted_to_day(
            self.access,
            request,
            self._refuse,
            counted=counted,
            token=token,
            kind=kind,
            role="performer",
            wrong_role=(
                "the lobby is for performers: the director's day link opens the casting page"
            ),
            find_day=self.days.get,
            wait_for_day=self.days.wait_for,
        )

    async def _credential(self, request: web.Request) -> web.Response:
        return await credentials.exchange_endpoint(request, self.access, self._admit, self._refuse)

    async def _probe(self, request: web.Request) -> web.Response:
        return await credentials.probe_endpoint(
            request, self._admit, self._refuse, self.gate, PAGE_KIND
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "counters": dict(self.counters),
                "pages": len(self._pages()),
                "waiting": sorted(
                    p.key for p in self.performers.values() if p.since_us is not None
                ),
                "casting_days": self.days.counters(),
                "lobby_board": self.board.counters(),
            }
        )

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        async with credentials.admitted_websocket(
            request, self.gate, self._admit, self._refuse, PAGE_KIND
        ) as admitted:
            if isinstance(admitted, web.Response):
                return admitted
            ticket, claims, day = admitted
            ws = websocket_response(self.settings, max_msg_size=MAX_SNAPSHOT_BYTES + 1024)
            await ws.prepare(request)
            watch_websocket(ticket, request, ws)
            page = LobbyPage(self, ws, claims, day)
            try:
                await page.run()
            finally:
                await page.close()
            return ws

    # ---------------------------------------------------------------- performers

    def performer(self, day_id: str, performer_id: str) -> Performer:
        key = f"{day_id}/{performer_id}"
        known = self.performers.get(key)
        if known is None:
            known = self.performers[key] = Performer(day_id, performer_id, set())
        return known

    def joined(self, page: LobbyPage) -> Performer:
        performer = self.performer(page.day_id, page.performer_id)
        performer.pages.add(page)
        performer.left_at = None
        self.changed(performer)
        return performer

    def left(self, page: LobbyPage) -> None:
        performer = self.performer(page.day_id, page.performer_id)
        performer.pages.discard(page)
        if not performer.pages:
            # A reload is back within the grace: its place in the queue is kept.
            performer.left_at = asyncio.get_running_loop().time()
        self.changed(performer)

    def changed(self, performer: Performer) -> None:
        self._dirty.add(performer.key)
        self._wake.set()

    def _running_scene(self, day_id: str, performer_id: str) -> records.SceneRef | None:
        """The scene the performer is called to: on the day, not ended, its session not
        over (a session just created, not read yet, is not over)."""
        day = self.days.get(day_id)
        scene = None if day is None else casting.scene_of(day, performer_id)
        if scene is None:
            return None
        session = self._sessions.get(scene.session_id)
        return None if session is not None and is_over(session) else scene

    def _desired(self, performer: Performer, loop_now: float) -> records.LobbyPresence:
        """What this lobby holds of the performer now."""
        gone = not performer.pages and (
            performer.left_at is None or loop_now - performer.left_at >= LEAVE_GRACE_S
        )
        in_scene = self._running_scene(performer.day_id, performer.performer_id) is not None
        stamp = now_us()
        if gone or in_scene:
            performer.since_us = None
        elif performer.since_us is None:
            # Waiting again (first join, back from a scene), or, after a restart, since
            # when the presence on livetag.lobby says they have been.
            earlier = self.board.presence(performer.day_id, performer.performer_id)
            ours = self._published.get(performer.key)
            continues = earlier is not None and earlier.waiting and ours is None
            performer.since_us = earlier.since_ts_us if continues and earlier else stamp
        last = self._last(performer.key)
        waiting = performer.since_us is not None
        since = performer.since_us if waiting else stamp
        if last is not None and not last.waiting and not waiting:
            since = last.since_ts_us  # still not waiting: nothing to say
        assert since is not None
        return records.LobbyPresence(
            ts_us=stamp,
            day_id=performer.day_id,
            performer_id=performer.performer_id,
            waiting=waiting,
            since_ts_us=since,
            check=performer.check(),
        )

    def _last(self, key: str) -> records.LobbyPresence | None:
        ours = self._published.get(key)
        if ours is not None:
            return ours[0]
        day_id, performer_id = key.split("/", 1)
        return self.board.presence(day_id, performer_id)

    async def _write_presence(self) -> None:
        """Publish what changed, one performer after another, for the lobby's life. The
        dirty set is the queue: bounded by the performers, coalescing their changes."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._publish_changes()
            except Exception:  # bookkeeping: the next change must still be written
                self.counters["presence_failed"] += 1
                log.exception("publishing lobby presence failed")

    async def _publish_changes(self) -> None:
        loop_now = asyncio.get_running_loop().time()
        # Pages that closed within the grace are looked at again once it has passed.
        for gone in self.performers.values():
            if (
                not gone.pages
                and gone.left_at is not None
                and loop_now - gone.left_at >= LEAVE_GRACE_S
            ):
                self._dirty.add(gone.key)
        keys, self._dirty = self._dirty, set()
        for key in sorted(keys):
            performer = self.performers.get(key)
            if performer is None:
                continue
            desired = self._desired(performer, loop_now)
            last = self._published.get(key)
            age_s = loop_now - last[1] if last is not None else math.inf
            previous = self._last(key)
            news = (
                desired.waiting  # never waited: nothing to withdraw
                if previous is None
                else _material(previous, desired, age_s=age_s)
            )
            if news:
                try:
                    await casting.publish_presence(self._producer, desired)
                except Exception as exc:  # the broker away: tried again at the next round
                    self.counters["presence_not_published"] += 1
                    self._dirty.add(key)
                    log.warning("lobby presence of %s not published: %s", key, exc)
                    continue
                self.counters["presence_published"] += 1
                self._published[key] = (desired, loop_now)
            if not performer.pages and not desired.waiting and not performer.face_pending:
                self.performers.pop(key, None)  # nothing of theirs left to keep

    async def _forget_stale(self) -> None:
        """After a restart: performers waiting on livetag.lobby whose page did not come
        back within STALE_AFTER_S are published as gone."""
        await asyncio.sleep(STALE_AFTER_S)
        for presence in self.board.values():
            if not presence.waiting:
                continue
            performer = self.performer(presence.day_id, presence.performer_id)
            if not performer.pages:
                performer.left_at = -math.inf
                self.counters["stale_cleared"] += 1
                self.changed(performer)

    # ---------------------------------------------------------------- scenes

    async def _follow_days(self) -> None:
        """Call each waiting performer into their scene once the director starts it."""
        while True:
            await self.days.changed(timeout_s=1.0)
            for performer in list(self.performers.values()):
                if performer.pages:
                    await self.call_into_scene(performer)
            self.prune_scene_urls()
            await self._close_pages_of_closed_days()

    def prune_scene_urls(self) -> int:
        """Forget the links of scenes no longer running (ended on their day, or their
        session over): a day of scenes must not grow this server's memory. How many."""
        running = {
            scene.session_id
            for day in self.days.values()
            for scene in casting.running_scenes(day)
            if not (
                (session := self._sessions.get(scene.session_id)) is not None and is_over(session)
            )
        }
        stale = [key for key in self._scene_urls if key[0] not in running]
        for key in stale:
            del self._scene_urls[key]
        return len(stale)

    async def call_into_scene(self, performer: Performer) -> bool:
        """Send the performer's pages to their running scene, if they have one."""
        scene = self._running_scene(performer.day_id, performer.performer_id)
        if scene is None:
            return False
        key = (scene.session_id, performer.performer_id)
        url = self._scene_urls.get(key)
        if url is None:
            session = await self._session_record(scene.session_id)
            if session is None:
                self.counters["scene_unknown_session"] += 1
                return False  # not read yet: the next round tries again
            try:
                link = tokens.invite(
                    self.settings,
                    session,
                    self.access.secret,
                    role="performer",
                    name=performer.performer_id,
                )
            except tokens.InviteError as exc:
                self.counters["scene_link_refused"] += 1
                log.warning("no scene link for %s: %s", performer.key, exc)
                return False
            # Relative: the page goes to this server, whatever address it was opened at.
            url = f"/join?{urlsplit(link.url).query}"
            self._scene_urls[key] = url
            log.info("lobby: %s called into scene %s", performer.key, scene.session_id)
        self.changed(performer)  # no longer waiting
        message = {
            "type": "scene",
            "session_id": scene.session_id,
            "url": url,
            "performers": list(scene.performers),
            "scenario_id": scene.scenario_id,
            "role": scene.roles.get(performer.performer_id),
        }
        for page in list(performer.pages):
            if page.scene_sent != scene.session_id:
                page.scene_sent = scene.session_id
                self.counters["scene_calls"] += 1
                await page.send(message)
        return True

    async def _close_pages_of_closed_days(self) -> None:
        for performer in list(self.performers.values()):
            day = self.days.get(performer.day_id)
            if day is None or day.state != "closed":
                continue
            for page in list(performer.pages):
                await page.end_access("day_closed", f"casting day {day.day_id} is closed")

    # ---------------------------------------------------------------- face checks

    async def check_face(self, page: LobbyPage, jpeg: bytes) -> None:
        """A snapshot's face check, at most one pending per performer: the rest are
        dropped and counted (the page sends the next one on its own clock)."""
        performer = self.performer(page.day_id, page.performer_id)
        if performer.face_pending:
            self.counters["face_checks_dropped"] += 1
            await page.send({"type": "face_busy"})
            return
        performer.face_pending = True
        try:
            found = await self.faces.has_face(jpeg)
        except SnapshotError as exc:
            self.counters["bad_snapshots"] += 1
            self.refusals["bad_snapshot"] += 1
            await page.send(signaling.error("bad_snapshot", str(exc)))
            return
        except Exception as exc:  # no face model, mediapipe broke: said, never fatal
            self.counters["face_checks_failed"] += 1
            log.warning("lobby face check failed: %s", exc)
            await page.send(
                signaling.error("face_check_unavailable", f"the face check failed: {exc}")
            )
            return
        finally:
            performer.face_pending = False
        self.counters["face_checks"] += 1
        performer.face_found = found
        performer.checked_us = now_us()
        self.changed(performer)
        await page.send(
            {"type": "face", "face_found": found, "checked_ts_us": performer.checked_us}
        )


class LobbyPage:
    """One lobby page's websocket."""

    def __init__(
        self,
        lobby: LobbyService,
        ws: web.WebSocketResponse,
        claims: tokens.JoinToken,
        day: records.CastingDay,
    ) -> None:
        self.lobby = lobby
        self.ws = ws
        self._claims = claims
        self.day_id = day.day_id
        self._day = day
        self.scene_sent: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._joined = False
        self._closed = False
        self.checks: set[asyncio.Task[None]] = set()

    @property
    def claims(self) -> tokens.JoinToken | None:
        return self._claims

    @property
    def performer_id(self) -> str:
        return self._claims.participant_id

    async def send(self, message: dict[str, Any]) -> None:
        await send_json(self.ws, message)

    async def run(self) -> None:
        lobby = self.lobby
        performer_id = self._claims.participant_id
        names = {p.performer_id: p.display_name for p in self._day.roster}
        performer = lobby.joined(self)
        self._joined = True
        if not await lobby.call_into_scene(performer):
            await lobby._publish_changes()  # the waiting time starts (or carries on) now
        await self.send(
            {
                "type": "welcome",
                "day_id": self.day_id,
                "title": self._day.title,
                "you": {"performer_id": performer_id, "display_name": names[performer_id]},
                "face_check_interval_ms": lobby.settings.lobby_face_check_interval_ms,
                "waiting_since_us": performer.since_us,
                "server_now_us": now_us(),
            }
        )
        self._tasks.append(
            asyncio.create_task(
                lobby.access.keep_renewed(self._claims, self.send, self.end_access),
                name="lobby-credential-renewal",
            )
        )
        async for message in self.ws:
            if message.type == WSMsgType.TEXT:
                await self._check(message.data)
            elif message.type == WSMsgType.BINARY:
                self._snapshot(message.data)
            elif message.type == WSMsgType.ERROR:
                lobby.refusals[failure_code(self.ws)] += 1
                break

    async def _check(self, raw: str) -> None:
        try:
            check = parse_check(raw)
        except signaling.SignalingError as exc:
            self.lobby.refusals[exc.code] += 1
            await self.send(signaling.error(exc.code, exc.message))
            return
        performer = self.lobby.performer(self.day_id, self._claims.participant_id)
        performer.camera = check["camera"]
        performer.microphone = check["microphone"]
        performer.level_db = check["level"]
        if not performer.camera:
            performer.face_found = False  # no picture, no face
        performer.checked_us = now_us()
        self.lobby.changed(performer)

    def _snapshot(self, jpeg: bytes) -> None:
        # Aside, so the page's next messages are read meanwhile; the lobby bounds it.
        task = asyncio.create_task(self.lobby.check_face(self, jpeg), name="lobby-face-check")
        self.checks.add(task)
        task.add_done_callback(self.checks.discard)

    async def end_access(self, code: str, message: str) -> None:
        """The link was revoked or ran out, or the day closed: say why, then close."""
        self.lobby.refusals[code] += 1
        await credentials.end_connection(
            self.ws,
            self.send(signaling.error(code, message)),
            code,
            message,
            self.lobby.settings.ws_close_timeout_s,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [*self._tasks, *self.checks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._joined:
            self.lobby.left(self)
        with contextlib.suppress(Exception):
            await self.ws.close()
