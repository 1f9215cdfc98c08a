"""Label windows with human raters, continuous traces and a model rater, built to order:
the dashboard's model-gap tests (unit and end-to-end) describe each window by who held
what and what the model read."""

from __future__ import annotations

from collections.abc import Mapping

from streams import records
from streams.archive.model_gap import NO_LABEL

WINDOW_US = 100_000
MODEL = "fer-mini-xception"


def consensus_of(held: Mapping[str, str]) -> tuple[str | None, float | None]:
    """The consensus and consensus_agreement the aligner gives these holdings: the label
    most raters hold, as a share of the raters holding any (None on a tie)."""
    counts: dict[str, int] = {}
    for label in held.values():
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None, None
    most = max(counts.values())
    leaders = [label for label, n in counts.items() if n == most]
    if len(leaders) != 1:
        return None, None
    return leaders[0], round(most / len(held), 4)


def window(
    session_id: str,
    performer_id: str,
    ts_us: int,
    held: Mapping[str, str],
    model_top: str | None = None,
    *,
    model: str = MODEL,
    revision: int = 0,
    with_model: bool = True,
    valence: Mapping[str, float] | None = None,
) -> records.LabelWindow:
    """A window where each rater in ``held`` holds that label, the model read ``model_top``
    (None: read nothing; ``"(none)"``: read a face whose classes outside the vocabulary
    outweigh its labels, 0.7 against laughter's 0.3; ``with_model`` False: no model reading
    at all), and the raters in ``valence`` rated that valence."""
    consensus, agreement = consensus_of(held)
    models = []
    if with_model:
        probabilities = {} if model_top is None else {model_top: 0.62}
        top = model_top
        if model_top == NO_LABEL:
            probabilities, top = {"laughter": 0.3}, None
        models.append(
            records.ModelEstimate(
                model=model,
                probabilities=probabilities,
                top_label=top,
                frames_read=0 if model_top is None else 2,
            )
        )
    return records.LabelWindow(
        ts_us=ts_us,
        session_id=session_id,
        performer_id=performer_id,
        window_us=WINDOW_US,
        features=records.WindowFeatures(),
        raters=[
            records.RaterLabels(
                rater_id=rater,
                rater_role="observer",
                labels=[
                    records.ActiveLabel(
                        label=label, intensity="normal", tag_id=f"tag-{rater}-{ts_us}"
                    )
                ],
            )
            for rater, label in held.items()
        ],
        consensus=consensus,
        consensus_agreement=agreement,
        revision=revision,
        ratings=[
            records.RaterTrace(
                rater_id=rater,
                rater_role="observer",
                mode="valence_arousal",
                mean={"valence": value, "arousal": 0.0},
                last={"valence": value, "arousal": 0.0},
                coverage=1.0,
                samples=2,
            )
            for rater, value in (valence or {}).items()
        ],
        models=models,
    )
