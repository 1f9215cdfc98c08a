"""The model lane's side of the processors, sans I/O: which frames the model reads
(:class:`ModelThinning`), and its frame readings gathered per performer per label window
into one :class:`records.ModelReading` each (:class:`ModelWindows`).

Windows are the aligner's: ``label_window_ms`` long, starting at multiples of it on the
session clock, so a reading's ``ts_us`` is the start of the label window it belongs to.

Acks. A frame's event is held until the reading of its window is out: a processor killed
mid-window leaves that window's frames uncommitted, and its successor reads them again
and makes the whole window (a window already out may come twice after a restart: its
identity is the key, ``ts_us`` and ``model``). A window goes out when its performer's next
frame falls in another window, or when the performer's frames stop (the face agent flushes
it after MODEL_IDLE_FLUSH_S without one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from streams import records
from streams.features.model_rater import FrameReading, ModelOutcome, Unread

#: A performer's face worker is behind when it has this many of their frames (the one it
#: is on and one waiting): the model then skips their frames, which it would only delay.
MODEL_BUSY_FRAMES: Final = 2
#: A performer without a frame this long has stopped: their open window goes out.
MODEL_IDLE_FLUSH_S: Final = 1.0
_DECIMALS = 4

E = TypeVar("E")


def model_due(ts_us: int, last_slot: int | None, period_us: int, analysing: int) -> bool:
    """Whether the model reads a frame: its performer's face worker has ``analysing`` of
    their frames, and the model last read one in slot ``last_slot`` (slots are
    ``period_us`` long on the session clock, so the model reads at most one frame per
    slot, whatever the frame rate and its jitter)."""
    return analysing < MODEL_BUSY_FRAMES and ts_us // period_us != last_slot


class ModelThinning:
    """Per performer, the slot of the last frame sent to the model (:func:`model_due`)."""

    def __init__(self, rate_hz: float) -> None:
        self.period_us = max(1, round(1_000_000 / rate_hz))
        self._last_slot: dict[str, int] = {}

    def due(self, performer_id: str, ts_us: int, analysing: int) -> bool:
        """Whether the frame goes to the model; if so, its slot is taken."""
        if not model_due(ts_us, self._last_slot.get(performer_id), self.period_us, analysing):
            return False
        self._last_slot[performer_id] = ts_us // self.period_us
        return True


@dataclass
class _Window(Generic[E]):
    index: int
    events: list[E] = field(default_factory=list)
    read: int = 0
    thinned: int = 0
    failed: int = 0
    no_face: int = 0
    classes: dict[str, float] = field(default_factory=dict)
    labels: dict[str, float] = field(default_factory=dict)
    valence: list[float] = field(default_factory=list)
    arousal: list[float] = field(default_factory=list)

    def add(self, outcome: ModelOutcome | None) -> None:
        if isinstance(outcome, FrameReading):
            self.read += 1
            for name, p in outcome.class_probabilities.items():
                self.classes[name] = self.classes.get(name, 0.0) + p
            for label, p in outcome.probabilities.items():
                self.labels[label] = self.labels.get(label, 0.0) + p
            if outcome.valence is not None:
                self.valence.append(outcome.valence)
            if outcome.arousal is not None:
                self.arousal.append(outcome.arousal)
        elif isinstance(outcome, Unread):
            if outcome.reason == "thinned":
                self.thinned += 1
            elif outcome.reason == "failed":
                self.failed += 1
            else:
                self.no_face += 1

    @property
    def counted(self) -> int:
        return self.read + self.thinned + self.failed + self.no_face


class ModelWindows(Generic[E]):
    """Per performer, the open label window's frame outcomes and held events."""

    def __init__(self, session_id: str, window_us: int, model: str) -> None:
        self.session_id = session_id
        self.window_us = window_us
        #: The rater's name, as its workers' readings last said it (until then, the name
        #: the processor expects).
        self.model = model
        self._open: dict[str, _Window[E]] = {}

    def is_open(self, performer_id: str) -> bool:
        return performer_id in self._open

    def add(
        self, performer_id: str, ts_us: int, outcome: ModelOutcome | None, event: E
    ) -> tuple[list[records.ModelReading], list[E]]:
        """Take one frame's outcome (None: the frame was not analysed at all, e.g. dead-
        lettered: it only holds its event and moves the window on). A frame of another
        window than the open one closes the open one: its reading (if it had a counted
        frame) and its events come back, to be sent and then acked."""
        if isinstance(outcome, FrameReading | Unread) and outcome.model:
            self.model = outcome.model
        index = ts_us // self.window_us
        window = self._open.get(performer_id)
        out: tuple[list[records.ModelReading], list[E]] = ([], [])
        if window is not None and window.index != index:
            # Another window: later as a rule; earlier only when the session clock was
            # corrected backwards, and then that window gets a second reading of its own.
            out = self.flush(performer_id)
            window = None
        if window is None:
            window = self._open[performer_id] = _Window(index)
        window.events.append(event)
        window.add(outcome)
        return out

    def flush(self, performer_id: str) -> tuple[list[records.ModelReading], list[E]]:
        """Close the performer's open window: its reading, if any, and its events."""
        window = self._open.pop(performer_id, None)
        if window is None:
            return [], []
        if not window.counted:
            return [], window.events
        return [self._reading(performer_id, window)], window.events

    def _reading(self, performer_id: str, window: _Window[E]) -> records.ModelReading:
        common = {
            "ts_us": window.index * self.window_us,
            "session_id": self.session_id,
            "performer_id": performer_id,
            "window_us": self.window_us,
            "model": self.model,
            "frames_read": window.read,
            "frames_thinned": window.thinned,
            "frames_failed": window.failed,
        }
        if not window.read:
            reason = "failed" if window.failed else "thinned" if window.thinned else "no_face"
            return records.ModelReading(unread=reason, **common)
        classes = {name: _unit(total / window.read) for name, total in window.classes.items()}
        labels = {label: _unit(total / window.read) for label, total in window.labels.items()}
        return records.ModelReading(
            class_probabilities=classes,
            probabilities=labels,
            top_label=records.model_top_label(labels),
            valence=_mean(window.valence),
            arousal=_mean(window.arousal),
            **common,
        )


def _unit(value: float) -> float:
    return round(min(1.0, max(0.0, value)), _DECIMALS)


def _mean(values: list[float]) -> float | None:
    if not values:
        return None
    return round(min(1.0, max(-1.0, sum(values) / len(values))), _DECIMALS)
