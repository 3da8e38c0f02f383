"""deploy/k8s: rendered offline, validated against the Kubernetes schemas, checked against the code and the policy.

No cluster is needed. Rendering uses tests/deploy/kustomize_lite.py (and, where `kubectl` is installed, the real
kustomize too, which must agree); Kubernetes kinds are validated by kubernetes-validate (its schemas ship in the
package), KEDA's ScaledObject by tests/deploy/schemas/ (kubernetes-validate has no CRD schemas).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

import semtag
from semtag.cli import build_parser
from semtag.settings import Settings
from tests.deploy import kustomize_lite
from tests.deploy.policy import containers, pod_spec, violations
from workers.app import QUEUES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# the oldest Kubernetes release still supported upstream when this was written, and the newest schemas shipped
K8S_VERSIONS = ("1.32", kubernetes_validate.utils.latest_version())
SCHEMAS = Path(__file__).with_name("schemas")
# Settings that issue 15 point 1 (the S3 blob store) adds; until that lands they are not Settings fields yet.
S3_SETTINGS = {"SEMTAG_BLOB_URL", "SEMTAG_S3_ENDPOINT_URL"}
AWS_CONFIG = {"AWS_REGION", "AWS_DEFAULT_REGION"}
AWS_SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def _tree(tmp: Path) -> Path:
    """A copy of deploy/k8s with secret.env made from the example, as a deployer does."""
    dst = tmp / "k8s"
    shutil.copytree(K8S, dst, ignore=shutil.ignore_patterns("secret.env"))
    shutil.copy(dst / "base" / "secret.env.example", dst / "base" / "secret.env")
    return dst


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _tree(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def rendered(tree) -> dict[str, list[dict]]:
    return {name: kustomize_lite.render(tree / "overlays" / name) for name in OVERLAYS}


def _by(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _key(d: dict) -> tuple:
    return d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]


def _normal(d: dict) -> dict:
    """kubectl wraps long base64 values; compare what they decode to."""
    d = copy.deepcopy(d)
    if d["kind"] == "Secret":
        d["data"] = {k: base64.b64decode("".join(v.split())).decode() for k, v in (d.get("data") or {}).items()}
    return d


def _worker_args(doc: dict):
    cmd = pod_spec(doc)["containers"][0]["command"]
    assert cmd[0] == "semtag", doc["metadata"]["name"]
    return build_parser().parse_args(cmd[1:])  # exits (fails the test) on an option the CLI does not have


# ------------------------------------------------------------------------------------------------ rendering
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize v5) is not installed; "
                    "the lite renderer is what renders the manifests here")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_lite_renderer_agrees_with_kustomize(tree, rendered, overlay):
    out = subprocess.run(["kubectl", "kustomize", str(tree / "overlays" / overlay)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    real = {_key(d): _normal(d) for d in yaml.safe_load_all(out) if d}
    lite = {_key(d): _normal(d) for d in rendered[overlay]}
    assert set(real) == set(lite)
    for key in real:
        assert real[key] == lite[key], key


def test_the_lite_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplicas:\n  - name: x\n    count: 2\n")
    with pytest.raises(NotImplementedError, match="replicas"):
        kustomize_lite.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\npatches:\n  - target: {kind: Deployment}\n    patch: 'spec: {replicas: 2}'\n")
    with pytest.raises(NotImplementedError, match="strategic-merge"):
        kustomize_lite.render(tmp_path)


def test_a_missing_secret_env_stops_the_render(tmp_path):
    dst = _tree(tmp_path)
    (dst / "base" / "secret.env").unlink()
    with pytest.raises(FileNotFoundError):
        kustomize_lite.render(dst / "overlays" / "cpu")


def test_secret_env_is_never_committed():
    out = subprocess.run(["git", "check-ignore", "-q", "deploy/k8s/base/secret.env"], cwd=ROOT)
    assert out.returncode == 0, "deploy/k8s/base/secret.env must be git-ignored"


# ----------------------------------------------------------------------------------------------- validation
def _keda_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "keda.sh-v1alpha1-ScaledObject.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _validate(doc: dict, version: str) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        assert doc["kind"] == "ScaledObject", f"no schema here for {doc['kind']}"
        _keda_validator().validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_resource_validates(rendered, overlay, version):
    kinds = {d["kind"] for d in rendered[overlay]}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "Job", "ScaledObject", "NetworkPolicy", "PersistentVolumeClaim"} <= kinds
    for doc in rendered[overlay]:
        _validate(doc, version)


def test_validation_can_fail(rendered):
    docs = rendered["cpu"]
    bad = copy.deepcopy(_by(docs, "Deployment")["semtag-api"])
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz", "port": 80}}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        _validate(bad, K8S_VERSIONS[0])
    hpa = copy.deepcopy(_by(docs, "HorizontalPodAutoscaler")["semtag-api"])
    hpa["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(hpa, K8S_VERSIONS[0])
    so = _by(docs, "ScaledObject")["semtag-worker-ocr"]
    for change in (lambda s: s["spec"]["triggers"][0]["metadata"].update(listLenght="5"),   # misspelt
                   lambda s: s["spec"]["triggers"][0]["metadata"].pop("listName"),
                   lambda s: s["spec"]["triggers"][0]["metadata"].update(listLength=5),     # not a string
                   lambda s: s["spec"].update(minReplicas=0),                               # the HPA's name
                   lambda s: s["spec"]["triggers"][0]["metadata"].pop("addressFromEnv")):
        broken = copy.deepcopy(so)
        change(broken)
        with pytest.raises(jsonschema.ValidationError):
            _validate(broken, K8S_VERSIONS[0])


# --------------------------------------------------------------------------------------------------- policy
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_pass_the_policy(rendered, overlay):
    assert violations(rendered[overlay]) == []


def test_the_policy_refuses_a_bad_manifest(rendered):
    api = copy.deepcopy(_by(rendered["cpu"], "Deployment")["semtag-api"])
    pod = api["spec"]["template"]["spec"]
    c = pod["containers"][0]
    c["image"] = "registry.example.org/semtag/serve:latest"
    c["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True, "readOnlyRootFilesystem": False,
                            "capabilities": {"add": ["NET_ADMIN"]}}
    del c["resources"]["limits"]
    del c["livenessProbe"], c["readinessProbe"]
    pod["initContainers"][0]["image"] = "registry.example.org/semtag/serve"
    pod["securityContext"]["runAsUser"] = 0
    pod["hostNetwork"] = True
    pod["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}})
    found = "\n".join(violations([api]))
    for expected in ("container api: privileged", "allowPrivilegeEscalation is not false",
                     "root filesystem is writable", "adds capabilities", "does not drop ALL",
                     "is tagged latest", "container wait-for-schema: image 'registry.example.org/semtag/serve' has "
                     "no tag", "no cpu limit", "no memory limit", "no liveness probe on /healthz",
                     "no readiness probe on /readyz", "runs as root", "hostNetwork is on", "hostPath volume docker"):
        assert expected in found, expected
    assert violations([{"kind": "ConfigMap", "metadata": {"name": "x"}}]) == []


# ------------------------------------------------------------------------------------ against the real code
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_worker_per_queue_and_commands_the_cli_knows(rendered, overlay):
    deployments = _by(rendered[overlay], "Deployment")
    served: dict[str, list[str]] = {}
    beats = []
    for name, d in deployments.items():
        for c in containers(pod_spec(d)):
            if c["command"][0] == "semtag":
                build_parser().parse_args(c["command"][1:])
        args = _worker_args(d)
        if args.command == "worker":
            for q in args.queues.split(","):
                served.setdefault(q, []).append(name)
            if args.beat:
                beats.append(name)
        else:
            assert args.command == "serve" and name == "semtag-api"
    assert {q: len(v) for q, v in served.items()} == {q: 1 for q in QUEUES}  # every queue, each once
    assert beats == ["semtag-beat"] == served["maintenance"]
    beat = deployments["semtag-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    assert pod_spec(beat)["containers"][0]["workingDir"] == "/tmp"  # the schedule file, on a read-only root fs
    assert served["inference"] == ["semtag-worker-inference"]
    inference = _worker_args(deployments["semtag-worker-inference"])
    # one process, one ONNX Runtime session, two batches in flight (workers/batching.py)
    assert (inference.pool, inference.concurrency) == ("threads", 2)


def test_migration_job_and_schema_gates(rendered):
    docs = rendered["cpu"]
    job = _by(docs, "Job")["semtag-migrate"]
    args = _worker_args(job)
    assert (args.command, args.action) == ("db", "upgrade")
    assert pod_spec(job)["restartPolicy"] == "Never"
    for d in _by(docs, "Deployment").values():
        init = pod_spec(d)["initContainers"][0]
        assert init["name"] == "wait-for-schema" and "semtag db check" in init["command"][-1], d["metadata"]["name"]
        build_parser().parse_args(["db", "check"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_dockerfile_targets_at_this_version(rendered, overlay):
    dockerfile = (ROOT / "Dockerfile").read_text()
    for d in rendered[overlay]:
        pod = pod_spec(d)
        if pod is None:
            continue
        for c in containers(pod):
            name, tag, _ = kustomize_lite.split_image(c["image"])
            target = name.rsplit("/", 1)[1]
            assert re.search(rf"^FROM \S+ AS {target}$", dockerfile, re.M), f"no Dockerfile target {target}"
            assert tag == semtag.__version__, (d["metadata"]["name"], c["image"])
    deployments = _by(rendered[overlay], "Deployment")
    images = {n: pod_spec(d)["containers"][0]["image"].split("/")[-1].split(":")[0] for n, d in deployments.items()}
    assert images["semtag-worker-batch"] == "train"  # TensorFlow only where training runs
    assert images["semtag-api"] == images["semtag-worker-ocr"] == images["semtag-beat"] == "serve"
    inference = pod_spec(deployments["semtag-worker-inference"])["containers"][0]
    gpus = inference["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert images["semtag-worker-inference"] == "serve-gpu" and gpus == 1
        assert inference["resources"]["requests"]["nvidia.com/gpu"] == 1
    else:
        assert images["semtag-worker-inference"] == "serve" and gpus is None
    for n, d in deployments.items():
        if n != "semtag-worker-inference":
            assert "nvidia.com/gpu" not in json.dumps(d), n


def _env_sources(docs: list[dict]) -> tuple[dict[str, str], dict[str, str]]:
    config = _by(docs, "ConfigMap")["semtag-config"]["data"]
    secret = {k: base64.b64decode(v).decode() for k, v in _by(docs, "Secret")["semtag-secrets"]["data"].items()}
    return config, secret


def test_configuration_names_are_settings_and_fit_the_s3_store(rendered):
    config, secret = _env_sources(rendered["cpu"])
    fields = {f"SEMTAG_{n.upper()}" for n in Settings.model_fields}
    for key in [*config, *secret]:
        if key.startswith("SEMTAG_"):
            assert key in fields or key in S3_SETTINGS, f"{key} is not a setting"
    assert not set(config) & set(secret)
    assert urlsplit(config["SEMTAG_BLOB_URL"]).scheme == "s3" and urlsplit(config["SEMTAG_BLOB_URL"]).path
    assert urlsplit(config["SEMTAG_S3_ENDPOINT_URL"]).scheme in ("http", "https")
    assert AWS_CONFIG <= set(config) and AWS_SECRETS <= set(secret)
    for key in ("SEMTAG_DATABASE_URL", "SEMTAG_BROKER_URL", "SEMTAG_WEBHOOK_SECRET", *AWS_SECRETS):
        assert key in secret and key not in config, key   # credentials only in the Secret
    assert Settings(database_url=secret["SEMTAG_DATABASE_URL"]).effective_database_url.startswith("postgresql")
    assert Settings(broker_url=secret["SEMTAG_BROKER_URL"]).broker_url.startswith("redis://")
    json.loads(config["SEMTAG_WEBHOOK_URL_ALLOWLIST"])


# -------------------------------------------------------------------------------------- scaling, disruptions
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_each_worker_on_its_own_redis_list(rendered, overlay):
    docs = rendered[overlay]
    deployments = _by(docs, "Deployment")
    scaled = _by(docs, "ScaledObject")
    config, secret = _env_sources(docs)
    broker = urlsplit(secret["SEMTAG_BROKER_URL"])
    targets = {}
    for name, so in scaled.items():
        target = so["spec"]["scaleTargetRef"]["name"]
        assert target in deployments and target not in targets.values()
        targets[name] = target
        queue = _worker_args(deployments[target]).queues
        redis = [t for t in so["spec"]["triggers"] if t["type"] == "redis"]
        assert len(redis) == 1 and redis[0]["metadata"]["listName"] == queue  # Celery's list is the queue name
        md = redis[0]["metadata"]
        assert config[md["addressFromEnv"]] == broker.netloc.rsplit("@", 1)[-1]  # the broker KEDA reads
        assert md["databaseIndex"] == broker.path.lstrip("/")
        assert secret[md["passwordFromEnv"]] == broker.password
        for t in so["spec"]["triggers"]:     # *FromEnv names resolve in the target's environment
            for key, env in t["metadata"].items():
                if key.endswith("FromEnv"):
                    assert env in config or env in secret, env
        assert so["spec"]["minReplicaCount"] == (0 if queue == "batch" else 1)
    autoscaled = set(deployments) - {"semtag-api", "semtag-beat"}
    assert set(targets.values()) == autoscaled
    hpas = _by(docs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"semtag-api"}  # none fights KEDA
    api_hpa = hpas["semtag-api"]["spec"]
    assert api_hpa["minReplicas"] >= 2 and api_hpa["metrics"][0]["resource"]["name"] == "cpu"
    for name in autoscaled | {"semtag-api"}:
        assert "replicas" not in deployments[name]["spec"], f"{name}: the autoscaler owns its replicas"
    batch = scaled["semtag-worker-batch"]["spec"]["triggers"]
    pg = [t for t in batch if t["type"] == "postgresql"]
    assert pg and "jobs" in pg[0]["metadata"]["query"] and "'running'" in pg[0]["metadata"]["query"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_disruption_budgets_and_the_api_service(rendered):
    docs = rendered["cpu"]
    deployments = _by(docs, "Deployment")
    pdbs = _by(docs, "PodDisruptionBudget")
    for name, d in deployments.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert _selects(d["spec"]["selector"], labels)
        covering = [p for p in pdbs.values() if _selects(p["spec"]["selector"], labels)]
        assert len(covering) == (0 if name == "semtag-beat" else 1), name   # the singleton beat may move
    assert pdbs["semtag-api"]["spec"]["minAvailable"] == 1
    service = _by(docs, "Service")["semtag-api"]
    api = deployments["semtag-api"]
    assert _selects({"matchLabels": service["spec"]["selector"]}, api["spec"]["template"]["metadata"]["labels"])
    port = pod_spec(api)["containers"][0]["ports"][0]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    cmd = pod_spec(api)["containers"][0]["command"]
    assert cmd[cmd.index("--port") + 1] == str(port["containerPort"])


def _processes(args) -> int:
    """Python processes in a pod: uvicorn's workers (+ its supervisor), Celery's pool (+ its parent, + beat)."""
    if args.command == "serve":
        return args.workers + (1 if args.workers > 1 else 0)
    if args.pool in ("solo", "threads"):
        return 1 + (1 if args.beat else 0)
    return args.concurrency + 1 + (1 if args.beat else 0)


def _mib(q: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for u, f in units.items():
        if q.endswith(u):
            return float(q[:-2]) * f
    return float(q) / 2**20


def test_memory_limits_fit_the_processes_and_what_was_measured(rendered):
    """Serving pods: at most 768 MiB per process (the ~600 MB target and room), and at least 1.2 × the peak RSS
    measured for the same role (bench/capacity.py measure, bench/capacity_measured.json). Two documented
    exceptions to the per-process bound: the batch worker (TensorFlow training, clustering) and the inference
    worker (its ONNX Runtime session holds Inception-v3's activations for a whole batch)."""
    measured = json.loads((ROOT / "bench" / "capacity_measured.json").read_text())["peak_rss_mb"]
    roles = {"semtag-api": "api", "semtag-worker-ocr": "worker_ocr", "semtag-worker-inference": "worker_inference"}
    above_target = {"semtag-worker-batch", "semtag-worker-inference"}
    for name, d in _by(rendered["cpu"], "Deployment").items():
        c = pod_spec(d)["containers"][0]
        limit = _mib(c["resources"]["limits"]["memory"])
        assert _mib(c["resources"]["requests"]["memory"]) <= limit
        n = _processes(_worker_args(d))
        if name in roles:
            peak = measured[roles[name]]
            # the measured worker ran one pool process; this pod may run more of the same
            expected = peak["largest_process_mb"] * n + (peak["tree_mb"] - peak["largest_process_mb"])
            assert limit >= 1.2 * expected, (name, limit, expected)
        if name in above_target:
            assert limit >= 1536, name
        else:
            assert limit <= 768 * n, (name, limit, n)
