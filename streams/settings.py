"""livetag settings: one frozen object, read once in entry points and passed down.

Sources, highest priority first: keyword arguments, ``LIVETAG_*`` environment variables,
the TOML file named by ``LIVETAG_CONFIG`` (or ``livetag.toml`` in the working directory),
then the defaults below.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from streams.errors import BadInputError, RefusedError

log = logging.getLogger(__name__)

CONFIG_FILE_ENV = "LIVETAG_CONFIG"
DEFAULT_CONFIG_FILE = Path("livetag.toml")


def _config_file() -> Path | None:
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_FILE_ENV}={named!r}: no such settings file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "livetag"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "livetag" / "sessions"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "livetag"


class Settings(BaseSettings):
    """Every knob of a livetag deployment."""

    model_config = SettingsConfigDict(
        env_prefix="LIVETAG_",
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    # --- Kafka ---
    kafka_bootstrap: str | None = Field(
        default=None,
        description=(
            "host:port[,host:port...] of an existing Kafka cluster. When set, the "
            "embedded broker is never started."
        ),
    )
    broker_host: str = Field(
        default="127.0.0.1",
        description=(
            "Address the embedded broker listens on. It has no TLS and no authentication: "
            "another address than loopback needs allow_plaintext_network."
        ),
    )
    allow_plaintext_network: bool = Field(
        default=False,
        description=(
            "Let the embedded broker, or the capture server and the dashboard without TLS, "
            "listen on an address other machines reach. Off, they refuse to start there: "
            "faces, voices and join tokens would cross the network in the clear. On, each "
            "prints a warning at start."
        ),
    )
    broker_port: int = Field(
        default=9092, ge=0, le=65535, description="Embedded broker port; 0 picks a free one."
    )
    broker_start_timeout_s: float = Field(default=10.0, gt=0)
    embedded_fetch_wait_ms: int = Field(
        default=10,
        ge=1,
        le=1500,
        description=(
            "Consumer fetch wait used with the embedded broker, which answers long-poll "
            "fetches only when the wait runs out."
        ),
    )
    embedded_stream_fetch_wait_ms: int = Field(
        default=25,
        ge=1,
        le=1500,
        description=(
            "Fetch wait, with the embedded broker, of the processors reading a session's "
            "media and feature topics live (the dashboard feed waits one update interval, "
            "never less than this). Each fetch costs the broker a walk over the batches "
            "stored in the partitions it reads: 25 ms instead of 10 took the processors "
            "benchmark at 4 performers from p99 200-500 ms to 98 ms."
        ),
    )
    embedded_archive_fetch_wait_ms: int = Field(
        default=250,
        ge=1,
        le=1500,
        description=(
            "The recorder's fetch wait with the embedded broker: it reads every topic of a "
            "session, video included, and writes parts every archive_flush_s, so it need "
            "not ask often."
        ),
    )
    embedded_audio_linger_ms: int = Field(
        default=100,
        ge=0,
        le=1000,
        description=(
            "With the embedded broker, how long the capture server gathers a performer's "
            "20 ms audio chunks into one produce batch. The embedded broker lists every "
            "stored batch of a partition on each fetch that returns data, and one batch per "
            "chunk made audio the topic with the most batches (50 a second per performer); "
            "the price is up to this much more prosody latency. A cluster uses "
            "producer_linger_ms."
        ),
    )
    audio_spool_s: int = Field(
        default=300,
        ge=1,
        le=3600,
        description=(
            "Seconds of each performer's audio the capture server keeps in memory until the "
            "broker acknowledges it (~32 KB a second per performer): a broker away for up "
            "to this long loses no audio, which is sent in order with its capture times "
            "when the broker is back. Audio beyond it is lost, counted with its time span."
        ),
    )
    cluster_fetch_wait_ms: int = Field(
        default=500, ge=1, description="Consumer fetch wait used with a real Kafka cluster."
    )
    prosody_batch_ms: int = Field(
        default=0,
        ge=0,
        le=1000,
        description=(
            "The processors analyse the audio gathered and send its prosody hops at most "
            "this often; 0: as soon as they come. Audio that arrives one 20 ms chunk at a "
            "time makes a performer's hops 50 produce batches a second on a topic four "
            "services read; with the embedded broker the capture server already sends audio "
            "in 100 ms batches (embedded_audio_linger_ms), so hops go out ~10 times a second "
            "without this. The price of pacing is up to this much more prosody latency."
        ),
    )
    producer_linger_ms: int = Field(
        default=10,
        ge=0,
        le=1000,
        description=(
            "How long a producer waits to batch records before sending. The embedded broker "
            "lists every stored batch of a partition on each fetch that returns data, so "
            "fewer, larger batches keep its CPU down (docs/operations.md, Embedded broker)."
        ),
    )
    partitions: int = Field(
        default=4,
        ge=1,
        le=256,
        description=(
            "Partitions of every topic keyed by session/performer. One number for all of "
            "them keeps a performer's media, features, tags and labels on the same "
            "partition number."
        ),
    )
    replication_factor: int = Field(default=1, ge=1)
    session_topic_retention_days: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Real clusters only: keep session topics under retention for this long instead "
            "of deleting them once archived. The embedded broker ignores retention."
        ),
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description=(
            "How Kafka clients talk to kafka_bootstrap. Anything but PLAINTEXT needs a real "
            "cluster: the embedded broker speaks plaintext on loopback only."
        ),
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism; required with SASL_PLAINTEXT and SASL_SSL."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="CA bundle (PEM) that signed the brokers' certificates; default: system CAs.",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="Client certificate (PEM) for clusters that ask for one."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="Key of kafka_ssl_certfile, if not in the same file."
    )

    # --- capture server ---
    capture_host: str = Field(default="127.0.0.1", description="Capture server listen address.")
    capture_port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port.")
    public_url: str | None = Field(
        default=None,
        description=(
            "Base URL printed in join links (default http[s]://capture_host:capture_port)."
        ),
    )
    ice_addresses: list[str] = Field(
        default=["127.0.0.1"],
        description="The only addresses the server advertises as ICE host candidates.",
    )
    ice_servers: list[str] = Field(
        default=[], description="STUN/TURN URLs for the server's ICE agent (none by default)."
    )
    token_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs join tokens; default: generated once into state_dir.",
    )
    token_ttl_s: int = Field(
        default=12 * 3600,
        gt=0,
        le=30 * 24 * 3600,
        description=(
            "How long join links last (a scene's day): a link's token is only exchanged by "
            "its page for a short-lived credential (credential_ttl_s)."
        ),
    )
    credential_ttl_s: int = Field(
        default=600,
        ge=5,
        le=24 * 3600,
        description=(
            "Lifetime of the session credential a page gets for its link: what its "
            "websockets and API calls carry. Renewed over the open connection when a third "
            "of it is left, never past the link's own expiry, never for a revoked link."
        ),
    )
    video_width: int = Field(default=640, gt=0, le=3840, description="Analysis frame width.")
    video_height: int = Field(default=360, gt=0, le=2160, description="Analysis frame height.")
    video_fps: float = Field(default=15.0, gt=0, le=60, description="Analysis frame rate.")
    services_nice: int = Field(
        default=-5,
        ge=-20,
        le=19,
        description=(
            "Scheduling niceness of the services livetag up starts (the embedded broker, "
            "processors, dashboard, recorder): on a machine shared with other work the "
            "pipeline keeps its pace. Below 0 needs root or CAP_SYS_NICE; when refused "
            "they keep livetag's own priority, and livetag up says so."
        ),
    )
    capture_nice: int = Field(
        default=-10,
        ge=-20,
        le=19,
        description=(
            "Scheduling niceness of the capture server: the call (ICE consent, RTCP, "
            "forwarded packets, capture timestamps) must be served on time even when the "
            "machine is short of CPU. Below 0 needs root or CAP_SYS_NICE; when refused the "
            "server keeps its inherited priority and says so."
        ),
    )
    capture_fps: int | None = Field(
        default=None,
        ge=1,
        le=60,
        description=(
            "Frame rate performer pages capture and send (what watchers see); default: "
            "the analysis rate. Higher is smoother to watch and costs every browser an "
            "encode or decode per extra frame, and the server a decode."
        ),
    )
    jpeg_quality: int = Field(default=80, ge=10, le=95)
    video_queue_frames: int = Field(
        default=8, ge=1, le=256, description="Video frames buffered per performer before drops."
    )
    max_message_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest signaling message (SDP included)."
    )
    max_clients_per_session: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description=(
            "Pages a session admits at once, counted per kind (call pages, tagging "
            "connections, dashboards); one more is refused with too_many_clients."
        ),
    )
    ws_max_connections: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description=(
            "Websockets one web server (the capture server, the dashboard) holds open at "
            "once, admitted or not yet; one more is refused with server_busy (HTTP 503)."
        ),
    )
    ws_max_connections_per_address: int = Field(
        default=64,
        ge=1,
        le=1_000_000,
        description=(
            "Websockets one client address (IPv6: one /64) holds open on a web server, "
            "admitted or not yet; one more is refused with too_many_connections (HTTP 429). "
            "Behind a reverse proxy every client has the proxy's address: raise it."
        ),
    )
    ws_max_unwelcomed: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description=(
            "Tag websockets a web server holds open that have not yet sent a valid hello; "
            "one more is refused with too_many_waiting (HTTP 503). Keeps unauthenticated "
            "clients from taking the room of ws_max_connections that pages need."
        ),
    )
    ws_hello_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description=(
            "A tag websocket not welcomed this long after its request (no valid hello) is "
            "closed with 4408 hello_timeout."
        ),
    )
    ws_heartbeat_s: float = Field(
        default=10.0,
        ge=0.1,
        le=300,
        description=(
            "A websocket that sends nothing for this long is pinged, and closed when no "
            "pong comes within half of it."
        ),
    )
    ws_close_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description=(
            "How long a closing websocket may take (the close handshake, a send to a peer "
            "that reads nothing) before its connection is cut."
        ),
    )

    # --- director dashboard ---
    dashboard_host: str = Field(default="127.0.0.1", description="Dashboard listen address.")
    dashboard_port: int = Field(default=8081, ge=0, le=65535, description="0 picks a free port.")
    dashboard_public_url: str | None = Field(
        default=None,
        description="Base URL of the dashboard in director links (default http[s]://host:port).",
    )
    dashboard_update_hz: float = Field(
        default=15.0, gt=0, le=60, description="Updates per second sent to each dashboard."
    )
    dashboard_send_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A dashboard that takes no update for this long is disconnected.",
    )
    max_takes_per_session: int = Field(
        default=500,
        ge=1,
        le=5000,
        description=(
            "Takes a session may have; one more take_start is refused with too_many_takes "
            "(every take is kept in the session record, which must stay small)."
        ),
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description=(
            "When set, the /metrics routes of the capture server and the dashboard require "
            "'Authorization: Bearer <metrics_token>' from any address; unset, they answer "
            "loopback clients only."
        ),
    )

    # --- livetag up ---
    service_restart_limit: int = Field(
        default=5,
        ge=0,
        le=100,
        description=(
            "Restarts livetag up gives a service (or the embedded broker) that keeps dying; "
            "one more death stops everything with a non-zero exit. A service that ran for "
            "service_stable_s starts its count again."
        ),
    )
    service_restart_backoff_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Wait before the first restart of a service; doubled each time, up to 30 s.",
    )
    service_stable_s: float = Field(
        default=60.0,
        gt=0,
        description="A service that ran this long before dying is restarted with a fresh count.",
    )

    # --- TLS for the capture server and the dashboard ---
    tls_cert_file: Path | None = Field(
        default=None,
        description=(
            "Certificate chain (PEM) both web servers present; when set they serve https "
            "and wss only. Browsers need it for camera and microphone on any host but "
            "localhost."
        ),
    )
    tls_key_file: Path | None = Field(default=None, description="Private key of tls_cert_file.")

    # --- recorder (session archive) ---
    archive_flush_s: float = Field(
        default=2.0, gt=0, description="How often the recorder writes what it read to disk."
    )
    archive_quiet_s: float = Field(
        default=5.0,
        ge=0,
        description=(
            "After a session ends, how long its topics must stay quiet (processors and "
            "aligner done) before its archive is built."
        ),
    )
    archive_release_s: float = Field(
        default=15.0,
        ge=0,
        description="Time workers get to let go of an archived session before its topics go.",
    )

    # --- tagging and labels ---
    tag_default_span_ms: int = Field(
        default=500, gt=0, le=10_000, description="Span given to a tapped (point) tag."
    )
    tag_max_hold_ms: int = Field(
        default=30_000,
        gt=0,
        description="A held tag whose key-up never arrives ends this long after its onset.",
    )
    tag_rate_per_s: float = Field(
        default=20.0, gt=0, description="Tag messages per second a client may sustain."
    )
    tag_burst: int = Field(
        default=256,
        ge=1,
        description=(
            "Tag messages a client may send at once: room for re-sending everything left "
            "unacknowledged by a dropped connection."
        ),
    )
    tag_max_message_bytes: int = Field(default=4096, ge=256, description="Largest tag message.")
    tag_produce_timeout_ms: int = Field(
        default=2000,
        gt=0,
        description=(
            "How long the tag service waits for the broker before it holds a tag in its "
            "durable spool (state_dir/tag-spool) and acknowledges it from there."
        ),
    )
    max_reaction_lag_ms: int = Field(
        default=1500, ge=0, description="Largest reaction lag a rater may set or calibrate."
    )
    rating_rate_hz: int = Field(
        default=20,
        ge=10,
        le=30,
        description=(
            "The rate a continuous rater's widget samples the pad or slider at (the welcome "
            "tells it): 10-30 Hz, the range of continuous affect annotation tools."
        ),
    )
    label_window_ms: int = Field(
        default=100, gt=0, le=10_000, description="Hop and length of a label window."
    )
    label_tag_wait_ms: int = Field(
        default=100,
        ge=0,
        description="How long past its end a label window waits for tags before it goes out.",
    )
    label_feature_wait_ms: int = Field(
        default=10_000,
        ge=0,
        description=(
            "A feature stream that has delivered nothing for this long is given up on: label "
            "windows stop waiting for it. A stream that still delivers is waited for however "
            "late. Long enough to ride out a busy machine's stalls (at 500 ms a few windows "
            "of a scene on this 2-core machine went out without their late features); a "
            "performer who stopped sending holds their windows this long."
        ),
    )
    label_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="A tag this late or less re-emits the windows it changes as corrections.",
    )
    label_rating_wait_ms: int = Field(
        default=1000,
        ge=0,
        description=(
            "How long past its end a label window waits at most for the continuous raters "
            "of its performer (their samples come lag-corrected and in batches); samples "
            "later than that revise it. A rater silent this long is not waited for."
        ),
    )
    rater_lag_interval_s: float = Field(
        default=20.0,
        ge=0,
        description=(
            "How often the aligner estimates each rater's reaction lag again (and publishes "
            "it on livetag.raters); 0: never."
        ),
    )
    rater_lag_history_s: float = Field(
        # Five minutes (RECOLA's take length): a rater's lag wanders by their jitter, so
        # their mean lag is known to jitter / sqrt(the changes they reacted to); over two
        # minutes the p95 error was 70 ms (tests.bench.perception), over five 35 ms.
        default=300.0,
        gt=0,
        description=(
            "The stretch of each performer's features, tags and ratings (event time) that "
            "reaction lags are estimated over."
        ),
    )
    rater_lag_auto: bool = Field(
        default=True,
        description=(
            "Apply the estimated reaction lags to raters' tags and ratings; false: estimate "
            "and publish them, apply only each rater's calibration."
        ),
    )
    rater_lag_min_confidence: float = Field(
        # streams.labels.reaction_lag.MIN_CONFIDENCE (the settings cannot import it): of 360
        # independent smooth noise traces rated against each other, the most confident
        # reached 0.31, so a lower bar would apply lags found in noise.
        default=0.4,
        ge=0,
        le=1,
        description=(
            "A lag estimate from the data less confident than this is not applied (0.4: "
            "pure-noise traces reach 0.31)."
        ),
    )

    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    # --- files ---
    state_dir: Path = Field(
        default_factory=_default_state_dir, description="Logs, secrets and pid files."
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir, description="Downloaded model files."
    )
    data_dir: Path = Field(
        default_factory=lambda: _default_data_dir(),
        description="Session archives (one folder per session).",
    )
    face_processes: int = Field(
        default=2,
        ge=1,
        le=64,
        description=(
            "Worker processes analysing faces per session processor (each performer's "
            "frames stay in one); as many as the cores the processors may use."
        ),
    )
    face_max_lag_ms: int = Field(
        default=250,
        ge=0,
        le=600_000,
        description=(
            "A video frame the processors read this long after it reached Kafka (or while "
            "its performer's face worker still has frames queued) is not analysed but "
            "recorded as skipped ('late'): processors that cannot keep the analysis rate "
            "thin frames to what their workers manage instead of falling behind. 0: "
            "analyse every frame however late."
        ),
    )
    face_model_path: Path | None = Field(
        default=None,
        description="face_landmarker.task to use instead of the one in the cache folder.",
    )
    model_rater: str = Field(
        default="fer-mini-xception",
        min_length=1,
        description=(
            "The model lane's rater (docs/model-lane.md): fer-mini-xception (built in), "
            "none (no model lane), the name of a Python entry point in the group "
            "livetag.model_raters, or an http:// or https:// URL that rates face crops."
        ),
    )
    model_rater_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description=(
            "The name the model rater's readings carry instead of its own (an HTTP "
            "endpoint's is http-model)."
        ),
    )
    model_rate_hz: float = Field(
        default=10.0,
        gt=0,
        le=30,
        description=(
            "Face frames per second and performer the model reads at most, in slots on the "
            "session clock (10: one per 100 ms label window); the frames between are thinned, "
            "and so is a frame whose performer's face worker has another one waiting."
        ),
    )
    model_http_timeout_ms: int = Field(
        default=250,
        gt=0,
        le=10_000,
        description="How long a face worker waits for an HTTP model rater's answer.",
    )
    scenario_dir: Path | None = Field(
        default=None,
        description=(
            "A folder of scenario files (*.toml, *.yaml) loaded into the scenario library "
            "(livetag.scenarios) when livetag up starts; `livetag scenarios load` does it "
            "by hand."
        ),
    )
    cue_rate_per_s: float = Field(
        default=10.0,
        gt=0,
        le=100,
        description="Cues a director may send per second (a burst of as many is allowed).",
    )
    coverage_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How often the aligner publishes each performer's ledger (coverage).",
    )
    lobby_face_check_interval_ms: int = Field(
        default=1000,
        ge=200,
        le=10_000,
        description="How often a lobby page sends a camera snapshot for the face check.",
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value.strip()

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        protocol = self.kafka_security_protocol
        if protocol != "PLAINTEXT" and self.kafka_bootstrap is None:
            raise ValueError(
                f"LIVETAG_KAFKA_SECURITY_PROTOCOL={protocol} needs LIVETAG_KAFKA_BOOTSTRAP: "
                "the embedded broker only speaks PLAINTEXT"
            )
        sasl = {
            "LIVETAG_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "LIVETAG_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "LIVETAG_KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
        }
        tls_files = {
            "LIVETAG_KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "LIVETAG_KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "LIVETAG_KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
        }
        if protocol.startswith("SASL_"):
            missing = [name for name, value in sasl.items() if value is None]
            if missing:
                raise ValueError(
                    f"LIVETAG_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}"
                )
        else:
            # Credentials that would be silently ignored are more likely a mistake.
            given = [name for name, value in sasl.items() if value is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set, but LIVETAG_KAFKA_SECURITY_PROTOCOL={protocol} "
                    "does not use SASL (SASL_PLAINTEXT or SASL_SSL do)"
                )
        if protocol not in ("SSL", "SASL_SSL"):
            given = [name for name, value in tls_files.items() if value is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set, but LIVETAG_KAFKA_SECURITY_PROTOCOL={protocol} "
                    "does not use TLS (SSL or SASL_SSL do)"
                )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("LIVETAG_KAFKA_SSL_KEYFILE needs LIVETAG_KAFKA_SSL_CERTFILE")
        return self

    @model_validator(mode="after")
    def _check_capture_rate(self) -> Settings:
        if self.capture_fps is not None and self.capture_fps < self.video_fps:
            raise ValueError(
                f"LIVETAG_CAPTURE_FPS ({self.capture_fps}) is below the analysis rate "
                f"LIVETAG_VIDEO_FPS ({self.video_fps}): frames cannot be analysed faster "
                "than they are captured"
            )
        return self

    @property
    def effective_capture_fps(self) -> int:
        """The rate performer pages capture at: ``capture_fps``, else the analysis rate."""
        return self.capture_fps or math.ceil(self.video_fps)

    @model_validator(mode="after")
    def _check_label_waits(self) -> Settings:
        # The archive is built label_grace_s after a session ends: a window still waiting
        # for a silent feature stream then would be missing from it.
        waits_ms = self.label_feature_wait_ms + self.label_tag_wait_ms
        if waits_ms > self.label_grace_s * 1000:
            raise ValueError(
                f"LIVETAG_LABEL_FEATURE_WAIT_MS + LIVETAG_LABEL_TAG_WAIT_MS ({waits_ms} ms) "
                f"exceed LIVETAG_LABEL_GRACE_S ({self.label_grace_s} s): a session's last "
                "label windows could go out after its archive is built"
            )
        return self

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "LIVETAG_TLS_CERT_FILE and LIVETAG_TLS_KEY_FILE go together: set both "
                "(https and wss) or neither (plain http and ws)"
            )
        return self

    @property
    def web_scheme(self) -> str:
        """``https`` when the web servers have a certificate, else ``http``."""
        return "http" if self.tls_cert_file is None else "https"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def bootstrap_servers(self) -> str:
        """Where Kafka clients connect: the cluster, else the embedded broker."""
        if self.kafka_bootstrap is not None:
            return self.kafka_bootstrap
        return f"{self.broker_host}:{self.broker_port}"

    def _fetch_wait_ms(self, embedded_ms: int) -> int:
        # A cluster answers a fetch as soon as data arrives: one wait serves every reader.
        return embedded_ms if self.uses_embedded_broker else self.cluster_fetch_wait_ms

    @property
    def consumer_fetch_wait_ms(self) -> int:
        return self._fetch_wait_ms(self.embedded_fetch_wait_ms)

    @property
    def stream_fetch_wait_ms(self) -> int:
        return self._fetch_wait_ms(self.embedded_stream_fetch_wait_ms)

    @property
    def archive_fetch_wait_ms(self) -> int:
        return self._fetch_wait_ms(self.embedded_archive_fetch_wait_ms)

    @property
    def dashboard_fetch_wait_ms(self) -> int:
        # The dashboard sends an update every 1/dashboard_update_hz: fetching more often
        # than that shows nothing sooner and costs the embedded broker a walk per fetch.
        # (A tag reaches the director up to one interval later than with the processors'
        # wait; 67 ms at 15 Hz.) Bounded like the other waits.
        tick_ms = min(round(1000 / self.dashboard_update_hz), 1500)
        return self._fetch_wait_ms(max(self.embedded_stream_fetch_wait_ms, tick_ms))

    @property
    def audio_linger_ms(self) -> int:
        """The capture server's batching delay for audio records."""
        if self.uses_embedded_broker:
            return self.embedded_audio_linger_ms
        return self.producer_linger_ms

    @property
    def capture_base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"{self.web_scheme}://{self.capture_host}:{self.capture_port}"

    @property
    def dashboard_base_url(self) -> str:
        if self.dashboard_public_url:
            return self.dashboard_public_url.rstrip("/")
        return f"{self.web_scheme}://{self.dashboard_host}:{self.dashboard_port}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


