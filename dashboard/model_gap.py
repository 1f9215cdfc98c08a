"""The gap between the human raters and a model rater, per emotion, live: sans I/O.

The rule of which windows count is the archive's model gap's
(:func:`streams.archive.model_gap.human_agreed`), so the live panel and the exported
per-take tables count the same windows: the humans agreed on a window when the aligner
found a consensus label, at least two raters hold a label there
(:data:`~streams.archive.model_gap.MIN_RATERS`), and its ``consensus_agreement`` is at
least two thirds (:data:`~streams.archive.model_gap.AGREEMENT_MIN`). ``consensus_agreement``
is the aligner's own measure (``streams.labels.aligner_core._consensus``): the share of the
raters holding any label in the window who hold the consensus label (most holders /
raters with a label); raters holding nothing are not counted in it, so one rater alone
scores 1.0, hence the two raters. It is not Krippendorff's alpha: two thirds (.667, often
written .67) is borrowed from alpha's threshold for tentative conclusions (Krippendorff,
K. (2004). *Content Analysis: An Introduction to Its Methodology*, 2nd ed., Sage, p. 241).

In those windows each model rater's top label is compared with the consensus: per
emotion, how many windows the model read (its estimate has a top label), how many it read
as the humans did (the model's recall of the humans' label), how often it said the
emotion where the humans agreed on another, and the latest moments it missed (runs of
adjacent windows of one performer with the same agreed label, where the model read
something else). Over all emotions, the share of agreement and Cohen's kappa between the
model and the consensus over the agreed windows it read (Cohen, J. (1960). A coefficient
of agreement for nominal scales. *Educational and Psychological Measurement*, 20(1),
37-46).

Windows are revised (late tags, late features, a late model reading): the newest revision
of a window replaces what the older one counted. Counts are kept incrementally, so a
window costs the same whatever the length of the session.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from streams import records
from streams.archive import model_gap as archived_gap

__all__ = ["LATEST_MOMENTS", "ModelGap", "cohen_kappa", "humans_agreed", "model_missed"]

#: Missed moments kept per model and emotion for the page's list, newest first.
LATEST_MOMENTS: Final = 8


def humans_agreed(window: records.LabelWindow) -> str | None:
    """The label the human raters agreed on in this window, or None (see the module)."""
    return window.consensus if archived_gap.human_agreed(window) else None


def model_missed(agreed: str | None, estimate: records.ModelEstimate) -> bool:
    """A model's reading that differs from what the humans agreed on (no reading: no miss)."""
    return agreed is not None and estimate.top_label is not None and estimate.top_label != agreed


