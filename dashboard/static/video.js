// The performer tiles and the video in them. Each tile is put together here from the
// parts the other modules draw (mesh, lanes, ratings, timeline, ledger lanes, agreement
// badge, presence dot, cue row);
// the video itself comes from the capture server's call page script (call.js), loaded
// into this page, whose <figure data-performer> elements are moved into the tiles as
// they appear. Separate because the video is not drawn by the dashboard at all: this
// module embeds another page's script and watches its elements, and estimates the age
// of the frame on screen from the frames' RTP timestamps.

import { createAlphaBadge } from "./agreement.js";
import { createCueRow } from "./cues.js";
import { attachLaneAges, createProsodyCharts, newProsodyRing } from "./lanes.js";
import { newLedgerState } from "./ledger.js";
import { createFaceParts, newFaceState } from "./mesh.js";
import { createRatingsChart, newRatingsState } from "./ratings.js";
import { createPresenceDot } from "./session.js";
import {
  $,
  dash,
  el,
  hooks,
  observeSize,
  observeVisibility,
  panelFor,
  pushError,
  setPanelBuilder,
} from "./shared.js";
import { createTimelineChart, newTagState, setLaneHeight } from "./timeline.js";

const VIDEO_RTP_HZ = 90000; // the RTP clock of video (VP8)

// ---- performer tiles ----------------------------------------------------------------
function createPanel(performerId, displayName) {
  const root = el("article", "perf");
  root.dataset.performer = performerId;
  root.id = `perf-${performerId}`;

  const head = el("header", "perf-head");
  const name = el("h2", "perf-name", displayName || performerId);
  const pid = el("span", "perf-id mono", performerId);
  const presence = createPresenceDot();
  const alpha = createAlphaBadge();
  const target = el("button", "perf-target", "Tag this");
  target.type = "button";
  target.title = "make this performer the tagging target";
  target.addEventListener("click", () => {
    const tagger = window.livetagTagger;
    if (tagger && typeof tagger.selectTarget === "function") tagger.selectTarget(performerId);
  });
  const sound = el("button", "perf-sound", "mute");
  sound.type = "button";
  sound.title = "mute / unmute this performer";
  head.append(presence, name, pid, alpha, target, sound);
  const cueRow = createCueRow(performerId);

  const slot = el("div", "video-slot");
  const waiting = el("div", "video-waiting", "waiting for video…");
  const face = createFaceParts(performerId);
  slot.append(waiting, face.mesh);
  const { pitchWrap, pitch, loudWrap, loud } = createProsodyCharts(performerId);
  const { timelineWrap, timeline } = createTimelineChart(performerId);
  // The lane's buttons act on the panel, which is made below: they are only clicked later.
  const { ratingsWrap, ratings, ratingButtons } = createRatingsChart(performerId, () => panel);

  root.append(head, cueRow.root, slot, face.side, pitchWrap, loudWrap, ratingsWrap, timelineWrap);

  // The tile as the tests see it (window.livetagDashboard.performers[id]).
  const hook = {
    prosodyPoints: 0,
    lastF0: null,
    lastLoudness: null,
    meshDraws: 0,
    blendshapes: {},
    pitchChartDraws: 0,
    ratings: {}, // rater_id -> trace points held
    ratingDraws: 0,
    ratingDimension: null,
    ratingLegendDimension: null, // the dimension ratingLegend was last drawn for
    modelWindowsDrawn: {}, // model -> its windows drawn on the timeline's last frame
    // what the timeline's last frame drew per ledger lane: intent runs and text marks (the
    // director's page only), self-tags, partners' tags, observers' tags, perceived windows
    // (agreed, disputed), model windows
    lanes: null,
    // age (ms) of what each lane draws, null when it draws nothing; see updateLaneAges
    ages: { video: null, mesh: null, prosody: null, tags: null },
    meshDelayMs: null, // the face stream's latency the mesh is drawn at
    meshFaceTsUs: null, // ts_us of the face record drawn
    meshOpacity: 1,
  };
  hooks.performers[performerId] = hook;
  const drawnIds = [];
  hooks.timeline[performerId] = drawnIds;

  const panel = {
    id: performerId,
    name: displayName || performerId,
    root,
    nameEl: name,
    presenceEl: presence,
    alphaEl: alpha,
    soundBtn: sound,
    slot,
    waiting,
    mesh: face.mesh,
    pitch,
    loud,
    timeline,
    cueRow,
    ratingsWrap,
    ratings,
    ratingButtons,
    blendRows: face.blendRows,
    poseEl: face.poseEl,
    faceStateEl: face.faceStateEl,
    hook,
    drawnIds,
    visible: true,
    lastDrawPerf: 0,
    figure: null,
    video: null,
    // video: the frame on screen's capture instant, estimated (see noteVideoFrame)
    videoClock: null,
    // lane ages (lanes.js)
    ageEls: null,
    agesPerf: 0,
    ...newProsodyRing(),
    ...newFaceState(),
    ...newTagState(),
    ...newLedgerState(),
    ...newRatingsState(),
  };
  root._panel = panel;
  face.mesh._panel = panel;
  slot._canvas = face.mesh;
  attachLaneAges(panel, pitchWrap, timelineWrap);

  sound.addEventListener("click", () => {
    if (!panel.video) return;
    panel.video.muted = !panel.video.muted;
    if (!panel.video.muted) panel.video.play().catch(() => {});
    updateSoundButton(panel);
  });

  observeSize(slot);
  observeSize(pitch);
  observeSize(loud);
  observeSize(timeline);
  observeSize(ratings);
  observeVisibility(root);
  dash.panels.set(performerId, panel);
  $("performers").append(root);
  setLaneHeight(panel);
  return panel;
}
setPanelBuilder(createPanel);

