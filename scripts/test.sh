#!/usr/bin/env bash
# The test suite in two processes: the fault tests (mostly waiting on outages, restarts and
# timeouts) beside everything else, so the wall time is about the longer of the two instead of
# their sum. Each process has its own RabbitMQ vhost and Redis key prefix (tests/conftest.py);
# fault tests that stop servers use private ones. The fault tests' output is printed after the
# rest, whole, so the two progress lines do not interleave.
set -uo pipefail
PY="${1:-.venv/bin/python}"
faults_log="$(mktemp)"
trap 'rm -f "$faults_log"' EXIT
# test_redelivery.py (a 60 s Redis outage among others) runs with the rest, which is otherwise
# done long before the fault tests: that evens out the two processes.
faults=()
ignores=()
for file in tests/faults/test_*.py; do
    [ "$file" = tests/faults/test_redelivery.py ] && continue
    faults+=("$file")
    ignores+=("--ignore=$file")
done
"$PY" -m pytest -q -p no:cacheprovider "${faults[@]}" >"$faults_log" 2>&1 &
faults_pid=$!
"$PY" -m pytest -q -p no:cacheprovider "${ignores[@]}" tests
rest=$?
wait "$faults_pid"
faults_rc=$?
echo "---- tests/faults (but test_redelivery.py) ----"
cat "$faults_log"
[ "$rest" -eq 0 ] && [ "$faults_rc" -eq 0 ]