def cohen_kappa(confusion: Counter[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters from their (first's label, second's label) counts; None
    when it is undefined (no units, or chance agreement of 1)."""
    pairs = [pair for pair, count in confusion.items() for _ in range(count)]
    kappa = archived_gap.cohen_kappa(pairs)
    return None if kappa is None else round(kappa, 3)


@dataclass(frozen=True, slots=True)
class _Agreed:
    """A window the humans agreed on: their label, and each model's top label there."""

    label: str
    window_us: int
    tops: tuple[tuple[str, str | None], ...]  # (model, top label or None: no reading)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


class ModelGap:
    """Human consensus against each model rater, over a session's label windows."""

    def __init__(self, vocabulary: Iterable[str]) -> None:
        self._vocabulary = list(vocabulary)
        self._windows: dict[tuple[str, int], _Agreed] = {}
        self._agreed: Counter[str] = Counter()
        # model -> (consensus label, model's top label) -> windows
        self._confusion: dict[str, Counter[tuple[str, str]]] = {}
        # (model, agreed label) -> performer -> window starts it missed, sorted
        self._missed: dict[tuple[str, str], dict[str, list[int]]] = {}
        self.version = 0

    @property
    def models(self) -> list[str]:
        return sorted(self._confusion)

    def add(self, window: records.LabelWindow) -> None:
        """Count a label window (a revision replaces what its older revision counted)."""
        for estimate in window.models:
            if estimate.model not in self._confusion:
                self._confusion[estimate.model] = Counter()
                self.version += 1
        key = (window.performer_id, window.ts_us)
        label = humans_agreed(window)
        new = None
        if label is not None:
            tops = tuple(sorted((e.model, e.top_label) for e in window.models))
            new = _Agreed(label, window.window_us, tops)
        old = self._windows.get(key)
        if old == new:
            return
        if old is not None:
            self._count(key, old, -1)
            del self._windows[key]
        if new is not None:
            self._count(key, new, 1)
            self._windows[key] = new
        self.version += 1

    def _count(self, key: tuple[str, int], agreed: _Agreed, sign: int) -> None:
        performer_id, ts_us = key
        self._agreed[agreed.label] += sign
        for model, top in agreed.tops:
            if top is None:
                continue
            self._confusion[model][(agreed.label, top)] += sign
            if top == agreed.label:
                continue
            starts = self._missed.setdefault((model, agreed.label), {}).setdefault(performer_id, [])
            if sign > 0:
                bisect.insort(starts, ts_us)
            else:
                del starts[bisect.bisect_left(starts, ts_us)]

    # ---------------------------------------------------------------- the summary

    def summary(self) -> dict[str, Any]:
        """What the page's gap panel shows: per emotion and model, the counts and the
        latest missed moments."""
        labels = self._vocabulary + sorted(set(self._agreed) - set(self._vocabulary))
        models: dict[str, Any] = {}
        for model, confusion in sorted(self._confusion.items()):
            confusion = +confusion  # without the pairs counted down to 0
            read = sum(confusion.values())
            agree = sum(count for (human, top), count in confusion.items() if human == top)
            per_label: dict[str, Any] = {}
            for label in labels:
                label_read = sum(n for (human, _), n in confusion.items() if human == label)
                label_agree = confusion[(label, label)]
                said = sum(n for (human, top), n in confusion.items() if top == label)
                per_label[label] = {
                    "read": label_read,
                    "agree": label_agree,
                    "share": _share(label_agree, label_read),
                    "missed": label_read - label_agree,
                    "said_elsewhere": said - label_agree,
                    "latest": self._latest_moments(model, label),
                }
            models[model] = {
                "read": read,
                "agree": agree,
                "share": _share(agree, read),
                "kappa": cohen_kappa(confusion),
                "labels": per_label,
            }
        return {
            "threshold": archived_gap.AGREEMENT_MIN,
            "min_raters": archived_gap.MIN_RATERS,
            "agreed": {label: self._agreed[label] for label in labels},
            "models": models,
        }

    def _latest_moments(self, model: str, label: str) -> list[dict[str, Any]]:
        moments: list[dict[str, Any]] = []
        for performer_id, starts in self._missed.get((model, label), {}).items():
            moments.extend(self._runs(model, performer_id, starts))
        moments.sort(key=lambda moment: (-moment["end_us"], moment["performer_id"]))
        return moments[:LATEST_MOMENTS]

    def _runs(self, model: str, performer_id: str, starts: list[int]) -> list[dict[str, Any]]:
        """The newest runs of adjacent missed windows of one performer, newest first."""
        runs: list[dict[str, Any]] = []
        index = len(starts) - 1
        while index >= 0 and len(runs) < LATEST_MOMENTS:
            end = starts[index] + self._windows[(performer_id, starts[index])].window_us
            said: Counter[str] = Counter()
            first = index
            while first >= 0:
                window = self._windows[(performer_id, starts[first])]
                if first < index and starts[first] + window.window_us != starts[first + 1]:
                    break
                top = dict(window.tops)[model]
                if top is not None:
                    said[top] += 1
                first -= 1
            start = starts[first + 1]
            runs.append(
                {
                    "performer_id": performer_id,
                    "start_us": start,
                    "end_us": end,
                    "windows": index - first,
                    # What the model read there most often (ties: the first by name).
                    "model_label": min(said, key=lambda top: (-said[top], top)),
                }
            )
            index = first
        return runs
