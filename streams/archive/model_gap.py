"""The model gap of an archived session: per take, the windows where the human raters
agreed and a model rater did not (``livetag export --format gap``).

These are the moments worth training on: people saw one thing, clearly enough to agree,
and the model read something else. Everything is computed from the newest revision of
each label window, the one a live consumer ends up with.

**Agreement.** A window's humans agree when it has a consensus label, at least
``MIN_RATERS`` = 2 raters hold a label in it, and ``consensus_agreement`` (the share of
them holding the consensus label) is at least ``AGREEMENT_MIN`` = 2/3, Krippendorff's
lowest acceptable reliability (Krippendorff, K. (2004). *Content Analysis: An
Introduction to Its Methodology*, 2nd ed., p. 241: alpha >= .667 for tentative
conclusions): two of three raters agree, and the aligner's 0.6667 counts. One rater alone
agrees with nobody, so a window only one rater tagged is left out.

**The model.** A window's ``models`` holds each model rater's estimate; every model is
reported on its own. A model *read* the window when its estimate has frames read
(``frames_read`` > 0); agreed windows it did not read (no face, thinned, failed, or no
estimate at all) are counted as ``windows_unread``, never as disagreements. What a model
*answered* in a window it read is its top label, or ``NO_LABEL`` = ``(none)`` where it has
none: its classes outside the vocabulary (FER2013's neutral) weigh at least as much as its
best label (:func:`streams.records.model_top_label`). ``(none)`` is an answer like any
other: where the humans agreed on a label it is a miss (the commonest way such a model is
wrong: people saw embarrassment, it saw a neutral face), it has its own column in the
confusion matrix and counts in kappa.

**Takes.** A window belongs to the take whose span holds its start (``start_ts_us <=
ts_us < end_ts_us``; a take not ended yet runs on). Windows outside every take form the
group ``no-take``, written only when there are some; their ``take_*`` columns are null and
their time is read on ``media_*`` (seconds from the archive's ``t0_us``, the media's 0).

**Tables** (per group: ``model_gap/take-N.{parquet,csv}`` and ``take-N.summary.*``):

- the gap: one row per agreed window and model that read it but answered other than the
  consensus (``model_label``: its top label, or ``(none)``); ``model_probability`` is the
  probability of that answer (for ``(none)``: the weight of the model's classes outside the
  vocabulary); ``gap`` = 1 - the model's probability of the human label (1 when the
  model's classes do not map to that label: ``model_has_label`` is false then);
- the summary: per model, per label of the vocabulary (then any other label seen, then
  ``(none)`` when a model answered it), over the agreed windows the model read:
  ``windows_agreed`` (humans agreed on the label), ``model_agreed`` and
  ``model_agreement_rate`` (the model answered it too: the model's recall of the human
  label), ``model_said`` (the model answered the label),
  ``kappa`` (Cohen's kappa of the label against the rest: humans' yes/no against the
  model's), ``gap_windows`` and ``mean_gap``; a row with label ``(all)`` holds the totals,
  the accuracy and Cohen's kappa over every label (Cohen, J. (1960). A coefficient of
  agreement for nominal scales. *Educational and Psychological Measurement*, 20(1),
  37-46). Kappa is null where it is undefined: no windows, or chance agreement 1 (both
  sides said one and the same thing throughout).

**Plot** (``take-N.png``, with the optional ``report`` extra: matplotlib): per model, the
confusion matrix human consensus x model answer (``(none)`` its own column) over the
agreed windows it read, and
the take's timeline with each performer's agreed windows (grey where the model agreed,
in the human label's colour where it did not, darker with a larger gap).
"""

from __future__ import annotations

import csv
import importlib
import logging
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from streams import records
from streams.archive import store
from streams.labels import ledger

__all__ = [
    "AGREEMENT_MIN",
    "ALL_LABELS",
    "MIN_RATERS",
    "NO_LABEL",
    "NO_TAKE",
    "GapRow",
    "Group",
    "SummaryRow",
    "TakeReport",
    "agreed_readings",
    "by_group",
    "cohen_kappa",
    "export_gap",
    "gap_rows",
    "human_agreed",
    "model_answer",
    "model_answer_probability",
    "optional_plotter",
    "report",
    "summary_rows",
    "write_table",
]

log = logging.getLogger(__name__)

