"""The scenario library on the real broker: a folder loaded, followed, changed and
deleted; `livetag up`'s load of scenario_dir keeping the editor's changes; the command
line (the documented commands, `session create --scenario`) and its refusals."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from streams import records
from streams.kafka import clients, topics
from streams.kafka.scenarios import (
    ScenarioLibrary,
    delete_scenario,
    load_folder,
    publish_scenario,
)
from streams.kafka.sessions import read_session
from streams.scenarios import load_library, parse_scenario, scenario_to_toml
from streams.settings import Settings
from taggers.vocabulary import DEFAULT_VOCABULARY
from tests.commands import run_command
from tests.documentation import ROOT, marked_block
from tests.samples import SCENARIO

pytestmark = pytest.mark.integration

LABELS = [entry.label for entry in DEFAULT_VOCABULARY]
EXAMPLES = ROOT / "infra" / "scenarios"


def _env(settings: Settings, state_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LIVETAG_BROKER_PORT": str(settings.broker_port),
        "LIVETAG_STATE_DIR": str(state_dir),
    }


async def _livetag(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await run_command([sys.executable, "-m", "infra", *args], env, cwd=ROOT)


def _scenario(scenario_id: str, title: str = "A scene") -> records.Scenario:
    return SCENARIO.model_copy(update={"scenario_id": scenario_id, "title": title})


async def _dead_letters_end(settings: Settings) -> int:
    consumer = clients.make_consumer(settings)
    await consumer.start()
    try:
        partition = TopicPartition(topics.DEADLETTER, 0)
        return int((await consumer.end_offsets([partition]))[partition])
    finally:
        await consumer.stop()


async def _dead_letter_of(settings: Settings, since: int, service: str) -> records.DeadLetter:
    consumer = clients.make_consumer(settings)
    await consumer.start()
    partition = TopicPartition(topics.DEADLETTER, 0)
    try:
        consumer.assign([partition])
        consumer.seek(partition, since)
        async with asyncio.timeout(20):
            while True:
                batches = await consumer.getmany(partition, timeout_ms=500)
                for message in batches.get(partition, []):
                    letter = records.decode(records.DeadLetter, message.value, message.headers)
                    if letter.service == service:
                        return letter
    finally:
        await consumer.stop()


async def test_a_library_follows_what_is_published_and_deleted_and_skips_bad_records(
    settings: Settings,
) -> None:
    async with clients.admin_client(settings) as admin:
        await topics.ensure_shared_topics(admin, settings)
    tag = uuid.uuid4().hex[:8]
    first, second = _scenario(f"lib-{tag}-a", "First"), _scenario(f"lib-{tag}-b", "Second")
    producer = clients.make_producer(settings)
    await producer.start()
    service = f"test-scenarios-{tag}"
    library = ScenarioLibrary(settings, dead_letters=producer, service=service)
    try:
        await publish_scenario(producer, first, "file:first.toml")
        await library.start()  # read whole at start...
        assert library.get(first.scenario_id) == first
        assert library.record(first.scenario_id).saved_by == "file:first.toml"  # type: ignore[union-attr]
        # ... then followed: a new scenario, a change and a withdrawal arrive live.
        letters_from = await _dead_letters_end(settings)
        await producer.send_and_wait(topics.SCENARIOS, b'{"scenario": 1}', key=b"lib-bad")
        await publish_scenario(producer, second, "director")
        changed = first.model_copy(update={"title": "First, changed"})
        await publish_scenario(producer, changed, "director")
        await library.wait_until(lambda: library.record(second.scenario_id), timeout_s=20)
        await library.wait_until(
            lambda: (
                library.record(first.scenario_id)
                if library.get(first.scenario_id) == changed
                else None
            ),
            timeout_s=20,
        )
        ids = [scenario.scenario_id for scenario in library.all()]
        assert {first.scenario_id, second.scenario_id} <= set(ids)
        assert ids == sorted(ids)
        await delete_scenario(producer, second, "director")
        await library.wait_until(
            lambda: (
                library.record(second.scenario_id)
                if library.get(second.scenario_id) is None
                else None
            ),
            timeout_s=20,
        )
        assert library.record(second.scenario_id).deleted  # type: ignore[union-attr]
        assert second.scenario_id not in [s.scenario_id for s in library.all()]
        # The record that is no scenario: skipped, counted, dead-lettered.
        assert library.counters()["undecodable"] >= 1
        letter = await _dead_letter_of(settings, letters_from, service)
        assert letter.source_topic == topics.SCENARIOS
        assert letter.source_key == "lib-bad"
        assert "scenario" in letter.reason
    finally:
        await library.stop()
        await producer.stop()


async def test_up_loads_the_folder_keeps_the_editors_changes_and_skips_bad_files(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tag = uuid.uuid4().hex[:8]
    kept, plain = f"up-{tag}-kept", f"up-{tag}-plain"
    for scenario_id in (kept, plain):
        (tmp_path / f"{scenario_id}.toml").write_text(scenario_to_toml(_scenario(scenario_id)))
    bad = tmp_path / f"up-{tag}-bad.toml"
    bad.write_text('title = "x"\nprompt = "y"\n[[roles]]\nname = "a"\ntargets = ["jealousy"]\n')
    said = await load_folder(settings, tmp_path, vocabulary_labels=LABELS)
    assert said.startswith(f"2 from {tmp_path}, published 2, 1 file(s) with errors skipped")
    assert f"{bad}:5: roles[0].targets[0]: 'jealousy' is not in the vocabulary" in caplog.text

    # The director edits one in the dashboard; the next start leaves it as edited and does
    # not publish the unchanged one again.
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        edited = _scenario(kept, "Edited on the dashboard")
        await publish_scenario(producer, edited, "director")
    finally:
        await producer.stop()
    said = await load_folder(settings, tmp_path, vocabulary_labels=LABELS)
    assert f"1 kept as edited in the library ({kept})" in said
    assert "published" not in said
    # A file that changed is published again.
    (tmp_path / f"{plain}.toml").write_text(scenario_to_toml(_scenario(plain, "Rewritten")))
    said = await load_folder(settings, tmp_path, vocabulary_labels=LABELS)
    assert "published 1" in said
    library = ScenarioLibrary(settings)
    await library.start()
    try:
        assert library.get(kept) == edited
        assert library.get(plain) == _scenario(plain, "Rewritten")
    finally:
        await library.stop()


async def test_the_documented_commands_load_the_examples_and_cast_a_scene(
    settings: Settings, state_dir: Path
) -> None:
    env = _env(settings, state_dir)
    commands = [
        shlex.split(line)
        for line in marked_block("scenario-commands", "shell").splitlines()
        if line.strip()
    ]
    assert [argv[1:3] for argv in commands] == [
        ["scenarios", "check"],
        ["scenarios", "load"],
        ["scenarios", "list"],
        ["session", "create"],
        ["session", "create"],
    ]
    outputs = []
    for argv in commands:
        assert argv[0] == ".venv/bin/livetag"
        code, out, err = await run_command([str(ROOT / argv[0]), *argv[1:]], env, cwd=ROOT)
        assert code == 0, f"{shlex.join(argv)} exited {code}: {err}"
        outputs.append(out)
    examples = load_library(EXAMPLES, vocabulary_labels=LABELS).scenarios
    checked, loaded, listed, reunion, interview = outputs
    assert [line.split("\t")[:2] for line in checked.splitlines()] == [
        ["ok", scenario_id] for scenario_id in sorted(examples)
    ]
    assert [line.split("\t")[0] for line in loaded.splitlines()] == sorted(examples)
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.splitlines()}
    assert rows["reunion"] == ["reunion", "2", "180", examples["reunion"][1].title]

    # The session records carry the scenario, the parts and the scenario's prompt.
    session_id = reunion.splitlines()[0].removeprefix("session ")
    assert reunion.splitlines()[1:3] == ["part\talice\tthe old friend", "part\tbob\tthe latecomer"]
    record = await read_session(settings, session_id, timeout_s=10)
    assert record is not None
    assert record.scenario == examples["reunion"][1]
    assert record.roles == {"alice": "the old friend", "bob": "the latecomer"}
    assert record.prompt == examples["reunion"][1].prompt
    session_id = interview.splitlines()[0].removeprefix("session ")
    record = await read_session(settings, session_id, timeout_s=10)
    assert record is not None
    assert record.scenario == examples["job-interview"][1]
    assert record.roles == {"carla": "the candidate", "dev": "the interviewer"}


async def test_session_create_with_a_scenario_refuses_what_does_not_fit(
    settings: Settings, state_dir: Path, tmp_path: Path
) -> None:
    env = _env(settings, state_dir)
    scenario_file = tmp_path / "quarrel.toml"
    scenario_file.write_text(scenario_to_toml(_scenario("quarrel")))
    vocabulary = tmp_path / "vocabulary.toml"
    vocabulary.write_text('[[label]]\nlabel = "laughter"\nhotkey = "l"\ncolour = "#ffcc00"\n')
    sid = f"scn-{uuid.uuid4().hex[:8]}"
    cases = [
        (
            ["--scenario", "no-such-scenario", "--performers", "ana"],
            "no scenario 'no-such-scenario' in the library",
        ),
        (
            ["--scenario", str(scenario_file), "--performers", "ana,ben,cy"],
            "3 performers and 2 parts",
        ),
        (
            ["--scenario", str(scenario_file), "--performers", "ana", "--role", "ana=the butler"],
            "'the butler' is not a part",
        ),
        (
            ["--scenario", str(scenario_file), "--performers", "ana", "--role", "ana"],
            "expected PERFORMER=ROLE",
        ),
        (
            ["--prompt", "x", "--performers", "ana", "--role", "ana=the friend"],
            "--role goes with --scenario",
        ),
        (["--performers", "ana"], "give --prompt, or --scenario"),
    ]
    for args, says in cases:
        code, out, err = await _livetag(env, "session", "create", *args, "--id", sid)
        assert code == 2, (args, out, err)
        assert says in err, (args, err)
        assert out == ""
    # The scenario's emotions must be in the session's vocabulary: the line is told.
    code, out, err = await _livetag(
        env,
        "session",
        "create",
        "--scenario",
        str(scenario_file),
        "--performers",
        "ana",
        "--vocabulary",
        str(vocabulary),
        "--id",
        sid,
    )
    assert code == 2
    line = scenario_file.read_text().splitlines().index('targets = ["laughter", "hesitation"]') + 1
    assert re.search(
        rf"Error: {re.escape(str(scenario_file))}:{line}: targets\[1\]: 'hesitation' is not in "
        r"the vocabulary \(known: laughter\)",
        err,
    ), err
    assert await read_session(settings, sid, timeout_s=1) is None  # nothing was created
    # --prompt wins over the scenario's, and a library scenario is found by id.
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        await publish_scenario(producer, _scenario("quarrel-lib"), "director")
    finally:
        await producer.stop()
    code, out, err = await _livetag(
        env,
        "session",
        "create",
        "--scenario",
        "quarrel-lib",
        "--prompt",
        "Our own prompt",
        "--performers",
        "ana,ben",
        "--role",
        "ben=the friend",
        "--id",
        sid,
    )
    assert code == 0, err
    record = await read_session(settings, sid, timeout_s=10)
    assert record is not None
    assert record.prompt == "Our own prompt"
    assert record.roles == {"ana": "the widower", "ben": "the friend"}
    assert parse_scenario(scenario_to_toml(record.scenario)) == _scenario("quarrel-lib")  # type: ignore[arg-type]


def test_livetag_up_loads_scenario_dir_and_runs_on_past_a_bad_file(tmp_path: Path) -> None:
    from tests.integration.test_up import _free_port

    folder = tmp_path / "scenarios"
    folder.mkdir()
    for path in EXAMPLES.glob("*.toml"):
        (folder / path.name).write_text(path.read_text())
    bad = folder / "broken.toml"
    bad.write_text('title = "x"\nprompt = "y"\n[[roles]\nname = "a"\n')
    port = _free_port()
    env = {
        **os.environ,
        "LIVETAG_BROKER_PORT": str(port),
        "LIVETAG_STATE_DIR": str(tmp_path / "state"),
        "LIVETAG_CAPTURE_PORT": "0",
        "LIVETAG_DASHBOARD_PORT": str(_free_port()),
        "LIVETAG_SCENARIO_DIR": str(folder),
    }
    env.pop("LIVETAG_KAFKA_BOOTSTRAP", None)
    with subprocess.Popen(
        [sys.executable, "-m", "infra", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        try:
            assert process.stdout is not None
            lines = []
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                lines.append(line)
                if "press Ctrl-C to stop" in line or not line:
                    break
            said = [line for line in lines if line.startswith("scenarios ")]
            assert said == [
                f"scenarios        3 from {folder}, published 3, 1 file(s) with errors "
                "skipped (logged)\n"
            ], lines
            assert "press Ctrl-C to stop" in lines[-1], lines  # it runs on
            listed = subprocess.run(
                [sys.executable, "-m", "infra", "scenarios", "list"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert [row.split("\t")[0] for row in listed.stdout.splitlines()] == [
                "cooking-show",
                "job-interview",
                "reunion",
            ]
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, err
    assert f"scenario skipped: {bad}:3: not TOML: Expected ']]'" in err, err


async def test_load_publishes_nothing_when_a_file_is_bad_and_delete_withdraws(
    settings: Settings, state_dir: Path, tmp_path: Path
) -> None:
    env = _env(settings, state_dir)
    tag = uuid.uuid4().hex[:8]
    good = tmp_path / f"good-{tag}.toml"
    good.write_text(scenario_to_toml(_scenario(f"good-{tag}")))
    bad = tmp_path / f"bad-{tag}.yaml"
    bad.write_text("title: x\nprompt: y\nroles:\n  - name: a\n    targets: [jealousy]\n")
    code, out, err = await _livetag(env, "scenarios", "load", str(tmp_path))
    assert code == 2
    assert out == ""
    assert f"{bad}:5: roles[0].targets[0]: 'jealousy' is not in the vocabulary" in err
    code, out, err = await _livetag(env, "scenarios", "list")
    assert code == 0, err
    assert f"good-{tag}" not in out  # all or nothing
    bad.unlink()
    code, out, err = await _livetag(env, "scenarios", "load", str(tmp_path))
    assert (code, out) == (0, f"good-{tag}\t{good}\n"), err
    code, out, err = await _livetag(env, "scenarios", "delete", f"good-{tag}")
    assert (code, out) == (0, f"deleted\tgood-{tag}\n"), err
    code, out, err = await _livetag(env, "scenarios", "list")
    assert f"good-{tag}" not in out
    code, out, err = await _livetag(env, "scenarios", "delete", f"good-{tag}")
    assert code == 2
    assert f"no scenario 'good-{tag}' in the library" in err
