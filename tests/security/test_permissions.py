"""Least privilege with real users: every app runs with only its own credentials, and the
servers refuse what the plan does not grant.

The module creates a private vhost, one RabbitMQ user per app and client and one Redis ACL user
per hosting app from :class:`SecurityPlan` (exactly as ``flowmesh security apply`` does), and
removes them all afterwards. User names carry a random suffix (``fmt<hex>-<app>``), so runs on
a shared broker never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiormq.exceptions
import pytest
import redis
import redis.asyncio
import redis.exceptions

from flowmesh import Client, ClientOptions, WorkflowStatus
from flowmesh._errors import AppUnavailableError, StoreError, TransportError
from flowmesh.cli._security import apply_redis_acls, run_rabbitmqctl
from flowmesh.codec import Codec
from flowmesh.model import (
    ActivityCompleted,
    ActivityResult,
    Describe,
    RaiseEvent,
    StateReply,
    TimerDue,
    WorkflowState,
)
from flowmesh.ops import SecurityPlan, declare_topology, topology_from_sources
from flowmesh.store import Commit, FunctionLibrary
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from flowmesh.transport import Delivery, Outgoing, QueueKind, queue_name
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.harness.processes import REPO, Services, WorkerProcesses

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(240)]

CODEC = Codec()
WAIT = 10.0


@dataclass
class Secured:
    """The plan, the passwords and URLs of every user, and admin access."""

    plan: SecurityPlan
    vhost: str
    passwords: dict[str, str]
    admin_amqp_url: str
    admin_redis_url: str
    key_prefix: str

    def user(self, app_id: str) -> str:
        return self.plan.users.user(app_id)

    @property
    def client_user(self) -> str:
        return next(iter(self.plan.clients))

    @property
    def two_app_client_user(self) -> str:
        """A client user managing app1 and gpu-trainer."""
        return list(self.plan.clients)[1]

    def amqp_url(self, user: str) -> str:
        parts = urlsplit(self.admin_amqp_url)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{quote(user, safe='')}:{quote(self.passwords[user], safe='')}@{host}"
        return urlunsplit((parts.scheme, netloc, "/" + quote(self.vhost, safe=""), "", ""))

    def redis_url(self, user: str, password: str | None = None) -> str:
        parts = urlsplit(self.admin_redis_url)
        host = parts.netloc.rpartition("@")[2]
        secret = password if password is not None else self.passwords[user]
        netloc = f"{quote(user, safe='')}:{quote(secret, safe='')}@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def worker_env(self, app_id: str) -> dict[str, str]:
        """Only this app's own credentials; activity-only apps get an unusable Redis URL."""
        user = self.user(app_id)
        redis_url = (
            self.redis_url(user)
            if self.plan.hosts(app_id)
            else "redis://no-redis-for-activity-apps:x@127.0.0.1:1/0"
        )
        return {
            "FLOWMESH_AMQP_URL": self.amqp_url(user),
            "FLOWMESH_REDIS_URL": redis_url,
            "FLOWMESH_REDIS_PREFIX": self.key_prefix,
            "FLOWMESH_APP_USER_PATTERN": self.plan.users.pattern,
        }