# The thresholds of human agreement, shared with the ledger (streams.labels.ledger).
AGREEMENT_MIN: Final = ledger.AGREEMENT_MIN
MIN_RATERS: Final = ledger.MIN_RATERS
ALL_LABELS: Final = "(all)"
#: A model's answer in a window it read without a top label (a neutral face): not a valid
#: label of any vocabulary, so it never stands for one.
NO_LABEL: Final = "(none)"
NO_TAKE: Final = "no-take"
FOLDER: Final = "model_gap"
#: Probabilities, rates and kappas are rounded so (the aligner rounds agreement so too).
DIGITS: Final = 4


@dataclass(frozen=True, slots=True)
class Group:
    """A take, or the windows outside every take (``take_id`` None)."""

    take_id: int | None
    start_us: int | None
    end_us: int | None

    @property
    def name(self) -> str:
        return NO_TAKE if self.take_id is None else f"take-{self.take_id}"

    def holds(self, ts_us: int) -> bool:
        assert self.start_us is not None
        return self.start_us <= ts_us and (self.end_us is None or ts_us < self.end_us)


@dataclass(frozen=True, slots=True)
class GapRow:
    session_id: str
    take_id: int | None
    performer_id: str
    start_ts_us: int
    end_ts_us: int
    take_start_s: float | None
    take_end_s: float | None
    media_start_s: float
    media_end_s: float
    human_label: str
    human_agreement: float
    raters: int
    model: str
    model_label: str
    model_probability: float | None
    model_probability_of_human: float
    model_has_label: bool
    gap: float
    frames_read: int
    revision: int


@dataclass(frozen=True, slots=True)
class SummaryRow:
    session_id: str
    take_id: int | None
    model: str
    label: str
    windows_agreed: int
    windows_unread: int
    model_agreed: int
    model_agreement_rate: float | None
    model_said: int
    kappa: float | None
    gap_windows: int
    mean_gap: float | None


GAP_SCHEMA: Final = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("take_id", pa.int64()),
        pa.field("performer_id", pa.string(), nullable=False),
        pa.field("start_ts_us", pa.int64(), nullable=False),
        pa.field("end_ts_us", pa.int64(), nullable=False),
        pa.field("take_start_s", pa.float64()),
        pa.field("take_end_s", pa.float64()),
        pa.field("media_start_s", pa.float64(), nullable=False),
        pa.field("media_end_s", pa.float64(), nullable=False),
        pa.field("human_label", pa.string(), nullable=False),
        pa.field("human_agreement", pa.float64(), nullable=False),
        pa.field("raters", pa.int64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_label", pa.string(), nullable=False),
        pa.field("model_probability", pa.float64()),
        pa.field("model_probability_of_human", pa.float64(), nullable=False),
        pa.field("model_has_label", pa.bool_(), nullable=False),
        pa.field("gap", pa.float64(), nullable=False),
        pa.field("frames_read", pa.int64(), nullable=False),
        pa.field("revision", pa.int64(), nullable=False),
    ]
)
SUMMARY_SCHEMA: Final = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("take_id", pa.int64()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("windows_agreed", pa.int64(), nullable=False),
        pa.field("windows_unread", pa.int64(), nullable=False),
        pa.field("model_agreed", pa.int64(), nullable=False),
        pa.field("model_agreement_rate", pa.float64()),
        pa.field("model_said", pa.int64(), nullable=False),
        pa.field("kappa", pa.float64()),
        pa.field("gap_windows", pa.int64(), nullable=False),
        pa.field("mean_gap", pa.float64()),
    ]
)


@dataclass(frozen=True, slots=True)
class TakeReport:
    group: Group
    windows: list[records.LabelWindow]
    rows: list[GapRow]
    summary: list[SummaryRow]


# ---------------------------------------------------------------- the measures


def human_agreed(
    window: records.LabelWindow,
    *,
    agreement_min: float = AGREEMENT_MIN,
    min_raters: int = MIN_RATERS,
) -> bool:
    """Whether the window's human raters agreed on its consensus label (every rater counts:
    the ledger's observers' agreement is :func:`streams.labels.ledger.perceived`'s)."""
    return (
        window.consensus is not None
        and window.consensus_agreement is not None
        and window.consensus_agreement >= agreement_min
        and len(window.raters) >= min_raters
    )


