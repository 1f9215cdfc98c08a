"""The prepared test media are what they claim, and headless Chromium can capture them.

The browser tests must run in a network namespace that has only `lo` (they fail
otherwise: tests/e2e/conftest.py); prepare the media first, outside it, because that needs
the package index:

    .venv/bin/python -m tests.media prepare
    unshare -n sh -c 'ip link set lo up; exec .venv/bin/pytest -q tests/e2e'
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from tests import browser, media

pytestmark = pytest.mark.e2e

# A test page only: getUserMedia needs a secure context, and http://127.0.0.1 is one.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>livetag media probe</title></head>
<body><video id="v" muted playsinline></video>
<script>
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Capture the fake devices, play the video, listen to the audio for `listenMs`, and
// gather loopback ICE candidates for the tracks (no ICE server: host candidates only).
window.probe = async (listenMs) => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const video = document.getElementById("v");
  video.srcObject = stream;
  await video.play();
  await new Promise((r) => video.requestVideoFrameCallback(() => r()));

  const ctx = new AudioContext({ sampleRate: 48000 });
  await ctx.resume();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  // An AnalyserNode is pulled by the graph even when not connected to the destination.
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let maxRms = 0;
  const started = performance.now();
  while (performance.now() - started < listenMs) {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    maxRms = Math.max(maxRms, Math.sqrt(sum / buf.length));
    await sleep(20);
  }

  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  const gathered = new Promise((r) => {
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
  });
  await pc.setLocalDescription(await pc.createOffer());
  await Promise.race([gathered, sleep(5000)]);
  const candidates = pc.localDescription.sdp
    .split("\\r\\n")
    .filter((line) => line.startsWith("a=candidate:"));
  pc.close();

  const vt = stream.getVideoTracks()[0];
  const at = stream.getAudioTracks()[0];
  const result = {
    videoWidth: video.videoWidth,
    videoHeight: video.videoHeight,
    settings: vt.getSettings(),
    audioSettings: at.getSettings(),
    audioContextState: ctx.state,
    maxRms,
    candidates,
  };
  await ctx.close();
  stream.getTracks().forEach((t) => t.stop());
  return result;
};

// Sample-accurate beep onsets, in AudioContext time (the context runs on the capture
// clock here; its mapping to performance.now() jitters by ~10 ms, so it is not used).
const ONSET_WORKLET = `
registerProcessor("onset", class extends AudioWorkletProcessor {
  constructor() { super(); this.quiet = 1e9; }
  process(inputs) {
    const ch = inputs[0][0];
    for (let i = 0; ch && i < ch.length; i++) {
      if (Math.abs(ch[i]) > 0.05) {
        if (this.quiet > sampleRate / 10) this.port.postMessage((currentFrame + i) / sampleRate);
        this.quiet = 0;
      } else this.quiet++;
    }
    return true;
  }
});`;

// Flash times (rVFC captureTime of frames whose mean red > 128) and beep onsets.
window.lipsync = async (listenMs) => {
  const raw = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: raw });
  const ctx = new AudioContext({ sampleRate: 48000 });
  const blob = new Blob([ONSET_WORKLET], { type: "text/javascript" });
  await ctx.audioWorklet.addModule(URL.createObjectURL(blob));
  const onsets = new AudioWorkletNode(ctx, "onset");
  const beepsS = [];
  onsets.port.onmessage = (e) => beepsS.push(e.data);
  ctx.createMediaStreamSource(stream).connect(onsets);

  const video = document.getElementById("v");
  video.srcObject = stream;
  await video.play();
  const canvas = new OffscreenCanvas(64, 36).getContext("2d", { willReadFrequently: true });
  const flashesMs = [];
  let wasBright = false;
  const onFrame = (_, meta) => {
    canvas.drawImage(video, 0, 0, 64, 36);
    const px = canvas.getImageData(0, 0, 64, 36).data;
    let sum = 0;
    for (let i = 0; i < px.length; i += 4) sum += px[i];
    const bright = sum / (px.length / 4) > 128;
    if (bright && !wasBright) flashesMs.push(meta.captureTime ?? meta.presentationTime);
    wasBright = bright;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  await sleep(listenMs);
  await ctx.close();
  stream.getTracks().forEach((t) => t.stop());
  return { flashesMs, beepsS };
};
</script></body></html>
"""


