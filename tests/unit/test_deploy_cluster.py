"""The clustered deployment examples under ``deploy/cluster/`` keep their invariants.

Every YAML file there is parsed (all documents of it) and checked: three RabbitMQ nodes sharing
one Erlang cookie and listed in the classic peer-discovery config; six Redis nodes, every one
with ``cluster-enabled yes``, ``appendonly yes`` and ``appendfsync always``, and a one-shot
``redis-cli --cluster create``; the example apps' workers with the URLs of all nodes (and the
same commands as the root ``compose.yaml``); on Kubernetes a 3-replica ``RabbitmqCluster``, a
6-replica Redis StatefulSet, a PodDisruptionBudget and pod anti-affinity for each, and a
kustomization whose files exist.

PyYAML is not a dependency, so :func:`load_yaml` reads the subset of YAML these files are
written in (block mappings and sequences, flow collections, quoted and plain scalars, literal
block scalars, anchors, aliases and ``<<`` merges) and rejects anything else loudly; when PyYAML
happens to be installed, a test checks that both read the files the same way.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "deploy" / "cluster"
COMPOSE = CLUSTER / "compose.yaml"
KUBE = CLUSTER / "kubernetes"

RABBIT_NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
REDIS_NODES = tuple(f"redis-{n}" for n in range(1, 7))
WORKERS = ("app1", "app2", "app3", "gpu-trainer")
WORKFLOW_HOSTS = ("app1", "gpu-trainer")
REDIS_SAFETY = ("cluster-enabled yes", "appendonly yes", "appendfsync always")


# ---------------------------------------------------------------- a YAML subset loader ----


class YamlSubsetError(ValueError):
    """The text uses YAML this loader does not read."""


_KEY = re.compile(
    r"""^(?P<key>"[^"]*"|'[^']*'|[^\s#'"\[\]{},&*!|>%@`-][^#]*?|-[^\s#][^#]*?)\s*:(?:\s+|$)"""
)
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)$")
_BOOLS = {
    **dict.fromkeys(("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"), True),
    **dict.fromkeys(("false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"), False),
}


def _strip_comment(text: str) -> str:
    quote = ""
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'" and (i == 0 or text[i - 1] in " \t[{,:"):
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _plain(text: str) -> Any:
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _quoted(text: str) -> str:
    if text[0] == "'":
        return text[1:-1].replace("''", "'")
    escapes = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r", "/": "/"}
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\":
            if i + 1 >= len(body) or body[i + 1] not in escapes:
                raise YamlSubsetError(f"unsupported escape in {text!r}")
            out.append(escapes[body[i + 1]])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


class _Flow:
    """One flow collection (``[a, "b"]``, ``{k: v}``) or scalar, possibly over several lines."""

    def __init__(self, text: str, anchors: dict[str, Any]) -> None:
        self.text, self.pos, self.anchors = text, 0, anchors

    def parse(self) -> Any:
        value = self._value()
        self._space()
        if self.pos != len(self.text):
            raise YamlSubsetError(f"trailing text in flow value {self.text!r}")
        return value

    def _space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\n":
            self.pos += 1

    def _value(self) -> Any:
        self._space()
        char = self.text[self.pos : self.pos + 1]
        if char == "[":
            return self._flow_sequence()
        if char == "{":
            return self._flow_mapping()
        if char in ("'", '"'):
            return self._string(char)
        match = re.compile(r"[^,\[\]{}]*").match(self.text, self.pos)
        assert match is not None
        raw = match.group().strip()
        # A plain scalar in a flow mapping ends at ': ' (its key); elsewhere at , ] }.
        key_end = re.search(r":(\s|$)", raw)
        if key_end:
            raw = raw[: key_end.start()]
        self.pos += len(match.group()) - len(match.group().lstrip()) + len(raw)
        if raw.startswith("*"):
            return self.anchors[raw[1:]]
        return _plain(raw)

    def _flow_sequence(self) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        while True:
            self._space()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return items
            items.append(self._value())
            self._separator("]")

    def _flow_mapping(self) -> dict[Any, Any]:
        self.pos += 1
        mapping: dict[Any, Any] = {}
        while True:
            self._space()
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return mapping
            key = self._value()
            self._space()
            if not self.text.startswith(":", self.pos):
                raise YamlSubsetError(f"flow mapping without ':' in {self.text!r}")
            self.pos += 1
            mapping[key] = self._value()
            self._separator("}")

    def _string(self, quote: str) -> str:
        end = self.pos + 1
        while True:
            end = self.text.find(quote, end)
            if end < 0:
                raise YamlSubsetError(f"unterminated string in {self.text!r}")
            if quote == '"' and self.text[end - 1] == "\\":
                end += 1
            elif quote == "'" and self.text.startswith("''", end):
                end += 2
            else:
                break
        raw, self.pos = self.text[self.pos : end + 1], end + 1
        return _quoted(raw)

    def _separator(self, closing: str) -> None:
        self._space()
        if self.text.startswith(",", self.pos):
            self.pos += 1
        elif not self.text.startswith(closing, self.pos):
            raise YamlSubsetError(f"expected ',' or {closing!r} in {self.text!r}")


class _Document:
    """Block structure of one document: a recursive descent over its lines."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.i = 0
        self.anchors: dict[str, Any] = {}

    def _next(self) -> tuple[int, str] | None:
        """Indentation and comment-free text of the next content line (not consumed)."""
        while self.i < len(self.lines):
            text = _strip_comment(self.lines[self.i])
            if text.strip():
                if "\t" in text[: _indent(text) + 1]:
                    raise YamlSubsetError(f"tab in indentation: {text!r}")
                return _indent(text), text.strip()
            self.i += 1
        return None

    def parse(self) -> Any:
        head = self._next()
        if head is None:
            return None
        value = self._node(head[0])
        if self._next() is not None:
            raise YamlSubsetError(f"unexpected line {self.i + 1}: {self.lines[self.i]!r}")
        return value

    def _node(self, indent: int) -> Any:
        head = self._next()
        if head is None or head[0] < indent:
            return None
        if head[1] == "-" or head[1].startswith("- "):
            return self._sequence(head[0])
        if _KEY.match(head[1]):
            return self._mapping(head[0])
        self.i += 1
        return self._inline(head[1], head[0])

    def _mapping(self, indent: int) -> dict[Any, Any]:
        explicit: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        while (head := self._next()) is not None and head[0] == indent:
            match = _KEY.match(head[1])
            if not match:
                raise YamlSubsetError(f"expected a key at line {self.i + 1}: {head[1]!r}")
            raw_key, rest = match.group("key"), head[1][match.end() :].strip()
            key = _quoted(raw_key) if raw_key[0] in "\"'" else _plain(raw_key)
            self.i += 1
            value = self._value(rest, indent)
            if key == "<<":
                for source in value if isinstance(value, list) else [value]:
                    if not isinstance(source, dict):
                        raise YamlSubsetError("'<<' needs a mapping")
                    merged.update({k: v for k, v in source.items() if k not in merged})
            elif key in explicit:
                raise YamlSubsetError(f"duplicate key {key!r}")
            else:
                explicit[key] = value
        if head is not None and head[0] > indent:
            raise YamlSubsetError(f"bad indentation at line {self.i + 1}: {head[1]!r}")
        return {**merged, **explicit}

    def _sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (head := self._next()) is not None and head[0] == indent:
            if not (head[1] == "-" or head[1].startswith("- ")):
                break
            rest = head[1][1:].strip()
            if rest and _KEY.match(rest) and not rest.startswith(("&", "*")):
                # "- key: value" opens a mapping whose keys are indented like "key".
                column = indent + len(head[1]) - len(head[1][1:].lstrip())
                self.lines[self.i] = (
                    " " * column
                    + _strip_comment(self.lines[self.i]).strip()[len(head[1]) - len(rest) :]
                )
                items.append(self._mapping(column))
            else:
                self.i += 1
                items.append(self._value(rest, indent, in_sequence=True))
        return items

    def _value(self, rest: str, indent: int, *, in_sequence: bool = False) -> Any:
        """The value after ``key:`` or ``-`` (``rest``, on the same line) and below it."""
        anchor = None
        if rest.startswith("&"):
            anchor, _, rest = rest[1:].partition(" ")
            rest = rest.strip()
        if rest.startswith("!"):
            raise YamlSubsetError(f"tags are not supported: {rest!r}")
        if rest:
            value = self._inline(rest, indent)
        else:
            head = self._next()
            if head is not None and head[0] > indent:
                value = self._node(head[0])
            elif (
                head is not None
                and not in_sequence
                and head[0] == indent
                and (head[1] == "-" or head[1].startswith("- "))
            ):
                value = self._sequence(indent)  # "key:" followed by "- item" at its indent
            else:
                value = None
        if anchor:
            self.anchors[anchor] = value
        return value

    def _inline(self, rest: str, indent: int) -> Any:
        if rest.startswith("*"):
            return self.anchors[rest[1:]]
        if rest in ("|", "|-", ">", ">-"):
            return self._block_scalar(rest, indent)
        if rest[0] in "|>":
            raise YamlSubsetError(f"unsupported block scalar header {rest!r}")
        if rest[0] in "[{":
            text = rest
            while text.count("[") + text.count("{") > text.count("]") + text.count("}"):
                if self.i >= len(self.lines):
                    raise YamlSubsetError(f"unterminated flow collection {rest!r}")
                text += "\n" + _strip_comment(self.lines[self.i]).strip()
                self.i += 1
            return _Flow(text, self.anchors).parse()
        if rest[0] in "\"'":
            return _Flow(rest, self.anchors).parse()
        if rest[0] in "%@`!":
            raise YamlSubsetError(f"unsupported scalar {rest!r}")
        return _plain(rest)

    def _block_scalar(self, header: str, indent: int) -> str:
        body: list[str] = []
        block_indent = None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip():
                if block_indent is None:
                    block_indent = _indent(line)
                    if block_indent <= indent:
                        break
                if _indent(line) < block_indent:
                    break
                body.append(line[block_indent:])
            else:
                body.append("")
            self.i += 1
        while body and not body[-1]:
            body.pop()
        # Folded (">"): these files fold only plain lines, so joining them with spaces is it.
        text = " ".join(body) if header.startswith(">") else "\n".join(body)
        return text if header.endswith("-") else text + "\n"


