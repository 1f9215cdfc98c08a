"""Labels: which tags cover which window (one rule, :mod:`streams.labels.tag_rules`), the
aligner's window logic as plain functions (:mod:`streams.labels.aligner_core`), and its
faust wiring (:mod:`streams.labels.aligner`)."""
