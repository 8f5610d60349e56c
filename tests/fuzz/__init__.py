"""Helpers of the fuzz suite (tests/test_fuzz.py): seeded inputs, a stored-data fingerprint, a hostile HTTP peer."""
