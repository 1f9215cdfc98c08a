"""Drawing shared by the archive's reports (the model gap, the ledger): needs matplotlib,
the optional ``report`` extra; imported only by the modules that plot."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

MATCH_EDGE = "#2ca02c"


def draw_confusion(
    axes: Axes,
    rows: Sequence[str],
    columns: Sequence[str],
    counts: Sequence[Sequence[int]],
    *,
    xlabel: str,
    ylabel: str,
    empty: str,
) -> None:
    """A confusion matrix: counts as shades of blue with the number in each cell, the cells
    where the row's label is the column's outlined in green; ``empty`` is said instead
    when there is nothing to count."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if not rows or not columns:
        axes.text(0.5, 0.5, empty, ha="center", va="center")
        axes.set_xticks([])
        axes.set_yticks([])
        return
    top = max(max(row) for row in counts) or 1
    axes.imshow(counts, cmap="Blues", vmin=0, vmax=top, aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            axes.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if count > top / 2 else "black",
            )
            if rows[i] == columns[j]:
                axes.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=MATCH_EDGE, lw=2)
                )
