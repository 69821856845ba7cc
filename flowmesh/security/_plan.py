"""The least-privilege plan: one RabbitMQ user per app and client, one Redis user per hosting app.

::

    plan = SecurityPlan.build(
        calls={"app1": ["app2", "app3"]},          # app1's workflows run activities there
        children={"app1": ["gpu-trainer"]},         # ... and child workflows there
        clients={"fmc-ops": ["app1"]},              # who may start/control app1's workflows
        vhost="prod", key_prefix="fm",
    )
    print(plan.render())                             # rabbitmqctl / redis-cli lines
    await declare_topology(plan, "amqps://admin:...@rabbit/prod")   # exchanges, queues, bindings

What each user gets follows from who sends what where (``docs/protocol.md``):

* app X (user ``fm-X``): configure its own queues; read its work and quarantine queues (and
  its reply queue if it hosts workflows); write to ``fm.apps`` only with the routing keys it
  needs (topic permissions): its own ``X.work`` (a task waiting for a deployment is
  republished), ``X.quarantine`` (tasks in flight when a worker died) and ``X.dead``,
  ``X.reply`` if it hosts (its timers), ``T.work`` for every app T it calls,
  ``C.work`` and ``C.reply`` for every app C hosting its children (start, terminate, purge),
  ``H.reply`` for every app H that calls it or hosts its parent (results, leases, notes, child
  results). A hosting app also answers clients' inboxes (``fm.inbox``). Nothing else: no
  default exchange, no bindings, no other app's queues.
* client user: declare, bind and read its private inboxes; write ``A.work`` and ``A.reply``
  for the apps it manages.
* Redis, hosting apps only: keys ``<prefix>:{X}:*``, exactly the commands the store uses
  (:data:`flowmesh.store._redis_keys.REDIS_COMMANDS`), no channels. Activity-only apps get no
  Redis user at all.

Exchanges, queues and bindings are declared by an administrator (:func:`declare_topology`,
``flowmesh security apply``): restricted users cannot declare another app's queues, so the
plan declares every app's queues up front and work for an app not running yet waits in them.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from flowmesh._errors import ConfigurationError
from flowmesh.model import check_app_id
from flowmesh.security._senders import DEFAULT_APP_USER_PATTERN, AppUsers
from flowmesh.store._redis_keys import REDIS_COMMANDS
from flowmesh.transport._base import QueueKind, queue_name
from flowmesh.transport._rabbitmq_topology import (
    APPS_EXCHANGE,
    EXCHANGE_TYPE,
    EXCHANGES,
    INBOX_EXCHANGE,
    INBOX_PATTERN,
    queue_arguments,
    redelivery_policy,
    routing_key,
)

DEAD_LETTER_POLICY_NAME = "flowmesh-dead-letters"
DEAD_QUEUE_PATTERN = r"^fm\..+\.dead$"
DEAD_LETTER_POLICY: dict[str, object] = {
    "max-length": 100_000,
    "overflow": "drop-head",
    "message-ttl": 14 * 24 * 3600 * 1000,
}
"""Bound on every app's dead queue: 100,000 messages, dropping the oldest, each kept 14 days
(quorum queues support all three from RabbitMQ 3.10). Without a bound a flood of bad input
fills the broker's disk."""

if TYPE_CHECKING:
    from flowmesh._tls import TLSConfig

__all__ = [
    "RabbitUser",
    "RedisUser",
    "SecurityPlan",
    "Topology",
    "declare_topology",
    "password_variable",
    "topology_from_sources",
]

_NOTHING = "^$"
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


def password_variable(user: str) -> str:
    """The environment variable holding ``user``'s password, e.g. ``FLOWMESH_PASSWORD_FM_APP1``.

    Plans reference passwords through it and never contain them.
    """
    return "FLOWMESH_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def _escape(text: str) -> str:
    """``re.escape`` without escaping ``-`` (literal outside brackets), for readable plans."""
    return re.escape(text).replace("\\-", "-")