def load_yaml(text: str) -> list[Any]:
    """Every document of ``text`` (``---`` separated), empty ones left out."""
    documents: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.rstrip() == "---" or line.startswith("--- "):
            documents.append([])
        else:
            documents[-1].append(line)
    parsed = [_Document(lines).parse() for lines in documents]
    return [document for document in parsed if document is not None]


def load(path: Path) -> list[Any]:
    return load_yaml(path.read_text())


# ----------------------------------------------------------------------------- helpers ----

YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def compose() -> dict[str, Any]:
    (document,) = load(COMPOSE)
    assert isinstance(document, dict)
    return document


def services() -> dict[str, Any]:
    result = compose()["services"]
    assert isinstance(result, dict)
    return result


def kube_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objects += [doc for doc in load(path) if isinstance(doc, dict) and "kind" in doc]
    return objects


def kube(kind: str, source: str | None = None) -> list[dict[str, Any]]:
    objects = kube_objects() if source is None else load(KUBE / source)
    return [obj for obj in objects if obj.get("kind") == kind]


def url_hosts(url_list: str) -> list[str]:
    """Host names of a comma-separated list of AMQP URLs, or of a redis+cluster:// URL."""
    if url_list.startswith(("redis+cluster://", "rediss+cluster://")):
        netloc = url_list.partition("://")[2].partition("/")[0]
        nodes = netloc.rpartition("@")[2]
        return [node.rpartition(":")[0] for node in nodes.split(",")]
    return [urlsplit(url.strip()).hostname or "" for url in url_list.split(",")]


