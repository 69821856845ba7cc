"""Faults 1-2: worker processes killed with SIGKILL, at random or at named crash points."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from flowmesh import Client
from tests.faults.apps import chain_result
from tests.harness.effects import read_runs
from tests.harness.ledger import Ledger
from tests.harness.processes import WorkerProcesses
from tests.harness.stores import StoreOpener

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(240)]

APPS = "tests.faults.apps"


async def test_activity_worker_killed_mid_activity_is_redelivered_and_completes_once(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """kill -9 the only activity replica while it runs a 3 s activity; a new replica reruns it.
    The side-effect log shows it: every task that had started when the replica died ran
    exactly once more (re-executions), and every other task ran once."""
    workers.start("fault-host", module=APPS)
    victim = workers.start("fault-act", module=APPS)
    workers.wait_ready(victim)
    ledger = Ledger("fault-host", workers)
    for i in range(5):
        await ledger.start(client, "slow_one", 3.0, "slept 3.0", instance_id=f"slow-{i}")
    await asyncio.sleep(1.5)  # all five are mid-activity now
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    cut_short = len(read_runs(workers.effects_path)[0])  # runs are 3 s: none had finished
    workers.start("fault-act", module=APPS)
    await ledger.wait_all(client, timeout=60)
    report = await ledger.verify(await store_for("fault-host"))
    print(f"ledger: {report}")
    print(f"activity runs cut short by the kill: {cut_short}")
    assert report.ok, report.explain()
    assert cut_short > 0, "no activity was running when the replica was killed"
    assert (report.tasks, report.reexecuted) == (5, cut_short), report.explain()


@pytest.mark.parametrize(
    "point",
    ["after_receive", "before_commit", "after_commit", "after_publish", "before_outbox_clear"],
)
async def test_orchestrator_killed_at_each_crash_point_loses_and_duplicates_nothing(
    point: str, workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """One host replica dies at ``point`` on its 5th pass; the other replica finishes everything."""
    doomed = workers.start("fault-host", module=APPS, env={"FLOWMESH_CRASH_AT": f"{point}:5"})
    survivor = workers.start("fault-host", module=APPS)
    act = workers.start("fault-act", module=APPS)
    for process in (doomed, survivor, act):
        workers.wait_ready(process)
    ledger = Ledger("fault-host", workers)
    for i in range(20):
        await ledger.start(client, "chain", 4, chain_result(4), instance_id=f"{point}-{i}")
    await ledger.wait_all(client, timeout=90)
    assert doomed.poll() == -signal.SIGKILL, "the crash point was never reached"
    report = await ledger.verify(await store_for("fault-host"))
    print(f"ledger ({point}): {report}")
    assert report.ok, report.explain()
