"""The ledger of a performer: what the scene meant them to show (intent), what they tagged
themselves, what observers perceived, and how those compare over a session (coverage).

Pure rules, shared by the aligner (which fills ``LabelWindow.intent`` and publishes
``records.Coverage``), the archive's ledger export, the dashboard and the casting matcher.

**Perceived.** Only observers count: raters whose role is ``observer`` or ``director``
(never a performer's tags, whether on themselves or a partner). The perceived label of a
window is the label most observers hold in it (an observer counts once per label); a tie
goes to the label that comes first in the session's vocabulary (labels outside it after,
alphabetically; without a vocabulary: alphabetically). The observers *agreed* when at
least ``MIN_RATERS`` = 2 observers tag and at least ``AGREEMENT_MIN`` = 2/3 of them hold
the perceived label: decided among observers only, so a performer's own tag can neither
make a split of observers look agreed nor spoil their agreement (the window's
``consensus``, which counts every rater, plays no part). They *disputed* it when at least
two observers tagged and did not agree; a window one observer alone tagged is neither.

**Intent.** Everything about a window's intent is decided at its midpoint ``ts_us +
window_us // 2``: a window is under a cue when the cue started at or before its midpoint
(and the next cue had not). A cue starts when the performer's page showed it (``shown_ts_us``),
or, while the page has not said so, when it was sent (``ts_us``); it stands until the
performer's next cue of any kind starts; a ``clear`` ends it (nothing is in force after a
clear). A text cue is a cue in force with no label. The arc step in force is the last step
with ``take start + at_s`` at or before the midpoint, within the take holding the
midpoint (outside takes there is no arc). The intended label is the emotion cue's if one is
in force, else the arc step's, else none; a window has no intent at all when there is no
cue in force, no arc step and no target.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from streams import records

__all__ = [
    "AGREEMENT_MIN",
    "EMPTY_PLAN",
    "MIN_RATERS",
    "OBSERVER_ROLES",
    "CoverageBook",
    "CueTimeline",
    "IntentMemo",
    "Perception",
    "Plan",
    "Suggestion",
    "agreed_seconds",
    "cue_start_us",
    "day_gaps",
    "hit_rate",
    "hit_rate_where_perceived",
    "intent_at",
    "midpoint_us",
    "perceived",
    "plan_of",
    "self_tagged",
    "suggest_next_cue",
    "windows_under",
]

#: Krippendorff's lowest acceptable reliability (see streams.archive.model_gap, whose
#: rule of human agreement counts every rater where the ledger's counts observers only).
AGREEMENT_MIN: Final = 2 / 3
MIN_RATERS: Final = 2
OBSERVER_ROLES: Final = frozenset({"observer", "director"})


# ---------------------------------------------------------------- perception


@dataclass(frozen=True, slots=True)
class Perception:
    """What observers perceived in one window."""

    label: str | None  # the majority label of the observers (None: no observer tagged)
    observers: int  # observers holding any label in the window
    agreed: bool
    disputed: bool
    labels: tuple[str, ...] = ()  # every label some observer held, most held first

    @property
    def answer(self) -> str:
        """The label, or records.NOTHING_PERCEIVED (a column of the confusion matrix)."""
        return self.label or records.NOTHING_PERCEIVED


NOTHING: Final = Perception(None, 0, False, False)


def _order_key(vocabulary: Sequence[str] | Mapping[str, int] | None) -> Mapping[str, int]:
    if vocabulary is None:
        return {}
    if isinstance(vocabulary, Mapping):
        return vocabulary
    return {label: index for index, label in enumerate(vocabulary)}


def perceived(
    window: records.LabelWindow, vocabulary: Sequence[str] | Mapping[str, int] | None = None
) -> Perception:
    """What the window's observers perceived (see the module's rules); ``vocabulary`` (the
    session's labels in order, or label -> rank) breaks ties."""
    holders: dict[str, int] = {}
    observers = 0
    for rater in window.raters:
        if rater.rater_role not in OBSERVER_ROLES or not rater.labels:
            continue
        observers += 1
        for label in {active.label for active in rater.labels}:
            holders[label] = holders.get(label, 0) + 1
    if not observers:
        return NOTHING
    rank = _order_key(vocabulary)
    outside = len(rank)
    ordered = sorted(holders, key=lambda label: (-holders[label], rank.get(label, outside), label))
    label = ordered[0]
    agreed = (
        observers >= MIN_RATERS
        and holders[label] >= AGREEMENT_MIN * observers - 1e-9  # 2 of 3 is 2/3 exactly
    )
    disputed = observers >= MIN_RATERS and not agreed
    return Perception(label, observers, agreed, disputed, tuple(ordered))


def self_tagged(window: records.LabelWindow) -> set[str]:
    """The labels the performer held on themselves in the window."""
    return {
        active.label
        for rater in window.raters
        if rater.rater_role == "performer" and rater.rater_id == window.performer_id
        for active in rater.labels
    }


# ---------------------------------------------------------------- intent


def midpoint_us(ts_us: int, window_us: int) -> int:
    """The instant a window's intent is decided at."""
    return ts_us + window_us // 2


def windows_under(start_us: int, end_us: int, window_us: int) -> range:
    """The window indexes (``ts_us // window_us``) whose midpoint lies in ``[start_us,
    end_us)``: the windows an interval of intent covers."""
    half = window_us // 2
    first = -(-(start_us - half) // window_us)  # ceil
    last = -(-(end_us - half) // window_us)
    return range(max(first, 0), max(last, 0))


def cue_start_us(cue: records.Cue) -> int:
    """When a cue starts to stand: shown on the page, else sent."""
    return cue.ts_us if cue.shown_ts_us is None else cue.shown_ts_us


@dataclass(frozen=True, slots=True)
class _Placed:
    start_us: int
    # Cues a page painted in one frame start at one instant: the later-sent is on screen.
    sent_us: int
    cue_id: str
    kind: records.CueKind
    label: str | None
    intensity: records.Intensity
    text: str
    shown: bool

    def in_force(self) -> records.CueInForce | None:
        if self.kind == "clear":
            return None
        return records.CueInForce(
            cue_id=self.cue_id,
            kind=self.kind,
            label=self.label,
            intensity=self.intensity,
            text=self.text,
            since_ts_us=self.start_us,
            shown=self.shown,
        )


class CueTimeline:
    """One performer's cues on the session clock: the newest record per cue (one the page
    showed supersedes one that was only sent), ordered by start, then by sending; at any
    instant the cue in force is the last one started at or before it (None after a clear)."""

    __slots__ = ("_by_id", "_entries", "_forces", "_starts")

    def __init__(self) -> None:
        self._entries: list[_Placed] = []  # by (start, sent, cue_id)
        self._starts: list[int] = []
        self._by_id: dict[str, _Placed] = {}
        self._forces: dict[str, records.CueInForce | None] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, cue: records.Cue) -> tuple[int, int | None] | None:
        """Take a cue record: the instants ``[start, end)`` (end None: on and on) over which
        the cue in force changed, or None when nothing did (a duplicate, or a sent record
        after its shown one)."""
        known = self._by_id.get(cue.cue_id)
        if known is not None and (known.shown or cue.shown_ts_us is None):
            return None
        placed = _Placed(
            cue_start_us(cue),
            cue.ts_us,
            cue.cue_id,
            cue.kind,
            cue.label,
            cue.intensity,
            cue.text,
            cue.shown_ts_us is not None,
        )
        return self._put(placed, known)

    def add_in_force(self, cue: records.CueInForce) -> tuple[int, int | None] | None:
        """Take back a cue a window showed in force (after a restart: its record may
        have been acknowledged long ago); a record of it that comes again supersedes it."""
        known = self._by_id.get(cue.cue_id)
        if known is not None and (known.shown or not cue.shown):
            return None
        # Its sent instant is not in the window: the start stands for it.
        placed = _Placed(
            cue.since_ts_us,
            cue.since_ts_us,
            cue.cue_id,
            cue.kind,
            cue.label,
            cue.intensity,
            cue.text,
            cue.shown,
        )
        return self._put(placed, known)

    def add_clear(self, instant_us: int) -> tuple[int, int | None] | None:
        """Take back a clear known only by its effect (after a restart: the windows from
        one on showed no cue any more), at an instant between the windows'."""
        cue_id = f"restored-clear-{instant_us}"
        if cue_id in self._by_id:
            return None
        return self._put(
            _Placed(instant_us, instant_us, cue_id, "clear", None, "normal", "", True), None
        )

    def _put(self, placed: _Placed, known: _Placed | None) -> tuple[int, int | None]:
        low = placed.start_us
        if known is not None:
            index = self._entries.index(known)
            del self._entries[index]
            del self._starts[index]
            self._forces.pop(known.cue_id, None)
            low = min(low, known.start_us)
        index = bisect.bisect_right(
            self._entries,
            (placed.start_us, placed.sent_us, placed.cue_id),
            key=lambda e: (e.start_us, e.sent_us, e.cue_id),
        )
        self._entries.insert(index, placed)
        self._starts.insert(index, placed.start_us)
        self._by_id[placed.cue_id] = placed
        # What changed: from the earlier of its old and new start up to the next cue's.
        following = self._entries[index + 1] if index + 1 < len(self._entries) else None
        return low, None if following is None else following.start_us

    def at(self, instant_us: int) -> records.CueInForce | None:
        """The cue in force at an instant (None: none, or cleared)."""
        index = bisect.bisect_right(self._starts, instant_us) - 1
        if index < 0:
            return None
        entry = self._entries[index]
        if entry.cue_id not in self._forces:
            # One CueInForce per cue and state, shared by the windows it stands over.
            self._forces[entry.cue_id] = entry.in_force()
        return self._forces[entry.cue_id]

    def prune(self, before_us: int) -> int:
        """Forget the cues replaced before ``before_us`` (the one in force then stays);
        how many were forgotten."""
        index = bisect.bisect_right(self._starts, before_us) - 1
        if index <= 0:
            return 0
        for entry in self._entries[:index]:
            del self._by_id[entry.cue_id]
            self._forces.pop(entry.cue_id, None)
        del self._entries[:index]
        del self._starts[:index]
        return index


@dataclass(frozen=True, slots=True)
class Plan:
    """What a session means one performer to show apart from cues: the takes (start, end;
    end None: still running), the scenario's arc and the performer's targets (their part's,
    then the scenario's)."""

    takes: tuple[tuple[int, int | None], ...] = ()
    arc: tuple[records.ArcStep, ...] = ()
    targets: tuple[str, ...] = ()

    def arc_step(self, instant_us: int) -> records.ArcStep | None:
        """The arc step in force at an instant (None outside takes or before the first)."""
        if not self.arc:
            return None
        start = None
        for take_start, take_end in self.takes:
            if take_start <= instant_us and (take_end is None or instant_us < take_end):
                start = take_start  # the latest-started take holding it (as model_gap)
        if start is None:
            return None
        found = None
        for step in self.arc:
            if start + round(step.at_s * 1_000_000) <= instant_us:
                found = step
            else:
                break
        return found


EMPTY_PLAN: Final = Plan()


def plan_of(session: records.SessionRecord, performer_id: str) -> Plan:
    """The performer's plan by the session record."""
    takes = tuple(
        (take.start_ts_us, take.end_ts_us)
        for take in sorted(session.takes, key=lambda t: (t.start_ts_us, t.take_id))
    )
    scenario = session.scenario
    if scenario is None:
        return Plan(takes=takes)
    targets: list[str] = []
    role = session.roles.get(performer_id)
    for part in scenario.roles:
        if part.name == role:
            targets.extend(part.targets)
    targets.extend(scenario.targets)
    return Plan(takes=takes, arc=tuple(scenario.arc), targets=tuple(dict.fromkeys(targets)))


def intent_at(
    ts_us: int, window_us: int, cues: CueTimeline | None, plan: Plan = EMPTY_PLAN
) -> records.Intent | None:
    """The intent of the performer's window starting at ``ts_us`` (see the module's rules)."""
    middle = midpoint_us(ts_us, window_us)
    return _intent(None if cues is None else cues.at(middle), plan.arc_step(middle), plan)


def _intent(
    cue: records.CueInForce | None, step: records.ArcStep | None, plan: Plan
) -> records.Intent | None:
    if cue is None and step is None and not plan.targets:
        return None
    label: str | None = None
    intensity: records.Intensity = "normal"
    source: Literal["cue", "arc"] | None = None
    if cue is not None and cue.kind == "emotion":
        label, intensity, source = cue.label, cue.intensity, "cue"
    elif step is not None:
        label, intensity, source = step.label, step.intensity, "arc"
    return records.Intent(
        label=label,
        intensity=intensity,
        source=source,
        cue=cue,
        arc_label=None if step is None else step.label,
        targets=list(plan.targets),
    )


class IntentMemo:
    """:func:`intent_at` for one performer's consecutive windows: windows under the same
    cue, arc step and plan share one Intent (the aligner makes one per window)."""

    __slots__ = ("_cue", "_intent", "_plan", "_step")

    def __init__(self) -> None:
        self._cue: records.CueInForce | None = None
        self._step: records.ArcStep | None = None
        self._plan: Plan | None = None
        self._intent: records.Intent | None = None

    def of(
        self, ts_us: int, window_us: int, cues: CueTimeline | None, plan: Plan
    ) -> records.Intent | None:
        middle = midpoint_us(ts_us, window_us)
        cue = None if cues is None else cues.at(middle)
        step = plan.arc_step(middle)
        if cue is self._cue and step is self._step and plan is self._plan:
            return self._intent
        self._cue, self._step, self._plan = cue, step, plan
        self._intent = _intent(cue, step, plan)
        return self._intent


# ---------------------------------------------------------------- coverage


@dataclass(frozen=True, slots=True)
class _Contribution:
    """What one window adds to its performer's coverage (kept until the window is final)."""

    window_us: int
    intended: str | None
    self_tagged: tuple[str, ...]
    perceived: str | None
    agreed: bool
    disputed: tuple[str, ...]  # labels observers held in a window they disputed


# Per label: intended, self-tagged, perceived, agreed, hit, disputed (µs).
_FIELDS: Final = ("intended_s", "self_tagged_s", "perceived_s", "agreed_s", "hit_s", "disputed_s")


def _contribution(
    window: records.LabelWindow, vocabulary: Mapping[str, int] | Sequence[str] | None
) -> _Contribution:
    seen = perceived(window, vocabulary)
    intent = window.intent
    return _Contribution(
        window.window_us,
        None if intent is None else intent.label,
        tuple(sorted(self_tagged(window))),
        seen.label,
        seen.agreed,
        seen.labels if seen.disputed else (),
    )


@dataclass(slots=True)
class _Ledger:
    windows: int = 0
    end_us: int = 0  # the end of the newest window counted
    window_us: int = 0
    micros: dict[str, list[int]] = field(default_factory=dict)  # label -> _FIELDS µs
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    def without(self, parts: Iterable[_Contribution]) -> _Ledger:
        """A copy of this ledger with these contributions taken out."""
        copy = _Ledger(
            self.windows,
            self.end_us,
            self.window_us,
            {label: list(m) for label, m in self.micros.items()},
            {label: dict(row) for label, row in self.confusion.items()},
        )
        for part in parts:
            copy.apply(part, -1)
        return copy

    def absorb(self, other: _Ledger) -> None:
        """Add another ledger's counts (of other windows) to this one."""
        self.windows += other.windows
        self.end_us = max(self.end_us, other.end_us)
        for label, micros in other.micros.items():
            mine = self.micros.setdefault(label, [0] * len(_FIELDS))
            for column, value in enumerate(micros):
                mine[column] += value
        for label, row in other.confusion.items():
            into = self.confusion.setdefault(label, {})
            for answer, n in row.items():
                into[answer] = into.get(answer, 0) + n

    def apply(self, part: _Contribution, sign: int) -> None:
        self.windows += sign
        width = part.window_us * sign

        def bump(label: str, column: int) -> None:
            cell = self.micros.get(label)
            if cell is None:
                cell = self.micros[label] = [0] * len(_FIELDS)
            cell[column] += width

        if part.intended is not None:
            bump(part.intended, 0)
            row = self.confusion.setdefault(part.intended, {})
            answer = part.perceived or records.NOTHING_PERCEIVED
            row[answer] = row.get(answer, 0) + sign
            if row[answer] == 0:
                del row[answer]
            if not row:
                del self.confusion[part.intended]
            if part.perceived == part.intended:
                bump(part.intended, 4)
        for label in part.self_tagged:
            bump(label, 1)
        if part.perceived is not None:
            bump(part.perceived, 2)
            if part.agreed:
                bump(part.perceived, 3)
        for label in part.disputed:
            bump(label, 5)


#: final_after_us of a window that names none: its contribution is kept for good.
_NEVER_FINAL: Final = 2**63 - 1


class CoverageBook:
    """Each performer's coverage in one session, from every revision of their windows: a
    revision replaces what an earlier revision of the same window (same ts_us)
    contributed; an older revision than the one counted is ignored. Only a compact
    contribution per window is kept, and only until the window is final (its
    ``final_after_us``, past which no revision comes): :meth:`settle` forgets those."""

    def __init__(
        self, session_id: str, vocabulary: Sequence[str] | Mapping[str, int] | None = None
    ) -> None:
        self.session_id = session_id
        self._rank = _order_key(vocabulary)
        self._ledgers: dict[str, _Ledger] = {}
        # (performer, ts_us) -> (contribution, revision, final_after_us)
        self._open: dict[tuple[str, int], tuple[_Contribution, int, int]] = {}
        self._changed: set[str] = set()

    def add(self, window: records.LabelWindow) -> bool:
        """Count a window's revision; whether the performer's coverage changed."""
        final = _NEVER_FINAL if window.final_after_us is None else window.final_after_us
        return self._take(
            window.performer_id,
            window.ts_us,
            window.window_us,
            _contribution(window, self._rank),
            window.revision,
            final,
        )

    def _take(
        self,
        performer_id: str,
        ts_us: int,
        window_us: int,
        part: _Contribution,
        revision: int,
        final: int,
    ) -> bool:
        key = (performer_id, ts_us)
        ledger = self._ledgers.get(performer_id)
        if ledger is None:
            ledger = self._ledgers[performer_id] = _Ledger(window_us=window_us)
        known = self._open.get(key)
        self._open[key] = (part, revision, final)
        if known is not None:
            if known[1] > revision:
                self._open[key] = known  # an older revision, come again
                return False
            if known[0] == part:
                return False
            ledger.apply(known[0], -1)
        ledger.apply(part, 1)
        ledger.end_us = max(ledger.end_us, ts_us + window_us)
        self._changed.add(performer_id)
        return True

    def merge_older(self, older: CoverageBook) -> None:
        """Take in what ``older`` counted (the windows of an earlier instance, read back)
        where this book has not counted the window itself: a window this book holds is a
        newer revision of it. In one go; the aligner does it in steps (see the three
        below) so a session's hour of windows never holds its event loop."""
        self.merge_open(older.open_entries())
        self.absorb_settled(older.settled_ledgers())

    def open_entries(self) -> list[tuple[tuple[str, int], tuple[_Contribution, int, int]]]:
        """The windows this book still holds, for :meth:`merge_open` into another book."""
        return list(self._open.items())

    def settled_ledgers(self) -> dict[str, _Ledger]:
        """Per performer, what this book counted of the windows it no longer holds (the
        part :meth:`merge_open` cannot bring): reads this book only, so it can be made
        off the event loop while nothing else touches this book."""
        held: dict[str, list[_Contribution]] = {}
        for (performer_id, _), (part, _, _) in self._open.items():
            held.setdefault(performer_id, []).append(part)
        out: dict[str, _Ledger] = {}
        for performer_id, ledger in self._ledgers.items():
            settled = ledger.without(held.get(performer_id, ()))
            if settled.windows:
                out[performer_id] = settled
        return out

    def merge_open(
        self, entries: Iterable[tuple[tuple[str, int], tuple[_Contribution, int, int]]]
    ) -> None:
        """Count another book's open windows (:meth:`open_entries`) this book does not hold:
        a window it holds is a newer revision. Taking the same entries again changes
        nothing, so a merge cut short can be done again."""
        for (performer_id, ts_us), (part, revision, final) in entries:
            if (performer_id, ts_us) not in self._open:
                self._take(performer_id, ts_us, part.window_us, part, revision, final)

    def absorb_settled(self, settled: Mapping[str, _Ledger]) -> None:
        """Add what another book settled (:meth:`settled_ledgers`); once per merge."""
        for performer_id, ledger in settled.items():
            mine = self._ledgers.setdefault(performer_id, _Ledger(window_us=ledger.window_us))
            mine.absorb(ledger)
            self._changed.add(performer_id)

    def forget(self, performer_id: str) -> None:
        """Drop everything of a performer (counted elsewhere now)."""
        self._ledgers.pop(performer_id, None)
        self._changed.discard(performer_id)
        for key in [key for key in self._open if key[0] == performer_id]:
            del self._open[key]

    def mark_changed(self, performer_id: str) -> None:
        """Have :meth:`changed` name the performer again (their coverage was not used)."""
        if performer_id in self._ledgers:
            self._changed.add(performer_id)

    def settle(self, now_us: int) -> int:
        """Forget the contributions of windows final by ``now_us``; how many."""
        done = [key for key, (_, _, final) in self._open.items() if final < now_us]
        for key in done:
            del self._open[key]
        return len(done)

    @property
    def open_windows(self) -> int:
        return len(self._open)

    def performers(self) -> list[str]:
        return sorted(self._ledgers)

    def changed(self) -> set[str]:
        """The performers whose coverage changed since the last call."""
        out, self._changed = self._changed, set()
        return out

    def coverage(self, performer_id: str) -> records.Coverage:
        """The performer's coverage so far; ts_us = the end of the newest window counted."""
        ledger = self._ledgers[performer_id]
        cells = {
            label: records.CoverageCell(
                **{name: round(value / 1e6, 6) for name, value in zip(_FIELDS, micros, strict=True)}
            )
            for label, micros in sorted(ledger.micros.items())
            if any(micros)
        }
        return records.Coverage(
            ts_us=ledger.end_us,
            session_id=self.session_id,
            performer_id=performer_id,
            window_us=ledger.window_us,
            windows=ledger.windows,
            cells=cells,
            confusion={
                label: dict(sorted(row.items())) for label, row in sorted(ledger.confusion.items())
            },
        )


def hit_rate(coverage: records.Coverage, label: str) -> float | None:
    """Of the seconds the label was intended, the share observers perceived it (None: it
    was never intended)."""
    cell = coverage.cells.get(label)
    if cell is None or not cell.intended_s:
        return None
    return round(cell.hit_s / cell.intended_s, 4)


def hit_rate_where_perceived(coverage: records.Coverage, label: str) -> float | None:
    """Of the seconds the label was intended and observers perceived anything, the share
    they perceived it (None: no such second)."""
    cell = coverage.cells.get(label)
    row = coverage.confusion.get(label, {})
    seen = sum(n for answer, n in row.items() if answer != records.NOTHING_PERCEIVED)
    if cell is None or not seen:
        return None
    return round(min(1.0, cell.hit_s / (seen * coverage.window_us / 1e6)), 4)


# ---------------------------------------------------------------- steering


@dataclass(frozen=True, slots=True)
class Suggestion:
    """The next cue that fills the largest gap of the ledger."""

    performer_id: str
    label: str
    reason: str


def agreed_seconds(coverage: records.Coverage, label: str) -> float:
    cell = coverage.cells.get(label)
    return 0.0 if cell is None else float(cell.agreed_s)


def suggest_next_cue(
    coverage: Mapping[str, records.Coverage],
    vocabulary_labels: Sequence[str],
    targets: Sequence[str] = (),
) -> Suggestion | None:
    """The cue to send next: an emotion no performer has shown with agreement yet (the
    targets first, then the vocabulary, in their order), to the performer with the least
    seconds intended of it (then by id); else the performer x emotion with the fewest agreed
    seconds, the most disputed seconds breaking ties, then the order above. None without
    performers or emotions. Deterministic."""
    performers = sorted(coverage)
    labels = list(dict.fromkeys([*targets, *vocabulary_labels]))
    if not performers or not labels:
        return None
    rank = {label: index for index, label in enumerate(labels)}

    def cell(performer: str, label: str) -> records.CoverageCell:
        return coverage[performer].cells.get(label) or records.CoverageCell()

    for label in labels:
        if all(cell(p, label).agreed_s == 0 for p in performers):
            performer = min(performers, key=lambda p: (cell(p, label).intended_s, p))
            what = "a target" if label in targets else "an emotion of the vocabulary"
            tried = cell(performer, label).intended_s
            detail = "" if not tried else f" ({tried:g} s cued to {performer} so far)"
            return Suggestion(
                performer,
                label,
                f"{label} is {what} no performer has shown with observers agreeing yet" + detail,
            )
    performer, label = min(
        ((p, label) for p in performers for label in labels),
        key=lambda pair: (
            cell(*pair).agreed_s,
            -cell(*pair).disputed_s,
            rank[pair[1]],
            pair[0],
        ),
    )
    found = cell(performer, label)
    reason = f"{performer} has the fewest agreed seconds of {label} ({found.agreed_s:g} s)"
    if found.disputed_s > found.agreed_s:
        reason += f"; observers disputed it for {found.disputed_s:g} s"
    return Suggestion(performer, label, reason)


def day_gaps(coverages: Iterable[records.Coverage]) -> dict[str, dict[str, float]]:
    """Across sessions (a casting day's): per performer, per label, the seconds observers
    perceived it with agreement, summed over the newest coverage of each session. Pass one
    record per session and performer (the newest); later ones of the same key replace
    earlier ones."""
    newest: dict[tuple[str, str], records.Coverage] = {}
    for record in coverages:
        key = (record.session_id, record.performer_id)
        known = newest.get(key)
        if known is None or record.ts_us >= known.ts_us:
            newest[key] = record
    out: dict[str, dict[str, float]] = {}
    for (_, performer), record in sorted(newest.items()):
        mine = out.setdefault(performer, {})
        for label, cell in record.cells.items():
            mine[label] = round(mine.get(label, 0.0) + float(cell.agreed_s), 6)
    return out
