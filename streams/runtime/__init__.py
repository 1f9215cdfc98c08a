"""What every livetag service process stands on, beside settings and the record contract:
private files, log files and token redaction, background tasks, page admission and the
metrics guard. Imports nothing above the ground floor."""
