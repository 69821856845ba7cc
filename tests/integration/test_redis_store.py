"""Redis-specific behaviour of RedisStore: lost functions, safety checks, round trips, errors.

The shared behaviour is proven by tests/contract/test_store_contract.py. Tests that need a
server configured a particular way start a private, throwaway ``redis-server`` on a free port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
import redis
import redis.asyncio

from flowmesh._errors import ConfigurationError, StoreError, VersionConflictError
from flowmesh._masking import mask_secrets as mask_url
from flowmesh.codec import Codec
from flowmesh.model import EventRaised, WorkflowState, WorkflowStatus
from flowmesh.store import Commit, OutboxEntry, TimerEntry, Waiter
from flowmesh.store import redis_function_library as library
from flowmesh.store._redis_safety import safety_warnings
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from flowmesh.transport._base import Outgoing, QueueKind

pytestmark = pytest.mark.real_services

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SAFE = {
    "maxmemory-policy": "noeviction",
    "appendonly": "yes",
    "appendfsync": "always",
    "save": "",
}


def commit(instance_id: str, expected: int, **fields: object) -> Commit:
    state = WorkflowState(
        instance_id=instance_id,
        app_id="orders",
        name="checkout",
        status=WorkflowStatus.RUNNING,
        version=expected + 1,
    )
    return Commit(instance_id, expected, state, **fields)  # type: ignore[arg-type]


def new_store(url: str) -> RedisStore:
    return RedisStore(RedisStoreConfig(url=url, app_id=f"i-{uuid4().hex[:8]}"), Codec())


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    """A connected store of a fresh app on the shared Redis; its keys are deleted afterwards."""
    store = new_store(redis_url)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()
        client = redis.asyncio.Redis.from_url(redis_url)
        pattern = f"fm:{{{store.config.app_id}}}:*"
        keys = [key async for key in client.scan_iter(match=pattern)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def private_redis(tmp_path: Path, *settings: str) -> Iterator[str]:
    """Run a throwaway redis-server with ``settings``; yields its URL, kills it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not installed; under CI=true these tests must run")
        pytest.skip("redis-server is not installed")
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
    args += ["--dir", str(tmp_path), "--logfile", "", "--loglevel", "warning", *settings]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _accepts_connections(port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                _, err = process.communicate(timeout=5)
                pytest.fail(f"private redis-server did not start: {err.decode()}")
            time.sleep(0.02)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        assert process.stderr is not None
        process.stderr.close()


async def test_commit_and_every_function_work_after_the_library_was_lost(
    store: RedisStore, redis_url: str
) -> None:
    """A Redis without persistence loses its functions on restart; a user that may load
    them (development) gets them loaded again by the store."""
    await store.commit(commit("wf-1", 0, add_timers=(TimerEntry("wf-1", 1, T0),)))
    client = redis.asyncio.Redis.from_url(redis_url)
    await client.function_delete(library().name)
    await client.aclose()

    outgoing = Outgoing("payments", QueueKind.WORK, b"x")
    await store.commit(commit("wf-1", 1, outbox=(OutboxEntry("wf-1", "e1", outgoing),)))
    assert await store.claim_due_timers(T0, timedelta(seconds=1)) == [TimerEntry("wf-1", 1, T0)]
    assert await store.add_waiter("wf-1", Waiter("fm.inbox.x", "c-x")) is not None
    await store.remove_outbox("wf-1", ["e1"])
    assert await store.list_outbox() == []
    assert await store.purge("wf-1") is True


async def test_big_commits_are_applied_in_chunks_below_luas_argument_limit(
    store: RedisStore,
) -> None:
    """Lua's unpack() fails beyond ~8000 values; the scripts split variadic commands."""
    events = tuple(EventRaised(f"e{n}") for n in range(9000))
    outbox = tuple(
        OutboxEntry("wf-1", f"m{n}", Outgoing("payments", QueueKind.WORK, b"")) for n in range(5000)
    )
    timers = tuple(TimerEntry("wf-1", n, T0) for n in range(2500))
    await store.commit(commit("wf-1", 0, append=events, outbox=outbox, add_timers=timers))
    await store.commit(commit("wf-1", 1, append=events, replace_history=True))

    record = await store.load("wf-1")
    assert record is not None
    assert record.history == events
    assert len(await store.list_outbox(limit=10_000)) == 5000
    await store.remove_outbox("wf-1", [entry.entry_id for entry in outbox])
    assert await store.list_outbox() == []
    assert await store.purge("wf-1") is True
    assert await store.next_timer_at() is None


async def test_commit_is_a_single_fcall_and_load_a_single_transaction(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--save", "") as url:
        async with new_store(url) as store:
            await store.commit(commit("wf-1", 0))  # loads the library (FUNCTION LOAD)
            two_events = (EventRaised("a"), EventRaised("b"))
            committed = await _client_commands(
                url, store.commit(commit("wf-1", 1, append=two_events))
            )
            loaded = await _client_commands(url, store.load("wf-1"))
            await store.add_waiter("wf-1", Waiter("fm.inbox.a", "c-a"))
            finished = commit("wf-1", 2, take_waiters=True)
            taken: list[Waiter] = []

            async def finish() -> None:
                taken.extend(await store.commit(finished))

            finishing = await _client_commands(url, finish())
            await store.remove_outbox("wf-1", ["1:0"])
            ids = [f"wf-{n}" for n in range(450)]
            removing = await _client_commands(
                url, store.remove_outbox_many([(i, ["1:0", "1:1"]) for i in ids])
            )
    assert committed == ["fcall"]
    assert loaded == ["multi", "hget", "lrange", "exec"]  # sent as one batch
    # The waiters are taken by the commit.
    assert (finishing, taken) == (["fcall"], [Waiter("fm.inbox.a", "c-a")])
    assert removing == ["fcall"] * 3  # 200 instances per call, pipelined


async def _client_commands(url: str, action: Awaitable[object]) -> list[str]:
    """Names of the commands clients sent while ``action`` ran (not those run by scripts)."""
    observer = redis.asyncio.Redis.from_url(url)
    seen: list[str] = []
    async with observer.monitor() as monitor:
        await action
        await observer.echo("end-of-action")
        async with asyncio.timeout(10):
            while (command := await monitor.next_command())["command"] != "ECHO end-of-action":
                if command["client_type"] != "lua":
                    seen.append(command["command"].split(" ", 1)[0].lower())
    await observer.aclose()
    return seen


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (("--appendonly", "no", "--save", ""), ["no persistence"]),
        (("--appendonly", "yes", "--appendfsync", "always"), []),
        (("--appendonly", "yes", "--appendfsync", "always", "--save", ""), []),
        (("--appendonly", "yes"), ["appendfsync is 'everysec'"]),  # Redis' default fsync
        (("--appendonly", "yes", "--appendfsync", "no"), ["appendfsync is 'no'"]),
        (("--appendonly", "no", "--save", "3600 1"), ["only RDB snapshots"]),
        (
            ("--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "allkeys-lru"),
            ["evicts keys"],
        ),
    ],
)
async def test_check_safety_reports_what_can_lose_data(
    tmp_path: Path, settings: tuple[str, ...], expected: list[str]
) -> None:
    with private_redis(tmp_path, *settings) as url:
        async with new_store(url) as store:
            warnings = await store.check_safety()
    assert len(warnings) == len(expected), warnings
    for warning, fragment in zip(warnings, expected, strict=True):
        assert fragment in warning


async def test_check_safety_accepts_everysec_only_when_allowed(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "everysec") as url:
        async with new_store(url) as store:
            refused = await store.check_safety()
        config = RedisStoreConfig(url=url, app_id="orders", allow_fsync_everysec=True)
        async with RedisStore(config, Codec()) as store:
            allowed = await store.check_safety()
    assert len(refused) == 1 and "--allow-redis-everysec" in refused[0]
    assert allowed == []


async def test_check_safety_warns_about_the_dev_redis_without_persistence(
    store: RedisStore, redis_url: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    config = {
        name: value for name in SAFE for name, value in (await client.config_get(name)).items()
    }
    await client.aclose()
    if config["appendonly"] != "no" or config["save"] != "":
        pytest.skip(f"this Redis persists data ({config}); the private-server tests cover it")
    assert any("no persistence" in warning for warning in await store.check_safety())


async def test_check_safety_without_config_permission_warns_instead_of_failing(
    tmp_path: Path,
) -> None:
    with private_redis(tmp_path, "--appendonly", "yes") as url:
        admin = redis.asyncio.Redis.from_url(url)
        await admin.acl_setuser(
            "app",
            enabled=True,
            passwords=["+s3cret"],
            keys=["*"],
            commands=["+@all", "-config", "-info"],
        )
        await admin.aclose()
        async with new_store(url.replace("//", "//app:s3cret@")) as store:
            warnings = await store.check_safety()
    assert len(warnings) == 1
    assert "could not check" in warnings[0]
    assert "s3cret" not in warnings[0]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (("--appendonly", "yes"), []),
        (("--appendonly", "no"), ["appendonly is 'no'"]),
        (("--appendonly", "yes", "--maxmemory-policy", "allkeys-lru"), ["evicts keys"]),
    ],
)
async def test_check_safety_falls_back_to_info_when_config_is_refused(
    tmp_path: Path, settings: tuple[str, ...], expected: list[str]
) -> None:
    """A least-privilege ACL user (security plan) may run INFO sections but not CONFIG."""
    with private_redis(tmp_path, *settings) as url:
        admin = redis.asyncio.Redis.from_url(url)
        await admin.acl_setuser(
            "app",
            enabled=True,
            passwords=["+s3cret"],
            keys=["*"],
            commands=["+@all", "-config", "-info", "+info|persistence", "+info|memory"],
        )
        await admin.aclose()
        async with new_store(url.replace("//", "//app:s3cret@")) as store:
            warnings = await store.check_safety()
    assert len(warnings) == len(expected), warnings
    for warning, fragment in zip(warnings, expected, strict=True):
        assert fragment in warning