def model_answer(estimate: records.ModelEstimate) -> str | None:
    """What the model answered in the window: its top label, ``NO_LABEL`` where it read
    frames and has none (a neutral face), None where it read no frame."""
    if estimate.frames_read == 0:
        return None
    return estimate.top_label or NO_LABEL


def model_answer_probability(estimate: records.ModelEstimate) -> float | None:
    """The model's probability of its answer; for ``NO_LABEL``, the weight of its classes
    outside the vocabulary, which outweighed its best label. None where it read nothing."""
    answer = model_answer(estimate)
    if answer is None:
        return None
    if answer == NO_LABEL:
        outside = 1.0 - sum(float(p) for p in estimate.probabilities.values())
        return round(min(1.0, max(0.0, outside)), DIGITS)
    found = estimate.probabilities.get(answer)
    return None if found is None else float(found)


def _reading(window: records.LabelWindow, model: str) -> records.ModelEstimate | None:
    """The model's estimate of the window if it read it (frames read)."""
    for estimate in window.models:
        if estimate.model == model and model_answer(estimate) is not None:
            return estimate
    return None


def agreed_readings(
    windows: Iterable[records.LabelWindow],
    model: str,
    *,
    agreement_min: float = AGREEMENT_MIN,
    min_raters: int = MIN_RATERS,
) -> list[tuple[records.LabelWindow, records.ModelEstimate | None]]:
    """The windows whose humans agreed, each with the model's estimate if it read it."""
    return [
        (window, _reading(window, model))
        for window in windows
        if human_agreed(window, agreement_min=agreement_min, min_raters=min_raters)
    ]


_Category = TypeVar("_Category", bound=Hashable)


def cohen_kappa(confusion: Mapping[tuple[_Category, _Category], int]) -> float | None:
    """Cohen's kappa of two raters' nominal labels of the same items, from how many items
    each (first's label, second's label) pair has (counts of 0 or less count nothing):
    (p_o - p_e) / (1 - p_e). None without items, or where chance agreement p_e is 1
    (undefined). Straight from the counts: the cost is the number of distinct pairs,
    whatever the number of items."""
    n = 0
    same = 0
    first: Counter[_Category] = Counter()
    second: Counter[_Category] = Counter()
    for (a, b), count in confusion.items():
        if count <= 0:
            continue
        n += count
        first[a] += count
        second[b] += count
        if a == b:
            same += count
    if n == 0:
        return None
    # In whole numbers: chance agreement is exactly 1 or not.
    chance = sum(first[c] * second[c] for c in first.keys() & second.keys())
    if chance == n * n:
        return None
    return (same * n - chance) / (n * n - chance)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)


def _seconds(ts_us: int, origin_us: int) -> float:
    return round((ts_us - origin_us) / 1e6, 6)


def gap_rows(
    session_id: str,
    group: Group,
    windows: Iterable[records.LabelWindow],
    *,
    t0_us: int,
    agreement_min: float = AGREEMENT_MIN,
    min_raters: int = MIN_RATERS,
) -> list[GapRow]:
    """The windows of a group where the humans agreed and a model that read them answered
    otherwise (another label, or ``NO_LABEL``), one row per window and model, by
    performer, time and model."""
    rows = []
    for window in windows:
        if not human_agreed(window, agreement_min=agreement_min, min_raters=min_raters):
            continue
        human, agreement = window.consensus, window.consensus_agreement
        assert human is not None
        assert agreement is not None
        for estimate in sorted(window.models, key=lambda e: e.model):
            said = model_answer(estimate)
            if said is None or said == human:
                continue
            of_human = estimate.probabilities.get(human)
            top = model_answer_probability(estimate)
            end_us = window.ts_us + window.window_us
            rows.append(
                GapRow(
                    session_id=session_id,
                    take_id=group.take_id,
                    performer_id=window.performer_id,
                    start_ts_us=window.ts_us,
                    end_ts_us=end_us,
                    take_start_s=None
                    if group.take_id is None or group.start_us is None
                    else _seconds(window.ts_us, group.start_us),
                    take_end_s=None
                    if group.take_id is None or group.start_us is None
                    else _seconds(end_us, group.start_us),
                    media_start_s=_seconds(window.ts_us, t0_us),
                    media_end_s=_seconds(end_us, t0_us),
                    human_label=human,
                    human_agreement=float(agreement),
                    raters=len(window.raters),
                    model=estimate.model,
                    model_label=said,
                    model_probability=top,
                    model_probability_of_human=float(of_human or 0.0),
                    model_has_label=of_human is not None,
                    gap=round(1.0 - float(of_human or 0.0), DIGITS),
                    frames_read=estimate.frames_read,
                    revision=window.revision,
                )
            )
    rows.sort(key=lambda r: (r.performer_id, r.start_ts_us, r.model))
    return rows


