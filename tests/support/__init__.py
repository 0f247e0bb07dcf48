"""Helpers of the test suite (the fixtures stay in tests/conftest.py)."""