async def test_connection_errors_become_store_errors_with_the_password_masked() -> None:
    url = f"redis://user:hunter2@127.0.0.1:{_free_port()}/0"
    store = new_store(url)
    with pytest.raises(StoreError, match=r"user:\*\*\*@127\.0\.0\.1") as raised:
        await store.connect()
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in repr(store)
    assert "hunter2" not in repr(store.config)


async def test_wrong_password_is_a_store_error_without_the_password(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--requirepass", "right") as url:
        store = new_store(url.replace("//", "//:wrong-pass@"))
        with pytest.raises(StoreError) as raised:
            await store.connect()
    assert "wrong-pass" not in str(raised.value)
    assert isinstance(raised.value.__cause__, redis.RedisError)


async def test_using_the_store_before_connect_is_a_store_error() -> None:
    store = new_store("redis://127.0.0.1:6379/0")  # never contacted
    with pytest.raises(StoreError, match="not connected"):
        await store.load("wf-1")
    await store.close()  # closing an unconnected store is harmless


async def test_a_server_going_away_mid_use_is_a_store_error(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--save", "") as url:
        store = new_store(url)
        await store.connect()
    try:
        with pytest.raises(StoreError, match="commit to 'wf-1' failed"):
            await asyncio.wait_for(store.commit(commit("wf-1", 0)), timeout=30)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"app_id": "Bad_App"}, "invalid app ID"),
        ({"url": "http://127.0.0.1"}, "must start with redis://"),
        ({"key_prefix": "fm{x}"}, "without braces"),
        ({"socket_timeout": 0}, "must be positive"),
    ],
)
def test_invalid_config_is_a_configuration_error(fields: dict[str, object], problem: str) -> None:
    arguments: dict[str, object] = {"url": "redis://127.0.0.1:6379/0", "app_id": "orders"}
    with pytest.raises(ConfigurationError, match=problem):
        RedisStoreConfig(**(arguments | fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:p%40ss@host/1", "rediss://user:***@host/1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://u:pw@[::1]:6379", "redis://u:***@[::1]:6379"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_settings_hidden_by_a_managed_redis_are_reported_as_unchecked() -> None:
    warnings = safety_warnings({"maxmemory-policy": "noeviction"})
    assert len(warnings) == 1
    assert "could not read appendonly, appendfsync, save" in warnings[0]
    assert safety_warnings(SAFE) == []


async def test_remove_outbox_many_works_after_the_library_was_lost(redis_url: str) -> None:
    """Pipelined FCALLs fall back to the loading path when the library is gone."""
    app_id = f"flush-{uuid4().hex[:8]}"
    store = RedisStore(RedisStoreConfig(url=redis_url, app_id=app_id), Codec())
    await store.connect()
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        state = WorkflowState("i-1", app_id, "wf", WorkflowStatus.RUNNING, version=1)
        entry = OutboxEntry("i-1", "1:0", Outgoing("t", QueueKind.WORK, b"x"))
        await store.commit(Commit("i-1", 0, state, outbox=(entry,)))
        await raw.function_delete(library().name)
        await store.remove_outbox_many([("i-1", ["1:0"])])
        assert await store.list_outbox() == []
    finally:
        keys = [k async for k in raw.scan_iter(match=f"fm:{{{app_id}}}:*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()
        await store.close()


async def test_commits_of_one_loop_turn_share_a_round_trip_and_keep_their_own_results(
    store: RedisStore,
) -> None:
    ids = [f"turn-{n:02}" for n in range(20)]
    await asyncio.gather(*(store.commit(commit(i, 0)) for i in ids))
    batches: list[int] = []
    # Counts the batches the commit batcher sends: no public hook exists for that.
    send = store._commits._send  # noqa: SLF001

    async def counting(calls: list[tuple[object, object]]) -> list[object]:
        batches.append(len(calls))
        return await send(calls)  # type: ignore[arg-type]

    store._commits._send = counting  # type: ignore[assignment]  # noqa: SLF001 - see above
    results = await asyncio.gather(
        *(store.commit(commit(i, 7 if i == ids[5] else 1)) for i in ids), return_exceptions=True
    )

    assert batches == [20]  # one pipeline for the whole turn
    assert isinstance(results[5], VersionConflictError)
    assert "stored version 1" in str(results[5])
    assert [r for n, r in enumerate(results) if n != 5] == [[]] * 19
    states = await asyncio.gather(*(store.load_state(i) for i in ids))
    assert [s.version if s else None for s in states] == [1 if i == ids[5] else 2 for i in ids]


def test_a_connection_closed_under_a_command_is_a_store_error(redis_url: str) -> None:
    """redis-py's cluster client closes connections other commands are using (on an error of
    any node); under uvloop the command then fails with a RuntimeError from the transport,
    which the store reports as a StoreError (retried), not as the message's own fault."""
    import uvloop

    async def main() -> None:
        store = new_store(redis_url)
        await store.connect()
        try:
            client = store._redis  # noqa: SLF001 - the connection to close under the store
            assert isinstance(client, redis.asyncio.Redis)
            connection = await client.connection_pool.get_connection()
            connection._writer.transport.abort()  # noqa: SLF001
            await asyncio.sleep(0)
            with pytest.raises(StoreError, match="RuntimeError"), store._translating("x"):  # noqa: SLF001
                await connection.send_packed_command([b"*1\r\n$4\r\nPING\r\n"], False)
        finally:
            await store.close()

    uvloop.run(main())