function updateSoundButton(panel) {
  const muted = !panel.video || panel.video.muted;
  panel.soundBtn.textContent = muted ? "unmute" : "mute";
  panel.soundBtn.dataset.muted = muted ? "1" : "0";
}

// The session's performers (hello.session.roster): a tile each, in the roster's order,
// then any tile made for someone else.
export function applyRoster(roster) {
  for (const performer of roster || []) {
    const panel = dash.panels.get(performer.performer_id);
    if (panel) {
      panel.name = performer.display_name || performer.performer_id;
      panel.nameEl.textContent = panel.name;
    } else {
      createPanel(performer.performer_id, performer.display_name);
    }
  }
  const performersEl = $("performers");
  for (const performer of roster || []) performersEl.append(dash.panels.get(performer.performer_id).root);
  adoptAllFigures();
}

// ---- video figures from call.js -----------------------------------------------------
function adoptFigure(figure) {
  const performerId = figure.dataset && figure.dataset.performer;
  if (!performerId) return;
  const panel = panelFor(performerId);
  if (panel.figure === figure && figure.parentNode === panel.slot) return;
  if (panel.figure && panel.figure !== figure && panel.figure.parentNode === panel.slot) panel.figure.remove();
  panel.slot.insertBefore(figure, panel.mesh);
  panel.figure = figure;
  const previousVideo = panel.video;
  panel.video = figure.querySelector("video");
  panel.waiting.hidden = true;
  panel.meshDirty = true;
  const video = panel.video;
  if (video) {
    if (video !== previousVideo) watchVideoFrames(panel, video);
    video.addEventListener("resize", () => {
      panel.meshDirty = true;
    });
    // Unmuted autoplay can be refused before any user gesture: fall back to muted.
    const tryPlay = () => {
      const result = video.play();
      if (result && result.catch) {
        result.catch(() => {
          if (!video.muted) {
            video.muted = true;
            updateSoundButton(panel);
            video.play().catch(() => {});
          }
        });
      }
    };
    video.addEventListener("loadedmetadata", tryPlay);
    tryPlay();
  }
  updateSoundButton(panel);
}

