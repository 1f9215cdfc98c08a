"""Prosody benchmark: real speech through one ProsodyTracker, CPU time per audio second.

Feeds the espeak-ng speech (low and high pitch, alternating, looped to ``--seconds``)
in 20 ms AudioChunk records, the way the agent will, and measures process CPU time.
Per-part figures time the same work in isolation: the batched YIN + loudness analysis,
the voice-quality part (pulse picking and the 100 ms summaries), and building the records.

The tracker runs ``--repeats`` times and the fastest run counts: on a shared machine the
slower runs measure the neighbours. Last line: {"realtime_factor", "streams_per_core",
"audio_seconds", "realtime_factor_runs", ...}.
Run: ``python -m tests.bench.prosody [--seconds 60] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streams import records
from streams.features import prosody
from tests import media as test_media

CHUNK_SAMPLES = 320
CHUNK_US = 20_000


def decimate_48k_to_16k(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
    """Windowed-sinc low-pass (7.2 kHz, 193 taps, Blackman) then every 3rd sample."""
    taps = np.arange(-96, 97)
    cutoff = 7_200 / 48_000
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.blackman(taps.size)
    kernel /= kernel.sum()
    filtered = np.convolve(samples.astype(np.float64), kernel, mode="same")
    return filtered[::3] / 32768.0


def load_speech_16k(path: Path) -> npt.NDArray[np.float64]:
    """A 48 kHz mono test WAV as 16 kHz floats in [-1, 1]."""
    rate, data = test_media.read_wav(path)
    if rate != 48_000:
        raise ValueError(f"{path}: expected 48 kHz, got {rate}")
    return decimate_48k_to_16k(data[:, 0])


def to_chunks(
    audio: npt.NDArray[np.float64], ts_us: int = 1_000_000, seq: int = 0
) -> Iterator[records.AudioChunk]:
    """Cut float audio into 20 ms AudioChunk records, contiguous from ``ts_us``."""
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    for n in range(len(pcm) // CHUNK_SAMPLES):
        header = records.AudioChunkHeader(
            ts_us=ts_us + n * CHUNK_US,
            session_id="s1",
            performer_id="alice",
            seq=seq + n,
            timing="sender_report",
            sample_count=CHUNK_SAMPLES,
        )
        yield records.AudioChunk(header, pcm[n * CHUNK_SAMPLES : (n + 1) * CHUNK_SAMPLES].tobytes())


def speech_loop(seconds: float) -> npt.NDArray[np.float64]:
    """Low and high espeak speech alternating, looped to ``seconds``."""
    media = test_media.prepare()
    one = np.concatenate(
        [load_speech_16k(media.speech_low_wav), load_speech_16k(media.speech_high_wav)]
    )
    repeats = int(np.ceil(seconds * prosody.SAMPLE_RATE / one.size))
    return np.tile(one, repeats)[: int(seconds * prosody.SAMPLE_RATE)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.prosody", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs; the fastest counts (others share the CPU)"
    )
    args = parser.parse_args(argv)
    audio = speech_loop(args.seconds)
    chunks = list(to_chunks(audio))
    audio_s = len(chunks) * CHUNK_US / 1e6

    runs = []
    for _ in range(args.repeats):
        tracker = prosody.ProsodyTracker("s1", "alice")
        started = time.process_time()
        frames: list[records.ProsodyFrame] = []
        for chunk in chunks:
            frames.extend(tracker.push(chunk))
        frames.extend(tracker.flush())
        runs.append(time.process_time() - started)
    total = min(runs)

    # Worst case: every hop voiced (pulse picking on every hop): a 10 s harmonic tone.
    t = np.arange(10 * prosody.SAMPLE_RATE) / prosody.SAMPLE_RATE
    tone = sum(0.3 / h * np.sin(2 * np.pi * 130.0 * h * t) for h in range(1, 6))
    tone_chunks = list(to_chunks(np.asarray(tone)))
    tone_runs = []
    for _ in range(args.repeats):
        tracker = prosody.ProsodyTracker("s1", "alice")
        started = time.process_time()
        for chunk in tone_chunks:
            tracker.push(chunk)
        tone_runs.append(time.process_time() - started)
    voiced_rtf = min(tone_runs) / (len(tone_chunks) * CHUNK_US / 1e6)

    # The analysis alone, in the same two-hop batches the tracker uses.
    padded = np.concatenate([np.zeros(prosody.BEFORE), audio, np.zeros(prosody.AFTER)])
    hop_count = len(audio) // prosody.HOP
    index = np.arange(prosody.SEGMENT)
    started = time.process_time()
    for first in range(0, hop_count, 2):
        starts = np.arange(first, min(first + 2, hop_count)) * prosody.HOP
        prosody.analyse_segments(padded[starts[:, None] + index])
    analysis = time.process_time() - started

    # Record construction alone.
    started = time.process_time()
    for frame in frames:
        records.ProsodyFrame(
            ts_us=frame.ts_us,
            session_id=frame.session_id,
            performer_id=frame.performer_id,
            f0_hz=frame.f0_hz,
            voicing_probability=frame.voicing_probability,
            voiced=frame.voiced,
            loudness_db=frame.loudness_db,
            voice_quality=frame.voice_quality,
        )
    building = time.process_time() - started

    voiced = [f.f0_hz for f in frames if f.f0_hz is not None]
    rtf = total / audio_s
    result = {
        "realtime_factor": round(rtf, 5),
        "streams_per_core": round(1.0 / rtf, 1),
        "audio_seconds": audio_s,
        "realtime_factor_runs": [round(run / audio_s, 5) for run in runs],
        "frames": len(frames),
        "voiced_fraction": round(len(voiced) / len(frames), 3),
        "median_f0_hz": round(float(np.median(voiced)), 1),
        "all_voiced_tone_rtf": round(voiced_rtf, 5),
        "analysis_rtf": round(analysis / audio_s, 5),
        "records_rtf": round(building / audio_s, 5),
        "rest_rtf": round((total - analysis - building) / audio_s, 5),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