def _alternatives(items: Iterable[str], patterns: Iterable[str] = ()) -> str:
    """An anchored regular expression matching exactly ``items``, and names matching the
    regular expressions ``patterns`` (``^$`` for none)."""
    escaped = sorted({_escape(item) for item in items}) + list(patterns)
    if not escaped:
        return _NOTHING
    return f"^{escaped[0]}$" if len(escaped) == 1 else f"^({'|'.join(escaped)})$"


@dataclass(frozen=True, slots=True)
class RabbitUser:
    """Everything RabbitMQ needs to know about one user in the plan's vhost."""

    name: str
    role: str
    """``app`` or ``client`` (for the rendered comments)."""
    configure: str
    write: str
    read: str
    topics: tuple[tuple[str, str, str], ...]
    """``(exchange, write regex, read regex)`` topic permissions."""
    publishes: tuple[str, ...]
    """The routing keys on ``fm.apps`` that ``topics`` grants (for the matrix)."""
    consumes: tuple[str, ...]
    """Queues the user may consume (for the matrix)."""


@dataclass(frozen=True, slots=True)
class RedisUser:
    """An ACL user of one hosting app."""

    name: str
    app_id: str
    key_pattern: str
    commands: tuple[str, ...]

    def acl_rules(self, password: str) -> list[str]:
        """``ACL SETUSER <name>`` arguments; ``reset`` first, so applying twice is harmless."""
        return [
            "reset",
            "on",
            f">{password}",
            f"~{self.key_pattern}",
            "resetchannels",
            "-@all",
            *(f"+{command}" for command in self.commands),
        ]


@dataclass(frozen=True, slots=True)
class Topology:
    """Who sends work to whom: the input of a plan."""

    apps: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()
    """Apps that host workflows (derived from calls and children, plus any listed)."""
    calls: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Hosting app -> apps its workflows run activities on."""
    children: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Hosting app -> apps hosting its child workflows."""
    unresolved: tuple[str, ...] = ()
    """Call sites whose target app could not be read (from :func:`topology_from_sources`)."""