@pytest.fixture(scope="session")
def media_set() -> media.MediaSet:
    try:
        return media.prepare(media.default_dir())
    except media.MediaError as exc:
        pytest.fail(f"test media unavailable: {exc}")


@pytest.fixture
async def page_url() -> AsyncIterator[str]:
    async def index(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/"
    finally:
        await runner.cleanup()


# --- the files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "frames"),
    [("wolfgang_y4m", 300), ("single_face_y4m", 72), ("lipsync", 180)],
)
def test_y4m_files_parse(media_set: media.MediaSet, attr: str, frames: int) -> None:
    value = getattr(media_set, attr)
    path = value.video if isinstance(value, media.LipSync) else value
    info = media.read_y4m_info(path)
    assert (info.width, info.height) == (640, 360)
    assert info.fps_num / info.fps_den == 30
    assert info.colorspace.startswith("420")
    assert info.frame_count == frames
    first = next(media.read_y4m_luma(path))
    assert first.shape == (360, 640)


def test_lipsync_flashes_on_schedule(media_set: media.MediaSet) -> None:
    sync = media_set.lipsync
    means = np.array([plane.mean() for plane in media.read_y4m_luma(sync.video)])
    assert len(means) == sync.frame_count
    assert sync.frame_count % sync.period_frames == 0, "schedule must survive looping"
    flashes = np.flatnonzero(means > 128).tolist()
    assert flashes == sync.flash_frames() == [10, 40, 70, 100, 130, 160]
    assert np.all(means[flashes] == sync.flash_luma)
    assert np.all(np.delete(means, flashes) == sync.background_luma)
    assert sync.event_times_s()[0] == pytest.approx(sync.first_offset_s)


def test_lipsync_beeps_on_schedule(media_set: media.MediaSet) -> None:
    sync = media_set.lipsync
    rate, samples = media.read_wav(sync.audio)
    assert rate == 48_000
    assert samples.shape == (sync.sample_count, 1)
    x = samples[:, 0].astype(np.int32)
    starts = sync.beep_start_samples()
    assert starts == [16_000, 64_000, 112_000, 160_000, 208_000, 256_000]
    assert [s / rate for s in starts] == pytest.approx(sync.event_times_s())

    in_beep = np.zeros(len(x), dtype=bool)
    for start in starts:
        in_beep[start : start + sync.beep_samples] = True
        # A sine from phase 0: exactly zero at the start, rising on the next sample.
        assert x[start] == 0
        assert x[start + 1] > 0
        beep = x[start : start + sync.beep_samples]
        assert np.sqrt(np.mean(beep.astype(float) ** 2)) == pytest.approx(
            sync.beep_amplitude / np.sqrt(2), rel=0.01
        )
    assert not np.any(x[~in_beep]), "digital silence between the beeps"


def _f0_hz(x: np.ndarray[Any, np.dtype[np.float64]], rate: int) -> float:
    """Median autocorrelation pitch over the loudest 40 ms windows: coarse but enough."""
    win = int(0.04 * rate)
    frames = x[: len(x) // win * win].reshape(-1, win)
    energy = (frames**2).mean(axis=1)
    lo, hi = int(rate / 400), int(rate / 60)
    pitches = []
    for frame in frames[energy > 0.3 * energy.max()]:
        frame = frame - frame.mean()
        ac = np.correlate(frame, frame, mode="full")[win - 1 :]
        pitches.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(pitches))


