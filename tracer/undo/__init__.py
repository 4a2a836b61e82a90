"""Undo: the journal of every change a run makes, taking them back, and cleanup after crashes."""
