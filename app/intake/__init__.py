"""Submission intake: a sighting of a sample becomes a job (wire format, validation, REST upload,
batch ingest, the duplicate window, dead submissions)."""