def mounted(service: dict[str, Any], target: str) -> Path:
    """The host file a compose service mounts at ``target``."""
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if rest.partition(":")[0] == target:
            return (COMPOSE.parent / source).resolve()
    raise AssertionError(f"nothing mounted at {target}")


def env_list(env: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in env}


# ------------------------------------------------------------------------------- tests ----


def test_there_are_yaml_files() -> None:
    names = {p.relative_to(CLUSTER).as_posix() for p in YAML_FILES}
    assert {
        "compose.yaml",
        "kubernetes/kustomization.yaml",
        "kubernetes/rabbitmq-cluster.yaml",
        "kubernetes/redis-cluster.yaml",
        "kubernetes/workers-patch.yaml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_every_yaml_file_parses(path: Path) -> None:
    documents = load(path)
    assert documents, f"{path} has no documents"
    assert all(isinstance(document, dict) for document in documents)


def test_the_subset_loader_agrees_with_pyyaml() -> None:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        pytest.skip("PyYAML is not installed")
    for path in [*YAML_FILES, REPO / "compose.yaml", *sorted((REPO / "deploy").glob("*.yaml"))]:
        expected = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert load(path) == expected, path


def test_the_subset_loader_reads_what_these_files_use() -> None:
    text = """
a: &x {k: v, n: 1, t: true}
b:
  <<: *x
  n: 2
c:
- "q: #1"
- 'it''s'
- [1, "two", three]  # comment
d: |
  line 1
    line 2
e: >-
  folded
  text
---
- name: x
  value: y
- plain
"""
    assert load_yaml(text) == [
        {
            "a": {"k": "v", "n": 1, "t": True},
            "b": {"k": "v", "n": 2, "t": True},
            "c": ["q: #1", "it's", [1, "two", "three"]],
            "d": "line 1\n  line 2\n",
            "e": "folded text",
        },
        [{"name": "x", "value": "y"}, "plain"],
    ]
    with pytest.raises(YamlSubsetError):
        load_yaml("a: !!str x\n")


# ---------------------------------------------------------------------- compose: RabbitMQ ----


def rabbit_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in services().items()
        if str(svc.get("image", "")).startswith("rabbitmq:")
    }


