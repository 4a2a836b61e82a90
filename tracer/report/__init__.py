"""The finished report: the findings and results put together, the run's outcome, redaction."""
