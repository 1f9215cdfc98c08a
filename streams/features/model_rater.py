"""The model lane's pluggable raters: a model reads a performer's face and rates it like a
rater named after it (docs/model-lane.md).

A rater (:class:`ModelRater`) is an object with

- ``name``: the rater's name on its readings (a participant id: ``fer-mini-xception``);
- ``classes``: its own class names, in any order (empty: whatever its answers name, up to
  MAX_NAMED_CLASSES distinct names in a worker's life);
- ``labels``: per class, the session-vocabulary labels it stands for, in preference order:
  the first one the session's vocabulary has is the class's label. A class without an
  entry, or none of whose labels the vocabulary has, maps to the vocabulary label of its
  own name if there is one, else to no label: it then stays in the reading's
  ``class_probabilities`` only;
- ``valence_arousal``: per class, a point on the valence/arousal plane ([-1, 1] each);
- ``rate(face)``: the class probabilities of one :class:`FaceSample` (a mapping of class
  to probability, or a :class:`Rating` that may carry the model's own valence and arousal);
- optionally ``close()``.

A frame's valence and arousal are the model's own when its rating has them, else the
probability-weighted mean of its classes' points when the table covers every class the
rating names, else none (a proxy over part of the mass would lean towards the covered
classes).

The setting ``model_rater`` picks the rater (:func:`choose_rater`, in the processor, which
checks what it can before any frame: the model file, the entry point's existence, the URL):
the built-in :class:`FerMiniXception`; ``none``; the name of an entry point in the group
``livetag.model_raters`` (a callable taking no argument that returns a rater); or an
``http://`` / ``https://`` URL (:class:`HttpRater`). :func:`load_rater` makes it in each face
worker process, and :class:`BoundRater` binds it to the session's vocabulary there; a
rater that fails to load or to rate fails the frames it should have read (counted in the
window's reading, logged), never the worker or its face analysis. When the processor
cannot choose the rater (:data:`UNUSABLE`: the model file missing, a setting that names no
rater), it runs without the model lane.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import logging
import math
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter, ValidationError

from streams import records, strict_json
from streams.errors import BadInputError, UnavailableError
from streams.features import expression_model
from streams.settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "livetag.model_raters"
OFF: Final = "none"
HTTP_NAME: Final = "http-model"
#: Rated probabilities may miss 1 by this much (rounding, float32); they are then rescaled.
SUM_TOLERANCE: Final = 0.02
MAX_CLASSES: Final = 64
#: A rater that declares no classes (an HTTP endpoint) may name at most this many distinct
#: ones: each is cached and carried in every reading's class_probabilities, and an endpoint
#: that invents names (a counter, a timestamp) must not grow either without bound. An
#: answer naming one more fails its frame.
MAX_NAMED_CLASSES: Final = 32
MAX_ANSWER_BYTES: Final = 64 * 1024
#: An HTTP rater that failed this many frames in a row is not asked for HTTP_PAUSE_S: a
#: dead endpoint would otherwise cost its timeout on every due frame of the face worker.
HTTP_FAILURES_BEFORE_PAUSE: Final = 3
HTTP_PAUSE_S: Final = 5.0

_PARTICIPANT_ID: TypeAdapter[str] = TypeAdapter(records.ParticipantId)

# ---------------------------------------------------------------- the built-in tables

#: FER2013's classes -> session-vocabulary labels, first match in the vocabulary wins.
#: "happy" is a smile to a face model, which hears nothing: amusement ("smile, glee" in the
#: default vocabulary), not laughter ("audible laugh"). FER's "neutral" has no default
#: label and stays in the model's own class probabilities.
FER_LABELS: Final[Mapping[str, tuple[str, ...]]] = {
    "angry": ("anger", "angry"),
    "disgust": ("disgust",),
    "fear": ("fear",),
    "happy": ("amusement", "happiness", "happy", "joy"),
    "sad": ("sadness", "sad"),
    "surprise": ("surprise",),
    "neutral": ("neutral",),
}
#: FER2013's classes on the valence/arousal plane: coarse positions on the circumplex of
#: affect (Russell 1980), one decimal, that put each class in its quadrant. A proxy for
#: comparing with raters' valence/arousal traces, not a measurement. Surprise is placed
#: near neutral valence: it goes either way.
FER_VALENCE_AROUSAL: Final[Mapping[str, tuple[float, float]]] = {
    "angry": (-0.6, 0.6),
    "disgust": (-0.6, 0.3),
    "fear": (-0.7, 0.6),
    "happy": (0.8, 0.4),
    "sad": (-0.6, -0.4),
    "surprise": (0.1, 0.8),
    "neutral": (0.0, 0.0),
}


class ModelRaterError(BadInputError, ValueError):
    """The ``model_rater`` setting names no usable rater; the message says what to set."""


class RatingError(UnavailableError, RuntimeError):
    """A rater gave no usable rating of one frame (it failed, timed out, or answered what
    is no distribution); ``str()`` is the reason (counted, never fatal)."""


#: Why :func:`choose_rater` refuses a setting: the processors then run without the model
#: lane (their face features and labels go on), and ``livetag up`` and ``livetag worker``
#: warn of it.
UNUSABLE: Final = (ModelRaterError, expression_model.ExpressionModelError)


# ---------------------------------------------------------------- what a rater sees and says


class FaceSample:
    """One analysed frame with a face, as a rater sees it: the decoded RGB frame, the face
    landmarks (478 x 3, x and y normalised to the frame), the blendshape scores, and the
    grey crop the FER2013 network takes (:meth:`grey_crop`, made once, on demand)."""

    def __init__(
        self,
        *,
        session_id: str,
        performer_id: str,
        ts_us: int,
        rgb: npt.NDArray[np.uint8],
        landmarks: npt.NDArray[Any],
        blendshapes: Mapping[str, float],
    ) -> None:
        self.session_id = session_id
        self.performer_id = performer_id
        self.ts_us = ts_us
        self.rgb = rgb
        self.landmarks = landmarks
        self.blendshapes = blendshapes
        self._crops: dict[int, npt.NDArray[np.uint8]] = {}

    def grey_crop(self, size: int = expression_model.CROP_SIZE) -> npt.NDArray[np.uint8]:
        """The square grey crop of the face, ``size`` x ``size`` (expression_model.face_crop)."""
        crop = self._crops.get(size)
        if crop is None:
            crop = expression_model.face_crop(self.rgb, self.landmarks, size=size)
            self._crops[size] = crop
        return crop


@dataclass(frozen=True)
class Rating:
    """A rater's answer for one face: class probabilities, and the model's own valence and
    arousal if it has them."""

    probabilities: Mapping[str, float]
    valence: float | None = None
    arousal: float | None = None


class ModelRater(Protocol):
    """What a model rater is (module doc)."""

    name: str
    classes: Sequence[str]
    labels: Mapping[str, Sequence[str]]
    valence_arousal: Mapping[str, tuple[float, float]]

    def rate(self, face: FaceSample) -> Rating | Mapping[str, float]: ...


@dataclass(frozen=True)
class FrameReading:
    """A rater's reading of one frame, bound to the session's vocabulary."""

    model: str
    class_probabilities: dict[str, float]
    probabilities: dict[str, float] = field(default_factory=dict)
    valence: float | None = None
    arousal: float | None = None


UnreadReason = Literal["no_face", "thinned", "failed"]


@dataclass(frozen=True)
class Unread:
    """A frame the model did not read, and why: no face in it, thinned (the model was not
    due, or the face worker was behind), or the rater failed (``detail`` says how)."""

    reason: UnreadReason
    model: str | None = None
    detail: str = ""


ModelOutcome = FrameReading | Unread

# ---------------------------------------------------------------- built-in raters


class FerMiniXception:
    """The default rater: mini-Xception trained on FER2013 (expression_model), on the
    64x64 grey crop of the face."""

    name = expression_model.NAME
    classes: Sequence[str] = expression_model.CLASSES
    labels: Mapping[str, Sequence[str]] = FER_LABELS
    valence_arousal: Mapping[str, tuple[float, float]] = FER_VALENCE_AROUSAL

    def __init__(self, model_path: Path) -> None:
        self._model = expression_model.ExpressionModel(model_path)

    def rate(self, face: FaceSample) -> Mapping[str, float]:
        probabilities = self._model.probabilities(face.grey_crop())
        return {name: float(p) for name, p in zip(self.classes, probabilities, strict=True)}


def grey_png(image: npt.NDArray[np.uint8]) -> bytes:
    """A 2-D uint8 array as an 8-bit greyscale PNG (what an HTTP rater is sent)."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    height, width = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    # Each row starts with its filter type: 0, none.
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), image], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes()))
        + chunk(b"IEND", b"")
    )


