"""Cues, label windows with intent and coverage records built to order: the dashboard's
directing tests (unit and end-to-end) describe each by what was cued, who held what and
how many seconds each cell counts."""

from __future__ import annotations

from collections.abc import Mapping

from streams import records
from tests.gap_windows import MODEL, WINDOW_US, consensus_of


def cue(
    session_id: str,
    performer_id: str,
    cue_id: str,
    ts_us: int,
    *,
    kind: records.CueKind = "emotion",
    label: str | None = "laughter",
    intensity: records.Intensity = "normal",
    text: str = "",
    shown_after_us: int | None = None,
    group_id: str | None = None,
) -> records.Cue:
    """A cue sent at ``ts_us`` (``shown_after_us``: the record of it shown that much later)."""
    shown = None
    if shown_after_us is not None:
        shown = records.CueShown(
            client_shown_ts_us=ts_us + shown_after_us - 5_000_000,
            clock_offset_us=5_000_000,
            rtt_us=3_000,
        )
    return records.Cue(
        ts_us=ts_us,
        session_id=session_id,
        performer_id=performer_id,
        cue_id=cue_id,
        group_id=group_id,
        kind=kind,
        label=label if kind == "emotion" else None,
        intensity=intensity,
        text=text,
        sent_by="director",
        shown_ts_us=None if shown_after_us is None else ts_us + shown_after_us,
        shown=shown,
    )


def intent(
    label: str | None,
    *,
    cue_id: str | None = None,
    since_us: int = 0,
    text: str = "",
    source: str | None = None,
    intensity: records.Intensity = "normal",
) -> records.Intent:
    """An intent: an emotion cue's (``cue_id``), a text cue's (``text``; ``label`` is then
    the arc's), or the arc's alone."""
    cue_in_force = None
    if cue_id is not None:
        cue_in_force = records.CueInForce(
            cue_id=cue_id,
            kind="text" if text else "emotion",
            label=None if text else label,
            intensity=intensity,
            text=text,
            since_ts_us=since_us,
            shown=True,
        )
    if source is None:
        source = "cue" if cue_id is not None and not text else ("arc" if label else None)
    return records.Intent.model_validate(
        {
            "label": label,
            "intensity": intensity,
            "source": source,
            "cue": cue_in_force,
            "arc_label": None,
        }
    )


def window(
    session_id: str,
    performer_id: str,
    ts_us: int,
    held: Mapping[str, str],
    intended: records.Intent | None = None,
    *,
    self_tag: str | None = None,
    model_top: str | None = None,
    revision: int = 0,
) -> records.LabelWindow:
    """A window where each observer in ``held`` holds that label, the performer holds
    ``self_tag`` on themselves, ``intended`` was the intent and the model read
    ``model_top`` (None: no model reading)."""
    raters = [
        records.RaterLabels(
            rater_id=rater,
            rater_role="observer",
            labels=[
                records.ActiveLabel(label=label, intensity="normal", tag_id=f"tag-{rater}-{ts_us}")
            ],
        )
        for rater, label in held.items()
    ]
    everyone = dict(held)
    if self_tag is not None:
        raters.append(
            records.RaterLabels(
                rater_id=performer_id,
                rater_role="performer",
                labels=[
                    records.ActiveLabel(
                        label=self_tag, intensity="normal", tag_id=f"tag-self-{ts_us}"
                    )
                ],
            )
        )
        everyone[performer_id] = self_tag
    consensus, agreement = consensus_of(everyone)
    return records.LabelWindow(
        ts_us=ts_us,
        session_id=session_id,
        performer_id=performer_id,
        window_us=WINDOW_US,
        features=records.WindowFeatures(),
        raters=raters,
        consensus=consensus,
        consensus_agreement=agreement,
        revision=revision,
        final_after_us=ts_us + WINDOW_US + 3_000_000,
        intent=intended,
        models=[]
        if model_top is None
        else [
            records.ModelEstimate(
                model=MODEL, probabilities={model_top: 0.7}, top_label=model_top, frames_read=2
            )
        ],
    )


def coverage(
    session_id: str,
    performer_id: str,
    ts_us: int,
    cells: Mapping[str, Mapping[str, float]],
    confusion: Mapping[str, Mapping[str, int]],
) -> records.Coverage:
    """A performer's ledger: per label its seconds (intended_s, hit_s, ...), and the
    confusion in windows."""
    return records.Coverage(
        ts_us=ts_us,
        session_id=session_id,
        performer_id=performer_id,
        window_us=WINDOW_US,
        windows=sum(sum(row.values()) for row in confusion.values()),
        cells={label: records.CoverageCell(**values) for label, values in cells.items()},
        confusion={label: dict(row) for label, row in confusion.items()},
    )