def test_compose_runs_three_rabbitmq_313_nodes_sharing_one_cookie() -> None:
    rabbits = rabbit_services()
    assert sorted(rabbits) == list(RABBIT_NODES)
    cookies = set()
    for name, svc in rabbits.items():
        assert svc["image"].startswith("rabbitmq:3.13")
        assert svc["hostname"] == name
        assert svc["environment"]["RABBITMQ_NODENAME"] == f"rabbit@{name}"
        cookies.add(svc["environment"]["ERLANG_COOKIE"])
        # The entrypoint writes that cookie where the server and the CLI tools read it.
        script = svc["entrypoint"][2]
        assert "$$ERLANG_COOKIE" in script
        assert "/var/lib/rabbitmq/.erlang.cookie" in script
        assert "umask 077" in script
        assert svc["healthcheck"]["test"]
        # Each node has its own data volume, declared at the top level.
        data = svc["volumes"][0].partition(":")[0]
        assert data == f"{name}-data"
        assert data in compose()["volumes"]
    assert len(cookies) == 1
    assert all(cookies)


def test_compose_rabbitmq_nodes_discover_each_other_and_mount_flowmesh_conf() -> None:
    shipped = (REPO / "deploy/rabbitmq/flowmesh.conf").resolve()
    for svc in rabbit_services().values():
        assert mounted(svc, "/etc/rabbitmq/conf.d/90-flowmesh.conf") == shipped
        cluster_conf = mounted(svc, "/etc/rabbitmq/conf.d/80-cluster.conf")
        settings: dict[str, str] = {}
        for line in cluster_conf.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                settings[key.strip()] = value.strip()
        assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
        listed = {
            v
            for k, v in settings.items()
            if k.startswith("cluster_formation.classic_config.nodes.")
        }
        assert listed == {f"rabbit@{name}" for name in RABBIT_NODES}
    assert "max_message_size = 4194304" in shipped.read_text()


# ------------------------------------------------------------------------- compose: Redis ----


