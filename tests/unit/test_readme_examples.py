"""The documented pandas example (docs/consumers.md, "The session archive") runs as
written on an archive and prints what the archive holds (the consumer example, which needs
a broker, is in tests/integration/test_readme_consumer.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from streams import records
from streams.archive import store
from tests import archive_samples
from tests.documentation import marked_block


def _windows() -> list[records.LabelWindow]:
    """Two performers' windows: every one first without a label, then corrections (a late
    tag) that give four of them a consensus; one of ben's is corrected twice, the second
    time withdrawing it (an undo)."""
    out = []
    for performer, label, loudness in (("ana", "laughter", -20.0), ("ben", "anger", -12.5)):
        first = [
            records.LabelWindow(
                ts_us=archive_samples.T0 + k * 100_000,
                session_id=archive_samples.SID,
                performer_id=performer,
                window_us=100_000,
                features=records.WindowFeatures(loudness_mean_db=loudness - k),
                raters=[],
                consensus=None,
            )
            for k in range(10)
        ]
        corrected = [
            window.model_copy(update={"consensus": label, "revision": 1, "correction": True})
            for window in first[3:7]
        ]
        out += first + corrected
    out.append(out[-1].model_copy(update={"consensus": None, "revision": 2}))
    return out


def test_the_readme_pandas_example_summarises_an_archive(tmp_path: Path) -> None:
    made = archive_samples.sample_records()
    made["labels"] = _windows()
    for kind, items in made.items():
        messages = []
        for offset, item in enumerate(archive_samples.carried(kind, items)):
            encoded = records.encode(item)
            messages.append(
                store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers))
            )
        store.write_part(tmp_path, kind, 0, messages)
    store.build_archive(tmp_path, archive_samples.session(), software={"livetag": "test"})

    # What the example must print, computed from the records without pandas.
    newest: dict[tuple[str, int], records.LabelWindow] = {}
    for window in made["labels"]:
        key = (window.performer_id, window.ts_us)
        if key not in newest or newest[key].revision <= window.revision:
            newest[key] = window
    grouped: dict[tuple[str, str], list[records.LabelWindow]] = defaultdict(list)
    for window in newest.values():
        if window.consensus is not None:
            grouped[(window.performer_id, window.consensus)].append(window)
    expected = ["performer_id,consensus,seconds,loudness_mean_db"] + [
        f"{performer},{label},{sum(w.window_us for w in ws) / 1e6},"
        f"{sum(w.features.loudness_mean_db or 0 for w in ws) / len(ws)}"
        for (performer, label), ws in sorted(grouped.items())
    ]
    assert len(expected) == 3  # both performers have labelled windows

    script = tmp_path / "summarise_archive.py"
    script.write_text(marked_block("archive-example"), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected
