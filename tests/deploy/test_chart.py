"""The chart offline: `helm lint` and render for every example values file, every rendered
object valid against the Kubernetes API schemas, the values schema refusing bad values, and
the chart's settings tied to what the code reads (env names, the worker's drain)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.chart import CHART_DIR, EXAMPLES, RELEASE, container, example_values, find, notes, render

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion; the preStop sleep action
# is 1.30's) and the newest kubernetes-validate ships schemas for.
KUBE_VERSIONS = ("1.30.0", "1.37.0")
# The Prometheus Operator's CRD has no schema in kubernetes-validate; checked by shape below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

EXAMPLE_IDS = [p.stem for p in EXAMPLES]


def test_every_graph_the_issue_names_has_an_example():
    assert set(EXAMPLE_IDS) == {"mocker-cpu", "vllm-agg-kv", "vllm-disagg", "sglang-agg", "multinode-nixl"}


@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_example_lints_renders_and_validates_against_kubernetes_schemas(example: Path):
    import helm_python
    import kubernetes_validate

    for version in KUBE_VERSIONS:
        report = helm_python.lint(CHART_DIR, example_values(example), strict=True, kube_version=f"v{version}")
        # strict: warnings count; the one info message Helm gives is the missing chart icon.
        assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report
    objects = render(example_values(example))
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            assert obj["spec"]["endpoints"][0]["port"] == "http"
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_workers_have_probes_grace_period_gpus_and_shared_memory(example: Path):
    values = example_values(example)
    objects = render(values)
    defaults = example_values(CHART_DIR / "values.yaml")["workerDefaults"] | values.get("workerDefaults", {})
    for group in values["workers"]:
        spec = find(objects, "Deployment", f"{RELEASE}-dynamo-worker-{group['name']}")["spec"]["template"]["spec"]
        worker = spec["containers"][0]
        assert spec["terminationGracePeriodSeconds"] == defaults["drainTimeoutSeconds"] + defaults["terminationGraceMarginSeconds"]
        # The worker drains as long as the pod's grace period allows for (its --drain-timeout).
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert float(env["DYN_DRAIN_TIMEOUT"]) == defaults["drainTimeoutSeconds"]
        assert worker["readinessProbe"]["httpGet"]["path"] == "/health"
        assert worker["livenessProbe"]["httpGet"]["path"] == "/live"
        gpus = group.get("gpus", 0)
        assert worker["resources"].get("limits", {}).get("nvidia.com/gpu", 0) == gpus
        shm = next(v for v in spec["volumes"] if v["name"] == "shm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert "podAntiAffinity" in spec["affinity"]


def _assert_selects_its_own_group(objects: list[dict], group: str, selector: dict[str, str]) -> None:
    """`selector` matches every pod of worker group `group` and no pod of another group."""
    pods = {obj["metadata"]["name"]: obj["spec"]["template"]["metadata"]["labels"]
            for obj in objects if obj["kind"] == "Deployment"}
    own = f"{RELEASE}-dynamo-worker-{group}"
    selected = {name for name, labels in pods.items() if selector.items() <= labels.items()}
    assert selected == {own}, (selector, selected)


def test_preferred_anti_affinity_selects_the_groups_own_pods():
    values = example_values(CHART_DIR / "examples" / "vllm-disagg.yaml", {"workerDefaults": {"antiAffinity": "preferred"}})
    objects = render(values)
    for group in values["workers"]:
        spec = find(objects, "Deployment", f"{RELEASE}-dynamo-worker-{group['name']}")["spec"]["template"]["spec"]
        term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        _assert_selects_its_own_group(objects, group["name"], term["podAffinityTerm"]["labelSelector"]["matchLabels"])


def test_multinode_workers_require_separate_nodes_and_use_nixl():
    values = example_values(CHART_DIR / "examples" / "multinode-nixl.yaml")
    objects = render(values)
    for name in ("prefill", "decode"):
        spec = find(objects, "Deployment", f"{RELEASE}-dynamo-worker-{name}")["spec"]["template"]["spec"]
        term = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        _assert_selects_its_own_group(objects, name, term["labelSelector"]["matchLabels"])
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["DYN_TRANSFER"] == "nixl" and env["DYN_WORKER_MODE"] == name
        assert spec["initContainers"][0]["name"] == "download-model"
    assert find(objects, "Ingress", f"{RELEASE}-dynamo-frontend")["spec"]["rules"][0]["host"] == "llm.example.com"


def test_chart_drain_default_matches_the_workers_drain():
    from dynamo_core.worker.worker import WorkerConfig

    defaults = example_values(CHART_DIR / "values.yaml")["workerDefaults"]
    assert defaults["drainTimeoutSeconds"] == WorkerConfig().drain_timeout_s


def test_every_environment_variable_the_chart_sets_is_read_by_the_code():
    # A variable renamed in the code would otherwise be set by the chart and silently ignored.
    import importlib.util

    packages = ("dynamo_core", "dynamo_router_kv", "dynamo_vllm", "dynamo_nixl")
    roots = [Path(spec.origin).parent for name in packages if (spec := importlib.util.find_spec(name))]
    source = "\n".join(p.read_text() for root in roots for p in root.rglob("*.py"))
    names = set()
    for example in EXAMPLES:
        for obj in render(example_values(example)):
            for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if c["command"][0] == "dynamo":
                    names |= {e["name"] for e in c.get("env", [])}
    names -= {"PYTHONUNBUFFERED", "HF_TOKEN", "UCX_TLS"}  # read by Python, huggingface_hub, UCX
    assert "DYN_DISCOVERY" in names and "DYN_WORKER_HEALTH_PORT" in names
    unread = sorted(n for n in names if not re.search(rf"[\"']{n}[\"']", source))
    assert unread == []


@pytest.mark.parametrize(
    "bad",
    [
        {"workers": [{"name": "w", "engine": "mocker", "replicas": 1, "mode": "both"}]},
        {"workers": [{"name": "Bad_Name", "engine": "mocker", "replicas": 1}]},
        {"workers": [{"name": "w", "engine": "mocker", "replicas": 1, "gpu": 1}]},  # misspelt key
        {"frontend": {"httpPort": 70000}},
        {"workers": []},
    ],
    ids=["mode", "group-name", "unknown-key", "port", "no-workers"],
)
def test_values_schema_refuses_bad_values(bad):
    import helm_python

    with pytest.raises(helm_python.HelmValuesError):
        render(bad)


def test_storage_without_its_source_fails_with_a_message():
    import helm_python

    values = {"workers": [{"name": "w", "engine": "vllm", "replicas": 1, "model": {"path": "/models/m", "storage": {"type": "pvc"}}}]}
    with pytest.raises(helm_python.HelmError, match="claimName is required"):
        render(values)


def test_notes_say_how_to_reach_the_frontend():
    text = notes(example_values(CHART_DIR / "examples" / "mocker-cpu.yaml"))
    assert f"port-forward svc/{RELEASE}-dynamo-frontend 8000:8000" in text
    text = notes(example_values(CHART_DIR / "examples" / "multinode-nixl.yaml"))
    assert "http://llm.example.com/v1/models" in text