def summary_rows(
    session_id: str,
    group: Group,
    windows: Sequence[records.LabelWindow],
    *,
    models: Sequence[str],
    labels: Sequence[str],
    agreement_min: float = AGREEMENT_MIN,
    min_raters: int = MIN_RATERS,
) -> list[SummaryRow]:
    """Per model: a row per label, then the ``(all)`` row, over the group's agreed windows
    (``labels`` may hold ``NO_LABEL``: a row of how often the model answered it)."""
    out = []
    for model in models:
        confusion: Counter[tuple[str, str]] = Counter()  # (human, answer) of windows read
        gaps: dict[str, list[float]] = {}  # human label -> the gaps of its windows read
        every_gap: list[float] = []
        unread: Counter[str] = Counter()
        agreed = agreed_readings(windows, model, agreement_min=agreement_min, min_raters=min_raters)
        for window, estimate in agreed:
            human = window.consensus
            assert human is not None
            answer = None if estimate is None else model_answer(estimate)
            if estimate is None or answer is None:
                unread[human] += 1
                continue
            confusion[(human, answer)] += 1
            missing = 1.0 - float(estimate.probabilities.get(human, 0.0))
            gaps.setdefault(human, []).append(missing)
            every_gap.append(missing)
        for label in labels:
            agreed_on = sum(n for (h, _), n in confusion.items() if h == label)
            said = sum(n for (_, m), n in confusion.items() if m == label)
            matched = confusion[(label, label)]
            label_gaps = gaps.get(label, [])
            binary: Counter[tuple[bool, bool]] = Counter()
            for (h, m), n in confusion.items():
                binary[(h == label, m == label)] += n
            out.append(
                SummaryRow(
                    session_id=session_id,
                    take_id=group.take_id,
                    model=model,
                    label=label,
                    windows_agreed=agreed_on,
                    windows_unread=unread[label],
                    model_agreed=matched,
                    model_agreement_rate=_round(matched / agreed_on) if agreed_on else None,
                    model_said=said,
                    kappa=_round(cohen_kappa(binary)),
                    gap_windows=agreed_on - matched,
                    mean_gap=_round(sum(label_gaps) / len(label_gaps)) if label_gaps else None,
                )
            )
        read = sum(confusion.values())
        matched = sum(n for (h, m), n in confusion.items() if h == m)
        out.append(
            SummaryRow(
                session_id=session_id,
                take_id=group.take_id,
                model=model,
                label=ALL_LABELS,
                windows_agreed=read,
                windows_unread=sum(unread.values()),
                model_agreed=matched,
                model_agreement_rate=_round(matched / read) if read else None,
                model_said=read,
                kappa=_round(cohen_kappa(confusion)),
                gap_windows=read - matched,
                mean_gap=_round(sum(every_gap) / len(every_gap)) if every_gap else None,
            )
        )
    return out


# ---------------------------------------------------------------- per take


def groups_of(session: records.SessionRecord) -> list[Group]:
    """The session's takes in order, then the group of windows outside them."""
    takes = sorted(session.takes, key=lambda take: (take.start_ts_us, take.take_id))
    found = [Group(take.take_id, take.start_ts_us, take.end_ts_us) for take in takes]
    return [*found, Group(None, None, None)]


def _group_of(takes: Sequence[Group], ts_us: int) -> Group | None:
    # The latest-started take holding the instant (takes do not overlap when a director
    # starts one after ending the last; should they, the newer one has it).
    holding = [group for group in takes if group.holds(ts_us)]
    return holding[-1] if holding else None


def by_group(
    session: records.SessionRecord, latest: Iterable[records.LabelWindow]
) -> dict[Group, list[records.LabelWindow]]:
    """The windows of each take (every take, even without windows), then those outside
    takes (only when there are some), in the order given."""
    all_groups = groups_of(session)
    takes, outside = all_groups[:-1], all_groups[-1]
    members: dict[Group, list[records.LabelWindow]] = {group: [] for group in all_groups}
    for window in latest:
        members[_group_of(takes, window.ts_us) or outside].append(window)
    if not members[outside]:
        del members[outside]
    return members