def test_speech_wavs(media_set: media.MediaSet) -> None:
    f0 = {}
    for name, path in (("low", media_set.speech_low_wav), ("high", media_set.speech_high_wav)):
        rate, samples = media.read_wav(path)
        assert rate == 48_000
        assert samples.shape == (4 * 48_000, 1)
        x = samples[:, 0].astype(np.float64)
        assert np.sqrt(np.mean(x**2)) > 500, f"{name} is nearly silent"
        # Leading silence keeps word onsets away from the loop seam.
        assert np.abs(x[: int(0.2 * rate)]).max() < 50
        f0[name] = _f0_hz(x, rate)
    assert f0["high"] > 1.2 * f0["low"], f0  # ~89 vs ~120 Hz with espeak-ng 1.51


def test_prepare_is_idempotent(media_set: media.MediaSet) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in media_set.root.iterdir()}
    again = media.prepare(media_set.root)
    assert again == media_set
    after = {p.name: p.stat().st_mtime_ns for p in media_set.root.iterdir()}
    standard = (
        media_set.wolfgang_mp4,
        media_set.wolfgang_y4m,
        media_set.single_face_mp4,
        media_set.single_face_y4m,
        media_set.speech_low_wav,
        media_set.speech_high_wav,
        media_set.lipsync.video,
        media_set.lipsync.audio,
    )
    outputs = [path.name for path in standard]
    assert set(outputs) <= set(before), sorted(before)
    assert {n: after[n] for n in outputs} == {n: before[n] for n in outputs}


# --- Chromium -----------------------------------------------------------------------


async def test_chromium_captures_fake_media(
    media_set: media.MediaSet, page_url: str, tmp_path: Path
) -> None:
    async with browser.launch_chromium(
        video_file=media_set.wolfgang_y4m,
        audio_file=media_set.speech_low_wav,
        user_data_dir=tmp_path / "profile",
    ) as context:
        page = context.pages[0] if context.pages else await context.new_page()
        await page.goto(page_url)
        result = await page.evaluate("(ms) => window.probe(ms)", 1500)

    detail = json.dumps(result, indent=1)
    assert (result["videoWidth"], result["videoHeight"]) == (640, 360), detail
    assert (result["settings"]["width"], result["settings"]["height"]) == (640, 360), detail
    assert result["settings"]["frameRate"] == pytest.approx(30, abs=0.5), detail
    assert result["audioContextState"] == "running", detail
    # Speech peaks around 0.1-0.3 RMS; the fake device's silence would be exactly 0.
    assert result["maxRms"] > 0.01, detail
    # Host candidates on loopback with real addresses, not mDNS names.
    candidates = result["candidates"]
    assert candidates, detail
    assert any(" 127.0.0.1 " in c for c in candidates), detail
    assert not any(".local " in c for c in candidates), detail


async def test_chromium_plays_lipsync_schedule(
    media_set: media.MediaSet, page_url: str, tmp_path: Path
) -> None:
    sync = media_set.lipsync
    async with browser.launch_chromium(
        video_file=sync.video, audio_file=sync.audio, user_data_dir=tmp_path / "profile"
    ) as context:
        page = context.pages[0] if context.pages else await context.new_page()
        await page.goto(page_url)
        # Shorter than one loop (6 s): the loop seams add time (see media.LipSync).
        result = await page.evaluate("(ms) => window.lipsync(ms)", 5000)

    detail = json.dumps(result)
    period_ms = sync.period_s * 1000
    flashes = np.diff(result["flashesMs"])
    beeps = np.diff(result["beepsS"]) * 1000
    assert len(flashes) >= 3, detail
    assert len(beeps) >= 3, detail
    # A renderer can skip a one-frame flash, so judge the median interval.
    assert np.median(flashes) == pytest.approx(period_ms, abs=5), detail
    # Audio onsets are sample-exact within a loop.
    assert np.median(beeps) == pytest.approx(period_ms, abs=0.5), detail