@dataclass(frozen=True, slots=True)
class SecurityPlan:
    """Users, permissions and declarations for one vhost and one Redis key prefix."""

    topology: Topology
    clients: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Client user -> apps whose workflows it may start and control."""
    vhost: str = "/"
    key_prefix: str = "fm"
    users: AppUsers = field(default_factory=AppUsers)

    @classmethod
    def build(
        cls,
        *,
        apps: Iterable[str] = (),
        hosts: Iterable[str] = (),
        calls: Mapping[str, Iterable[str]] | None = None,
        children: Mapping[str, Iterable[str]] | None = None,
        clients: Mapping[str, Iterable[str]] | None = None,
        vhost: str = "/",
        key_prefix: str = "fm",
        user_pattern: str = DEFAULT_APP_USER_PATTERN,
        unresolved: Sequence[str] = (),
    ) -> SecurityPlan:
        """Validate the inputs and derive the full set of apps and hosting apps."""
        calls_map = {
            check_app_id(h): frozenset(map(check_app_id, t)) for h, t in (calls or {}).items()
        }
        children_map = {
            check_app_id(p): frozenset(map(check_app_id, c)) for p, c in (children or {}).items()
        }
        hosting = set(map(check_app_id, hosts)) | set(calls_map) | set(children_map)
        for targets in children_map.values():
            hosting |= targets
        every = set(map(check_app_id, apps)) | hosting
        for targets in calls_map.values():
            every |= targets
        users = AppUsers(user_pattern)
        client_map: dict[str, frozenset[str]] = {}
        for user, managed in (clients or {}).items():
            if not _USER_NAME.fullmatch(user):
                raise ConfigurationError(f"invalid client user name {user!r}")
            if users.is_app_user(user):
                raise ConfigurationError(
                    f"client user {user!r} is named like an app user ({users.pattern}); receivers "
                    "would take it for that app"
                )
            targets = frozenset(map(check_app_id, managed))
            not_hosting = sorted(targets - hosting)
            if not_hosting:
                raise ConfigurationError(
                    f"client {user!r} manages {', '.join(not_hosting)}, which host no workflows "
                    "in this plan (add them with --hosts)"
                )
            client_map[user] = targets
        if not every:
            raise ConfigurationError("the plan has no apps: give --app-id, --calls or --workers")
        if not key_prefix or any(c in key_prefix for c in "{} \t\r\n"):
            raise ConfigurationError(f"invalid key prefix {key_prefix!r}")
        topology = Topology(
            frozenset(every), frozenset(hosting), calls_map, children_map, tuple(unresolved)
        )
        return cls(topology, client_map, vhost, key_prefix, users)

    # -- derived facts ---------------------------------------------------------------------------

    @property
    def apps(self) -> list[str]:
        """Every app of the plan, sorted."""
        return sorted(self.topology.apps)

    def hosts(self, app_id: str) -> bool:
        """Whether ``app_id`` hosts workflows (and so needs Redis and a reply consumer)."""
        return app_id in self.topology.hosts

    def publishes(self, app_id: str) -> list[str]:
        """Routing keys on ``fm.apps`` app ``app_id`` publishes with."""
        t = self.topology
        keys = {
            routing_key(app_id, QueueKind.WORK),
            routing_key(app_id, QueueKind.DEAD),
            routing_key(app_id, QueueKind.QUARANTINE),
        }
        if self.hosts(app_id):
            keys.add(routing_key(app_id, QueueKind.REPLY))
        for target in t.calls.get(app_id, ()):
            keys.add(routing_key(target, QueueKind.WORK))
        for child_app in t.children.get(app_id, ()):
            keys |= {
                routing_key(child_app, QueueKind.WORK),
                routing_key(child_app, QueueKind.REPLY),
            }
        for host, targets in t.calls.items():
            if app_id in targets:
                keys.add(routing_key(host, QueueKind.REPLY))
        for parent, child_apps in t.children.items():
            if app_id in child_apps:
                keys.add(routing_key(parent, QueueKind.REPLY))
        return sorted(keys)

    def rabbit_users(self) -> list[RabbitUser]:
        """Every RabbitMQ user of the plan: apps first, then clients."""
        users = []
        inbox_key = f"^{INBOX_PATTERN}$"
        for app_id in self.apps:
            own = [queue_name(app_id, kind) for kind in QueueKind]
            consumes = [
                queue_name(app_id, QueueKind.WORK),
                queue_name(app_id, QueueKind.QUARANTINE),
            ]
            exchanges = [APPS_EXCHANGE]
            topics = [(APPS_EXCHANGE, _alternatives(self.publishes(app_id)), _NOTHING)]
            if self.hosts(app_id):
                consumes.append(queue_name(app_id, QueueKind.REPLY))
                exchanges.append(INBOX_EXCHANGE)  # answers to clients' inboxes
            # Every app opens an inbox of its own for the hosts' answers to its task notes
            # (a task whose workflow ended is dropped): declare, bind to and read it.
            answers = inbox_key if self.hosts(app_id) else _NOTHING
            topics.append((INBOX_EXCHANGE, answers, inbox_key))
            users.append(
                RabbitUser(
                    name=self.users.user(app_id),
                    role="app",
                    configure=_alternatives(own, [INBOX_PATTERN]),
                    write=_alternatives(exchanges, [INBOX_PATTERN]),
                    read=_alternatives([*consumes, INBOX_EXCHANGE], [INBOX_PATTERN]),
                    topics=tuple(topics),
                    publishes=tuple(self.publishes(app_id)),
                    consumes=tuple(sorted(consumes)),
                )
            )
        inbox_queue = INBOX_PATTERN
        for user, managed in sorted(self.clients.items()):
            keys = sorted(
                routing_key(app_id, kind)
                for app_id in managed
                for kind in (QueueKind.WORK, QueueKind.REPLY)
            )
            users.append(
                RabbitUser(
                    name=user,
                    role="client",
                    configure=f"^{inbox_queue}$",
                    # write on its inbox queues and read on fm.inbox: binding them
                    write=f"^({_escape(APPS_EXCHANGE)}|{inbox_queue})$",
                    read=f"^({_escape(INBOX_EXCHANGE)}|{inbox_queue})$",
                    topics=(
                        (APPS_EXCHANGE, _alternatives(keys), _NOTHING),
                        (INBOX_EXCHANGE, _NOTHING, inbox_key),
                    ),
                    publishes=tuple(keys),
                    consumes=("fm.inbox.<own>",),
                )
            )
        return users

    def redis_users(self) -> list[RedisUser]:
        """One ACL user per hosting app; activity-only apps get none."""
        prefix = re.sub(r"([*?\[\]\\])", r"\\\1", self.key_prefix)
        return [
            RedisUser(
                name=self.users.user(app_id),
                app_id=app_id,
                key_pattern=f"{prefix}:{{{app_id}}}:*",
                commands=REDIS_COMMANDS,
            )
            for app_id in self.apps
            if self.hosts(app_id)
        ]

    # -- commands --------------------------------------------------------------------------------

    def rabbitmqctl_commands(self, passwords: Mapping[str, str]) -> list[list[str]]:
        """``rabbitmqctl`` argument lists creating the users and their permissions.

        ``passwords`` maps user -> password; a user missing from it is created without a
        password (``change_password`` must then be run separately). ``add_user`` fails for an
        existing user: :func:`flowmesh.cli._security` runs ``change_password`` instead.
        """
        commands: list[list[str]] = []
        for user in self.rabbit_users():
            commands.append(["add_user", user.name, passwords.get(user.name, "")])
            commands.append(
                [
                    "set_permissions",
                    "-p",
                    self.vhost,
                    user.name,
                    user.configure,
                    user.write,
                    user.read,
                ]
            )
            commands.extend(
                ["set_topic_permissions", "-p", self.vhost, user.name, exchange, write, read]
                for exchange, write, read in user.topics
            )
        commands.append(self.dead_letter_policy())
        # Queues declared before topology version 2 get their delivery limit from a policy.
        commands.extend(redelivery_policy(app_id).rabbitmqctl(self.vhost) for app_id in self.apps)
        return commands

    def dead_letter_policy(self) -> list[str]:
        """``rabbitmqctl set_policy`` bounding every app's dead queue (:data:`DEAD_LETTER_POLICY`).

        A policy, not queue arguments: it applies to queues that already exist (RabbitMQ
        refuses to redeclare a queue with other arguments) and can be changed in place.
        """
        return [
            "set_policy",
            "-p",
            self.vhost,
            "--apply-to",
            "queues",
            DEAD_LETTER_POLICY_NAME,
            DEAD_QUEUE_PATTERN,
            json.dumps(DEAD_LETTER_POLICY, separators=(",", ":")),
        ]

    def redis_acl_commands(self, passwords: Mapping[str, str]) -> list[list[str]]:
        """``ACL SETUSER`` commands (argument lists) for the hosting apps' Redis users."""
        return [
            ["ACL", "SETUSER", user.name, *user.acl_rules(passwords[user.name])]
            for user in self.redis_users()
        ]

    # -- rendering -------------------------------------------------------------------------------

    def render(self) -> str:
        """The plan as a commented shell script (passwords as environment variables)."""
        out: list[str] = []
        t = self.topology
        q = shlex.quote
        out += [
            "# flowmesh security plan (generated by `flowmesh security plan`)",
            f"# vhost {self.vhost!r}, Redis key prefix {self.key_prefix!r}, "
            f"app users {self.users.pattern!r}",
            "#",
            "# Topology:",
        ]
        for app_id in self.apps:
            parts = ["hosts workflows" if self.hosts(app_id) else "activities only"]
            if t.calls.get(app_id):
                parts.append("runs activities on " + ", ".join(sorted(t.calls[app_id])))
            if t.children.get(app_id):
                parts.append("starts child workflows on " + ", ".join(sorted(t.children[app_id])))
            out.append(f"#   {app_id}: {'; '.join(parts)}")
        for client, managed in sorted(self.clients.items()):
            apps = ", ".join(sorted(managed))
            out.append(f"#   client {client}: starts and controls workflows of {apps}")
        for site in t.unresolved:
            out.append(f"#   WARNING: target app not literal, not in the plan: {site}")
        out += ["#", "# Permission matrix (who may publish to which queue, who consumes it):"]
        users = self.rabbit_users()
        width = max(len(u.name) for u in users)
        for user in users:
            out.append(f"#   {user.name:<{width}}  publishes: {' '.join(user.publishes) or '-'}")
            out.append(f"#   {'':<{width}}  consumes:  {' '.join(user.consumes)}")
        out += [
            "#   Nobody may publish through the default exchange; only hosting apps answer",
            "#   inboxes (fm.inbox); only hosting apps have Redis users.",
            "",
            "set -eu",
            "",
            "# 1. RabbitMQ users and permissions (run where rabbitmqctl reaches the broker).",
            "#    Passwords come from environment variables, never from this file.",
        ]
        vhost = q(self.vhost)
        for user in users:
            name = q(user.name)
            password = f'"${password_variable(user.name)}"'
            out.append(f"# {user.role} {user.name}")
            out.append(
                f"rabbitmqctl add_user -- {name} {password} 2>/dev/null || "
                f"rabbitmqctl change_password -- {name} {password}"
            )
            out.append(
                f"rabbitmqctl set_permissions -p {vhost} {name} "
                f"{q(user.configure)} {q(user.write)} {q(user.read)}"
            )
            for exchange, write, read in user.topics:
                out.append(
                    f"rabbitmqctl set_topic_permissions -p {vhost} {name} {q(exchange)} "
                    f"{q(write)} {q(read)}"
                )
        out += [
            "# Dead-letter queues keep at most 100,000 messages (the oldest go first) for 14",
            "# days; inspect, redrive and drop them with `flowmesh dead-letters --app-id X`.",
            " ".join(["rabbitmqctl", *(q(arg) for arg in self.dead_letter_policy())]),
            "# Delivery limit and dead-letter target of queues an older flowmesh declared",
            "# (newer queues declare them as arguments, which win over the policy):",
        ]
        for app_id in self.apps:
            policy = redelivery_policy(app_id)
            out.append(f"rabbitmqctl {' '.join(map(q, policy.rabbitmqctl(self.vhost)))}")
        out += [
            "",
            "# 2. Exchanges, queues and bindings, declared with an administrator's credentials by",
            "#      flowmesh security apply --amqp-url 'amqps://admin:...@host/vhost' <options>",
            "#    (with the same options as this plan; apply also runs steps 1 and 3):",
        ]
        for exchange in EXCHANGES:
            out.append(f"#   exchange {exchange} ({EXCHANGE_TYPE}, durable)")
        for app_id in self.apps:
            for kind in QueueKind:
                out.append(
                    f"#   queue {queue_name(app_id, kind)} (durable, "
                    f"{queue_arguments(app_id, kind)}) "
                    f"bound to {APPS_EXCHANGE} with key {routing_key(app_id, kind)}"
                )
        out += [
            "",
            "# 3. Redis: flowmesh's function library (the only server-side code app users may",
            "#    run: they get FCALL, not EVAL or SCRIPT), then one ACL user per app that hosts",
            "#    workflows; activity-only apps get none.",
            "flowmesh security functions | redis-cli -x FUNCTION LOAD REPLACE",
        ]
        for redis_user in self.redis_users():
            password = f'">${password_variable(redis_user.name)}"'
            rules = [q(rule) for rule in redis_user.acl_rules("PASSWORD")]
            rules[2] = password
            out.append(f"redis-cli ACL SETUSER {q(redis_user.name)} {' '.join(rules)}")
        out += [
            "",
            "# 4. Harden the servers: delete RabbitMQ's guest user (rabbitmqctl delete_user",
            "#    guest) and disable Redis's default user (ACL SETUSER default off) once an",
            "#    admin user exists.",
            "#",
            "# 5. Run each worker with its own credentials and the sender checks on, e.g.:",
        ]
        vhost_path = quote(self.vhost, safe="")
        for app_id in self.apps:
            name = self.users.user(app_id)
            env = [f"FLOWMESH_AMQP_URL='amqps://{name}:<password>@<rabbitmq>/{vhost_path}'"]
            if self.hosts(app_id):
                env.append(f"FLOWMESH_REDIS_URL='rediss://{name}:<password>@<redis>:6379/0'")
                if self.key_prefix != "fm":
                    env.append(f"FLOWMESH_REDIS_PREFIX={q(self.key_prefix)}")
            env.append(f"FLOWMESH_APP_USER_PATTERN={q(self.users.pattern)}")
            out.append(f"#   {' '.join(env)} flowmesh worker --app-id {app_id}")
        out.append(
            f"#   and clients with FLOWMESH_APP_USER_PATTERN={q(self.users.pattern)} too, so they "
            "take answers only from the app asked."
        )
        return "\n".join(out) + "\n"