def test_compose_runs_six_redis_7_cluster_nodes_with_fsync_always() -> None:
    nodes = {
        name: svc
        for name, svc in services().items()
        if str(svc.get("image", "")).startswith("redis:") and name != "redis-cluster-init"
    }
    assert sorted(nodes) == list(REDIS_NODES)
    addresses = set()
    for name, svc in nodes.items():
        assert svc["image"].startswith("redis:7")
        command = svc["command"]
        assert command[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
        assert command[2:] == ["--cluster-announce-hostname", name]
        conf = mounted(svc, "/usr/local/etc/redis/redis.conf").read_text()
        lines = {line.strip() for line in conf.splitlines()}
        for setting in REDIS_SAFETY:
            assert setting in lines, (name, setting)
        assert "maxmemory-policy noeviction" in lines
        assert svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
        assert svc["volumes"][0] == f"{name}-data:/data"
        addresses.add(svc["networks"]["default"]["ipv4_address"])
    assert len(addresses) == 6


def test_compose_creates_the_redis_cluster_once_all_nodes_are_healthy() -> None:
    init = services()["redis-cluster-init"]
    assert init["restart"] == "no"
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in REDIS_NODES}
    script = init["command"][0]
    create = " ".join(script.replace("\\\n", " ").split())
    assert "redis-cli --cluster create " + " ".join(f"{n}:6379" for n in REDIS_NODES) in create
    assert "--cluster-replicas 1 --cluster-yes" in create
    # Compose interpolates $VAR: every shell $ in the script must be escaped as $$.
    assert not re.search(r"(?<!\$)\$(?!\$)", script.replace("$$", ""))


# ------------------------------------------------------------------------ compose: workers ----


def test_compose_workers_get_every_node_and_the_root_commands() -> None:
    root_services = load(REPO / "compose.yaml")[0]["services"]
    for name in WORKERS:
        svc = services()[name]
        root = root_services[name]
        assert svc["image"] == root["image"]
        assert svc["command"] == root["command"]
        assert svc["stop_grace_period"] == root["stop_grace_period"]
        env = svc["environment"]
        assert url_hosts(env["FLOWMESH_AMQP_URL"]) == list(RABBIT_NODES)
        assert env["FLOWMESH_QUORUM_SIZE"] == "3"
        for node in RABBIT_NODES:
            assert svc["depends_on"][node] == {"condition": "service_healthy"}
        if name in WORKFLOW_HOSTS:
            assert env["FLOWMESH_REDIS_URL"].startswith("redis+cluster://")
            assert url_hosts(env["FLOWMESH_REDIS_URL"]) == list(REDIS_NODES)
            assert env["FLOWMESH_REDIS_SHARDS"] == "16"
            assert svc["depends_on"]["redis-cluster-init"] == {
                "condition": "service_completed_successfully"
            }
        else:
            assert "FLOWMESH_REDIS_URL" not in env
    assert services()["app2"]["deploy"] == root_services["app2"]["deploy"]


# -------------------------------------------------------------------------------- Kubernetes ----


