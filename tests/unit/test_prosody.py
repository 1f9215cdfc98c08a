"""The streaming prosody tracker on synthetic signals and on real (espeak-ng) speech.

Praat (praat-parselmouth ``to_pitch_ac``) is the F0 reference for speech.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import parselmouth  # type: ignore[import-not-found]
import pytest

from streams import records
from streams.features import prosody
from tests import media as test_media
from tests.bench.prosody import load_speech_16k, to_chunks

RATE = prosody.SAMPLE_RATE
TS0 = 1_700_000_000_000_000
Audio = npt.NDArray[np.float64]


def run(audio: Audio, ts_us: int = TS0) -> list[records.ProsodyFrame]:
    return feed(to_chunks(audio, ts_us))


def feed(chunks: Iterable[records.AudioChunk]) -> list[records.ProsodyFrame]:
    tracker = prosody.ProsodyTracker("s1", "alice")
    frames: list[records.ProsodyFrame] = []
    for chunk in chunks:
        frames.extend(tracker.push(chunk))
    return frames + tracker.flush()


def sine(freq: float, seconds: float, amplitude: float = 0.5) -> Audio:
    t = np.arange(int(seconds * RATE)) / RATE
    return amplitude * np.sin(2 * np.pi * freq * t)


def noise(seconds: float, amplitude: float = 0.3, seed: int = 1) -> Audio:
    return amplitude * np.random.default_rng(seed).standard_normal(int(seconds * RATE))


def voiced_f0(frames: list[records.ProsodyFrame]) -> list[float]:
    return [f.f0_hz for f in frames if f.f0_hz is not None]


def qualities(frames: list[records.ProsodyFrame]) -> list[records.VoiceQuality]:
    return [f.voice_quality for f in frames if f.voice_quality is not None]


@pytest.mark.parametrize("freq", [120.0, 220.0])
def test_sine_f0_within_one_percent(freq: float) -> None:
    frames = run(sine(freq, 1.0))
    assert sum(f.voiced for f in frames) >= 0.95 * len(frames)
    assert np.median(voiced_f0(frames)) == pytest.approx(freq, rel=0.01)
    assert all(f.voicing_probability > 0.9 for f in frames[5:-5])


@pytest.mark.parametrize("audio", [np.zeros(RATE), noise(1.0)], ids=["silence", "white_noise"])
def test_silence_and_noise_are_unvoiced(audio: Audio) -> None:
    frames = run(audio)
    assert len(frames) == 100
    assert sum(not f.voiced for f in frames) >= 0.95 * len(frames)
    assert all(f.f0_hz is None for f in frames if not f.voiced)


def test_silence_loudness_is_the_floor() -> None:
    frames = run(np.zeros(RATE // 2))
    assert {f.loudness_db for f in frames} == {prosody.LOUDNESS_FLOOR_DB}


def test_loudness_step_of_12_db() -> None:
    quiet, loud = sine(200, 0.5, 0.05), sine(200, 0.5, 0.05 * 10 ** (12 / 20))
    frames = run(np.concatenate([quiet, loud]))
    before = np.median([f.loudness_db for f in frames[10:40]])
    after = np.median([f.loudness_db for f in frames[60:90]])
    assert after - before == pytest.approx(12.0, abs=1.0)
    # dBFS of the RMS: a sine of amplitude a reads 20*log10(a / sqrt(2)).
    assert before == pytest.approx(20 * np.log10(0.05 / np.sqrt(2)), abs=0.5)


def test_frame_times_follow_chunk_times() -> None:
    chunks = list(to_chunks(sine(150, 0.6), TS0))
    frames = feed(chunks)
    assert [f.ts_us for f in frames] == [TS0 + k * 10_000 for k in range(60)]
    assert all(f.hop_us == 10_000 for f in frames)
    assert all(f.session_id == "s1" and f.performer_id == "alice" for f in frames)


def test_frame_times_with_odd_chunk_sizes() -> None:
    # 15 ms chunks (240 samples): hop starts fall mid-chunk and come from sample offsets.
    audio = np.round(sine(150, 0.3) * 32767).astype("<i2")
    chunks = [
        records.AudioChunk(
            records.AudioChunkHeader(
                ts_us=TS0 + n * 15_000,
                session_id="s1",
                performer_id="alice",
                seq=n,
                timing="sender_report",
                sample_count=240,
            ),
            audio[n * 240 : (n + 1) * 240].tobytes(),
        )
        for n in range(len(audio) // 240)
    ]
    frames = feed(chunks)
    assert [f.ts_us for f in frames] == [TS0 + k * 10_000 for k in range(30)]


def test_gap_resets_without_frames_inside_it() -> None:
    first = list(to_chunks(sine(150, 0.4), TS0))  # 0 .. 400 ms
    gap_start = TS0 + 400_000
    resume = TS0 + 1_000_000
    second = list(to_chunks(sine(150, 0.4), resume, seq=len(first)))
    frames = feed(first + second)
    times = [f.ts_us for f in frames]
    assert times == sorted(set(times))
    assert not [t for t in times if gap_start <= t < resume]
    assert times[:40] == [TS0 + k * 10_000 for k in range(40)]
    assert times[40:] == [resume + k * 10_000 for k in range(40)]
    # The new segment starts its voice-quality window afresh.
    assert frames[49].voice_quality is not None
    assert frames[49].voice_quality.window_us == 100_000


def test_small_clock_steps_are_not_gaps() -> None:
    chunks = list(to_chunks(sine(150, 0.4), TS0))
    # The capture side re-anchors its clock: later chunks shift by 1 ms.
    shifted = [
        records.AudioChunk(c.header.model_copy(update={"ts_us": c.header.ts_us + 1_000}), c.pcm)
        if n >= 10
        else c
        for n, c in enumerate(chunks)
    ]
    times = [f.ts_us for f in feed(shifted)]
    assert len(times) == 40
    assert times[25] == TS0 + 251_000
    assert all(b > a for a, b in itertools.pairwise(times))


def test_output_latency_is_bounded() -> None:
    tracker = prosody.ProsodyTracker("s1", "alice")
    for n, chunk in enumerate(to_chunks(sine(150, 1.0), TS0)):
        frames = tracker.push(chunk)
        newest_end = TS0 + (n + 1) * 20_000
        if n >= 2:
            assert frames, "every 20 ms chunk after the first completes hops"
            # The newest hop's window reaches 25.8 ms past its start; 20 ms chunks add
            # at most one more hop of waiting.
            assert 25_800 <= newest_end - frames[-1].ts_us <= 35_800


def test_voice_quality_every_tenth_hop() -> None:
    frames = run(sine(150, 1.0))
    assert [i for i, f in enumerate(frames) if f.voice_quality] == list(range(9, 100, 10))
    assert frames[99].voice_quality is not None
    assert frames[99].voice_quality.window_us == 500_000


def test_hnr_high_for_clean_sine_low_for_noise() -> None:
    clean = qualities(run(sine(150, 1.0)))[-1]
    assert clean.hnr_db is not None
    assert clean.hnr_db > 20
    assert clean.jitter_local is not None
    assert clean.jitter_local < 0.005
    assert clean.shimmer_local is not None
    assert clean.shimmer_local < 0.01
    # Noise: not voiced at all, or very aperiodic.
    for quality in qualities(run(noise(1.0))):
        assert quality.hnr_db is None or quality.hnr_db < 5
    # A sine 10 dB above white noise: HNR near 10 dB, far below the clean sine.
    signal_power = 0.5**2 / 2
    noisy = sine(150, 1.0) + noise(1.0, amplitude=np.sqrt(signal_power / 10))
    hnr = qualities(run(noisy))[-1].hnr_db
    assert hnr is not None
    assert 5 < hnr < 15


def test_frames_survive_the_wire() -> None:
    frames = run(np.concatenate([np.zeros(RATE // 4), sine(150, 0.5), noise(0.25)]))
    message = records.encode(records.ProsodyHops.of(frames))
    assert records.decode(records.ProsodyHops, message.value, message.headers).frames() == frames


@pytest.fixture(scope="module")
def speech() -> dict[str, Audio]:
    media = test_media.prepare()
    return {
        "low": load_speech_16k(media.speech_low_wav),
        "high": load_speech_16k(media.speech_high_wav),
    }


def praat_median_f0(audio: Audio) -> float:
    sound = parselmouth.Sound(audio, sampling_frequency=RATE)
    pitch = sound.to_pitch_ac(
        time_step=0.01, pitch_floor=prosody.F0_MIN_HZ, pitch_ceiling=prosody.F0_MAX_HZ
    )
    f0 = pitch.selected_array["frequency"]
    return float(np.median(f0[f0 > 0]))


def test_speech_f0_matches_praat(speech: dict[str, Audio]) -> None:
    ours = {name: float(np.median(voiced_f0(run(audio)))) for name, audio in speech.items()}
    praat = {name: praat_median_f0(audio) for name, audio in speech.items()}
    for name in speech:
        assert ours[name] == pytest.approx(praat[name], rel=0.05), (name, ours, praat)
    assert ours["low"] < ours["high"]
    assert praat["low"] < praat["high"]


def test_speech_has_voiced_and_unvoiced_hops(speech: dict[str, Audio]) -> None:
    frames = run(speech["low"])
    voiced = sum(f.voiced for f in frames) / len(frames)
    assert 0.15 < voiced < 0.85
    assert any(q.jitter_local is not None for q in qualities(frames))


def praat_voice_quality(audio: Audio) -> tuple[float, float, float]:
    """Whole-file (jitter local, shimmer local, mean HNR dB) from Praat."""
    call = parselmouth.praat.call
    sound = parselmouth.Sound(audio, sampling_frequency=RATE)
    pulses = call(sound, "To PointProcess (periodic, cc)", prosody.F0_MIN_HZ, prosody.F0_MAX_HZ)
    jitter = call(pulses, "Get jitter (local)", 0, 0, 0.0001, 0.02, 1.3)
    shimmer = call([sound, pulses], "Get shimmer (local)", 0, 0, 0.0001, 0.02, 1.3, 1.6)
    harmonicity = call(sound, "To Harmonicity (cc)", 0.01, prosody.F0_MIN_HZ, 0.1, 1.0)
    return jitter, shimmer, call(harmonicity, "Get mean", 0, 0)


def test_speech_voice_quality_near_praat(speech: dict[str, Audio]) -> None:
    # Loose: ours are 500 ms windows with a 25 ms HNR window, Praat's whole-file figures
    # use its own pulse search (measured: jitter 1.9% vs 0.8-1.6%, shimmer 11-13% vs
    # 14-16%, HNR 7-9 dB vs 11-12 dB).
    for audio in speech.values():
        found = qualities(run(audio))
        jitter = np.median([q.jitter_local for q in found if q.jitter_local is not None])
        shimmer = np.median([q.shimmer_local for q in found if q.shimmer_local is not None])
        hnr = np.median([q.hnr_db for q in found if q.hnr_db is not None])
        ref_jitter, ref_shimmer, ref_hnr = praat_voice_quality(audio)
        assert ref_jitter / 3 < jitter < ref_jitter * 3
        assert ref_shimmer / 2 < shimmer < ref_shimmer * 2
        assert abs(hnr - ref_hnr) < 6


def test_a_chunk_s_hops_are_known_to_be_out_only_with_the_next_chunk() -> None:
    # The processors ack an audio chunk (let its offset be committed) only once all its
    # hops are out: a hop needs 15.8 ms of audio past its end, so they come a chunk later.
    tracker = prosody.ProsodyTracker("s1", "alice")
    assert tracker.emitted_until_us() is None
    first, second, third = list(to_chunks(sine(150, 0.06), TS0))
    assert tracker.push(first) == []
    assert tracker.emitted_until_us() == TS0  # nothing of the first chunk is out
    hops = tracker.push(second)
    until = tracker.emitted_until_us()
    assert until is not None
    assert [h.ts_us for h in hops] == list(range(TS0, until, 10_000))
    assert TS0 + 20_000 <= until < TS0 + 40_000  # the first chunk is done, the second not
    hops = tracker.push(third)
    assert hops[0].ts_us == until
    tracker.flush()
    assert tracker.emitted_until_us() is None


def test_hops_of_a_long_step_go_out_in_records_of_at_most_the_limit() -> None:
    from streams.features.processors import prosody_records

    frames = run(noise(6.0))  # 600 hops: more than one record holds
    messages = prosody_records(frames)
    carried = [records.decode(records.ProsodyHops, m.value, m.headers) for m in messages]
    assert [len(c.hops) for c in carried] == [records.MAX_PROSODY_HOPS, len(frames) - 500]
    assert [frame for c in carried for frame in c.frames()] == frames


def test_hops_of_a_stream_whose_time_stepped_back_go_out_in_separate_records() -> None:
    from streams.features.processors import prosody_records

    # A new timeline (the capture clock re-anchored): the next audio is stamped 50 ms
    # before where the last ended, and the tracker starts a new segment there.
    first = to_chunks(sine(150, 0.3), TS0)
    second = to_chunks(sine(150, 0.3), TS0 + 250_000, seq=15)
    hops = feed([*first, *second])  # one analysis step's hops, as the processors get them
    assert any(b.ts_us <= a.ts_us for a, b in itertools.pairwise(hops))
    carried = [
        records.decode(records.ProsodyHops, m.value, m.headers) for m in prosody_records(hops)
    ]
    assert [frame for c in carried for frame in c.frames()] == hops
    assert len(carried) == 2


def test_a_copy_of_audio_already_analysed_is_skipped() -> None:
    # The fork sends a batch again when the broker's answer to it was lost: the topic can
    # hold chunks 10-19 twice. The copy changes nothing (no segment restart, no hop twice).
    chunks = list(to_chunks(sine(150, 0.8), TS0))
    tracker = prosody.ProsodyTracker("s1", "alice")
    hops: list[records.ProsodyFrame] = []
    for chunk in [*chunks[:30], *chunks[10:20], *chunks[30:]]:
        hops.extend(tracker.push(chunk))
    hops.extend(tracker.flush())
    assert tracker.stale_chunks == 10
    assert hops == feed(chunks)


def test_a_new_publication_restarting_its_seq_later_is_not_a_copy() -> None:
    # A rejoin makes a new fork: seq starts at 0 again, later on the session clock.
    first = list(to_chunks(sine(150, 0.4), TS0))
    second = list(to_chunks(sine(150, 0.4), TS0 + 2_000_000))
    tracker = prosody.ProsodyTracker("s1", "alice")
    for chunk in [*first, *second]:
        tracker.push(chunk)
    assert tracker.stale_chunks == 0