# -- declaring the topology --------------------------------------------------------------------


async def declare_topology(
    plan: SecurityPlan, admin_url: str, *, tls: TLSConfig | None = None, timeout: float = 30.0
) -> list[str]:
    """Declare the exchanges, every app's queues and their bindings with admin credentials.

    Idempotent. Returns what was declared (one line each). Uses the transport itself, so the
    declarations are exactly what the workers expect.
    """
    from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

    config = RabbitMQConfig(
        url=admin_url, connection_name="flowmesh-security-apply", operation_timeout=timeout, tls=tls
    )
    done = [f"exchange {name}" for name in EXCHANGES]
    async with RabbitMQTransport(config) as transport:  # connect() declares the exchanges
        for app_id in plan.apps:
            await transport.declare_app(app_id, required=True)
            done += [f"queue {queue_name(app_id, kind)} + binding" for kind in QueueKind]
    return done


# -- reading the topology from app modules -----------------------------------------------------


def topology_from_sources(paths: Iterable[Path]) -> Topology:
    """Read which apps call which from app modules, without importing them.

    Finds ``App("<id>")`` definitions, functions decorated with ``@<app>.workflow`` and, in
    them, ``call_activity(..., app_id="<literal>")`` and ``call_child_workflow(...)`` calls.
    A call without ``app_id`` targets the workflow's own app. A non-literal ``app_id`` cannot be
    resolved and is reported in :attr:`Topology.unresolved`.
    """
    apps: set[str] = set()
    hosts: set[str] = set()
    calls: dict[str, set[str]] = {}
    children: dict[str, set[str]] = {}
    unresolved: list[str] = []
    for path in sorted(paths):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = _app_names(tree)
        apps |= set(names.values())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            host = _workflow_app(node, names)
            if host is None:
                continue
            hosts.add(host)
            for call in ast.walk(node):
                if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                    continue
                method = call.func.attr
                if method not in ("call_activity", "call_child_workflow"):
                    continue
                target = _literal_app_id(call, host)
                if target is None:
                    unresolved.append(f"{path.name}:{call.lineno} {method} in {node.name}")
                    continue
                (calls if method == "call_activity" else children).setdefault(host, set()).add(
                    target
                )
    for host, targets in calls.items():
        targets.discard(host)  # the own app's activities need nothing extra
    return Topology(
        frozenset(apps | hosts),
        frozenset(hosts),
        {h: frozenset(t) for h, t in calls.items() if t},
        {p: frozenset(c) for p, c in children.items() if c},
        tuple(unresolved),
    )


def _app_names(tree: ast.Module) -> dict[str, str]:
    """Variable name -> app ID for ``name = App("<id>")`` at any level."""
    found = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", getattr(node.value.func, "attr", "")) == "App"
            and node.value.args
            and isinstance(node.value.args[0], ast.Constant)
            and isinstance(node.value.args[0].value, str)
        ):
            found[node.targets[0].id] = node.value.args[0].value
    return found


def _workflow_app(
    function: ast.FunctionDef | ast.AsyncFunctionDef, names: Mapping[str, str]
) -> str | None:
    """The app ID of ``@<app>.workflow`` / ``@<app>.workflow(...)`` on ``function``, if any."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "workflow"
            and isinstance(target.value, ast.Name)
            and target.value.id in names
        ):
            return names[target.value.id]
    return None


def _literal_app_id(call: ast.Call, own: str) -> str | None:
    for keyword in call.keywords:
        if keyword.arg == "app_id":
            value = keyword.value
            if isinstance(value, ast.Constant) and value.value is None:
                return own
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
            return None
    return own
