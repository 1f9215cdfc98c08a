"""Features measured from the media: prosody (pitch, loudness, voice quality) per audio hop,
face landmarks and blendshapes per video frame, and the per-session processor app that
runs both (and hosts the aligner) on the session's topics."""
