"""Ray Data pipelines: ingest (and, later, pseudo-GT and batch deblurring)."""
