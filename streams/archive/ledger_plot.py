"""The ledger of a take as a picture (needs matplotlib: the optional ``report`` extra).

Left, the confusion matrix of the intended emotion (rows) against what observers perceived
(columns; ``(none)`` last: nothing perceived) over the windows with an intended emotion, all
performers together. Right, the take's timeline: four lanes per performer, top to bottom
intended, self-tagged, perceived and measured, each a run of windows with one label drawn
in that label's vocabulary colour (perceived: solid where observers agreed, faint where
they did not; a text cue: a grey mark). Drawn on a bare :class:`matplotlib.figure.Figure`
(no pyplot, no GUI backend).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from streams import records
from streams.archive.ledger_report import LedgerRow, TakeLedger, confusion
from streams.archive.plotting import draw_confusion

LANES = ("intended", "self-tagged", "perceived", "measured")
_OTHER_COLOUR = "#7f7f7f"
_TEXT_COLOUR = "#bdbdbd"


def plot_take(session: records.SessionRecord, take: TakeLedger, t0_us: int, path: Path) -> None:
    """Write the take's picture as PNG to ``path``."""
    performers = sorted({row.performer_id for row in take.rows})
    height = 1.5 + 1.2 * max(1, len(performers))
    figure = Figure(figsize=(14, max(4.0, height)), layout="constrained")
    figure.suptitle(
        f"{session.session_id} {take.group.name}: intended, tagged, perceived, measured"
    )
    grid = figure.add_gridspec(1, 2, width_ratios=(1, 2.4))
    order = [entry.label for entry in session.vocabulary]
    _confusion(figure.add_subplot(grid[0, 0]), take, order)
    _timeline(figure.add_subplot(grid[0, 1]), session, take, performers, t0_us)
    figure.savefig(path, dpi=100, format="png")


def _confusion(axes: Axes, take: TakeLedger, order: Sequence[str]) -> None:
    matrix = confusion(take)
    rank = {label: n for n, label in enumerate(order)}

    def ordered(labels: set[str]) -> list[str]:
        return sorted(
            labels,
            key=lambda label: (
                label == records.NOTHING_PERCEIVED,
                rank.get(label, len(rank)),
                label,
            ),
        )

    rows = ordered(set(matrix))
    columns = ordered({answer for row in matrix.values() for answer in row})
    counts = [[matrix[r].get(c, 0) for c in columns] for r in rows]
    draw_confusion(
        axes,
        rows,
        columns,
        counts,
        xlabel="perceived by observers ((none): nothing)",
        ylabel="intended",
        empty="no window had an intended emotion",
    )


Run = tuple[int, int, str, bool]  # start_us, end_us, label, strong (solid)


def _runs(
    rows: Sequence[LedgerRow], value: Callable[[LedgerRow], tuple[str, bool] | None]
) -> list[Run]:
    """Consecutive windows with one value as one run (cheap to draw)."""
    out: list[Run] = []
    for row in rows:
        found = value(row)
        if found is None:
            continue
        label, solid = found
        if out and out[-1][1] == row.ts_us and out[-1][2:] == (label, solid):
            out[-1] = (out[-1][0], row.end_ts_us, label, solid)
        else:
            out.append((row.ts_us, row.end_ts_us, label, solid))
    return out


def _intended(row: LedgerRow) -> tuple[str, bool] | None:
    if row.intended_label is not None:
        return row.intended_label, True
    if row.cue_kind == "text":
        return "", False  # a line of text in force: a grey mark
    return None


def _self(row: LedgerRow) -> tuple[str, bool] | None:
    return (row.self_tagged.split(",")[0], True) if row.self_tagged else None


def _perceived(row: LedgerRow) -> tuple[str, bool] | None:
    return None if row.perceived_label is None else (row.perceived_label, row.agreed)


def _measured(row: LedgerRow) -> tuple[str, bool] | None:
    return None if row.model_label is None else (row.model_label, True)


def _timeline(
    axes: Axes,
    session: records.SessionRecord,
    take: TakeLedger,
    performers: list[str],
    t0_us: int,
) -> None:
    group = take.group
    origin = t0_us if group.take_id is None or group.start_us is None else group.start_us
    colours = {entry.label: entry.colour for entry in session.vocabulary}
    used: dict[str, str] = {}
    ticks: list[float] = []
    names: list[str] = []
    lanes = (_intended, _self, _perceived, _measured)
    for p, performer in enumerate(performers):
        mine = [row for row in take.rows if row.performer_id == performer]
        for n, (lane, value) in enumerate(zip(LANES, lanes, strict=True)):
            y = -(p * (len(LANES) + 1) + n)
            ticks.append(y)
            names.append(f"{performer} {lane}")
            for start, end, label, solid in _runs(mine, value):
                colour = _TEXT_COLOUR if label == "" else colours.get(label, _OTHER_COLOUR)
                if label:
                    used[label] = colour
                axes.broken_barh(
                    [((start - origin) / 1e6, (end - start) / 1e6)],
                    (y - 0.35, 0.7),
                    color=colour,
                    alpha=1.0 if solid else 0.35,
                )
    axes.set_yticks(ticks, names, fontsize=8)
    if ticks:
        axes.set_ylim(min(ticks) - 0.6, 0.6)
    axes.set_xlabel(
        "seconds of media time (from t0_us)"
        if group.take_id is None
        else f"seconds from the start of take {group.take_id}"
    )
    if group.take_id is not None and group.start_us is not None and group.end_us is not None:
        axes.set_xlim(0, (group.end_us - group.start_us) / 1e6)
    handles = [Patch(color=colour, label=label) for label, colour in sorted(used.items())]
    handles.append(Patch(color=_TEXT_COLOUR, label="text cue"))
    axes.legend(handles=handles, loc="upper right", fontsize=8, ncols=2)
