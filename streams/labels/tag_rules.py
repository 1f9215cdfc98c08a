"""Which instants a session's tags cover: the one rule, for every part that shows tags.

The aligner (label windows), the exporter (ELAN tiers) and the dashboard (its timeline)
all take a tag's coverage from here, so a label window, an annotation and a bar on the
timeline always agree. :func:`tag_interval` is where it is decided; everything else
gathers the tags it needs.

The rule, for a performer's point tag or hold (its *mark*, named by the point's or the
onset's ``tag_id``):

- A point covers ``span`` (at least 1 µs, at most ``max_hold``) centred on its press:
  ``[ts - span // 2, ts - span // 2 + span)``, moved to start at 0 if it would start
  before the session clock does.
- A hold runs from its onset to its offset: the offset must be the same rater's, on the
  same performer (anyone else's names the hold by mistake and changes nothing). Of two
  such offsets (a re-sent key-up) the earlier one ends it (by ``ts_us``, then
  ``tag_id``). The end is at least 1 µs after the onset (an offset stamped before its
  onset still marks that instant) and at most ``max_hold`` after it; a hold without an
  offset (the key-up never came, or not yet) ends ``max_hold`` after its onset.
- An undo counts only from the rater who made the tag it names, on the same performer
  (the tag service refuses other raters' undos it knows of; this holds the line for the
  ones it cannot know). Undoing a point removes it; undoing the onset or any offset of a
  hold removes the whole hold (a hold reopened by undoing its key-up would be a label
  nobody pressed for). An undo of an undo changes nothing: there is no redo.

The result depends only on the *set* of tags, never on the order they arrive in: tags
travel concurrently (an undo can overtake its tag, an offset its onset) and an archive
keeps no arrival order, so a rule that looked at arrival order would give the live
labels and the export different answers. Tags are told apart by ``tag_id``: the first
copy of a re-delivered one is kept.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from streams.records import Intensity, Role, TagEvent

__all__ = [
    "DEFAULT_MAX_HOLD_US",
    "TagInterval",
    "TagSet",
    "hold_end",
    "offset_applies",
    "point_interval",
    "tag_interval",
    "tag_intervals",
    "undo_applies",
]

#: ``tag_max_hold_ms`` by default; what an archive that does not record it was made with.
DEFAULT_MAX_HOLD_US: Final = 30_000_000

MarkKind = Literal["point", "hold"]


@dataclass(frozen=True, slots=True)
class TagInterval:
    """What a point tag or a hold covers: ``[start_us, end_us)``, never empty."""

    tag_id: str  # the point's or the onset's
    performer_id: str
    rater_id: str
    rater_role: Role
    label: str
    intensity: Intensity
    kind: MarkKind
    start_us: int
    end_us: int
    # A hold no offset has ended: it ends max_hold after its onset unless one comes.
    open: bool
    offset_tag_id: str | None  # the offset that ended a hold


def point_interval(ts_us: int, span_us: int, max_hold_us: int) -> tuple[int, int]:
    """``[start, end)`` of a point tag pressed at ``ts_us``."""
    # A zero span still marks the instant of the press; a huge one is capped like a hold.
    span = min(max(span_us, 1), max_hold_us)
    start = max(0, ts_us - span // 2)
    return start, start + span


def hold_end(start_us: int, offset_ts_us: int | None, max_hold_us: int) -> tuple[int, bool]:
    """Where a hold that began at ``start_us`` ends, and whether it is still open."""
    if offset_ts_us is None:
        return start_us + max_hold_us, True
    # An offset at (or, with clock noise, before) its onset still marks one instant.
    return min(max(offset_ts_us, start_us + 1), start_us + max_hold_us), False


def offset_applies(onset: TagEvent, offset: TagEvent) -> bool:
    """Whether ``offset`` can end the hold ``onset`` began: the same rater's key-up."""
    return (
        onset.action == "onset"
        and offset.action == "offset"
        and offset.onset_tag_id == onset.tag_id
        and (offset.rater_id, offset.performer_id) == (onset.rater_id, onset.performer_id)
    )


def undo_applies(undo: TagEvent, rater_id: str, performer_id: str) -> bool:
    """Whether ``undo`` counts against a tag that ``rater_id`` put on ``performer_id``."""
    return undo.action == "undo" and (undo.rater_id, undo.performer_id) == (rater_id, performer_id)


