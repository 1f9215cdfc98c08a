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

In those windows each model rater's answer is compared with the consensus: its top label,
or ``(none)`` (:data:`~streams.archive.model_gap.NO_LABEL`) where it read the face and its
classes outside the vocabulary (FER2013's neutral) outweighed its best label, which is a
miss like any other label. Per emotion: how many windows the model read (frames read), how
many it read as the humans did (the model's recall of the humans' label), how often it said
the emotion where the humans agreed on another, and the latest moments it missed (runs of
adjacent windows of one performer with the same agreed label, where the model answered
something else). Over all emotions, the share of agreement and Cohen's kappa between the
model and the consensus over the agreed windows it read (Cohen, J. (1960). A coefficient
of agreement for nominal scales. *Educational and Psychological Measurement*, 20(1),
37-46), from the counts (:func:`streams.archive.model_gap.cohen_kappa`).

Windows are revised (late tags, late features, a late model reading): the newest revision
of a window replaces what the older one counted. A window is kept only while it can still
be revised, until its ``final_after_us`` (its end + ``label_grace_s`` where a window does
not say): once a newer window of the same performer ends after that instant, the aligner
has sent every revision of it (a performer's windows share one partition, and the aligner
sends a window only after its end), and it is forgotten, leaving its counts and, for the
missed-moments list, the runs it ends (a few per model, emotion and performer). Event time
rather than this server's clock decides, so a dashboard that reads a session from its
start, or whose clock is off, forgets nothing early. What the panel costs is bounded by
the grace, not by the length of the session.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from streams import records
from streams.archive import model_gap as archived_gap
from streams.settings import Settings

__all__ = ["LATEST_MOMENTS", "ModelGap", "humans_agreed", "model_missed"]

#: Missed moments kept per model and emotion for the page's list, newest first.
LATEST_MOMENTS: Final = 8
#: How long a window can be revised where it does not say (its ``final_after_us``).
DEFAULT_GRACE_US: Final = round(Settings.model_fields["label_grace_s"].default * 1_000_000)


def humans_agreed(window: records.LabelWindow) -> str | None:
    """The label the human raters agreed on in this window, or None (see the module)."""
    return window.consensus if archived_gap.human_agreed(window) else None


def model_missed(agreed: str | None, estimate: records.ModelEstimate) -> bool:
    """A model's reading that differs from what the humans agreed on (``(none)`` included;
    a window it read no frame of: no miss)."""
    answer = archived_gap.model_answer(estimate)
    return agreed is not None and answer is not None and answer != agreed


@dataclass(frozen=True, slots=True)
class _Agreed:
    """A window the humans agreed on: their label, and each model's answer there."""

    label: str
    window_us: int
    tops: tuple[tuple[str, str | None], ...]  # (model, answer or None: not read)

    def answer(self, model: str) -> str | None:
        for name, top in self.tops:
            if name == model:
                return top
        return None


@dataclass(slots=True)
class _Run:
    """Adjacent missed windows of one performer, one agreed label and one model."""

    start_us: int
    end_us: int
    windows: int
    said: Counter[str]  # the model's answers there

    def extend(self, start_us: int, window_us: int, said: str) -> bool:
        """Take the next window on if it starts where the run ends."""
        if start_us != self.end_us:
            return False
        self.end_us = start_us + window_us
        self.windows += 1
        self.said[said] += 1
        return True

    def joined(self, after: _Run) -> _Run:
        return _Run(
            self.start_us, after.end_us, self.windows + after.windows, self.said + after.said
        )

    def moment(self, performer_id: str) -> dict[str, Any]:
        return {
            "performer_id": performer_id,
            "start_us": self.start_us,
            "end_us": self.end_us,
            "windows": self.windows,
            # What the model answered there most often (ties: the first by name).
            "model_label": min(self.said, key=lambda top: (-self.said[top], top)),
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


class ModelGap:
    """Human consensus against each model rater, over a session's label windows."""

    def __init__(self, vocabulary: Iterable[str], *, grace_us: int = DEFAULT_GRACE_US) -> None:
        self._vocabulary = list(vocabulary)
        self._grace_us = grace_us
        # performer -> window start -> the agreed windows that can still be revised
        self._live: dict[str, dict[int, _Agreed]] = {}
        # performer -> heap of (final_after_us, window start) of its live windows (an entry
        # whose window left ``_live`` meanwhile is skipped when it comes up)
        self._due: dict[str, list[tuple[int, int]]] = {}
        self._newest_end: dict[str, int] = {}  # performer -> the latest window end seen
        self._agreed: Counter[str] = Counter()
        # model -> (consensus label, model's answer) -> windows
        self._confusion: dict[str, Counter[tuple[str, str]]] = {}
        # (model, performer) -> agreed label -> the newest runs of forgotten missed windows
        self._settled: dict[tuple[str, str], dict[str, deque[_Run]]] = {}
        #: Windows that came after a newer window of their performer had passed their
        #: final_after_us (the aligner sends none such): not counted.
        self.windows_after_final = 0
        self.version = 0

    @property
    def models(self) -> list[str]:
        return sorted(self._confusion)

    @property
    def windows_kept(self) -> int:
        """Agreed windows held because they can still be revised."""
        return sum(len(live) for live in self._live.values())

    def add(self, window: records.LabelWindow) -> None:
        """Count a label window (a revision replaces what its older revision counted)."""
        for estimate in window.models:
            if estimate.model not in self._confusion:
                self._confusion[estimate.model] = Counter()
                self.version += 1
        performer_id = window.performer_id
        end_us = window.ts_us + window.window_us
        final_us = window.final_after_us
        if final_us is None:
            final_us = end_us + self._grace_us
        newest = self._newest_end.get(performer_id)
        if newest is not None and final_us < newest:
            self.windows_after_final += 1
            return
        if newest is None or end_us > newest:
            self._newest_end[performer_id] = end_us
        self._replace(window, final_us)
        self._settle(performer_id)

    def _replace(self, window: records.LabelWindow, final_us: int) -> None:
        performer_id, ts_us = window.performer_id, window.ts_us
        label = humans_agreed(window)
        new = None
        if label is not None:
            tops = tuple(sorted((e.model, archived_gap.model_answer(e)) for e in window.models))
            new = _Agreed(label, window.window_us, tops)
        live = self._live.setdefault(performer_id, {})
        old = live.get(ts_us)
        if old == new:
            return
        if old is not None:
            self._count(old, -1)
            del live[ts_us]
        if new is not None:
            self._count(new, 1)
            live[ts_us] = new
            heapq.heappush(self._due.setdefault(performer_id, []), (final_us, ts_us))
        self.version += 1

    def _count(self, agreed: _Agreed, sign: int) -> None:
        self._agreed[agreed.label] += sign
        for model, top in agreed.tops:
            if top is not None:
                self._confusion[model][(agreed.label, top)] += sign

    def _settle(self, performer_id: str) -> None:
        """Forget the performer's windows no revision can come for any more (see the
        module), keeping what the missed-moments list needs of them."""
        due = self._due.get(performer_id)
        live = self._live.get(performer_id)
        newest = self._newest_end[performer_id]
        while due and live is not None and due[0][0] < newest:
            _, ts_us = heapq.heappop(due)
            agreed = live.pop(ts_us, None)
            if agreed is None:
                continue  # no longer agreed since, or forgotten already
            for model, top in agreed.tops:
                if top is None or top == agreed.label:
                    continue
                labels = self._settled.setdefault((model, performer_id), {})
                runs = labels.setdefault(agreed.label, deque(maxlen=LATEST_MOMENTS))
                if not runs or not runs[-1].extend(ts_us, agreed.window_us, top):
                    runs.append(_Run(ts_us, ts_us + agreed.window_us, 1, Counter({top: 1})))

    # ---------------------------------------------------------------- the summary

    def summary(self) -> dict[str, Any]:
        """What the page's gap panel shows: per emotion and model, the counts and the
        latest missed moments."""
        labels = self._vocabulary + sorted(set(self._agreed) - set(self._vocabulary))
        moments = self._latest_moments()
        models: dict[str, Any] = {}
        for model, confusion in sorted(self._confusion.items()):
            confusion = +confusion  # without the pairs counted down to 0
            read = sum(confusion.values())
            agree = sum(count for (human, top), count in confusion.items() if human == top)
            per_label: dict[str, Any] = {}
            for label in labels:
                label_read = sum(n for (human, _), n in confusion.items() if human == label)
                label_agree = confusion[(label, label)]
                said = sum(n for (_, top), n in confusion.items() if top == label)
                per_label[label] = {
                    "read": label_read,
                    "agree": label_agree,
                    "share": _share(label_agree, label_read),
                    "missed": label_read - label_agree,
                    "said_elsewhere": said - label_agree,
                    "latest": moments.get((model, label), []),
                }
            kappa = archived_gap.cohen_kappa(confusion)
            models[model] = {
                "read": read,
                "agree": agree,
                "share": _share(agree, read),
                "kappa": None if kappa is None else round(kappa, 3),
                "said_none": sum(
                    n for (_, top), n in confusion.items() if top == archived_gap.NO_LABEL
                ),
                "labels": per_label,
            }
        return {
            "threshold": archived_gap.AGREEMENT_MIN,
            "min_raters": archived_gap.MIN_RATERS,
            "no_label": archived_gap.NO_LABEL,
            "agreed": {label: self._agreed[label] for label in labels},
            "models": models,
        }

    def _latest_moments(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """(model, agreed label) -> its newest missed moments, newest first."""
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        performers = set(self._live) | {performer for _, performer in self._settled}
        for model in self._confusion:
            for performer_id in sorted(performers):
                settled = self._settled.get((model, performer_id), {})
                live = self._live_runs(model, performer_id)
                for label in settled.keys() | live.keys():
                    runs = sorted(settled.get(label, ()), key=lambda run: run.start_us)
                    recent = live.get(label, [])
                    if runs and recent and runs[-1].end_us == recent[0].start_us:
                        # A run that goes on past the windows forgotten.
                        runs[-1] = runs[-1].joined(recent.pop(0))
                    runs += recent
                    moments = found.setdefault((model, label), [])
                    moments += (run.moment(performer_id) for run in runs[-LATEST_MOMENTS:])
        for moments in found.values():
            moments.sort(key=lambda moment: (-moment["end_us"], moment["performer_id"]))
            del moments[LATEST_MOMENTS:]
        return found

    def _live_runs(self, model: str, performer_id: str) -> dict[str, list[_Run]]:
        """Agreed label -> the runs of the performer's missed windows not forgotten yet."""
        runs: dict[str, list[_Run]] = {}
        live = self._live.get(performer_id, {})
        for ts_us in sorted(live):
            agreed = live[ts_us]
            top = agreed.answer(model)
            if top is None or top == agreed.label:
                continue
            mine = runs.setdefault(agreed.label, [])
            if not mine or not mine[-1].extend(ts_us, agreed.window_us, top):
                mine.append(_Run(ts_us, ts_us + agreed.window_us, 1, Counter({top: 1})))
        return runs