def report(
    session: records.SessionRecord,
    windows: Iterable[records.LabelWindow],
    *,
    t0_us: int,
    agreement_min: float = AGREEMENT_MIN,
    min_raters: int = MIN_RATERS,
) -> list[TakeReport]:
    """The gap of every take (each one, even without windows) and of the windows outside
    takes (only when there are some), from the newest revision of each window."""
    latest = store.latest_labels(windows)
    members = by_group(session, latest)
    models = sorted({estimate.model for window in latest for estimate in window.models})
    vocabulary = [entry.label for entry in session.vocabulary]
    seen = {w.consensus for w in latest if w.consensus is not None}
    answers = {model_answer(e) for w in latest for e in w.models}
    seen |= {answer for answer in answers if answer is not None and answer != NO_LABEL}
    labels = [*vocabulary, *sorted(seen - set(vocabulary))]
    if NO_LABEL in answers:
        labels.append(NO_LABEL)
    out = []
    for group, mine in members.items():
        out.append(
            TakeReport(
                group=group,
                windows=mine,
                rows=gap_rows(
                    session.session_id,
                    group,
                    mine,
                    t0_us=t0_us,
                    agreement_min=agreement_min,
                    min_raters=min_raters,
                ),
                summary=summary_rows(
                    session.session_id,
                    group,
                    mine,
                    models=models,
                    labels=labels,
                    agreement_min=agreement_min,
                    min_raters=min_raters,
                ),
            )
        )
    return out


# ---------------------------------------------------------------- files


def write_table(rows: Sequence[Any], schema: pa.Schema, parquet: Path, text: Path) -> None:
    """Dataclass rows as a Parquet table and the same as CSV (empty cells for nulls)."""
    dumped = [asdict(row) for row in rows]
    table = pa.Table.from_pylist(dumped, schema=schema)
    pq.write_table(table, parquet)
    with text.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(schema.names)
        for row in dumped:
            writer.writerow(_csv_cell(row[name]) for name in schema.names)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


Progress = Callable[[str, int, int], None]


def export_gap(folder: Path, out_dir: Path, progress: Progress) -> list[Path]:
    """Write the model gap of the session archived in ``folder`` into ``out_dir/model_gap``;
    the paths written. Plots need matplotlib (the ``report`` extra): without it they are
    skipped with a warning, the tables are written all the same."""
    manifest = store.read_manifest(folder)
    session = store.manifest_session(folder, manifest)
    t0_us = manifest.get("t0_us")
    if not isinstance(t0_us, int) or isinstance(t0_us, bool):
        raise store.ArchiveError(f"{folder / store.MANIFEST}: t0_us is not an integer")
    windows = store.read_records(folder, "labels")
    takes = report(session, windows, t0_us=t0_us)
    if not any(window.models for take in takes for window in take.windows):
        log.warning(
            "%s: no label window has a model reading (the model lane did not run): "
            "the model gap tables are empty",
            session.session_id,
        )
    target = out_dir / FOLDER
    target.mkdir(parents=True, exist_ok=True)
    plotter = optional_plotter("streams.archive.model_gap_plot", "model gap plots")
    written: list[Path] = []
    for done, take in enumerate(takes):
        progress("writing the model gap", done, len(takes))
        name = take.group.name
        for rows, schema, stem in (
            (take.rows, GAP_SCHEMA, name),
            (take.summary, SUMMARY_SCHEMA, f"{name}.summary"),
        ):
            parquet, text = target / f"{stem}.parquet", target / f"{stem}.csv"
            write_table(rows, schema, parquet, text)
            written += [parquet, text]
        if plotter is not None:
            picture = target / f"{name}.png"
            plotter(session, take, t0_us, picture)
            written.append(picture)
    progress("writing the model gap", len(takes), len(takes))
    return written


def optional_plotter(module: str, what: str, function: str = "plot_take") -> Any | None:
    """A plotting function of a module that needs matplotlib (the ``report`` extra), or
    None with a warning saying ``what`` is skipped when matplotlib is not installed."""
    try:
        plotting = importlib.import_module(module)
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("matplotlib"):
            raise
        log.warning(
            "%s skipped: matplotlib is not installed (pip install 'livetag[report]'); "
            "the tables are written",
            what,
        )
        return None
    return getattr(plotting, function)
