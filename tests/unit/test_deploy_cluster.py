"""The clustered deployment examples under ``deploy/cluster/`` keep their invariants.

Every YAML file there is parsed (all documents of it) and checked: three RabbitMQ nodes sharing
one Erlang cookie and listed in the classic peer-discovery config; six Redis nodes, every one
with ``cluster-enabled yes``, ``appendonly yes`` and ``appendfsync always``, and a one-shot
``redis-cli --cluster create``; the example apps' workers with the URLs of all nodes (and the
same commands as the root ``compose.yaml``); on Kubernetes a 3-replica ``RabbitmqCluster``, a
6-replica Redis StatefulSet, a PodDisruptionBudget and pod anti-affinity for each, and a
kustomization whose files exist.

Read with PyYAML (a development dependency), ``safe_load_all``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "deploy" / "cluster"
COMPOSE = CLUSTER / "compose.yaml"
KUBE = CLUSTER / "kubernetes"

RABBIT_NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
REDIS_NODES = tuple(f"redis-{n}" for n in range(1, 7))
WORKERS = ("app1", "app2", "app3", "gpu-trainer")
WORKFLOW_HOSTS = ("app1", "gpu-trainer")
REDIS_SAFETY = ("cluster-enabled yes", "appendonly yes", "appendfsync always")


def load(path: Path) -> list[Any]:
    """Every non-empty document of the YAML file ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


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
