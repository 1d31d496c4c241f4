"""Evaluation and reporting of judged outputs: accuracy tables, the outcomes read from judged
records, Wilson intervals and McNemar tests, and the figures. Reads records and run-directory
files; runs no model."""