class HttpRater:
    """A model served elsewhere: each face's 64x64 grey crop is POSTed as ``image/png``
    (headers ``X-Livetag-Session``, ``X-Livetag-Performer``, ``X-Livetag-Ts-Us``), and the
    answer is JSON: ``{"probabilities": {"happy": 0.7, ...}}``, optionally with
    ``"valence"`` and ``"arousal"`` in [-1, 1]. Its classes map to the vocabulary and the
    valence/arousal plane with the FER2013 tables where their names match (most expression
    models use FER2013's or AffectNet's names), else by name. It declares no classes: an
    answer may leave out the classes it gives 0, and the endpoint may name at most
    MAX_NAMED_CLASSES distinct ones (BoundRater).

    Runs in a face worker, so its calls are synchronous, each waiting at most
    ``timeout_s`` per socket operation; environment proxies are not used (faces stay on
    the way to the endpoint named). After HTTP_FAILURES_BEFORE_PAUSE failures in a row it
    is not asked for HTTP_PAUSE_S: those frames fail at once, with the last reason."""

    name = HTTP_NAME
    classes: Sequence[str] = ()
    labels: Mapping[str, Sequence[str]] = FER_LABELS
    valence_arousal: Mapping[str, tuple[float, float]] = FER_VALENCE_AROUSAL

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = check_url(url)
        self._timeout_s = timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._failures_in_a_row = 0
        self._paused_until = 0.0
        self._last_failure = ""

    def rate(self, face: FaceSample) -> Rating:
        if time.monotonic() < self._paused_until:
            raise RatingError(
                f"endpoint paused after {self._failures_in_a_row} failures in a row "
                f"(last: {self._last_failure})"
            )
        try:
            rating = self._ask(face)
        except RatingError as exc:
            self._failures_in_a_row += 1
            self._last_failure = str(exc)
            if self._failures_in_a_row % HTTP_FAILURES_BEFORE_PAUSE == 0:
                self._paused_until = time.monotonic() + HTTP_PAUSE_S
            raise
        self._failures_in_a_row = 0
        return rating

    def _ask(self, face: FaceSample) -> Rating:
        request = urllib.request.Request(
            self.url,
            data=grey_png(face.grey_crop()),
            method="POST",
            headers={
                "Content-Type": "image/png",
                "Accept": "application/json",
                "X-Livetag-Session": face.session_id,
                "X-Livetag-Performer": face.performer_id,
                "X-Livetag-Ts-Us": str(face.ts_us),
            },
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                body = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise RatingError(f"endpoint answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise RatingError(f"endpoint unreachable: {exc.reason}") from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise RatingError(f"endpoint failed: {exc!r}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise RatingError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        try:
            answer = strict_json.loads_object(body)
        except strict_json.JsonInputError as exc:
            raise RatingError(f"answer is not JSON livetag accepts: {exc.reason}") from None
        unknown = set(answer) - {"probabilities", "valence", "arousal"}
        if unknown:
            raise RatingError(f"answer has unknown fields {sorted(unknown)}")
        probabilities = answer.get("probabilities")
        if not isinstance(probabilities, dict):
            raise RatingError('answer has no "probabilities" object')
        return Rating(probabilities, answer.get("valence"), answer.get("arousal"))


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelRaterError(f"model rater URL {url!r} is not an http:// or https:// URL")
    return url


# ---------------------------------------------------------------- choosing and loading


@dataclass(frozen=True)
class RaterChoice:
    """The rater the setting names, checked in the processor and made in each face worker
    (picklable: it travels to the worker processes)."""

    kind: Literal["builtin", "entry_point", "http"]
    target: str  # the model file, the entry point's name, or the URL
    rename: str | None = None
    timeout_s: float = 0.25

    @property
    def fallback_name(self) -> str:
        """The name readings carry when the rater could not be made."""
        if self.rename:
            return self.rename
        if self.kind == "builtin":
            return expression_model.NAME
        if self.kind == "http":
            return HTTP_NAME
        return self.target


def entry_point_names() -> list[str]:
    return sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def choose_rater(settings: Settings) -> RaterChoice | None:
    """The rater ``settings.model_rater`` names (None: the model lane is off);
    :class:`ModelRaterError` or expression_model's error if it cannot work."""
    value = settings.model_rater.strip()
    timeout_s = settings.model_http_timeout_ms / 1000
    rename = settings.model_rater_name
    if value == OFF:
        return None
    if value == expression_model.NAME:
        path = expression_model.resolve(settings)
        return RaterChoice("builtin", str(path), rename, timeout_s)
    if "://" in value:
        return RaterChoice("http", check_url(value), rename, timeout_s)
    if not importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=value):
        known = [expression_model.NAME, OFF, *entry_point_names()]
        raise ModelRaterError(
            f"model_rater {value!r} is no model rater: expected one of {known}, or an "
            f"http:// or https:// URL (entry points are looked up in {ENTRY_POINT_GROUP})"
        )
    return RaterChoice("entry_point", value, rename, timeout_s)


def load_rater(choice: RaterChoice) -> ModelRater:
    """Make the chosen rater (in a face worker); :class:`ModelRaterError` if it is not one."""
    rater: Any
    if choice.kind == "builtin":
        rater = FerMiniXception(Path(choice.target))
    elif choice.kind == "http":
        rater = HttpRater(choice.target, choice.timeout_s)
    else:
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=choice.target)
        if not found:
            raise ModelRaterError(f"no entry point {choice.target!r} in {ENTRY_POINT_GROUP}")
        factory = next(iter(found)).load()
        rater = factory()
    check_rater(rater)
    return rater