#: LIVETAG_* variables that are not settings fields.
_OTHER_VARIABLES = {CONFIG_FILE_ENV, "LIVETAG_TEST_MEDIA", "LIVETAG_CHROMIUM"}


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once; entry points call this and pass the result down.

    A mistyped LIVETAG_* variable is an error, as an unknown key in the TOML file is.
    """
    known = {f"LIVETAG_{name.upper()}" for name in Settings.model_fields} | _OTHER_VARIABLES
    unknown = sorted(
        name for name in os.environ if name.startswith("LIVETAG_") and name not in known
    )
    if unknown:
        raise ValueError(f"unknown livetag settings in the environment: {', '.join(unknown)}")
    return Settings(**overrides)


def to_environment(settings: Settings) -> dict[str, str]:
    """The settings as LIVETAG_* variables, for a child process to load the same ones."""
    environment: dict[str, str] = {}
    for name, value in settings:
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, list):
            text = json.dumps(value)
        else:
            text = str(value)
        environment[f"LIVETAG_{name.upper()}"] = text
    return environment


def is_loopback(host: str | None) -> bool:
    """True for an address only this machine reaches: ``localhost``, 127.0.0.0/8, ``::1``
    (bracketed or with a zone id too) and IPv4 loopback mapped into IPv6. Serves both a
    listen host (settings) and a peer's address (``request.remote``)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:  # a host name: it may resolve to anything
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class PlaintextNetworkError(RefusedError, RuntimeError):
    """A service would listen in the clear where other machines reach it."""


