"""End-to-end tests use the shared fixtures of tests/conftest.py (real services)."""
