"""Golden histories: recorded runs of the example and scenario workflows, replayed by
tests/unit/test_golden.py against the current code. Re-record with ``make golden``."""
