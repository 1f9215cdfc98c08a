"""The error a face worker sends back for a frame it could not analyse.

Apart from ``streams.features.face`` so that a processor can catch it, and unpickle it from a
worker, without importing mediapipe (about a second of its start) itself."""

from streams.errors import BadInputError


class FaceAnalysisError(BadInputError, ValueError):
    """A frame could not be analysed (e.g. its JPEG does not decode); says why."""
