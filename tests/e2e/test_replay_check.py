"""``flowmesh replay-check`` as a user runs it before a deploy: against history files and
against the live histories of an app's Redis store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from flowmesh import WorkflowState
from flowmesh.codec import Codec
from flowmesh.replay import HistoryFile, read_history
from flowmesh.store import Commit
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from tests.golden.record import HISTORIES
from tests.harness.processes import REPO

pytestmark = pytest.mark.timeout(120)

GOLDEN_MODULES = ("--module", "workers.app1", "--module", "workers.gpu_trainer",
                  "--module", "tests.golden.scenarios")  # fmt: skip

# workers/app1.py with the two activities of ``pipeline`` swapped: a change that breaks
# every running pipeline.
BROKEN_APP1 = (
    (REPO / "workers" / "app1.py")
    .read_text(encoding="utf-8")
    .replace('"transform", document, app_id="app2"', '"finalize", document, app_id="app3"')
    .replace('"finalize", transformed, app_id="app3"', '"transform", transformed, app_id="app2"')
)


def replay_check(
    *args: str, path: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``flowmesh replay-check`` from the repo root (``path`` goes on PYTHONPATH)."""
    environ = {**os.environ, **env}
    if path is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(path), environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "flowmesh.cli", "replay-check", *args],
        cwd=REPO, env=environ, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def broken_module(tmp_path: Path) -> Path:
    assert (REPO / "workers" / "app1.py").read_text(encoding="utf-8") != BROKEN_APP1
    (tmp_path / "broken_app1.py").write_text(BROKEN_APP1, encoding="utf-8")
    return tmp_path


def test_every_golden_history_file_passes_with_exit_code_0() -> None:
    done = replay_check(*GOLDEN_MODULES, "--history", str(HISTORIES))
    assert done.returncode == 0, done.stdout + done.stderr
    count = len(list(HISTORIES.rglob("*.jsonl")))
    assert f"{count} of {count} histories replay cleanly" in done.stdout
    assert done.stdout.count("\nOK ") == count


def test_a_reordered_workflow_fails_with_both_sides_and_exit_code_1(tmp_path: Path) -> None:
    files = sorted(str(p) for p in (HISTORIES / "app1").glob("*.jsonl"))
    done = replay_check(
        "--module", "broken_app1", "-o", "json", "--history", *files, path=broken_module(tmp_path)
    )
    assert done.returncode == 1, done.stdout + done.stderr
    reports = {Path(r["source"]).name: r for r in json.loads(done.stdout)}
    assert set(reports) == {Path(f).name for f in files}
    for name in ("pipeline-1.jsonl", "pipeline-1.step-2.jsonl"):
        report = reports[name]
        assert report["result"] == "non-determinism"
        assert report["status"] == "STALLED"
        assert "history has activity 'transform' on app 'app2'" in report["detail"]
        assert "now asks for activity 'finalize' on app 'app3'" in report["detail"]
    for name in ("fanout-1.jsonl", "train-1.jsonl", "train-1.step-1.jsonl"):
        assert reports[name]["result"] == "ok", reports[name]


def test_usage_errors_and_unreadable_files_exit_with_2(tmp_path: Path) -> None:
    neither = replay_check("--module", "workers.app1")
    assert neither.returncode == 2 and "--history FILE... or --app-id" in neither.stderr
    no_module = replay_check("--history", str(HISTORIES))
    assert no_module.returncode == 2 and "--module is required" in no_module.stderr
    bad_module = replay_check("--module", "no_such_module", "--history", str(HISTORIES))
    assert bad_module.returncode == 2 and "cannot import 'no_such_module'" in bad_module.stderr
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n", encoding="utf-8")
    unreadable = replay_check("--module", "workers.app1", "--history", str(junk))
    assert unreadable.returncode == 2
    assert "ERROR" in unreadable.stdout and "not a JSON header" in unreadable.stdout
    other_app = replay_check(
        "--module", "workers.app1", "--history", str(HISTORIES / "scenarios" / "race-1.jsonl")
    )
    assert other_app.returncode == 2 and "no App('scenarios') is loaded" in other_app.stdout


# -- live histories in Redis ---------------------------------------------------------------------


@pytest.fixture
async def live_app1(redis_url: str) -> AsyncIterator[tuple[str, str]]:
    """app1's store under a private key prefix, holding a running and a completed pipeline."""
    prefix = f"fmgolden-{uuid.uuid4().hex[:8]}"
    store = RedisStore(RedisStoreConfig(url=redis_url, app_id="app1", key_prefix=prefix), Codec())
    await store.connect()
    try:
        for name in ("pipeline-1.step-2.jsonl", "fanout-1.jsonl", "train-1.step-1.jsonl"):
            await _seed(store, read_history(HISTORIES / "app1" / name))
        yield redis_url, prefix
    finally:
        await store.close()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


async def _seed(store: RedisStore, history: HistoryFile) -> None:
    state = WorkflowState(
        history.instance_id, history.app_id, history.workflow, history.status,
        history_length=len(history.events), version=1,
    )  # fmt: skip
    await store.commit(Commit(history.instance_id, 0, state, append=history.events))


@pytest.mark.real_services
def test_live_running_histories_are_read_only_checked_against_new_code(
    live_app1: tuple[str, str], tmp_path: Path
) -> None:
    """--status RUNNING picks the running instances; the broken code fails only the
    running pipeline; the store is left exactly as it was."""
    redis_url, prefix = live_app1
    client = redis.Redis.from_url(redis_url)
    before = {key: client.dump(key) for key in client.scan_iter(match=f"{prefix}:*")}
    live = ("--app-id", "app1", "--redis-url", redis_url, "--key-prefix", prefix)

    ok = replay_check(*live, "--status", "RUNNING")  # workers.app1 by convention
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 of 2 histories replay cleanly" in ok.stdout
    assert "app1/pipeline-1" in ok.stdout and "app1/train-1" in ok.stdout

    broken = replay_check(
        *live, "--status", "RUNNING", "--module", "broken_app1", path=broken_module(tmp_path)
    )
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "NON-DETERMINISM  app1/pipeline-1" in broken.stdout
    assert "history has activity 'transform' on app 'app2'" in broken.stdout
    assert "1 of 2 histories replay cleanly; 1 do not" in broken.stderr

    one = replay_check(*live, "--instance", "fanout-1", "-o", "json")
    assert one.returncode == 0, one.stdout + one.stderr
    assert [r["instance_id"] for r in json.loads(one.stdout)] == ["fanout-1"]

    missing = replay_check(*live, "--instance", "nope")
    assert missing.returncode == 2 and "no workflow 'nope' on app 'app1'" in missing.stderr

    after = {key: client.dump(key) for key in client.scan_iter(match=f"{prefix}:*")}
    client.close()
    assert after == before


def test_an_unreachable_redis_exits_with_2() -> None:
    down = replay_check(
        "--app-id", "app1", "--redis-url", "redis://127.0.0.1:1/0", "--key-prefix", "fmx"
    )
    assert down.returncode == 2, down.stdout + down.stderr
    assert "Error:" in down.stderr
