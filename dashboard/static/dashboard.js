// livetag director dashboard: live video with face mesh, prosody charts, tag timelines,
// rater agreement and pipeline health, fed by /ws/dashboard on this origin. Video and
// tagging come from the capture server: its call page script (call.js) and tagging widget
// are loaded from hello.capture_url once the first hello names it.
//
// Plain script, no build step. Everything lives inside this function so nothing clashes
// with the top-level names of call.js, which shares the global scope.
"use strict";

(function () {
  const KEEP_US = 60e6; // drawing buffers keep 60 s
  const PROSODY_CAP = 8192; // points per performer (ring buffer)
  // The mesh is drawn at the face stream's own latency: the largest arrival latency of
  // its records over the last second, so the jitter of fetches and update ticks (a few
  // 100 ms) does not stutter the playback, and a stream that catches up is followed
  // within a second (a longer span would keep a current stream drawn needlessly old).
  const FACE_DELAY_SPAN_MS = 1000;
  const FACE_BUFFER_MAX = 200; // face records waiting to be drawn (13 s at 15 fps)
  // An old mesh fades, from full opacity at 0.5 s to a floor at 5 s, and stays visible:
  // a late mesh is information (the analysis runs behind), a blank one is not.
  const MESH_FADE_FROM_US = 0.5e6;
  const MESH_FADE_TO_US = 5e6;
  const MESH_MIN_OPACITY = 0.3;
  // Lane ages: labels refresh at 4 Hz; colour from these ages up.
  const AGE_LABEL_MS = 250;
  const AGE_WARN_US = 0.6e6;
  const AGE_BAD_US = 2e6;
  const VIDEO_RTP_HZ = 90000; // the RTP clock of video (VP8)
  // Update samples of the server clock kept for its estimate (see syncClock).
  const CLOCK_SPAN_MS = 20000;
  const F0_MIN = 60;
  const F0_MAX = 500;
  const DB_MIN = -70;
  const DB_MAX = 0;
  const GAP_US = 300e3; // loudness line breaks over gaps longer than this
  const BACKOFF_START_MS = 500;
  const BACKOFF_MAX_MS = 5000;
  // Refused for want of room (this session, this address or the server full: HTTP 429/503,
  // or close codes 4400-4599 with the reason, infra.connection_gate): try again after
  // 10-20 s, not at the usual pace.
  const REFUSED_RETRY_MS = 10000;
  const LANE_H = 14;
  const AXIS_H = 14;
  const OFFSCREEN_DRAW_MS = 250; // panels scrolled out of view redraw at 4 Hz
  const CHART_FPS = 20;
  const PITCH_GRID = [100, 200, 400];
  const LOUD_GRID = [-60, -40, -20];
  const PITCH_TEXT = PITCH_GRID.map((hz) => `${hz} Hz`);
  const LOUD_TEXT = LOUD_GRID.map((db) => `${db} dB`);
  const BLEND_ROWS = 8;
  const LOG_F0_RANGE = Math.log(F0_MAX / F0_MIN);

  const COLOURS = {
    grid: "rgba(255,255,255,0.08)",
    gridLabel: "rgba(200,205,215,0.55)",
    pitch: "#7cc4ff",
    loud: "#9be28f",
    mesh: "rgba(120,230,255,0.55)",
    lane: "rgba(255,255,255,0.035)",
    laneAlt: "rgba(255,255,255,0.06)",
    laneText: "rgba(225,228,235,0.85)",
    now: "rgba(255,255,255,0.35)",
    take: "rgba(245,183,0,0.7)",
    unknown: "#8a8f98",
  };

  // This page's credential for its link (credentials.js: the link's token leaves the
  // address bar at once, and is exchanged here for a short-lived credential the server
  // renews over the websocket). The call page script loaded below uses the same one.
  const credentials = new LivetagCredentials({ exchangeUrl: "/api/credential", storageKey: "livetag-dashboard-link" });
  window.LIVETAG_CREDENTIALS = credentials;

  // ---- test hooks -------------------------------------------------------------------
  const hooks = {
    connected: false,
    hello: null,
    updates: 0,
    performers: {},
    timeline: {},
    consensus: {},
    agreement: null,
    health: null,
    session: null,
    errors: [],
    you: null, // {rater_id, role, controls}: who this dashboard is
    invites: [], // links the director asked for: {role, participant_id, token_id}
    meshDrawn: {}, // performer_id -> {atUnixMs, faceTsUs} of the last mesh drawn
  };
  window.livetagDashboard = hooks;

  // ---- state ------------------------------------------------------------------------
  const dash = {
    ws: null,
    retryMs: BACKOFF_START_MS,
    retryTimer: null,
    stopped: false,
    windowUs: 30e6,
    vocab: new Map(), // label -> colour
    panels: new Map(), // performer_id -> panel
    edges: new Uint16Array(0),
    clockOffsetUs: null, // session clock minus performance.now() (µs)
    clockSamples: [], // {perf, offset} of recent updates, offsets decreasing (see syncClock)
    session: { state: null, takes: [], presence: [] },
    sessionId: null,
    scriptsStarted: false,
    lastPrunePerf: 0,
    lastChartPerf: 0,
    lastTakeText: "",
    actionPendingUntil: 0,
    controls: false, // takes, end of session and links: the director's only
    inviteRow: null, // the link row waiting for the server's invite answer
  };

  const $ = (id) => document.getElementById(id);
  const performersEl = $("performers");
  const connEl = $("conn");
  const dpr = () => window.devicePixelRatio || 1;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function setConn(state, text) {
    connEl.dataset.state = state;
    connEl.textContent = text;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || !Number.isFinite(Number(value))) return "—";
    return Number(value).toFixed(digits);
  }

  function pushError(error) {
    hooks.errors.push(error);
    if (hooks.errors.length > 200) hooks.errors.splice(0, hooks.errors.length - 200);
    const box = $("errors");
    const row = el("div", "error-row", error.code ? `${error.code}: ${error.message || ""}` : String(error.message || error));
    const close = el("button", "error-close", "×");
    close.type = "button";
    close.setAttribute("aria-label", "dismiss");
    close.addEventListener("click", () => row.remove());
    row.append(close);
    box.append(row);
    while (box.children.length > 4) box.firstChild.remove();
    setTimeout(() => row.remove(), 12000);
  }

  // ---- session clock ----------------------------------------------------------------
  // Every update carries the server's clock when it was built, and reaches this page later
  // by however long its delivery took (longer on a busy machine): each sample is behind the
  // true offset, never ahead. The estimate is the largest sample of the last 20 s, the
  // least delayed one (minimum-delay filtering, as the call's clock sync does); the window
  // lets drift and a stepped server clock through. A late sample no longer drags the
  // estimate back, which would understate every lane's age.
  function syncClock(nowUs) {
    const perf = performance.now();
    const offset = nowUs - perf * 1000;
    const samples = dash.clockSamples;
    while (samples.length && samples[0].perf < perf - CLOCK_SPAN_MS) samples.shift();
    // A sample below a newer one can never be the largest again: dropped, so the first
    // kept sample is always the largest of the window.
    while (samples.length && samples[samples.length - 1].offset <= offset) samples.pop();
    samples.push({ perf, offset });
    dash.clockOffsetUs = samples[0].offset;
  }

  function sessionNowUs() {
    return dash.clockOffsetUs === null ? null : performance.now() * 1000 + dash.clockOffsetUs;
  }

  // ---- landmarks: base64 of little-endian float16 triples ---------------------------
  let halfTable = null;
  function halfToFloatTable() {
    if (halfTable) return halfTable;
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h += 1) {
      const sign = h & 0x8000 ? -1 : 1;
      const exp = (h >> 10) & 0x1f;
      const frac = h & 0x3ff;
      let v;
      if (exp === 0) v = sign * frac * 5.960464477539063e-8;
      else if (exp === 31) v = frac ? NaN : sign * Infinity;
      else v = sign * (1 + frac / 1024) * Math.pow(2, exp - 15);
      halfTable[h] = v;
    }
    return halfTable;
  }

  // Decodes x, y of each landmark into out (x0, y0, x1, y1, ...); returns the count.
  function decodeLandmarks(data, out) {
    if (!data || typeof data !== "string") return 0;
    let raw;
    try {
      raw = atob(data);
    } catch (error) {
      return 0;
    }
    const table = halfToFloatTable();
    const count = Math.min(Math.floor(raw.length / 6), out.length >> 1);
    for (let i = 0; i < count; i += 1) {
      const o = i * 6;
      out[2 * i] = table[raw.charCodeAt(o) | (raw.charCodeAt(o + 1) << 8)];
      out[2 * i + 1] = table[raw.charCodeAt(o + 2) | (raw.charCodeAt(o + 3) << 8)];
    }
    return count;
  }

  // ---- canvases ---------------------------------------------------------------------
  const resizer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const canvas = entry.target._canvas || entry.target;
      const w = entry.contentRect.width;
      const h = entry.contentRect.height;
      const ratio = dpr();
      canvas._w = w;
      canvas._h = h;
      canvas._dpr = ratio;
      canvas.width = Math.max(1, Math.round(w * ratio));
      canvas.height = Math.max(1, Math.round(h * ratio));
      if (canvas._panel) canvas._panel.meshDirty = true;
    }
  });

  const visibility = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const panel = entry.target._panel;
      if (panel) panel.visible = entry.isIntersecting;
    }
  });

  function beginCanvas(canvas) {
    const ctx = canvas._ctx;
    const ratio = canvas._dpr || 1;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, canvas._w, canvas._h);
    return ctx;
  }

  function makeCanvas(className, label) {
    const canvas = el("canvas", className);
    canvas._ctx = canvas.getContext("2d");
    canvas._w = 0;
    canvas._h = 0;
    canvas.setAttribute("role", "img");
    if (label) canvas.setAttribute("aria-label", label);
    return canvas;
  }

  let selfHatch = null;
  function hatchPattern(ctx) {
    if (selfHatch) return selfHatch;
    const tile = document.createElement("canvas");
    tile.width = 8;
    tile.height = 8;
    const t = tile.getContext("2d");
    t.strokeStyle = "rgba(255,255,255,0.13)";
    t.lineWidth = 1;
    t.beginPath();
    t.moveTo(0, 8);
    t.lineTo(8, 0);
    t.moveTo(-2, 2);
    t.lineTo(2, -2);
    t.moveTo(6, 10);
    t.lineTo(10, 6);
    t.stroke();
    selfHatch = ctx.createPattern(tile, "repeat");
    return selfHatch;
  }

  // ---- performer panels -------------------------------------------------------------
  function createPanel(performerId, displayName) {
    const root = el("article", "perf");
    root.dataset.performer = performerId;
    root.id = `perf-${performerId}`;

    const head = el("header", "perf-head");
    const name = el("h2", "perf-name", displayName || performerId);
    const pid = el("span", "perf-id mono", performerId);
    const presence = el("span", "dot");
    presence.dataset.ok = "unknown";
    presence.title = "presence";
    const alpha = el("span", "perf-alpha num", "α —");
    alpha.title = "Krippendorff's alpha (nominal): whole session · last 60 s";
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

    const slot = el("div", "video-slot");
    const waiting = el("div", "video-waiting", "waiting for video…");
    const mesh = makeCanvas("mesh", `face mesh of ${performerId}`);
    slot.append(waiting, mesh);

    const face = el("div", "face-side");
    const bars = el("ol", "blend");
    const blendRows = [];
    for (let i = 0; i < BLEND_ROWS; i += 1) {
      const row = el("li", "blend-row");
      const label = el("span", "blend-name", "");
      const track = el("span", "blend-track");
      const fill = el("span", "blend-fill");
      track.append(fill);
      const value = el("span", "blend-value num", "");
      row.append(label, track, value);
      bars.append(row);
      blendRows.push({ row, label, fill, value, name: null });
    }
    const pose = el("div", "pose num", "yaw — pitch — roll —");
    const faceState = el("div", "face-state", "no face data");
    face.append(faceState, bars, pose);

    const pitchWrap = el("div", "chart pitch-wrap");
    const pitch = makeCanvas("pitch", `pitch of ${performerId}`);
    pitchWrap.title = "pitch (F0, Hz, log scale 60-500), last 30 s";
    pitchWrap.append(pitch);
    const loudWrap = el("div", "chart loud-wrap");
    const loud = makeCanvas("loud", `loudness of ${performerId}`);
    loudWrap.title = "loudness (dB, -70..0), last 30 s";
    loudWrap.append(loud);
    const timelineWrap = el("div", "chart timeline-wrap");
    const timeline = makeCanvas("timeline", `tags on ${performerId}`);
    timelineWrap.append(timeline);

    root.append(head, slot, face, pitchWrap, loudWrap, timelineWrap);

    const hook = {
      prosodyPoints: 0,
      lastF0: null,
      lastLoudness: null,
      meshDraws: 0,
      blendshapes: {},
      pitchChartDraws: 0,
      // age (ms) of what each lane draws, null when it draws nothing; see updateLaneAges
      ages: { video: null, mesh: null, prosody: null, tags: null },
      meshDelayMs: null, // the face stream's latency the mesh is drawn at
      meshFaceTsUs: null, // ts_us of the face record drawn
      meshOpacity: 1,
    };
    hooks.performers[performerId] = hook;
    const drawnIds = [];
    hooks.timeline[performerId] = drawnIds;
    hooks.consensus[performerId] = 0;

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
      mesh,
      pitch,
      loud,
      timeline,
      blendRows,
      poseEl: pose,
      faceStateEl: faceState,
      hook,
      drawnIds,
      visible: true,
      lastDrawPerf: 0,
      figure: null,
      video: null,
      // prosody ring buffer
      ts: new Float64Array(PROSODY_CAP),
      f0n: new Float32Array(PROSODY_CAP), // normalized log-F0 0..1, NaN when unvoiced
      dbn: new Float32Array(PROSODY_CAP), // normalized loudness 0..1
      head: 0,
      count: 0,
      lastTs: -Infinity,
      // face: records in ts_us order waiting to be drawn (the first is the one drawn
      // once drawing started), the record drawn, and the stream's latency
      faces: [],
      face: null,
      faceLatency: [], // {perf, us} of recent arrivals, latencies decreasing (windowed max)
      faceDelayUs: 0,
      xy: new Float32Array(2000), // the drawn record's landmarks, decoded
      faceCount: 0,
      meshOpacity: 1,
      meshDirty: false,
      lastVw: 0,
      lastVh: 0,
      // video: the frame on screen's capture instant, estimated (see noteVideoFrame)
      videoClock: null,
      // lane ages
      ageEls: null,
      agesPerf: 0,
      newestTagTs: null,
      // tags
      items: new Map(), // tag_id (point or onset) -> item, as the server decided it
      lanes: [], // {key, label, self}
      laneCount: -1,
      // consensus: window_ts_us -> [pid, ts, window_us, label, agreement]
      consensus: new Map(),
    };
    root._panel = panel;
    mesh._panel = panel;
    slot._canvas = mesh;
    attachLaneAges(panel, pitchWrap, timelineWrap);

    sound.addEventListener("click", () => {
      if (!panel.video) return;
      panel.video.muted = !panel.video.muted;
      if (!panel.video.muted) panel.video.play().catch(() => {});
      updateSoundButton(panel);
    });

    resizer.observe(slot);
    resizer.observe(pitch);
    resizer.observe(loud);
    resizer.observe(timeline);
    visibility.observe(root);
    dash.panels.set(performerId, panel);
    performersEl.append(root);
    setLaneHeight(panel);
    return panel;
  }

  function panelFor(performerId) {
    return dash.panels.get(performerId) || createPanel(performerId, performerId);
  }

  function updateSoundButton(panel) {
    const muted = !panel.video || panel.video.muted;
    panel.soundBtn.textContent = muted ? "unmute" : "mute";
    panel.soundBtn.dataset.muted = muted ? "1" : "0";
  }

  function applyRoster(roster) {
    for (const performer of roster || []) {
      const panel = dash.panels.get(performer.performer_id);
      if (panel) {
        panel.name = performer.display_name || performer.performer_id;
        panel.nameEl.textContent = panel.name;
      } else {
        createPanel(performer.performer_id, performer.display_name);
      }
    }
    // roster order first, then anyone else
    for (const performer of roster || []) performersEl.append(dash.panels.get(performer.performer_id).root);
    adoptAllFigures();
  }

  // ---- video figures from call.js ---------------------------------------------------
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

  function checkFigure(panel) {
    if (panel.figure && !panel.figure.isConnected) {
      panel.figure = null;
      panel.video = null;
      panel.videoClock = null;
      panel.waiting.hidden = false;
      panel.meshDirty = true;
      updateSoundButton(panel);
    }
  }

  // ---- prosody ----------------------------------------------------------------------
  function addProsody(panel, points) {
    if (!Array.isArray(points)) return;
    const cap = PROSODY_CAP;
    for (const point of points) {
      if (!Array.isArray(point)) continue;
      const ts = Number(point[0]);
      if (!Number.isFinite(ts) || ts <= panel.lastTs) continue; // in time order; drops repeats
      const f0 = point[1];
      const db = point[2];
      if (panel.count === cap) {
        panel.head = (panel.head + 1) % cap;
        panel.count -= 1;
      }
      const idx = (panel.head + panel.count) % cap;
      panel.ts[idx] = ts;
      if (typeof f0 === "number" && f0 > 0) {
        const n = Math.log(f0 / F0_MIN) / LOG_F0_RANGE;
        panel.f0n[idx] = n < 0 ? 0 : n > 1 ? 1 : n;
        panel.hook.lastF0 = f0;
      } else {
        panel.f0n[idx] = NaN;
        panel.hook.lastF0 = null;
      }
      if (typeof db === "number" && Number.isFinite(db)) {
        const n = (db - DB_MIN) / (DB_MAX - DB_MIN);
        panel.dbn[idx] = n < 0 ? 0 : n > 1 ? 1 : n;
        panel.hook.lastLoudness = db;
      } else {
        panel.dbn[idx] = NaN;
        panel.hook.lastLoudness = null;
      }
      panel.count += 1;
      panel.lastTs = ts;
    }
    panel.hook.prosodyPoints = panel.count;
  }

  function pruneProsody(panel, cutoff) {
    const cap = PROSODY_CAP;
    while (panel.count > 0 && panel.ts[panel.head] < cutoff) {
      panel.head = (panel.head + 1) % cap;
      panel.count -= 1;
    }
    panel.hook.prosodyPoints = panel.count;
  }

  // ---- face -------------------------------------------------------------------------
  // A face record arrives: buffered until the lane's delay reaches it, and its arrival
  // latency (on the session clock) updates the delay.
  function setFace(panel, face) {
    if (!face || typeof face !== "object") return;
    const ts = Number(face.ts_us);
    if (!Number.isFinite(ts)) return;
    const faces = panel.faces;
    const newest = faces.length ? faces[faces.length - 1].ts : panel.face ? panel.face.ts : -Infinity;
    if (ts <= newest) return; // re-delivered, or older than what is drawn already
    let data = face.landmarks;
    if (data && typeof data === "object") data = data.data; // a Landmarks record
    const present = face.face_present === true;
    faces.push({
      ts,
      present,
      landmarks: present && typeof data === "string" ? data : null, // decoded when drawn
      blendshapes: face.blendshapes && typeof face.blendshapes === "object" ? face.blendshapes : {},
      pose: face.head_pose || null,
    });
    if (faces.length > FACE_BUFFER_MAX) faces.splice(0, faces.length - FACE_BUFFER_MAX);
    const now = sessionNowUs();
    if (now !== null) noteFaceLatency(panel, now - ts);
  }

  // The face stream's current latency: the largest arrival latency of the last second. A
  // stream arriving 2 s late is then drawn continuously 2 s behind, frame after frame,
  // instead of jumping to each newest record as it lands; a stream that stops arriving
  // keeps its last delay (its last record stays drawn, ageing).
  function noteFaceLatency(panel, latencyUs) {
    const perf = performance.now();
    const samples = panel.faceLatency;
    while (samples.length && samples[0].perf < perf - FACE_DELAY_SPAN_MS) samples.shift();
    while (samples.length && samples[samples.length - 1].us <= latencyUs) samples.pop();
    samples.push({ perf, us: latencyUs });
    panel.faceDelayUs = Math.max(0, samples[0].us);
    panel.hook.meshDelayMs = Math.round(panel.faceDelayUs / 1000);
  }

  // The record to draw now: the newest one captured at or before now minus the lane's
  // delay. Never an older one than is drawn (a growing delay holds the mesh instead of
  // playing it backwards), and never nothing once something was drawn.
  function pickFace(panel, now) {
    const faces = panel.faces;
    if (!faces.length) return;
    const target = now - panel.faceDelayUs;
    let pick = -1;
    for (let i = faces.length - 1; i >= 0; i -= 1) {
      if (faces[i].ts <= target) {
        pick = i;
        break;
      }
    }
    if (pick < 0) {
      if (panel.face) return;
      pick = 0; // nothing is that old yet: the oldest there is, rather than a blank
    }
    const face = faces[pick];
    faces.splice(0, pick); // the older ones will never be drawn
    if (face === panel.face) return;
    panel.face = face;
    panel.faceCount = face.present ? decodeLandmarks(face.landmarks, panel.xy) : 0;
    face.landmarks = null; // decoded: the string is not needed any more
    panel.meshDirty = true;
    showFace(panel, face);
  }

  // Blendshape bars, head pose and face state of the record the mesh draws, so the side
  // panel and the mesh always describe the same moment.
  function showFace(panel, face) {
    const present = face.present;
    const blend = face.blendshapes;
    panel.hook.blendshapes = blend;
    panel.hook.meshFaceTsUs = face.ts;
    const entries = Object.entries(blend)
      .filter((e) => typeof e[1] === "number")
      .sort((a, b) => b[1] - a[1]);
    for (let i = 0; i < BLEND_ROWS; i += 1) {
      const row = panel.blendRows[i];
      const entry = entries[i];
      if (!entry || !present) {
        if (row.name !== null) {
          row.name = null;
          row.label.textContent = "";
          row.value.textContent = "";
          row.fill.style.transform = "scaleX(0)";
        }
        continue;
      }
      if (row.name !== entry[0]) {
        row.name = entry[0];
        row.label.textContent = entry[0];
        row.label.title = entry[0];
      }
      const v = Math.max(0, Math.min(1, entry[1]));
      row.fill.style.transform = `scaleX(${v.toFixed(3)})`;
      row.value.textContent = v.toFixed(2);
    }
    const pose = face.pose;
    panel.poseEl.textContent = pose && present
      ? `yaw ${fmt(pose.yaw_deg, 1)}°  pitch ${fmt(pose.pitch_deg, 1)}°  roll ${fmt(pose.roll_deg, 1)}°`
      : "yaw —  pitch —  roll —";
    panel.faceStateEl.textContent = present ? "face" : "no face";
    panel.faceStateEl.dataset.present = present ? "1" : "0";
  }

  // Opacity of a mesh of this age: full while current, fading to a floor, never hidden.
  function meshOpacity(ageUs) {
    if (!(ageUs > MESH_FADE_FROM_US)) return 1;
    const faded = Math.min(1, (ageUs - MESH_FADE_FROM_US) / (MESH_FADE_TO_US - MESH_FADE_FROM_US));
    return 1 - faded * (1 - MESH_MIN_OPACITY);
  }

  function drawMesh(panel, now) {
    const canvas = panel.mesh;
    if (!canvas._w) return;
    const video = panel.video;
    const vw = video && video.videoWidth ? video.videoWidth : 0;
    const vh = video && video.videoHeight ? video.videoHeight : 0;
    if (vw !== panel.lastVw || vh !== panel.lastVh) {
      panel.lastVw = vw;
      panel.lastVh = vh;
      panel.meshDirty = true;
    }
    if (now !== null) pickFace(panel, now);
    const face = panel.face;
    if (face && now !== null) {
      // A CSS opacity, not a redraw: fading costs no stroke of the mesh.
      const opacity = Math.round(meshOpacity(now - face.ts) * 20) / 20;
      if (opacity !== panel.meshOpacity) {
        panel.meshOpacity = opacity;
        canvas.style.opacity = String(opacity);
        panel.hook.meshOpacity = opacity;
      }
    }
    if (!panel.meshDirty) return;
    panel.meshDirty = false;
    const ctx = beginCanvas(canvas);
    if (!face || panel.faceCount === 0) return; // no face in the drawn record: rightly blank
    const w = canvas._w;
    const h = canvas._h;
    // object-fit: contain: the picture is letterboxed inside the element box
    const srcW = vw || 16;
    const srcH = vh || 9;
    const scale = Math.min(w / srcW, h / srcH);
    const bw = srcW * scale;
    const bh = srcH * scale;
    const ox = (w - bw) / 2;
    const oy = (h - bh) / 2;
    const xy = panel.xy;
    const n = panel.faceCount;
    const edges = dash.edges;
    ctx.strokeStyle = COLOURS.mesh;
    ctx.fillStyle = COLOURS.mesh;
    ctx.lineWidth = 0.6;
    ctx.beginPath();
    if (edges.length >= 2) {
      for (let k = 0; k + 1 < edges.length; k += 2) {
        const a = edges[k];
        const b = edges[k + 1];
        if (a >= n || b >= n) continue;
        ctx.moveTo(ox + xy[2 * a] * bw, oy + xy[2 * a + 1] * bh);
        ctx.lineTo(ox + xy[2 * b] * bw, oy + xy[2 * b + 1] * bh);
      }
      ctx.stroke();
    } else {
      for (let i = 0; i < n; i += 1) ctx.rect(ox + xy[2 * i] * bw - 0.6, oy + xy[2 * i + 1] * bh - 0.6, 1.2, 1.2);
      ctx.fill();
    }
    panel.hook.meshDraws += 1;
    hooks.meshDrawn[panel.id] = { atUnixMs: performance.timeOrigin + performance.now(), faceTsUs: face.ts };
  }

  // ---- video: the age of the frame on screen ---------------------------------------
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

  // ---- lane ages --------------------------------------------------------------------
  // Each lane says how old what it draws is: session now (this page's estimate of the
  // server clock) minus the ts_us of the newest thing drawn. Late data is drawn late and
  // labelled so, never dropped from view.
  const LANE_TITLES = {
    video:
      "How long ago the frame on screen was captured, from its RTP timestamp against the " +
      "fastest-arriving frames (the network's minimum delay is not counted)",
    mesh: "How long ago the face record the mesh draws was captured (the mesh is drawn at the face stream's own latency)",
    prosody: "How long ago the newest pitch/loudness point drawn was captured",
    tags: "How long ago the newest tag on this performer happened (tags are events: an old one is no fault)",
  };

  function attachLaneAges(panel, pitchWrap, timelineWrap) {
    const make = (lane) => {
      const label = el("span", `lane-age lane-age-${lane} num`, "");
      label.dataset.lane = lane;
      label.dataset.level = "na";
      label.title = LANE_TITLES[lane];
      return label;
    };
    const ageEls = { video: make("video"), mesh: make("mesh"), prosody: make("prosody"), tags: make("tags") };
    const onVideo = el("div", "video-ages");
    onVideo.append(ageEls.video, ageEls.mesh);
    panel.slot.append(onVideo);
    pitchWrap.append(ageEls.prosody);
    timelineWrap.insertBefore(ageEls.tags, timelineWrap.firstChild);
    panel.ageEls = ageEls;
  }

  function ageText(us) {
    const s = Math.max(0, us) / 1e6;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 120) return `${Math.round(s)} s`;
    return `${Math.round(s / 60)} min`;
  }

  function ageLevel(us) {
    if (us === null) return "na";
    if (us > AGE_BAD_US) return "bad";
    if (us > AGE_WARN_US) return "warn";
    return "ok";
  }

  function showAge(panel, lane, us, text, level) {
    const label = panel.ageEls[lane];
    if (label.textContent !== text) label.textContent = text;
    if (label.dataset.level !== level) label.dataset.level = level;
    panel.hook.ages[lane] = us === null ? null : Math.round(us / 1000);
  }

  function updateLaneAges(panel, now, perfNow) {
    if (perfNow - panel.agesPerf < AGE_LABEL_MS) return;
    panel.agesPerf = perfNow;
    const clock = panel.videoClock;
    if (panel.video && clock && clock.captureMs !== null) {
      const us = (perfNow - clock.captureMs) * 1000;
      showAge(panel, "video", us, `video ${ageText(us)} behind`, ageLevel(us));
    } else {
      showAge(panel, "video", null, panel.video ? "video: no frame yet" : "video: none", "na");
    }
    if (now === null) return; // no update yet: the session clock is unknown
    const face = panel.face;
    if (face) {
      const us = now - face.ts;
      const text = `mesh ${ageText(us)} behind${face.present ? "" : " · no face"}`;
      showAge(panel, "mesh", us, text, ageLevel(us));
    } else {
      showAge(panel, "mesh", null, "mesh: no face data yet", "na");
    }
    if (panel.count > 0) {
      const us = now - panel.lastTs;
      showAge(panel, "prosody", us, `prosody ${ageText(us)} behind`, ageLevel(us));
    } else {
      showAge(panel, "prosody", null, "prosody: none yet", "na");
    }
    if (panel.newestTagTs !== null) {
      const us = now - panel.newestTagTs;
      showAge(panel, "tags", us, `tags: newest ${ageText(us)} ago`, "info");
    } else {
      showAge(panel, "tags", null, "tags: none yet", "na");
    }
  }

  // The newest tag instant per performer, for the tags lane's age: each tag entry's ts_us
  // (its newest key press); a removal carries none, and removing a tag is no newer tag.
  function noteTagTimes(tags) {
    for (const tag of tags) {
      if (!tag || typeof tag !== "object" || tag.removed) continue;
      const panel = dash.panels.get(tag.performer_id);
      const ts = Number(tag.ts_us);
      if (!panel || !Number.isFinite(ts)) continue;
      if (panel.newestTagTs === null || ts > panel.newestTagTs) panel.newestTagTs = ts;
    }
  }

  // ---- charts -----------------------------------------------------------------------
  function drawTimeGrid(ctx, w, h, now, t0, scaleX) {
    const step = 5e6;
    ctx.strokeStyle = COLOURS.grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let t = Math.ceil(t0 / step) * step; t <= now; t += step) {
      const x = Math.round((t - t0) * scaleX) + 0.5;
      ctx.moveTo(x, 0);
      ctx.lineTo(x, h);
    }
    ctx.stroke();
  }

  function drawTakes(ctx, h, now, t0, scaleX) {
    const takes = dash.session.takes;
    if (!takes || !takes.length) return;
    ctx.strokeStyle = COLOURS.take;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let i = 0; i < takes.length; i += 1) {
      const take = takes[i];
      const s = take.start_ts_us;
      const e = take.end_ts_us;
      if (s >= t0 && s <= now) {
        const x = Math.round((s - t0) * scaleX) + 0.5;
        ctx.moveTo(x, 0);
        ctx.lineTo(x, h);
      }
      if (e !== null && e !== undefined && e >= t0 && e <= now) {
        const x = Math.round((e - t0) * scaleX) + 0.5;
        ctx.moveTo(x, 0);
        ctx.lineTo(x, h);
      }
    }
    ctx.stroke();
  }

  function drawPitch(panel, now) {
    const canvas = panel.pitch;
    const w = canvas._w;
    const h = canvas._h;
    if (!w || !h) return;
    const ctx = beginCanvas(canvas);
    const t0 = now - dash.windowUs;
    const scaleX = w / dash.windowUs;
    const pad = 3;
    const span = h - 2 * pad;
    ctx.strokeStyle = COLOURS.grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let i = 0; i < PITCH_GRID.length; i += 1) {
      const y = Math.round(pad + span * (1 - Math.log(PITCH_GRID[i] / F0_MIN) / LOG_F0_RANGE)) + 0.5;
      ctx.moveTo(0, y);
      ctx.lineTo(w, y);
    }
    ctx.stroke();
    drawTimeGrid(ctx, w, h, now, t0, scaleX);
    drawTakes(ctx, h, now, t0, scaleX);
    ctx.fillStyle = COLOURS.gridLabel;
    ctx.font = "9px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (let i = 0; i < PITCH_GRID.length; i += 1) {
      const y = pad + span * (1 - Math.log(PITCH_GRID[i] / F0_MIN) / LOG_F0_RANGE);
      ctx.fillText(PITCH_TEXT[i], 3, y - 5);
    }
    const cap = PROSODY_CAP;
    const ts = panel.ts;
    const f0n = panel.f0n;
    ctx.fillStyle = COLOURS.pitch;
    ctx.beginPath();
    for (let i = 0; i < panel.count; i += 1) {
      const idx = (panel.head + i) % cap;
      const t = ts[idx];
      if (t < t0) continue;
      const v = f0n[idx];
      if (v !== v) continue; // unvoiced (NaN)
      const x = (t - t0) * scaleX;
      const y = pad + span * (1 - v);
      ctx.rect(x - 1.2, y - 1.2, 2.4, 2.4);
    }
    ctx.fill();
    panel.hook.pitchChartDraws += 1;
  }

  function drawLoudness(panel, now) {
    const canvas = panel.loud;
    const w = canvas._w;
    const h = canvas._h;
    if (!w || !h) return;
    const ctx = beginCanvas(canvas);
    const t0 = now - dash.windowUs;
    const scaleX = w / dash.windowUs;
    const pad = 2;
    const span = h - 2 * pad;
    ctx.strokeStyle = COLOURS.grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let i = 0; i < LOUD_GRID.length; i += 1) {
      const y = Math.round(pad + span * (1 - (LOUD_GRID[i] - DB_MIN) / (DB_MAX - DB_MIN))) + 0.5;
      ctx.moveTo(0, y);
      ctx.lineTo(w, y);
    }
    ctx.stroke();
    drawTimeGrid(ctx, w, h, now, t0, scaleX);
    drawTakes(ctx, h, now, t0, scaleX);
    ctx.fillStyle = COLOURS.gridLabel;
    ctx.font = "9px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (let i = 0; i < LOUD_GRID.length; i += 1) {
      const y = pad + span * (1 - (LOUD_GRID[i] - DB_MIN) / (DB_MAX - DB_MIN));
      ctx.fillText(LOUD_TEXT[i], 3, y - 5);
    }
    const cap = PROSODY_CAP;
    const ts = panel.ts;
    const dbn = panel.dbn;
    ctx.strokeStyle = COLOURS.loud;
    ctx.lineWidth = 1.3;
    ctx.lineJoin = "round";
    ctx.beginPath();
    let prevT = -Infinity;
    let penDown = false;
    for (let i = 0; i < panel.count; i += 1) {
      const idx = (panel.head + i) % cap;
      const t = ts[idx];
      if (t < t0 - GAP_US) continue;
      const v = dbn[idx];
      if (v !== v) {
        penDown = false;
        continue;
      }
      const x = (t - t0) * scaleX;
      const y = pad + span * (1 - v);
      if (!penDown || t - prevT > GAP_US) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
      penDown = true;
      prevT = t;
    }
    ctx.stroke();
  }

  // ---- tags and timeline ------------------------------------------------------------
  function colourOf(label) {
    return dash.vocab.get(label) || COLOURS.unknown;
  }

  function laneFor(panel, tag) {
    const self = tag.rater_role === "performer" && tag.rater_id === panel.id;
    const key = self ? "\u0000self" : String(tag.rater_id);
    for (let i = 0; i < panel.lanes.length; i += 1) if (panel.lanes[i].key === key) return panel.lanes[i];
    const lane = { key, label: self ? "self" : String(tag.rater_id), self, role: tag.rater_role };
    if (self) panel.lanes.unshift(lane);
    else panel.lanes.push(lane);
    setLaneHeight(panel);
    return lane;
  }

  function setLaneHeight(panel) {
    const n = panel.lanes.length;
    if (n === panel.laneCount) return;
    panel.laneCount = n;
    // rater lanes + consensus lane + time axis
    panel.timeline.style.height = `${(Math.max(n, 1) + 1) * LANE_H + AXIS_H + 3}px`;
  }

  // One point tag or hold as the server has it now: what it covers was decided there, by
  // the rule the label windows and the export follow (streams/tag_rules.py), so the page
  // draws it as sent; a later message about the same tag_id replaces it, or removes it.
  function addTag(mark) {
    if (!mark || typeof mark !== "object" || !mark.performer_id || !mark.tag_id) return;
    const panel = panelFor(mark.performer_id);
    if (mark.removed) {
      panel.items.delete(mark.tag_id);
      return;
    }
    const start = Number(mark.start_us);
    const end = Number(mark.end_us);
    if (!Number.isFinite(start) || !Number.isFinite(end)) return;
    panel.items.set(mark.tag_id, {
      id: mark.tag_id,
      offsetId: mark.offset_tag_id || null,
      lane: laneFor(panel, mark),
      label: mark.label,
      colour: colourOf(mark.label),
      strong: mark.intensity === "strong",
      start,
      end, // an open hold's too: where it ends unless its key-up comes
      open: mark.open === true,
      hold: mark.kind === "hold",
    });
  }

  function addConsensus(rows) {
    if (!Array.isArray(rows)) return;
    for (const row of rows) {
      if (!Array.isArray(row) || row.length < 3) continue;
      const panel = panelFor(row[0]);
      panel.consensus.set(Number(row[1]), row);
      hooks.consensus[panel.id] = panel.consensus.size;
    }
  }

  function pruneTags(panel, cutoff) {
    for (const [id, item] of panel.items) {
      if (item.end < cutoff) panel.items.delete(id);
    }
    for (const [key, row] of panel.consensus) {
      if (key + (Number(row[2]) || 0) < cutoff) panel.consensus.delete(key);
    }
    hooks.consensus[panel.id] = panel.consensus.size;
    // drop lanes nobody draws in any more
    if (panel.lanes.length) {
      const used = new Set();
      for (const item of panel.items.values()) used.add(item.lane);
      const kept = panel.lanes.filter((lane) => used.has(lane));
      if (kept.length !== panel.lanes.length) {
        panel.lanes = kept;
        setLaneHeight(panel);
      }
    }
  }

  function drawTimeline(panel, now) {
    const canvas = panel.timeline;
    const w = canvas._w;
    const h = canvas._h;
    const drawn = panel.drawnIds;
    drawn.length = 0;
    if (!w || !h) return;
    const ctx = beginCanvas(canvas);
    const t0 = now - dash.windowUs;
    const scaleX = w / dash.windowUs;
    const lanes = panel.lanes;
    const nLanes = lanes.length;
    const consensusY = Math.max(nLanes, 1) * LANE_H + 2;
    const axisY = consensusY + LANE_H + 1;

    // lane backgrounds
    for (let i = 0; i < nLanes; i += 1) {
      const lane = lanes[i];
      lane.y = i * LANE_H;
      ctx.fillStyle = i % 2 ? COLOURS.laneAlt : COLOURS.lane;
      ctx.fillRect(0, lane.y, w, LANE_H);
      if (lane.self) {
        ctx.fillStyle = hatchPattern(ctx);
        ctx.fillRect(0, lane.y, w, LANE_H);
        ctx.strokeStyle = "rgba(245,183,0,0.55)";
        ctx.lineWidth = 1;
        ctx.strokeRect(0.5, lane.y + 0.5, w - 1, LANE_H - 1);
      }
    }
    ctx.fillStyle = "rgba(255,255,255,0.05)";
    ctx.fillRect(0, consensusY, w, LANE_H);
    drawTimeGrid(ctx, w, axisY, now, t0, scaleX);
    drawTakes(ctx, axisY, now, t0, scaleX);

    // consensus windows: colour of the label, alpha by agreement
    for (const row of panel.consensus.values()) {
      const label = row[3];
      if (!label) continue;
      const start = Number(row[1]);
      const end = start + (Number(row[2]) || 0);
      if (end < t0 || start > now) continue;
      const agreement = row[4];
      ctx.globalAlpha = typeof agreement === "number" ? 0.15 + 0.85 * Math.max(0, Math.min(1, agreement)) : 0.5;
      ctx.fillStyle = colourOf(label);
      const x0 = Math.round(Math.max(0, (start - t0) * scaleX));
      const x1 = Math.round(Math.min(w, (end - t0) * scaleX));
      ctx.fillRect(x0, consensusY + 1, Math.max(1, x1 - x0), LANE_H - 2);
    }
    ctx.globalAlpha = 1;

    // rater tags
    for (const item of panel.items.values()) {
      // An open hold is drawn up to now: it still grows, at most to where it ends.
      const end = item.open ? Math.min(now, item.end) : item.end;
      if (end < t0 || item.start > now) continue;
      const lane = item.lane;
      if (lane.y === undefined) continue;
      const x0 = Math.max(0, (item.start - t0) * scaleX);
      const x1 = Math.min(w, (end - t0) * scaleX);
      const bw = Math.max(2, x1 - x0);
      const bh = item.strong ? LANE_H - 2 : Math.round(LANE_H * 0.55);
      const y = lane.y + (LANE_H - bh) / 2;
      ctx.globalAlpha = item.strong ? 1 : 0.7;
      ctx.fillStyle = item.colour;
      ctx.fillRect(x0, y, bw, bh);
      if (item.strong) {
        ctx.globalAlpha = 0.9;
        ctx.strokeStyle = "#ffffff";
        ctx.lineWidth = 1;
        ctx.strokeRect(x0 + 0.5, y + 0.5, bw - 1, bh - 1);
      }
      if (item.open && now < item.end) {
        // open hold: bright leading edge at now
        ctx.globalAlpha = 1;
        ctx.fillStyle = "#ffffff";
        ctx.fillRect(x1 - 2, y, 2, bh);
      }
      drawn.push(item.id);
      if (item.offsetId) drawn.push(item.offsetId);
    }
    ctx.globalAlpha = 1;

    // now line, lane labels, time axis
    ctx.fillStyle = COLOURS.now;
    ctx.fillRect(w - 1, 0, 1, axisY);
    ctx.font = "10px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (let i = 0; i < nLanes; i += 1) {
      const lane = lanes[i];
      const text = lane.label;
      const tw = ctx.measureText(text).width;
      ctx.fillStyle = "rgba(15,17,21,0.75)";
      ctx.fillRect(0, lane.y + 1, tw + 8, LANE_H - 2);
      ctx.fillStyle = lane.self ? "#f5b700" : COLOURS.laneText;
      ctx.fillText(text, 4, lane.y + LANE_H / 2);
    }
    if (nLanes === 0) {
      ctx.fillStyle = COLOURS.gridLabel;
      ctx.fillText("no tags in the last minute", 4, LANE_H / 2 - 1);
    }
    {
      const tw = 62;
      ctx.fillStyle = "rgba(15,17,21,0.75)";
      ctx.fillRect(0, consensusY + 1, tw, LANE_H - 2);
      ctx.fillStyle = COLOURS.laneText;
      ctx.fillText("consensus", 4, consensusY + LANE_H / 2);
    }
    ctx.fillStyle = COLOURS.gridLabel;
    ctx.font = "9px system-ui, sans-serif";
    ctx.textBaseline = "top";
    const secs = dash.windowUs / 1e6;
    for (let s = 0; s <= secs; s += 5) {
      const x = w - (s / secs) * w;
      const text = s === 0 ? "now" : `-${s}s`;
      const tw = ctx.measureText(text).width;
      ctx.fillText(text, Math.min(w - tw, Math.max(0, x - tw / 2)), axisY + 2);
    }
  }

  // ---- agreement, session, health ---------------------------------------------------
  function alphaClass(value) {
    if (typeof value !== "number") return "na";
    if (value >= 0.667) return "good";
    if (value >= 0.4) return "fair";
    return "poor";
  }

  function setAgreement(agreement) {
    hooks.agreement = agreement;
    for (const [performerId, value] of Object.entries(agreement || {})) {
      const panel = panelFor(performerId);
      const v = value || {};
      panel.alphaEl.textContent = `α ${fmt(v.session, 2)} · 60 s ${fmt(v.last_60s, 2)} · ${v.raters ?? 0} raters`;
      panel.alphaEl.dataset.level = alphaClass(v.last_60s ?? v.session);
      panel.alphaEl.title = `Krippendorff's alpha (nominal): session ${fmt(v.session, 3)}, last 60 s ${fmt(v.last_60s, 3)}; ${v.raters ?? 0} raters, ${v.units ?? 0} units`;
    }
  }

  function openTake() {
    const takes = dash.session.takes || [];
    const last = takes[takes.length - 1];
    return last && (last.end_ts_us === null || last.end_ts_us === undefined) ? last : null;
  }

  function setSession(session) {
    if (!session || typeof session !== "object") return;
    if (session.state !== undefined) dash.session.state = session.state;
    if (Array.isArray(session.takes)) dash.session.takes = session.takes;
    if (Array.isArray(session.presence)) dash.session.presence = session.presence;
    hooks.session = { state: dash.session.state, takes: dash.session.takes, presence: dash.session.presence };
    const stateEl = $("session-state");
    stateEl.textContent = dash.session.state || "—";
    stateEl.dataset.state = dash.session.state || "";
    // An ended or archived session shows that alone: the header's "● live" (this page's
    // connection) and the call status next to an ENDED badge read as a live session.
    document.body.dataset.session = dash.session.state || "";
    renderPresence();
    dash.actionPendingUntil = 0;
    renderTakeControls();
  }

  function renderTakeControls() {
    const state = dash.session.state;
    const finished = state === "ended" || state === "archived";
    const open = openTake();
    const connected = hooks.connected;
    const pending = performance.now() < dash.actionPendingUntil;
    $("take-start").disabled = !connected || pending || finished || !!open;
    $("take-end").disabled = !connected || pending || !open;
    $("end-session").disabled = !connected || pending || finished;
    const takes = dash.session.takes || [];
    $("take-start").textContent = open ? "Start take" : `Start take ${takes.length + 1}`;
    $("take-end").textContent = open ? `End take ${open.take_id}` : "End take";
    updateTakeInfo();
  }

  function clockText(us) {
    const total = Math.max(0, Math.floor(us / 1e6));
    const m = Math.floor(total / 60);
    const s = total % 60;
    return `${m}:${String(s).padStart(2, "0")}`;
  }

  function updateTakeInfo() {
    const open = openTake();
    const takes = dash.session.takes || [];
    let text;
    if (open) {
      const now = sessionNowUs();
      text = `● take ${open.take_id} · ${now === null ? "—" : clockText(now - open.start_ts_us)}`;
    } else {
      text = takes.length ? `no take running · ${takes.length} done` : "no take yet";
    }
    if (text !== dash.lastTakeText) {
      dash.lastTakeText = text;
      const info = $("take-info");
      info.textContent = text;
      info.dataset.open = open ? "1" : "0";
    }
  }

  function renderPresence() {
    const list = $("presence");
    list.textContent = "";
    const connectedIds = new Set();
    for (const p of dash.session.presence || []) {
      const item = el("li", "presence-item");
      const dot = el("span", "dot");
      dot.dataset.ok = p.connected ? "true" : "false";
      item.append(dot, document.createTextNode(`${p.participant_id} `), el("span", "dim", p.role || ""));
      list.append(item);
      if (p.connected) connectedIds.add(p.participant_id);
    }
    for (const panel of dash.panels.values()) {
      const known = (dash.session.presence || []).some((p) => p.participant_id === panel.id);
      panel.presenceEl.dataset.ok = known ? String(connectedIds.has(panel.id)) : "unknown";
    }
  }

  // Join links are made when the director asks (each with a token id of its own, which
  // "livetag session revoke --token-id" takes): one row per performer, and one to invite
  // an observer by name.
  function renderLinks(roster) {
    const list = $("links-list");
    list.textContent = "";
    for (const performer of roster || []) {
      list.append(inviteRow("performer", performer.performer_id, `performer ${performer.performer_id}`));
    }
    list.append(inviteRow("observer", null, "observer"));
  }

  function inviteRow(role, name, label) {
    const item = el("li", "link-row");
    const who = el("span", "link-who", label);
    let nameInput = null;
    if (name === null) {
      nameInput = el("input", "link-name");
      nameInput.type = "text";
      nameInput.placeholder = "name";
      nameInput.maxLength = 64;
      who.textContent = "";
      who.append(nameInput);
    }
    const input = el("input", "link-url mono");
    input.type = "text";
    input.readOnly = true;
    input.placeholder = "a new link, when asked for";
    input.addEventListener("focus", () => input.select());
    const ask = el("button", "link-copy", role === "observer" ? "Invite" : "New link");
    ask.type = "button";
    ask.addEventListener("click", () => {
      const wanted = name === null ? nameInput.value.trim() : name;
      if (!wanted) {
        pushError({ type: "error", code: "bad_invite", message: "give the observer a name" });
        return;
      }
      if (send({ type: "invite", role, name: wanted })) {
        dash.inviteRow = { input, ask };
        ask.disabled = true;
      }
    });
    item.append(who, input, ask);
    return item;
  }

  async function onInvite(message) {
    hooks.invites.push({ role: message.role, participant_id: message.participant_id, token_id: message.token_id });
    const row = dash.inviteRow;
    dash.inviteRow = null;
    if (!row || typeof message.url !== "string") return;
    row.ask.disabled = false;
    row.input.value = message.url;
    row.input.title = `${message.role} ${message.participant_id}, token id ${message.token_id}`;
    let ok = false;
    try {
      if (navigator.clipboard && navigator.clipboard.writeText) {
        await navigator.clipboard.writeText(message.url);
        ok = true;
      }
    } catch (error) {
      ok = false;
    }
    if (!ok) {
      row.input.focus();
      row.input.select();
    }
    row.ask.textContent = ok ? "Copied" : "Select ⌘/Ctrl+C";
    setTimeout(() => {
      row.ask.textContent = row.input.closest(".link-row").querySelector(".link-name") ? "Invite" : "New link";
    }, 1800);
  }

  // An observer's dashboard watches and tags: takes, the session's end and new links are
  // the director's (the server refuses them too).
  function applyControls(controls) {
    dash.controls = controls;
    for (const id of ["take-start", "take-end", "end-session", "links"]) $(id).hidden = !controls;
  }

  function cell(row, index, text, level) {
    while (row.cells.length <= index) row.insertCell();
    const c = row.cells[index];
    if (c.textContent !== text) c.textContent = text;
    if (level !== undefined && c.dataset.level !== level) c.dataset.level = level;
  }

  function syncRows(tbody, keys) {
    const rows = new Map();
    for (const row of Array.from(tbody.rows)) rows.set(row.dataset.key, row);
    const ordered = [];
    for (const key of keys) {
      let row = rows.get(key);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.key = key;
      }
      rows.delete(key);
      ordered.push(row);
    }
    for (const row of rows.values()) row.remove();
    for (let i = 0; i < ordered.length; i += 1) {
      if (tbody.rows[i] !== ordered[i]) tbody.insertBefore(ordered[i], tbody.rows[i] || null);
    }
    return ordered;
  }

  function latencyLevel(ms) {
    if (typeof ms !== "number") return "na";
    if (ms > 1000) return "bad";
    if (ms > 400) return "warn";
    return "ok";
  }

  function setHealth(health) {
    hooks.health = health;
    if (!health || typeof health !== "object") return;
    const broker = $("broker");
    if (health.broker !== undefined) {
      broker.dataset.ok = health.broker ? "true" : "false";
      broker.textContent = health.broker ? "broker up" : "broker DOWN";
    }
    const perf = health.performers || {};
    const perfKeys = Object.keys(perf);
    const rosterOrder = Array.from(dash.panels.keys());
    perfKeys.sort((a, b) => {
      const ia = rosterOrder.indexOf(a);
      const ib = rosterOrder.indexOf(b);
      return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib) || (a < b ? -1 : a > b ? 1 : 0);
    });
    const perfRows = syncRows($("health-performers").tBodies[0], perfKeys);
    perfKeys.forEach((key, i) => {
      const v = perf[key] || {};
      const row = perfRows[i];
      cell(row, 0, key);
      cell(row, 1, fmt(v.video_fps_in, 1), typeof v.video_fps_in === "number" && v.video_fps_in < 5 ? "warn" : "ok");
      cell(row, 2, fmt(v.video_fps_out, 1), typeof v.video_fps_out === "number" && v.video_fps_out < 3 ? "warn" : "ok");
      cell(row, 3, fmt(v.frames_dropped, 0), v.frames_dropped > 0 ? "warn" : "ok");
      cell(row, 4, fmt(v.audio_dropped, 0), v.audio_dropped > 0 ? "warn" : "ok");
      cell(row, 5, fmt(v.prosody_latency_ms, 0), latencyLevel(v.prosody_latency_ms));
      cell(row, 6, fmt(v.face_latency_ms, 0), latencyLevel(v.face_latency_ms));
      cell(row, 7, fmt(v.face_fps_analysed, 1), typeof v.face_fps_analysed === "number" && v.face_fps_analysed < 10 ? "warn" : "ok");
      cell(row, 8, fmt(v.face_frames_skipped, 0), v.face_frames_skipped > 0 ? "warn" : "ok");
    });
    // The session's cumulative counters (the health records /metrics exports): what was
    // lost or incomplete shows here, for the whole session, not only while it happens.
    const counters = health.counters || {};
    const counterKeys = Object.keys(counters).sort((a, b) => {
      const ia = rosterOrder.indexOf(a);
      const ib = rosterOrder.indexOf(b);
      return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib) || (a < b ? -1 : a > b ? 1 : 0);
    });
    const counterRows = syncRows($("health-counters").tBodies[0], counterKeys);
    counterKeys.forEach((key, i) => {
      const capture = (counters[key] || {}).capture || {};
      const aligner = (counters[key] || {}).aligner || {};
      const row = counterRows[i];
      const count = (value, warnAbove) =>
        [fmt(value, 0), typeof value !== "number" ? "na" : value > warnAbove ? "warn" : "ok"];
      cell(row, 0, key);
      cell(row, 1, ...count(capture.reconnects, 0));
      cell(row, 2, ...count(capture.video_frames_dropped, 0));
      cell(row, 3, ...count(capture.audio_chunks_dropped, 0));
      cell(row, 4, ...count(aligner.windows_emitted, Infinity));
      cell(row, 5, ...count(aligner.windows_incomplete, 0));
      cell(row, 6, ...count(aligner.windows_without_media, 0));
      cell(row, 7, ...count(aligner.late_features_lost, 0));
      cell(row, 8, ...count(aligner.late_tags, 0));
    });
    const lag = health.consumer_lag || {};
    const lagKeys = Object.keys(lag).sort();
    const lagRows = syncRows($("health-lag").tBodies[0], lagKeys);
    lagKeys.forEach((key, i) => {
      const n = lag[key];
      cell(lagRows[i], 0, key);
      lagRows[i].cells[0].title = key;
      cell(lagRows[i], 1, fmt(n, 0), typeof n !== "number" ? "na" : n > 500 ? "bad" : n > 50 ? "warn" : "ok");
    });
    const clients = Array.isArray(health.clients) ? health.clients : [];
    const clientKeys = clients.map((c, i) => `${c.participant_id}|${c.kind}|${i}`);
    const clientRows = syncRows($("health-clients").tBodies[0], clientKeys);
    clients.forEach((c, i) => {
      const row = clientRows[i];
      cell(row, 0, String(c.participant_id ?? "—"));
      cell(row, 1, String(c.role ?? "—"));
      cell(row, 2, String(c.kind ?? "—"));
      cell(row, 3, fmt(c.offset_ms, 1));
      cell(row, 4, fmt(c.rtt_ms, 1), typeof c.rtt_ms === "number" && c.rtt_ms > 300 ? "warn" : "ok");
      cell(row, 5, fmt(c.uncertainty_ms, 1), typeof c.uncertainty_ms === "number" && c.uncertainty_ms > 100 ? "warn" : "ok");
    });
  }

  // ---- capture scripts (video call + tagging widget) --------------------------------
  function loadCss(href) {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = href;
    // before our own stylesheet, so the dashboard's rules win on equal specificity
    const ours = document.querySelector('link[href$="dashboard.css"]');
    document.head.insertBefore(link, ours || null);
  }

  function loadScript(src) {
    return new Promise((resolve) => {
      const script = document.createElement("script");
      script.src = src;
      script.async = false;
      script.onload = () => resolve(true);
      script.onerror = () => {
        pushError({ type: "error", code: "load_failed", message: `could not load ${src}` });
        resolve(false);
      };
      document.body.append(script);
    });
  }

  async function startCapture(captureUrl) {
    if (dash.scriptsStarted || !captureUrl) return;
    dash.scriptsStarted = true;
    const base = String(captureUrl).replace(/\/+$/, "");
    window.LIVETAG_CAPTURE_BASE = base;
    loadCss(`${base}/tagger/tagger.css`);
    await loadScript(`${base}/tagger/tagger.js`);
    await loadScript(`${base}/static/call.js`);
  }

  // ---- websocket --------------------------------------------------------------------
  function onHello(message) {
    hooks.hello = message;
    hooks.connected = true;
    dash.retryMs = BACKOFF_START_MS;
    setConn("live", "live");
    if (typeof message.window_s === "number" && message.window_s > 0) dash.windowUs = Math.min(message.window_s, 60) * 1e6;
    if (Array.isArray(message.mesh_edges)) {
      const edges = new Uint16Array(message.mesh_edges.length * 2);
      let k = 0;
      for (const edge of message.mesh_edges) {
        if (!Array.isArray(edge) || edge.length < 2) continue;
        edges[k] = edge[0];
        edges[k + 1] = edge[1];
        k += 2;
      }
      dash.edges = edges.subarray(0, k);
    }
    const session = message.session || {};
    dash.sessionId = session.session_id || null;
    $("session-id").textContent = session.session_id || "—";
    $("session-prompt").textContent = session.prompt || "";
    $("session-prompt").title = session.prompt || "";
    document.title = `livetag · ${session.session_id || "director"}`;
    dash.vocab.clear();
    for (const entry of session.vocabulary || []) {
      if (entry && entry.label) dash.vocab.set(entry.label, /^#[0-9a-fA-F]{6}$/.test(entry.colour) ? entry.colour : COLOURS.unknown);
    }
    for (const panel of dash.panels.values()) {
      for (const item of panel.items.values()) item.colour = colourOf(item.label);
    }
    applyRoster(session.roster || []);
    setSession({ state: session.state, takes: session.takes || [], presence: session.presence || [] });
    const you = message.you || {};
    hooks.you = { rater_id: you.rater_id, role: you.role, controls: !!you.controls };
    applyControls(!!you.controls);
    if (you.controls) renderLinks(session.roster || []);
    startCapture(message.capture_url);
  }

  function onUpdate(message) {
    hooks.updates += 1;
    if (typeof message.now_us === "number") syncClock(message.now_us);
    if (message.performers && typeof message.performers === "object") {
      for (const [performerId, data] of Object.entries(message.performers)) {
        if (!data) continue;
        const panel = panelFor(performerId);
        if (data.prosody) addProsody(panel, data.prosody);
        if (data.face) setFace(panel, data.face);
      }
    }
    if (Array.isArray(message.tags)) for (const tag of message.tags) addTag(tag);
    if (Array.isArray(message.tags)) noteTagTimes(message.tags);
    if (message.consensus) addConsensus(message.consensus);
    if (message.agreement) setAgreement(message.agreement);
    if (message.health) setHealth(message.health);
    if (message.session) setSession(message.session);
  }

  function onMessage(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      return;
    }
    if (!message || typeof message !== "object") return;
    switch (message.type) {
      case "hello":
        onHello(message);
        break;
      case "update":
        onUpdate(message);
        break;
      case "credential":
        // The server's renewal of this page's credential, before the current one runs out.
        credentials.accept(message);
        break;
      case "invite":
        onInvite(message);
        break;
      case "error":
        pushError(message);
        if (dash.inviteRow) {
          dash.inviteRow.ask.disabled = false;
          dash.inviteRow = null;
        }
        dash.actionPendingUntil = 0;
        renderTakeControls();
        break;
      default:
        break;
    }
  }

  function send(message) {
    if (dash.ws && dash.ws.readyState === WebSocket.OPEN) {
      dash.ws.send(JSON.stringify(message));
      return true;
    }
    pushError({ type: "error", code: "offline", message: "not connected: try again in a moment" });
    return false;
  }

  function action(type) {
    if (send({ type })) {
      dash.actionPendingUntil = performance.now() + 3000;
      renderTakeControls();
    }
  }

  $("take-start").addEventListener("click", () => action("take_start"));
  $("take-end").addEventListener("click", () => action("take_end"));
  $("end-session").addEventListener("click", () => {
    if (window.confirm(`End session ${dash.sessionId || ""} for everyone? This cannot be undone.`)) action("end_session");
  });

  function scheduleReconnect() {
    if (dash.retryTimer || dash.stopped) return;
    setConn("reconnecting", `reconnecting in ${(dash.retryMs / 1000).toFixed(1)} s…`);
    dash.retryTimer = setTimeout(() => {
      dash.retryTimer = null;
      connect();
    }, dash.retryMs);
    dash.retryMs = Math.min(dash.retryMs * 2, BACKOFF_MAX_MS);
  }

  function stop(text) {
    dash.stopped = true;
    setConn("error", text);
    pushError({ type: "error", code: "refused", message: text });
  }

  async function connect() {
    const ready = await credentials.ensure();
    if (!ready.ok) {
      if (ready.final) stop(ready.message);
      else scheduleReconnect();
      return;
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let ws;
    try {
      // The credential rides in the handshake's subprotocols: never in a URL, which the
      // browser would print in the console when the connection fails.
      ws = new WebSocket(`${scheme}://${location.host}/ws/dashboard`, credentials.protocols());
    } catch (error) {
      scheduleReconnect();
      return;
    }
    dash.ws = ws;
    if (!hooks.hello) setConn("connecting", "connecting…");
    ws.addEventListener("message", onMessage);
    ws.addEventListener("close", async (event) => {
      if (ws !== dash.ws) return;
      hooks.connected = false;
      renderTakeControls();
      if (LivetagCredentials.isFinalClose(event.code)) {
        // The director revoked this link, or it ran out: reconnecting cannot help.
        stop(LivetagCredentials.closeMessage(event.reason));
        return;
      }
      const refused = event.code >= 4400 && event.code < 4600;
      setConn("reconnecting", refused ? event.reason || `refused (${event.code})` : "connection lost");
      // A refused handshake looks like any lost connection: ask why (the credential in a
      // POST body, out of the console), and stop retrying when the link itself is bad.
      // An expired credential (401) is exchanged again at the next connect.
      try {
        const why = await credentials.why("/api/dashboard-token");
        if (!why.ok && why.final) {
          stop(why.message);
          return;
        }
        if (why.status === 429 || why.status === 503) {
          pushError({ type: "error", code: "refused", message: why.message });
          dash.retryMs = Math.max(dash.retryMs, REFUSED_RETRY_MS * (1 + Math.random()));
        } else if (refused) {
          pushError({ type: "error", code: "refused", message: event.reason || `refused (${event.code})` });
          dash.retryMs = Math.max(dash.retryMs, REFUSED_RETRY_MS * (1 + Math.random()));
        }
      } catch (error) {
        // the server is away: keep retrying
      }
      scheduleReconnect();
    });
  }

  // ---- frame loop -------------------------------------------------------------------
  function frame() {
    requestAnimationFrame(frame);
    if (document.hidden) return;
    const perfNow = performance.now();
    const now = sessionNowUs();
    if (now !== null && perfNow - dash.lastPrunePerf > 1000) {
      dash.lastPrunePerf = perfNow;
      const cutoff = now - KEEP_US;
      for (const panel of dash.panels.values()) {
        pruneProsody(panel, cutoff);
        pruneTags(panel, cutoff);
      }
    }
    // Charts scroll at CHART_FPS, not at the display's rate: a 30 s window moves about a
    // pixel per 50 ms, and redrawing every chart at 60 Hz cost the director's browser
    // more CPU than the call itself on a small machine. The mesh is stroked when the record
    // it shows changes (its fading is a CSS opacity).
    const drawCharts = perfNow - dash.lastChartPerf >= 1000 / CHART_FPS;
    if (drawCharts) dash.lastChartPerf = perfNow;
    for (const panel of dash.panels.values()) {
      checkFigure(panel);
      if (!panel.visible && perfNow - panel.lastDrawPerf < OFFSCREEN_DRAW_MS) continue;
      drawMesh(panel, now);
      updateLaneAges(panel, now, perfNow);
      if (now === null || !drawCharts) continue;
      panel.lastDrawPerf = perfNow;
      drawPitch(panel, now);
      drawLoudness(panel, now);
      drawTimeline(panel, now);
    }
    if (now !== null) updateTakeInfo();
    if (dash.actionPendingUntil && perfNow >= dash.actionPendingUntil) {
      dash.actionPendingUntil = 0;
      renderTakeControls();
    }
  }

  connect();
  requestAnimationFrame(frame);
})();