def check_rater(rater: Any) -> None:
    """That ``rater`` has what a :class:`ModelRater` has, with values that fit."""
    missing = [
        attribute
        for attribute in ("name", "classes", "labels", "valence_arousal", "rate")
        if not hasattr(rater, attribute)
    ]
    if missing:
        raise ModelRaterError(f"{rater!r} is no model rater: it has no {', '.join(missing)}")
    _check_name(rater.name, f"{rater!r}")
    if isinstance(rater.classes, str) or not all(isinstance(c, str) for c in rater.classes):
        raise ModelRaterError(f"{rater.name}: classes must be a sequence of class names")
    if not isinstance(rater.labels, Mapping) or not isinstance(rater.valence_arousal, Mapping):
        raise ModelRaterError(f"{rater.name}: labels and valence_arousal must be mappings")
    for name, point in rater.valence_arousal.items():
        if (
            len(point) != 2
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in point)
            or not all(-1.0 <= v <= 1.0 for v in point)
        ):
            raise ModelRaterError(
                f"{rater.name}: valence_arousal[{name!r}] must be (valence, arousal) in [-1, 1]"
            )
    if not callable(rater.rate):
        raise ModelRaterError(f"{rater.name}: rate must be callable")


def _check_name(name: Any, what: str) -> str:
    try:
        return _PARTICIPANT_ID.validate_python(name)
    except ValidationError:
        raise ModelRaterError(
            f"{what}: name {name!r} is not a rater name (lower-case letters, digits, _ and -, "
            "at most 32, starting with a letter or digit)"
        ) from None