def tag_interval(
    mark: TagEvent,
    offsets: Iterable[TagEvent],
    undos: Mapping[str, Collection[TagEvent]],
    *,
    max_hold_us: int,
) -> TagInterval | None:
    """What the point or onset ``mark`` covers, or None if it covers nothing.

    ``offsets``: every known offset that names ``mark`` as its onset; ``undos``: every
    known undo by the tag_id it names. Any other tags may be among them: the rule picks
    the ones that count.
    """
    if mark.action not in ("point", "onset") or mark.label is None:
        return None

    def undone(tag: TagEvent) -> bool:
        return any(
            undo_applies(undo, tag.rater_id, tag.performer_id) for undo in undos.get(tag.tag_id, ())
        )

    if undone(mark):
        return None
    offset_tag_id = None
    if mark.action == "point":
        start, end = point_interval(mark.ts_us, mark.span_us or 0, max_hold_us)
        is_open = False
    else:
        own = [offset for offset in offsets if offset_applies(mark, offset)]
        if any(undone(offset) for offset in own):
            return None
        ending = min(own, key=lambda offset: (offset.ts_us, offset.tag_id), default=None)
        start = mark.ts_us
        end, is_open = hold_end(start, None if ending is None else ending.ts_us, max_hold_us)
        offset_tag_id = None if ending is None else ending.tag_id
    return TagInterval(
        tag_id=mark.tag_id,
        performer_id=mark.performer_id,
        rater_id=mark.rater_id,
        rater_role=mark.rater_role,
        label=mark.label,
        intensity=mark.intensity,
        kind="point" if mark.action == "point" else "hold",
        start_us=start,
        end_us=end,
        open=is_open,
        offset_tag_id=offset_tag_id,
    )


class TagSet:
    """The tags known so far, indexed so that each newcomer names the one mark it may
    change: for a live consumer that takes tags one at a time, in whatever order."""

    def __init__(self, max_hold_us: int) -> None:
        if max_hold_us <= 0:
            raise ValueError("max_hold_us must be positive")
        self.max_hold_us = max_hold_us
        self._tags: dict[str, TagEvent] = {}
        self._offsets: dict[str, list[TagEvent]] = {}  # by the onset_tag_id they name
        self._undos: dict[str, list[TagEvent]] = {}  # by the tag_id they undo

    def __contains__(self, tag_id: object) -> bool:
        return tag_id in self._tags

    def __len__(self) -> int:
        return len(self._tags)

    def get(self, tag_id: str) -> TagEvent | None:
        return self._tags.get(tag_id)

    def add(self, tag: TagEvent) -> str | None:
        """Take ``tag`` in; the mark whose interval it may have changed (None: no known
        mark, or a tag_id seen before)."""
        if tag.tag_id in self._tags:
            return None
        self._tags[tag.tag_id] = tag
        if tag.action == "offset" and tag.onset_tag_id is not None:
            self._offsets.setdefault(tag.onset_tag_id, []).append(tag)
        elif tag.action == "undo" and tag.undoes_tag_id is not None:
            self._undos.setdefault(tag.undoes_tag_id, []).append(tag)
        return self.mark_of(tag.tag_id)

    def mark_of(self, tag_id: str) -> str | None:
        """The known point or onset whose interval the tag bears on."""
        tag = self._tags.get(tag_id)
        if tag is None:
            return None
        if tag.action in ("point", "onset"):
            return tag.tag_id
        if tag.action == "offset" and tag.onset_tag_id is not None:
            onset = self._tags.get(tag.onset_tag_id)
            return None if onset is None or onset.action != "onset" else onset.tag_id
        if tag.action == "undo" and tag.undoes_tag_id is not None:
            target = self._tags.get(tag.undoes_tag_id)
            if target is not None and target.action != "undo":
                return self.mark_of(target.tag_id)
        return None

    def interval(self, tag_id: str) -> TagInterval | None:
        """What the point or onset ``tag_id`` covers now (None: nothing, or not known)."""
        mark = self._tags.get(tag_id)
        if mark is None:
            return None
        offsets = self._offsets.get(tag_id, ())
        return tag_interval(mark, offsets, self._undos, max_hold_us=self.max_hold_us)

    def intervals(self) -> list[TagInterval]:
        """Every mark that covers something, by performer, rater, start and tag_id."""
        found = (self.interval(tag_id) for tag_id in self._tags)
        return sorted(
            (interval for interval in found if interval is not None),
            key=lambda i: (i.performer_id, i.rater_id, i.start_us, i.tag_id),
        )

    def forget(self, tag_id: str) -> None:
        """Drop a tag that can no longer change anything anyone still shows."""
        tag = self._tags.pop(tag_id, None)
        if tag is None:
            return
        if tag.action == "offset" and tag.onset_tag_id is not None:
            _drop(self._offsets, tag.onset_tag_id, tag_id)
        elif tag.action == "undo" and tag.undoes_tag_id is not None:
            _drop(self._undos, tag.undoes_tag_id, tag_id)


def _drop(index: dict[str, list[TagEvent]], key: str, tag_id: str) -> None:
    kept = [tag for tag in index.get(key, ()) if tag.tag_id != tag_id]
    if kept:
        index[key] = kept
    else:
        index.pop(key, None)


def tag_intervals(tags: Iterable[TagEvent], *, max_hold_us: int) -> list[TagInterval]:
    """What every point tag and hold among ``tags`` covers (undone ones left out), by
    performer, rater, start and tag_id; the same for the same tags in any order."""
    known = TagSet(max_hold_us)
    for tag in tags:
        known.add(tag)
    return known.intervals()
