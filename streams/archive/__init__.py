"""A session at rest: the recorder that writes it, the archive format (:mod:`.store`), the
exports made from it (CSV, ELAN, Parquet, a Hugging Face dataset), and replay onto topics."""