# ---------------------------------------------------------------- checking a rating


def check_probabilities(raw: Any, classes: Sequence[str]) -> dict[str, float]:
    """The class probabilities of a rating, rescaled to sum to 1; :class:`RatingError` if
    they are not a distribution over the rater's classes (within SUM_TOLERANCE)."""
    if not isinstance(raw, Mapping) or not raw:
        raise RatingError("the rating has no class probabilities")
    if len(raw) > MAX_CLASSES:
        raise RatingError(f"the rating has {len(raw)} classes, more than {MAX_CLASSES}")
    known = set(classes)
    checked: dict[str, float] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise RatingError(f"class name {name!r} is not a string of 1-64 characters")
        if known and name not in known:
            raise RatingError(f"class {name!r} is not one of the rater's {sorted(known)}")
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise RatingError(f"probability of {name!r} is not a number: {value!r}")
        number = float(value)
        if not math.isfinite(number) or not -1e-6 <= number <= 1 + 1e-6:
            raise RatingError(f"probability of {name!r} is {number}, outside [0, 1]")
        checked[name] = min(1.0, max(0.0, number))
    total = sum(checked.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise RatingError(f"probabilities sum to {total:.4f}, not 1")
    return {name: value / total for name, value in checked.items()}


def _check_bipolar(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise RatingError(f"{what} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number) or not -1.0 <= number <= 1.0:
        raise RatingError(f"{what} is {number}, outside [-1, 1]")
    return number


# ---------------------------------------------------------------- bound to a session


class BoundRater:
    """A rater bound to one session's vocabulary, in a face worker: frame readings out.

    Made with the rater, or with the reason it could not be made (then every frame it
    should read fails with that reason)."""

    def __init__(
        self,
        rater: ModelRater | None,
        vocabulary: Sequence[str],
        *,
        name: str,
        load_failure: str = "",
    ) -> None:
        self.rater = rater
        self.name = name
        self._vocabulary = frozenset(vocabulary)
        self._load_failure = load_failure
        self._label_of: dict[str, str | None] = {}
        # The class names a rater that declares none has named so far (MAX_NAMED_CLASSES).
        self._named: set[str] = set()
        self._warned_of_names = False
        #: Frames the rater failed (logged: the first, then every hundredth).
        self.failures = 0

    @classmethod
    def load(cls, choice: RaterChoice, vocabulary: Sequence[str]) -> BoundRater:
        """The chosen rater, made and bound; a rater that cannot be made is logged, and
        fails its frames instead of the worker."""
        try:
            rater = load_rater(choice)
        except Exception as exc:
            log.exception("model rater %s could not be made", choice.fallback_name)
            return cls(
                None,
                vocabulary,
                name=choice.fallback_name,
                load_failure=f"rater could not be made: {exc!r}",
            )
        return cls(rater, vocabulary, name=choice.rename or rater.name)

    def label_of(self, class_name: str) -> str | None:
        """The session-vocabulary label a class stands for (module doc), or None."""
        if class_name not in self._label_of:
            label = None
            candidates = self.rater.labels.get(class_name, ()) if self.rater else ()
            for candidate in (*candidates, class_name):
                if candidate in self._vocabulary:
                    label = candidate
                    break
            self._label_of[class_name] = label
        return self._label_of[class_name]

    def read(self, face: FaceSample) -> ModelOutcome:
        """The rater's reading of one face, or why it has none."""
        try:
            if self.rater is None:
                raise RatingError(self._load_failure)
            try:
                answer = self.rater.rate(face)
            except RatingError:
                raise
            except Exception as exc:
                raise RatingError(f"rater failed: {exc!r}") from None
            return self.reading(answer)
        except RatingError as exc:
            self.failures += 1
            if self.failures % 100 == 1:
                log.warning(
                    "model rater %s failed a frame (%d so far): %s", self.name, self.failures, exc
                )
            return Unread("failed", self.name, str(exc))

    def reading(self, answer: Rating | Mapping[str, float]) -> FrameReading:
        """A rating, checked and mapped to the vocabulary and the valence/arousal plane."""
        assert self.rater is not None
        rating = answer if isinstance(answer, Rating) else Rating(answer)
        classes = check_probabilities(rating.probabilities, self.rater.classes)
        if not self.rater.classes:
            self._take_names(classes)
        labels: dict[str, float] = {}
        for class_name, probability in classes.items():
            label = self.label_of(class_name)
            if label is not None:
                labels[label] = labels.get(label, 0.0) + probability
        valence = _check_bipolar(rating.valence, "valence")
        arousal = _check_bipolar(rating.arousal, "arousal")
        table = self.rater.valence_arousal
        if (valence is None or arousal is None) and all(c in table for c in classes):
            proxy_valence = sum(p * table[c][0] for c, p in classes.items())
            proxy_arousal = sum(p * table[c][1] for c, p in classes.items())
            valence = proxy_valence if valence is None else valence
            arousal = proxy_arousal if arousal is None else arousal
        return FrameReading(self.name, classes, labels, valence, arousal)

    def _take_names(self, classes: Mapping[str, float]) -> None:
        """Take the class names of an answer of a rater that declares no classes, unless
        they would make it name more than MAX_NAMED_CLASSES: then the frame fails (logged
        when it first happens, with the names already taken)."""
        new = sorted(classes.keys() - self._named)
        if len(self._named) + len(new) <= MAX_NAMED_CLASSES:
            self._named.update(new)
            return
        if not self._warned_of_names:
            self._warned_of_names = True
            log.warning(
                "model rater %s named classes %s beyond the %d distinct ones a rater that "
                "declares no classes may name (it named %s before): such answers fail "
                "their frames (frames_failed)",
                self.name,
                new[:5],
                MAX_NAMED_CLASSES,
                sorted(self._named),
            )
        raise RatingError(
            f"answer names new classes {new[:3]} beyond the {MAX_NAMED_CLASSES} distinct "
            "ones a rater that declares no classes may name"
        )

    def close(self) -> None:
        close = getattr(self.rater, "close", None)
        if callable(close):
            close()
