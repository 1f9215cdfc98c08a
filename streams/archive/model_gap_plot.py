"""The model gap of a take as a picture (needs matplotlib: the optional ``report`` extra).

Per model, side by side: the confusion matrix of the human consensus (rows) against the
model's answer (columns: its top label, and ``(none)`` last where it read a face without
one) over the agreed windows the model read, and the take's timeline, one lane per
performer, with every agreed window the model read: grey where it agreed, in the human
label's vocabulary colour where it did not (more opaque with a larger gap). Drawn on a bare
:class:`matplotlib.figure.Figure` (no pyplot, no GUI backend).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from streams import records
from streams.archive import model_gap
from streams.archive.plotting import draw_confusion

_AGREED_COLOUR = "#c8c8c8"
_OTHER_COLOUR = "#7f7f7f"


def plot_take(
    session: records.SessionRecord, take: model_gap.TakeReport, t0_us: int, path: Path
) -> None:
    """Write the take's picture as PNG to ``path``."""
    models = list(dict.fromkeys(row.model for row in take.summary))
    figure = Figure(figsize=(14, 0.8 + 3.8 * max(1, len(models))), layout="constrained")
    figure.suptitle(f"{session.session_id} {take.group.name}: human consensus vs model")
    if not models:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no model readings in this session", ha="center", va="center")
    else:
        grid = figure.add_gridspec(len(models), 2, width_ratios=(1, 2.2))
        colours = {entry.label: entry.colour for entry in session.vocabulary}
        for n, model in enumerate(models):
            readings = [
                (window, estimate)
                for window, estimate in model_gap.agreed_readings(take.windows, model)
                if estimate is not None
            ]
            totals = next(
                row
                for row in take.summary
                if row.model == model and row.label == model_gap.ALL_LABELS
            )
            _confusion(figure.add_subplot(grid[n, 0]), readings, session)
            timeline = figure.add_subplot(grid[n, 1])
            _timeline(timeline, take, readings, colours, t0_us)
            rate = (
                "n/a"
                if totals.model_agreement_rate is None
                else (f"{totals.model_agreement_rate:.0%}")
            )
            kappa = "n/a" if totals.kappa is None else f"{totals.kappa:.2f}"
            timeline.set_title(
                f"{model}: {totals.windows_agreed} agreed windows read "
                f"({totals.windows_unread} unread), model agreed {rate}, "
                f"Cohen's kappa {kappa}, {totals.gap_windows} gap windows",
                fontsize=10,
            )
    figure.savefig(path, dpi=100, format="png")


def _confusion(
    axes: Axes,
    readings: list[tuple[records.LabelWindow, records.ModelEstimate]],
    session: records.SessionRecord,
) -> None:
    order = {entry.label: n for n, entry in enumerate(session.vocabulary)}

    def ordered(labels: set[str]) -> list[str]:
        return sorted(
            labels,
            key=lambda label: (label == model_gap.NO_LABEL, order.get(label, len(order)), label),
        )

    pairs = [(w.consensus or "", model_gap.model_answer(e) or "") for w, e in readings]
    humans = ordered({h for h, _ in pairs})
    said = ordered({m for _, m in pairs})
    counts = [[0] * len(said) for _ in humans]
    for human, model in pairs:
        counts[humans.index(human)][said.index(model)] += 1
    draw_confusion(
        axes,
        humans,
        said,
        counts,
        xlabel="model answer ((none): read, no top label)",
        ylabel="human consensus",
        empty="no agreed window read",
    )


def _timeline(
    axes: Axes,
    take: model_gap.TakeReport,
    readings: list[tuple[records.LabelWindow, records.ModelEstimate]],
    colours: dict[str, str],
    t0_us: int,
) -> None:
    group = take.group
    origin = t0_us if group.take_id is None or group.start_us is None else group.start_us
    performers = sorted({window.performer_id for window in take.windows})
    lanes = {performer: n for n, performer in enumerate(performers)}
    gap_labels: dict[str, str] = {}
    for window, estimate in readings:
        start = (window.ts_us - origin) / 1e6
        width = window.window_us / 1e6
        lane = lanes[window.performer_id]
        human = window.consensus or ""
        if model_gap.model_answer(estimate) == human:
            axes.broken_barh([(start, width)], (lane - 0.12, 0.24), color=_AGREED_COLOUR)
            continue
        gap = 1.0 - float(estimate.probabilities.get(human, 0.0))
        colour = colours.get(human, _OTHER_COLOUR)
        gap_labels[human] = colour
        axes.broken_barh(
            [(start, width)], (lane - 0.35, 0.7), color=colour, alpha=0.35 + 0.65 * gap
        )
    axes.set_yticks(range(len(performers)), performers)
    axes.set_ylim(-0.6, max(len(performers), 1) - 0.4)
    axes.set_xlabel(
        "seconds of media time (from t0_us)"
        if group.take_id is None
        else f"seconds from the start of take {group.take_id}"
    )
    if group.take_id is not None and group.start_us is not None and group.end_us is not None:
        axes.set_xlim(0, (group.end_us - group.start_us) / 1e6)
    handles = [Patch(color=_AGREED_COLOUR, label="model agreed")]
    handles += [
        Patch(color=colour, label=f"gap: humans said {label}")
        for label, colour in sorted(gap_labels.items())
    ]
    axes.legend(handles=handles, loc="upper right", fontsize=8)