function adoptAllFigures() {
  const tiles = $("tiles");
  for (const figure of tiles.querySelectorAll("figure[data-performer]")) adoptFigure(figure);
}

const tilesObserver = new MutationObserver((records) => {
  for (const record of records) {
    for (const node of record.addedNodes) {
      if (node.nodeType === 1 && node.matches("figure[data-performer]")) adoptFigure(node);
    }
  }
});
tilesObserver.observe($("tiles"), { childList: true });

// call.js removed the figure (the performer left, or their media was replaced): the
// tile waits for video again.
export function checkFigure(panel) {
  if (panel.figure && !panel.figure.isConnected) {
    panel.figure = null;
    panel.video = null;
    panel.videoClock = null;
    panel.waiting.hidden = false;
    panel.meshDirty = true;
    updateSoundButton(panel);
  }
}

// ---- video: the age of the frame on screen ------------------------------------------
// The page has no capture clock for the video it watches: the capture server's sender
// reports stamp when it forwarded a frame, and Chromium gives no captureTime to a
// receive-only page. What it has per frame is the RTP timestamp (the publisher's
// capture clock, origin unknown) and when the frame arrived. The fastest arrival seen
// so far fixes the origin: capture ≈ RTP time + the smallest (arrival - RTP time). The
// age is then how long ago the frame on screen was captured, less the path's minimum
// delay (tens of ms on a LAN), and it grows while the picture is frozen.
function watchVideoFrames(panel, video) {
  panel.videoClock = null; // a new subscription: a new RTP origin and path
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  const onFrame = (_now, metadata) => {
    if (panel.video !== video) return; // replaced: this watch ends
    noteVideoFrame(panel, metadata);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

function noteVideoFrame(panel, metadata) {
  const rtp = metadata.rtpTimestamp;
  if (typeof rtp !== "number") return; // not a WebRTC frame
  const arrivedMs = typeof metadata.receiveTime === "number" ? metadata.receiveTime : metadata.expectedDisplayTime;
  let clock = panel.videoClock;
  if (clock) {
    const step = (rtp - clock.rtp) | 0; // signed 32-bit difference: survives wrap-around
    if (Math.abs(step) > VIDEO_RTP_HZ * 600) clock = null; // not the same stream any more
    else {
      clock.rtp = rtp;
      clock.rtpMs += (step * 1000) / VIDEO_RTP_HZ;
    }
  }
  if (!clock) clock = panel.videoClock = { rtp, rtpMs: 0, originMs: Infinity, captureMs: null };
  clock.originMs = Math.min(clock.originMs, arrivedMs - clock.rtpMs);
  clock.captureMs = clock.rtpMs + clock.originMs; // on performance.now()'s clock
}

// ---- the call page script (video call + tagging widget) -----------------------------
let captureStarted = false;

function loadCss(href) {
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  // before our own stylesheet, so the dashboard's rules win on equal specificity
  const ours = document.querySelector('link[href$="dashboard.css"]');
  document.head.insertBefore(link, ours || null);
}

// Once, from the first hello that names the capture server. call.js is a module of
// the capture server's (another origin, which allows it by CORS) that imports the
// tagging widget itself; it reads where it runs from window.LIVETAG_CAPTURE_BASE and
// uses this page's credential (window.LIVETAG_CREDENTIALS, set by dashboard.js).
export async function startCapture(captureUrl) {
  if (captureStarted || !captureUrl) return;
  captureStarted = true;
  const base = String(captureUrl).replace(/\/+$/, "");
  window.LIVETAG_CAPTURE_BASE = base;
  loadCss(`${base}/tagger/tagger.css`);
  const src = `${base}/static/call.js`;
  try {
    await import(src);
  } catch (error) {
    pushError({ type: "error", code: "load_failed", message: `could not load ${src}` });
  }
}