def test_kubernetes_rabbitmq_cluster_has_three_replicas_and_flowmesh_conf() -> None:
    (cluster,) = kube("RabbitmqCluster")
    spec = cluster["spec"]
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    assert spec["replicas"] == 3
    assert spec["image"].startswith("rabbitmq:3.13")
    assert spec["resources"]["requests"]["memory"] == spec["resources"]["limits"]["memory"]
    shipped = [
        line
        for line in (REPO / "deploy/rabbitmq/flowmesh.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    additional = spec["rabbitmq"]["additionalConfig"].splitlines()
    for line in shipped:
        assert line in additional


def test_kubernetes_redis_statefulset_has_six_cluster_nodes_with_fsync_always() -> None:
    (statefulset,) = kube("StatefulSet")
    assert statefulset["metadata"]["name"] == "flowmesh-redis"
    assert statefulset["spec"]["replicas"] == 6
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (configmap,) = kube("ConfigMap", "redis-cluster.yaml")
    lines = {line.strip() for line in configmap["data"]["redis.conf"].splitlines()}
    for setting in REDIS_SAFETY:
        assert setting in lines
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("redis:7")
    assert container["command"] == ["sh", "/etc/redis/start.sh"]
    assert "exec redis-server /etc/redis/redis.conf" in configmap["data"]["start.sh"]
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {
        configmap["metadata"]["name"]
    }
    (service,) = [s for s in kube("Service") if s["metadata"]["name"] == "flowmesh-redis"]
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == "flowmesh-redis"
    (job,) = kube("Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes" in script


def pod_labels() -> dict[str, dict[str, Any]]:
    """Labels of the pods of each replicated store, by the name of what runs them."""
    (statefulset,) = kube("StatefulSet")
    (cluster,) = kube("RabbitmqCluster")
    return {
        # The operator labels its pods app.kubernetes.io/name=<cluster name>.
        "flowmesh-rabbitmq": {"app.kubernetes.io/name": cluster["metadata"]["name"]},
        "flowmesh-redis": statefulset["spec"]["template"]["metadata"]["labels"],
    }


def test_kubernetes_each_statefulset_has_a_disruption_budget_of_one() -> None:
    budgets = kube("PodDisruptionBudget")
    for name, labels in pod_labels().items():
        matching = [
            pdb
            for pdb in budgets
            if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, name
        assert matching[0]["spec"]["maxUnavailable"] == 1
        assert matching[0]["apiVersion"] == "policy/v1"


def test_kubernetes_replicas_land_on_different_nodes() -> None:
    (statefulset,) = kube("StatefulSet")
    (cluster,) = kube("RabbitmqCluster")
    affinities = {
        "flowmesh-rabbitmq": cluster["spec"]["affinity"],
        "flowmesh-redis": statefulset["spec"]["template"]["spec"]["affinity"],
    }
    for name, labels in pod_labels().items():
        (term,) = affinities[name]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"].items() <= labels.items(), name


def test_kubernetes_workers_patch_points_every_worker_at_every_node() -> None:
    patches = {doc["metadata"]["name"]: doc for doc in load(KUBE / "workers-patch.yaml")}
    assert sorted(patches) == sorted(WORKERS)
    (cluster,) = kube("RabbitmqCluster")
    rabbit = cluster["metadata"]["name"]
    amqp_hosts = [f"{rabbit}-server-{i}.{rabbit}-nodes.flowmesh.svc" for i in range(3)]
    redis_hosts = [f"flowmesh-redis-{i}.flowmesh-redis.flowmesh.svc" for i in range(6)]
    for name, patch in patches.items():
        assert patch["kind"] == "Deployment"
        base = load(REPO / "deploy" / f"{name}.yaml")[0]
        assert base["kind"] == "Deployment"
        assert base["metadata"]["name"] == name
        (container,) = patch["spec"]["template"]["spec"]["containers"]
        assert container["name"] == base["spec"]["template"]["spec"]["containers"][0]["name"]
        env = env_list(container["env"])
        assert url_hosts(env["FLOWMESH_AMQP_URL"]["value"]) == amqp_hosts
        assert env["FLOWMESH_QUORUM_SIZE"]["value"] == "3"
        if name in WORKFLOW_HOSTS:
            assert env["FLOWMESH_REDIS_URL"]["value"].startswith("redis+cluster://")
            assert url_hosts(env["FLOWMESH_REDIS_URL"]["value"]) == redis_hosts
            assert env["FLOWMESH_REDIS_SHARDS"]["value"] == "16"
        else:
            assert "FLOWMESH_REDIS_URL" not in env
        # Every URL replaces the base's secretKeyRef, and every $(VAR) it uses comes earlier.
        names = [entry["name"] for entry in container["env"]]
        for entry in container["env"]:
            if "value" in entry and entry["name"].endswith("_URL"):
                assert "valueFrom" in entry
                assert entry["valueFrom"] is None
            for used in re.findall(r"\$\(([A-Z_]+)\)", str(entry.get("value", ""))):
                assert names.index(used) < names.index(entry["name"]), (name, used)


def test_kubernetes_kustomization_references_files_that_exist() -> None:
    (kustomization,) = load(KUBE / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    paths = list(kustomization["resources"]) + [p["path"] for p in kustomization["patches"]]
    for relative in paths:
        assert (KUBE / relative).is_file(), relative
    listed = {(KUBE / relative).resolve() for relative in kustomization["resources"]}
    # The whole base (deploy/kustomization.yaml), plus both clustered services.
    (base,) = load(REPO / "deploy" / "kustomization.yaml")
    assert {(REPO / "deploy" / r).resolve() for r in base["resources"]} <= listed
    assert {KUBE / "rabbitmq-cluster.yaml", KUBE / "redis-cluster.yaml"} <= listed
    assert [p["path"] for p in kustomization["patches"]] == ["workers-patch.yaml"]