def check_listen_address(settings: Settings, service: str, host: str, *, tls: bool) -> None:
    """Refuse a listener other machines reach that would carry media, tags and tokens in
    the clear, unless ``allow_plaintext_network`` says so; then warn at start."""
    if tls or is_loopback(host):
        return
    exposure = f"{service} would listen on {host} without TLS, reachable from other machines"
    if not settings.allow_plaintext_network:
        remedy = (
            "set LIVETAG_TLS_CERT_FILE and LIVETAG_TLS_KEY_FILE"
            if service != "the embedded broker"
            else "run a Kafka cluster with TLS (LIVETAG_KAFKA_BOOTSTRAP, see Kafka security)"
        )
        raise PlaintextNetworkError(
            f"{exposure}: {remedy}, listen on 127.0.0.1, or set "
            "LIVETAG_ALLOW_PLAINTEXT_NETWORK=true on a network you trust"
        )
    log.warning("%s (allowed by LIVETAG_ALLOW_PLAINTEXT_NETWORK)", exposure)


class TLSSettingsError(BadInputError, RuntimeError):
    """The web servers' certificate or key cannot be used; the message names the setting."""


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """What the capture server and the dashboard serve TLS with; None means plain http/ws."""
    cert_file, key_file = settings.tls_cert_file, settings.tls_key_file
    if cert_file is None or key_file is None:
        return None
    for name, path in (("LIVETAG_TLS_CERT_FILE", cert_file), ("LIVETAG_TLS_KEY_FILE", key_file)):
        if not path.is_file():
            raise TLSSettingsError(f"{name}={str(path)!r}: no such file")
    # Reading the certificate alone first tells a bad certificate from a bad or mismatched
    # key, which load_cert_chain reports with one and the same error.
    try:
        ssl.create_default_context().load_verify_locations(cafile=cert_file)
    except (ssl.SSLError, OSError) as exc:
        raise TLSSettingsError(
            f"LIVETAG_TLS_CERT_FILE={str(cert_file)!r} is not a PEM certificate: {exc}"
        ) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TLSSettingsError(
            f"LIVETAG_TLS_KEY_FILE={str(key_file)!r} is not the PEM private key of "
            f"LIVETAG_TLS_CERT_FILE={str(cert_file)!r}: {exc}"
        ) from None
    return context


def client_ssl_context(settings: Settings) -> ssl.SSLContext:
    """For livetag's own https clients (the dashboard polling the capture server).

    The system's CAs plus the deployment's own certificate, so a self-signed deployment
    works while a capture server behind a publicly signed proxy does too.
    """
    context = ssl.create_default_context()
    if settings.tls_cert_file is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_cert_file)
        except (ssl.SSLError, OSError) as exc:
            raise TLSSettingsError(
                f"LIVETAG_TLS_CERT_FILE={str(settings.tls_cert_file)!r} cannot be trusted "
                f"as a certificate: {exc}"
            ) from None
    return context