def _ctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def secured(amqp_url: str, redis_url: str) -> Iterator[Secured]:
    if shutil.which("rabbitmqctl") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("rabbitmqctl is needed to create users")
        pytest.skip("rabbitmqctl is needed to create users")
    suffix = uuid.uuid4().hex[:6]
    vhost = f"fmsec-{suffix}"
    key_prefix = f"fmsec{suffix}"
    workers_dir = REPO / "workers"
    topology = topology_from_sources(
        p for p in workers_dir.glob("*.py") if not p.name.startswith("_") and p.stem != "demo"
    )
    plan = SecurityPlan.build(
        apps=topology.apps,
        hosts=topology.hosts,
        calls=topology.calls,
        children=topology.children,
        # The second client talks to two hosting apps (one of which may turn on it).
        clients={f"fmt{suffix}c-ops": ["app1"], f"fmt{suffix}c-both": ["app1", "gpu-trainer"]},
        vhost=vhost,
        key_prefix=key_prefix,
        user_pattern=f"fmt{suffix}-{{app}}",
    )
    users = [u.name for u in plan.rabbit_users()]
    passwords = {user: secrets.token_urlsafe(16) for user in users}
    parts = urlsplit(amqp_url)
    admin_amqp = urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    _ctl("add_vhost", vhost)
    try:
        admin = urlsplit(amqp_url).username or "guest"
        _ctl("set_permissions", "-p", vhost, admin, ".*", ".*", ".*")
        asyncio.run(declare_topology(plan, admin_amqp))
        run_rabbitmqctl(plan, passwords, ["rabbitmqctl"])
        asyncio.run(apply_redis_acls(plan, passwords, redis_url))
        yield Secured(plan, vhost, passwords, admin_amqp, redis_url, key_prefix)
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:  # each rabbitmqctl takes 1-3 s
            list(pool.map(lambda user: _ctl("delete_user", user, check=False), users))
        _ctl("delete_vhost", vhost, check=False)
        client = redis.Redis.from_url(redis_url)
        for redis_user in plan.redis_users():
            client.acl_deluser(redis_user.name)
        keys = list(client.scan_iter(match=f"{key_prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


@pytest.fixture
def workers(
    secured: Secured, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WorkerProcesses]:
    services = Services(secured.admin_amqp_url, secured.admin_redis_url, secured.key_prefix, "")
    processes = WorkerProcesses(services, tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(processes.logs())


def start(workers: WorkerProcesses, secured: Secured, app_id: str) -> None:
    workers.wait_ready(workers.start(app_id, env=secured.worker_env(app_id)))


@pytest.fixture
async def client(secured: Secured) -> AsyncIterator[Client]:
    """A client with only the plan's client user (may start and control app1's workflows)."""
    async with Client(secured.amqp_url(secured.client_user)) as connected:
        yield connected


@contextlib.asynccontextmanager
async def transport_of(
    secured: Secured, user: str, **config: object
) -> AsyncIterator[RabbitMQTransport]:
    settings = {"publish_timeout": WAIT, "operation_timeout": WAIT, **config}
    transport = RabbitMQTransport(RabbitMQConfig(url=secured.amqp_url(user), **settings))  # type: ignore[arg-type]
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.close()


async def waiting_on(client: Client, instance_id: str, app_id: str) -> int:
    """The seq of the task ``instance_id`` (on app1) waits for on ``app_id``."""
    handle = client.get_workflow(instance_id, app_id="app1")
    for _ in range(300):
        state = await handle.describe()
        for task in state.waiting_on:
            if task.app_id == app_id and task.kind == "activity":
                return task.seq
        await asyncio.sleep(0.1)
    raise AssertionError(f"{instance_id} never waited for {app_id}")


async def dead_letter_reasons(secured: Secured, app_id: str, count: int) -> list[str]:
    """Take ``count`` messages from ``app_id``'s dead queue (as admin) and return the reasons."""
    reasons: list[str] = []
    async with await aio_pika.connect(secured.admin_amqp_url, timeout=WAIT) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name(app_id, QueueKind.DEAD), passive=True)
        for _ in range(300):
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                if len(reasons) >= count:
                    break
                await asyncio.sleep(0.05)
                continue
            reasons.append(str((message.headers or {}).get("x-flowmesh-reason")))
    return reasons


# -- every app with only its own credentials ---------------------------------------------------


async def test_each_app_runs_a_multi_app_workflow_with_only_its_own_credentials(
    secured: Secured, workers: WorkerProcesses, client: Client
) -> None:
    """app1 (hosting, Redis user) calls app2 and app3 (activity-only, no Redis at all); the
    client user only starts the workflow and reads its result. Work for app3 waits in its
    pre-declared queue while app3 is not running, and a result app2 forges for app3's task
    is dead-lettered by app1, not applied."""
    start(workers, secured, "app1")
    start(workers, secured, "app2")
    handle = await client.start_workflow(
        "pipeline", {"text": "least privilege"}, app_id="app1", instance_id="perm-1"
    )
    seq = await waiting_on(client, "perm-1", "app3")

    # Nobody consumes app3's queue yet: the task waits there (declared by the plan only).
    async with transport_of(secured, secured.client_user) as observer:
        stats = await observer.queue_stats("app3")
    assert stats.work_messages == 1
    assert stats.work_consumers == 0

    # app2 may publish to app1's reply queue (it serves app1), with its own user_id, but the
    # task at `seq` went to app3: app1 refuses the claim and dead-letters it.
    async with transport_of(secured, secured.user("app2")) as app2:
        forged = ActivityResult("perm-1", seq, 1, output={"text": "FORGED"})
        await app2.publish([Outgoing("app1", QueueKind.REPLY, CODEC.encode_message(forged))])
        # ... nor may it fire app1's timers or raise events on its workflows.
        for message in (TimerDue("perm-1", 99), RaiseEvent("perm-1", "approve", True)):
            await app2.publish([Outgoing("app1", QueueKind.REPLY, CODEC.encode_message(message))])
    reasons = await dead_letter_reasons(secured, "app1", 3)
    assert len(reasons) == 3, reasons
    assert all("sender refused" in reason for reason in reasons), reasons
    assert any("sent to app 'app3'" in reason for reason in reasons), reasons

    start(workers, secured, "app3")
    result = await handle.result(timeout=60)
    assert isinstance(result, dict)
    assert result["result"]["text"] == "LEAST PRIVILEGE"
    assert result["result"]["sealed_by"].startswith("app3/")

    admin_store = RedisStore(
        RedisStoreConfig(url=secured.admin_redis_url, app_id="app1", key_prefix=secured.key_prefix),
        CODEC,
    )
    async with admin_store:
        record = await admin_store.load("perm-1")
    assert record is not None
    assert record.state.status is WorkflowStatus.COMPLETED
    completed = [e for e in record.history if isinstance(e, ActivityCompleted)]
    assert [e.seq for e in completed].count(seq) == 1
    assert all(e.output != {"text": "FORGED"} for e in completed)


async def test_a_client_takes_no_completion_notice_forged_by_another_hosting_app(
    secured: Secured, workers: WorkerProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15, item 7. Every hosting app may write to every inbox. gpu-trainer learns the
    inbox address of a client that talks to both apps from a request the client sends it,
    then sends that inbox a StateReply claiming app1's workflow completed, with the
    correlation ID an answer to ``wait()`` used to have (``wait:<instance>``). The client
    must not take it: wait() still waits, and the real result arrives once the workflow
    really finishes."""
    start(workers, secured, "app1")
    start(workers, secured, "app2")  # app3 is not running: the workflow waits for it
    # Where workers run with per-app users, clients get the pattern from the same variable.
    monkeypatch.setenv("FLOWMESH_APP_USER_PATTERN", secured.plan.users.pattern)
    options = ClientOptions(request_timeout=2.0)
    async with (
        Client(secured.amqp_url(secured.two_app_client_user), options=options) as client,
        transport_of(secured, secured.user("gpu-trainer")) as trainer,
    ):
        handle = await client.start_workflow(
            "pipeline", {"text": "forge me"}, app_id="app1", instance_id="forge-1"
        )
        await waiting_on(client, "forge-1", "app3")

        # The client asks gpu-trainer something; gpu-trainer (compromised) answers nothing
        # but keeps the inbox address, which every request's reply_to reveals.
        seen: list[Delivery] = []

        async def spy(delivery: Delivery) -> None:
            seen.append(delivery)
            await delivery.ack()

        await trainer.consume("gpu-trainer", QueueKind.REPLY, spy, prefetch=1)
        with pytest.raises(AppUnavailableError):
            await client.get_workflow("anything", app_id="gpu-trainer").describe()
        assert seen
        inbox = seen[0].reply_to

        forged = StateReply(
            "forge-1",
            WorkflowState(
                instance_id="forge-1",
                app_id="app1",
                name="pipeline",
                status=WorkflowStatus.COMPLETED,
                output={"result": {"text": "FORGED"}},
            ),
        )
        body = CODEC.encode_message(forged)
        for _ in range(3):  # before the wait, and while it runs
            await trainer.send_reply(inbox, "wait:forge-1", body)
        waiting = asyncio.create_task(handle.wait(timeout=3.0))
        await asyncio.sleep(0.5)
        await trainer.send_reply(inbox, "wait:forge-1", body)
        with pytest.raises(TimeoutError):
            await waiting
        assert (await handle.describe()).status is WorkflowStatus.RUNNING
        assert isinstance(seen[0].body, bytes)
        assert isinstance(CODEC.decode_message(seen[0].body), Describe)

        start(workers, secured, "app3")
        result = await handle.result(timeout=60)
        assert isinstance(result, dict)
        assert result["result"]["text"] == "FORGE ME"


# -- what the broker refuses -------------------------------------------------------------------


async def test_an_app_may_not_consume_another_apps_queue(secured: Secured) -> None:
    async with transport_of(secured, secured.user("app2")) as app2:
        with pytest.raises(TransportError, match="ACCESS_REFUSED"):
            await app2.consume("app3", QueueKind.WORK, _never, prefetch=1)
        with pytest.raises(TransportError, match="ACCESS_REFUSED"):
            await app2.consume("app1", QueueKind.REPLY, _never, prefetch=1)


async def _never(delivery: object) -> None:
    raise AssertionError("no delivery expected")


async def test_an_app_may_not_publish_to_a_host_it_does_not_serve(secured: Secured) -> None:
    """app2 serves app1 only: topic permissions refuse its routing key for gpu-trainer's
    reply queue, and the default exchange is closed to it entirely."""
    body = CODEC.encode_message(ActivityResult("x", 1, 1, output="forged"))
    async with transport_of(secured, secured.user("app2")) as app2:
        with pytest.raises(TransportError, match="ACCESS_REFUSED"):
            await app2.publish([Outgoing("gpu-trainer", QueueKind.REPLY, body)])
        with pytest.raises(TransportError, match="ACCESS_REFUSED"):
            await app2.publish([Outgoing("app3", QueueKind.WORK, body)])
        # The channel reopens: what the plan grants still works afterwards.
        await app2.publish([Outgoing("app2", QueueKind.DEAD, b"allowed")])

    connection = await aio_pika.connect(secured.amqp_url(secured.user("app2")), timeout=WAIT)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match=r"amq\.default"):
            await channel.default_exchange.publish(
                aio_pika.Message(body, message_id="x"),
                routing_key=queue_name("app1", QueueKind.REPLY),
            )
    await dead_letter_reasons(secured, "app2", 1)  # take the allowed message out again


async def test_a_client_may_only_reach_the_apps_it_manages(secured: Secured) -> None:
    async with transport_of(secured, secured.client_user) as ops:
        with pytest.raises(TransportError, match="ACCESS_REFUSED"):
            await ops.publish([Outgoing("gpu-trainer", QueueKind.WORK, b"start?")])
        with pytest.raises(TransportError, match="ACCESS_REFUSED"):
            await ops.consume("app1", QueueKind.WORK, _never, prefetch=1)


async def test_the_broker_refuses_a_forged_user_id(secured: Secured) -> None:
    """app2 claiming to be app1 in ``user_id``: RabbitMQ checks it against the connection."""
    body = CODEC.encode_message(ActivityResult("x", 1, 1))
    async with transport_of(secured, secured.user("app2"), user_id=secured.user("app1")) as app2:
        with pytest.raises(TransportError, match="PRECONDITION_FAILED"):
            await app2.publish([Outgoing("app1", QueueKind.REPLY, body)])


async def test_restricted_users_cannot_declare_exchanges_or_others_queues(
    secured: Secured,
) -> None:
    connection = await aio_pika.connect(secured.amqp_url(secured.user("app1")), timeout=WAIT)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_exchange("fm.apps", aio_pika.ExchangeType.TOPIC, durable=True)
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.queue_delete(queue_name("app2", QueueKind.WORK))
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):  # no eavesdropping
            queue = await channel.declare_queue(queue_name("app1", QueueKind.DEAD), passive=True)
            await queue.bind("fm.apps", "app2.work")


# -- Redis ACLs --------------------------------------------------------------------------------


async def test_a_hosting_app_cannot_read_another_apps_keys(secured: Secured) -> None:
    user = secured.user("app1")
    other = f"{secured.key_prefix}:{{gpu-trainer}}:i:some-instance"
    own = f"{secured.key_prefix}:{{app1}}:i:some-instance"
    client = redis.asyncio.Redis.from_url(secured.redis_url(user))
    try:
        assert await client.hget(own, "s") is None  # allowed (nothing there)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.hget(other, "s")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.keys("*")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.config_get("requirepass")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.flushall()
    finally:
        await client.aclose()

    # Through the store: app1's credentials opening gpu-trainer's history.
    config = RedisStoreConfig(
        url=secured.redis_url(user), app_id="gpu-trainer", key_prefix=secured.key_prefix
    )
    with pytest.raises(StoreError, match="NoPermission"):
        # Fails at connect, which reads gpu-trainer's layout key.
        async with RedisStore(config, CODEC) as store:
            await store.load("some-instance")
    # The store's own safety check degrades to INFO instead of failing.
    async with RedisStore(
        RedisStoreConfig(url=secured.redis_url(user), app_id="app1", key_prefix=secured.key_prefix),
        CODEC,
    ) as own_store:
        warnings = await own_store.check_safety()
    assert not any("could not check" in w for w in warnings), warnings


async def test_an_apps_redis_user_runs_only_flowmeshs_functions(secured: Secured) -> None:
    """An app's user may not run Lua of its own (EVAL, SCRIPT LOAD, FUNCTION LOAD: a busy
    script would stall every app on the server), yet its store works through FCALL of the
    library ``security apply`` loaded; a library of another flowmesh version is not loaded
    by such a user but refused with what to run."""
    user = secured.user("app1")
    client = redis.asyncio.Redis.from_url(secured.redis_url(user))
    busy = "local n = 0 while true do n = n + 1 end"
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.eval(busy, 0)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.script_load(busy)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.evalsha("0" * 40, 0)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.function_load(
                f"#!lua name=evil\nredis.register_function('evil', function() {busy} end)"
            )
        # WAIT (replica acknowledgement of commits) is granted: no replica here, so 0.
        assert await client.execute_command("WAIT", 0, 1) == 0
    finally:
        await client.aclose()

    config = RedisStoreConfig(
        url=secured.redis_url(user),
        app_id="app1",
        key_prefix=secured.key_prefix,
        replica_acks=1,  # WAIT in the commit pipeline: allowed, short of a replica here
        replica_ack_timeout=0.01,
    )
    async with RedisStore(config, CODEC) as store:
        await store.ensure_functions()
        state = WorkflowState("fcall-1", "app1", "wf", WorkflowStatus.RUNNING, version=1)
        await store.commit(Commit("fcall-1", 0, state))
        loaded = await store.load("fcall-1")
        assert loaded is not None and loaded.state.version == 1
        assert await store.purge("fcall-1") is True

        # New code whose library the administrator has not loaded yet.
        # Simulates a deploy whose library is not loaded yet (no public way to pin one).
        store._functions = FunctionLibrary(  # noqa: SLF001
            "flowmesh_000000000000", "", "000000000000"
        )
        with pytest.raises(StoreError, match="flowmesh security apply"):
            await store.ensure_functions()


async def test_an_activity_only_app_has_no_redis_user(secured: Secured) -> None:
    assert [u.app_id for u in secured.plan.redis_users()] == ["app1", "gpu-trainer"]
    client = redis.asyncio.Redis.from_url(
        secured.redis_url(secured.user("app2"), password=secured.passwords[secured.user("app2")])
    )
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await client.hget(f"{secured.key_prefix}:{{app1}}:i:x", "s")
    finally:
        await client.aclose()


def test_the_store_contract_suite_passes_with_exactly_the_planned_commands(
    secured: Secured, redis_url: str
) -> None:
    """The command list of the ACL users is complete: the whole store contract suite runs as
    a user with only those commands (plus SCAN, which the suite's cleanup uses)."""
    planned = secured.plan.redis_users()[0]
    user = f"fmtstore-{uuid.uuid4().hex[:6]}"
    password = secrets.token_urlsafe(12)
    admin = redis.Redis.from_url(redis_url)
    rules = planned.acl_rules(password)
    for pattern in planned.key_patterns:  # the suite's app IDs
        rules[rules.index(f"~{pattern}")] = "~fm:{s-*}:*"
    admin.execute_command("ACL", "SETUSER", user, *rules, "+scan")
    try:
        parts = urlsplit(redis_url)
        url = urlunsplit(
            (
                parts.scheme,
                f"{user}:{password}@{parts.netloc.rpartition('@')[2]}",
                parts.path,
                "",
                "",
            )
        )
        suite = ["-k", "redis", "tests/contract/test_store_contract.py"]
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suite],
            cwd=REPO,
            env={**os.environ, "FLOWMESH_TEST_REDIS_URL": url},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        admin.acl_deluser(user)
        admin.close()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


# -- the plan itself ---------------------------------------------------------------------------


def test_the_plan_grants_each_app_exactly_its_routing_keys(secured: Secured) -> None:
    by_user = {u.name: u for u in secured.plan.rabbit_users()}
    app1 = by_user[secured.user("app1")]
    app2 = by_user[secured.user("app2")]
    trainer = by_user[secured.user("gpu-trainer")]
    assert set(app1.publishes) == {
        "app1.work", "app1.reply", "app1.dead", "app1.quarantine", "app2.work", "app3.work",
        "gpu-trainer.work", "gpu-trainer.reply",
    }  # fmt: skip
    assert set(app2.publishes) == {"app2.work", "app2.dead", "app2.quarantine", "app1.reply"}
    assert set(trainer.publishes) == {
        "gpu-trainer.work",
        "gpu-trainer.reply",
        "gpu-trainer.dead",
        "gpu-trainer.quarantine",
        "app1.reply",
    }
    assert app2.consumes == ("fm.app2.quarantine", "fm.app2.work")
    assert "fm.inbox" not in app2.write  # activity-only apps answer no inboxes
    assert all("amq.default" not in u.write and ".*" not in u.write for u in by_user.values())
