"""Perception in depth on the director's dashboard, in real Chromium with the real broker:
the raters' reaction lags, their continuous traces, the model lane and the model gap.

The records are the test's own, put on the topics the aligner, the tag service and the
model lane write (livetag.labels, livetag.ratings, livetag.raters), so the page is
checked against numbers the test knows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams import records
from streams.kafka import clients, topics
from streams.settings import Settings
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_dashboard import (
    dashboard,  # noqa: F401  (the fixture)
    dashboard_url,
    director_token,
)
from tests.gap_windows import MODEL, WINDOW_US, window
from tests.tag_client import wall_us

pytestmark = pytest.mark.e2e

SCREENSHOT = Path("test-artifacts") / "dashboard-perception.png"
SIDE_SCREENSHOT = Path("test-artifacts") / "dashboard-perception-side.png"
BOTH_LAUGH = {"r1": "laughter", "r2": "laughter"}
BOTH_ANGRY = {"r1": "anger", "r2": "anger"}

# alice's windows, in order: (how many, who held what, what the model read)
SCRIPT: list[tuple[int, dict[str, str], str]] = [
    (10, BOTH_LAUGH, "laughter"),  # agreed, read alike
    (5, BOTH_LAUGH, "anger"),  # agreed on laughter, read as anger: one missed moment
    (5, {"r1": "anger"}, "anger"),  # one rater: the humans did not agree
    (5, BOTH_ANGRY, "anger"),
    (3, BOTH_ANGRY, "laughter"),  # agreed on anger, read as laughter
    (2, BOTH_ANGRY, "(none)"),  # agreed on anger, the model saw a neutral face: missed too
]


def lag_record(session_id: str, rater: str, lag_us: int, relative: bool) -> records.RaterLag:
    applied = records.LagCorrection(
        method="consensus",
        lag_us=lag_us,
        spread_us=95_000,
        confidence=0.82,
        relative=relative,
    )
    return records.RaterLag(
        ts_us=wall_us(),
        session_id=session_id,
        rater_id=rater,
        rater_role="observer",
        applied=applied,
        estimates=[
            applied,
            records.LagCorrection(method="calibration", lag_us=lag_us - 40_000, confidence=0.6),
        ],
        evidence={"consensus": 1800, "calibration": 10},
    )


def rating_batch(session_id: str, rater: str, start_us: int, offset: float) -> records.RatingBatch:
    """Two seconds of a 20 Hz valence/arousal trace."""
    return records.RatingBatch(
        ts_us=start_us,
        session_id=session_id,
        performer_id="alice",
        batch_id=f"batch-{rater}-{start_us}",
        rater_id=rater,
        rater_role="observer",
        mode="valence_arousal",
        rate_hz=20,
        samples=[
            records.RatingSample(
                ts_us=start_us + n * 50_000,
                client_ts_us=n * 50_000,
                valence=round(max(-1.0, min(1.0, offset + n / 40)), 3),
                arousal=0.2,
            )
            for n in range(40)
        ],
        clock_offset_us=0,
        clock_uncertainty_us=500,
        received_ts_us=start_us + 2_100_000,
    )


def intensity_batch(
    session_id: str, rater: str, label: str, start_us: int, level: float
) -> records.RatingBatch:
    """One second of a 20 Hz intensity slider for one emotion."""
    return records.RatingBatch(
        ts_us=start_us,
        session_id=session_id,
        performer_id="alice",
        batch_id=f"batch-{rater}-{label}-{start_us}",
        rater_id=rater,
        rater_role="observer",
        mode="intensity",
        label=label,
        rate_hz=20,
        samples=[
            records.RatingSample(
                ts_us=start_us + n * 50_000, client_ts_us=n * 50_000, intensity=level
            )
            for n in range(20)
        ],
        clock_offset_us=0,
        clock_uncertainty_us=500,
        received_ts_us=start_us + 1_100_000,
    )


async def produce(settings: Settings, sent: list[tuple[str, records.AnyRecord]]) -> None:
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        for topic, record in sent:
            message = records.encode(record)
            await producer.send_and_wait(
                topic, message.value, key=message.key, headers=message.headers
            )
    finally:
        await producer.stop()


PAGE_STATE = """
() => {
  const h = window.livetagDashboard;
  const texts = (selector) =>
    Array.from(document.querySelectorAll(selector), (e) => e.textContent);
  const card = (label) => {
    const at = `.gap-card[data-label="${label}"]`;
    return texts(`${at} .gap-agreed, ${at} .gap-line`);
  };
  return JSON.parse(JSON.stringify({
    raters: h.raters,
    models: h.models.alice,
    drawn: h.performers.alice.modelWindowsDrawn,
    ratings: h.performers.alice.ratings,
    ratingsShown: !document.querySelector("#perf-alice .ratings-wrap").hidden,
    ratingsBasis: document.querySelector("#perf-alice .ratings-basis").textContent,
    lagRows: texts("#raters-table tbody tr.rater-row"),
    overall: texts("#gap-overall .gap-model-line"),
    laughter: card("laughter"),
    anger: card("anger"),
    cards: Array.from(document.querySelectorAll(".gap-card"), (e) => e.dataset.label),
    moments: texts('.gap-card[data-label="laughter"] .gap-moment'),
  }));
}
"""


async def test_lags_traces_the_model_lane_and_the_gap_reach_the_page(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,  # noqa: F811  (the fixture)
    open_page: LaunchPage,
) -> None:
    session, _links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    sid = session.session_id
    now = wall_us()
    start = (now - 15_000_000) // WINDOW_US * WINDOW_US
    windows: list[tuple[str, records.AnyRecord]] = []
    k = 0
    for count, held, read in SCRIPT:
        for _ in range(count):
            record = window(sid, "alice", start + k * WINDOW_US, held, read)
            windows.append((topics.LABELS, record))
            k += 1
    missed_start = start + 10 * WINDOW_US
    sent: list[tuple[str, records.AnyRecord]] = [
        *windows,
        (topics.RATERS, lag_record(sid, "r1", 420_000, relative=False)),
        (topics.RATERS, lag_record(sid, "r2", 610_000, relative=True)),
        (topics.RATERS, lag_record("another-session", "r3", 100_000, relative=False)),
        (topics.RATINGS, rating_batch(sid, "r1", now - 4_000_000, -0.5)),
        (topics.RATINGS, rating_batch(sid, "r2", now - 4_000_000, 0.0)),
        # r3 moves from the amusement slider to the anger slider: two traces, not one line.
        (topics.RATINGS, intensity_batch(sid, "r3", "amusement", now - 5_000_000, 0.8)),
        (topics.RATINGS, intensity_batch(sid, "r3", "anger", now - 3_900_000, 0.3)),
    ]
    async with open_page(
        dashboard_url(dashboard, director_token(capture_settings, sid)), video=None, audio=None
    ) as director:
        await director.wait_for_function(
            "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
        )
        await produce(capture_settings, sent)
        await director.wait_for_function(
            """(model) => { const h = window.livetagDashboard;
              const m = h.models.alice && h.models.alice[model];
              const g = h.gap && h.gap.models[model];
              const r = h.performers.alice.ratings;
              return m && m.windows === 30 && g && g.read === 25 && h.raters
                && h.raters.length === 2 && r["r1/valence_arousal"] >= 40
                && r["r2/valence_arousal"] >= 40 && r["r3/intensity/anger"] >= 20
                && h.performers.alice.ratingDraws > 2; }""",
            arg=MODEL,
            timeout=20_000,
        )
        state = await director.evaluate(PAGE_STATE)
        # The slider traces, each named in the legend with the emotion it rates.
        await director.click('#perf-alice .rating-dim[data-dim="intensity"]')
        await director.wait_for_function(
            """() => { const p = window.livetagDashboard.performers.alice;
              return p.ratingLegendDimension === "intensity"
                && (p.ratingLegend || []).length === 2; }""",
            timeout=10_000,
        )
        legend = await director.evaluate("window.livetagDashboard.performers.alice.ratingLegend")
        # Every method's estimate opens under the rater's row.
        await director.click('#raters-table tr.rater-row[data-key="r2"]')
        estimates = await director.inner_text("#raters-table tr.rater-estimates")
        # A missed moment names its time and outlines it on alice's timeline.
        await director.click('.gap-card[data-label="laughter"] .gap-moment')
        picked = await director.inner_text("#gap-picked")
        picked_moment = await director.evaluate("window.livetagDashboard.gapPicked")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await director.locator("#perf-alice").screenshot(path=str(SCREENSHOT))
        await director.locator("#raters").screenshot(path=str(SIDE_SCREENSHOT))

    print("page:", state)
    # The lag table: each rater's applied lag, method, spread, confidence, "rel".
    assert [row["rater_id"] for row in state["raters"]] == ["r1", "r2"]
    r1, r2 = state["lagRows"]  # the cells' texts run together
    assert r1 == "r1420consensus± 950.82", r1
    assert r2 == "r2610consensus± 950.82rel", r2
    assert "calibration: 570 ms ± 0, confidence 0.60, n=10" in estimates, estimates
    # The model lane: every window's reading, the humans-agreed misses marked.
    assert state["models"] == {MODEL: {"windows": 30, "missed": 10}}
    assert state["drawn"][MODEL] == 30
    # The continuous traces: 40 samples at 20 Hz are 40 points of 50 ms per rater; r3's
    # two sliders are two traces of 20.
    assert state["ratings"] == {
        "r1/valence_arousal": 40,
        "r2/valence_arousal": 40,
        "r3/intensity/amusement": 20,
        "r3/intensity/anger": 20,
    }
    assert state["ratingsShown"]
    assert sorted(legend) == ["r3 (amusement)", "r3 (anger)"]
    # Traces and tags are on different time bases, and the lane says so.
    assert "lag not taken off" in state["ratingsBasis"]
    # The gap, per emotion of the vocabulary, with the numbers the script makes: laughter
    # agreed in 15 windows, the model read 10 of them so; anger in 10, 5 of them (two it
    # read as a neutral face: "(none)", missed).
    assert state["cards"][:2] == ["laughter", "amusement"]
    assert "humans agreed: 15 windows" in state["laughter"]
    assert "model 10/15 (67%) · missed 5 · said it elsewhere 3" in state["laughter"]
    assert "humans agreed: 10 windows" in state["anger"]
    assert "model 5/10 (50%) · missed 5 · said it elsewhere 5" in state["anger"]
    # Kappa over (laughter, laughter) 10, (laughter, anger) 5, (anger, anger) 5,
    # (anger, laughter) 3, (anger, (none)) 2: p_o = 15/25, p_e = (15*13 + 10*10) / 625,
    # (375 - 295) / (625 - 295) = 0.24.
    assert state["overall"] == [
        f"{MODEL}: agrees in 15 of 25 agreed windows it read (60%), Cohen's κ 0.24 · (none) in 2"
    ]
    [moment] = state["moments"]
    assert "0.5 s · read anger" in moment
    assert picked_moment["start_us"] == missed_start
    assert picked_moment["end_us"] == missed_start + 5 * WINDOW_US
    assert picked.startswith("laughter read as anger: alice, "), picked
