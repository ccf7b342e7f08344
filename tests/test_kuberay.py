"""KubeRay manifests (deploy/kuberay/) and the image they name (deploy/Dockerfile).

Nothing here starts Kubernetes. What can be checked is: the RayJob and the RayCluster valid against KubeRay v1's own
CRD schemas (excerpts in tests/fixtures/kuberay/, from the commit they name), unknown fields refused as kubectl's
strict field validation refuses them; the built-in kinds with their required fields and their references to one
another whole (selectors, ports, volumes, Secrets); the image, versions and extras agreeing with the project; and
each manifest's command run as written against a real head node (tests/ray_head.py: token authentication, Ray Jobs,
Ray Client, two GPUs that a CPU-only torch cannot use, as a misbuilt image would meet them): the RayJob's entrypoint
submitted as KubeRay's submitter submits it, a batch over object storage that a second submission resumes; the
cameras driver's command joining through Ray Client with the cluster's token, its probes and API answering as the
Deployment and Service expect them to."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.clips import clip, read_video
from tests.ray_head import ray_cli
from tests.test_hub import COMMIT, SMALL_REPO, write_hub_cache

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kuberay"
SCHEMAS = Path(__file__).resolve().parent / "fixtures" / "kuberay"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def manifest_files() -> dict[str, list[dict]]:
    return {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
            for path in sorted(MANIFESTS.glob("*.yaml"))}


def of_kind(kind: str, documents: list[dict] | None = None) -> list[dict]:
    documents = documents if documents is not None else [d for docs in manifest_files().values() for d in docs]
    return [doc for doc in documents if doc.get("kind") == kind]


# KubeRay's schemas ..................................................................................................

def json_schema(node: dict) -> dict:
    """An OpenAPI v3 structural schema (a CRD's) as JSON Schema: int-or-string and nullable spelt out, and an object
    with properties and no open map refusing any other field (the API server's strict field validation)."""
    node = {key: value for key, value in node.items() if key != "_source"}
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    if "properties" in node:
        node["properties"] = {name: json_schema(child) for name, child in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = json_schema(node[key])
    return node


def schema_problems(document: dict) -> list[str]:
    excerpt = json.loads((SCHEMAS / f"{document['kind'].lower()}.v1.schema.json").read_text())
    validator = jsonschema.Draft7Validator(json_schema(excerpt))
    return sorted(f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
                  for error in validator.iter_errors(document))


def test_the_schema_excerpts_say_where_they_came_from():
    for kind in ("rayjob", "raycluster"):
        source = json.loads((SCHEMAS / f"{kind}.v1.schema.json").read_text())["_source"]
        assert source["repository"] == "https://github.com/ray-project/kuberay" and source["version"] == "v1"
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]) and source["license"].startswith("Apache-2.0")
    assert "Apache License" in (SCHEMAS / "LICENSE").read_text()


def test_the_rayjob_and_rayclusters_are_valid_against_kuberays_schemas():
    documents = of_kind("RayJob") + of_kind("RayCluster")
    assert [doc["metadata"]["name"] for doc in documents] == ["video-depth-batch", "video-depth-cameras"]
    for document in documents:
        assert document["apiVersion"] == "ray.io/v1"
        assert schema_problems(document) == [], document["metadata"]["name"]


@pytest.mark.parametrize("change, problem", [
    (lambda job: job["spec"].update(shutdownAfterJobFinish=True), "'shutdownAfterJobFinish' was unexpected"),
    (lambda job: job["spec"].update(ttlSecondsAfterFinished="1h"), "'1h' is not of type 'integer'"),
    (lambda job: job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required"),
    (lambda job: job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
     .update(gpus=1), "'gpus' was unexpected"),
    (lambda job: job["spec"].update(submissionMode=["K8sJobMode"]), "is not of type 'string'"),
])
def test_the_schemas_refuse_what_kubectl_would(change, problem):
    job = of_kind("RayJob")[0]
    change(job)
    assert any(problem in line for line in schema_problems(job)), schema_problems(job)
    cluster = of_kind("RayCluster")[0]
    cluster["spec"]["authOptions"]["mode"] = "password"
    assert schema_problems(cluster) == ["spec.authOptions.mode: 'password' is not one of ['disabled', 'token']"]


# The built-in kinds ..................................................................................................

def created_secrets(text: str) -> set[str]:
    """The Secrets a manifest's header tells the user to create (`kubectl create secret generic NAME ...`)."""
    return set(re.findall(r"kubectl create secret generic ([a-z0-9-]+)", text))


def builtin_problems(documents: list[dict], secrets: set[str]) -> list[str]:
    """Each built-in object's required fields, and its references to the others: what `kubectl apply` and then the
    controllers would stumble on (a Deployment whose selector misses its pods, a probe on a port not declared, a
    volume or Secret that does not exist, a Service selecting no pods or targeting no port)."""
    problems = []
    configmaps = {doc["metadata"]["name"]: doc for doc in of_kind("ConfigMap", documents)}
    # KubeRay makes a Secret named after a RayCluster with token authentication, key auth_token
    ray_tokens = {doc["metadata"]["name"] for doc in of_kind("RayCluster", documents)
                  if doc["spec"].get("authOptions", {}).get("mode") == "token"}
    pods = []
    for doc in documents:
        name = doc.get("metadata", {}).get("name", "")
        where = f"{doc.get('kind')} {name}"
        if not doc.get("apiVersion") or not DNS_LABEL.match(name):
            problems.append(f"{where}: apiVersion and a DNS-1123 metadata.name are required")
        if doc["kind"] == "ConfigMap" and not all(isinstance(v, str) for v in doc.get("data", {}).values()):
            problems.append(f"{where}: data values must be strings")
        if doc["kind"] == "Deployment":
            spec = doc.get("spec", {})
            template = spec.get("template", {})
            labels = template.get("metadata", {}).get("labels", {})
            selector = spec.get("selector", {}).get("matchLabels")
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{where}: spec.selector.matchLabels must select its template's labels")
            pod = template.get("spec", {})
            volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
            for volume in volumes.values():
                if "configMap" in volume and volume["configMap"]["name"] not in configmaps:
                    problems.append(f"{where}: volume {volume['name']}: no ConfigMap {volume['configMap']['name']}")
                if "secret" in volume and volume["secret"]["secretName"] not in secrets:
                    problems.append(f"{where}: volume {volume['name']}: Secret {volume['secret']['secretName']} is "
                                    f"neither made here nor created as the header says")
            if not pod.get("containers"):
                problems.append(f"{where}: a pod needs containers")
            for container in pod.get("containers", []):
                if not container.get("name") or not container.get("image"):
                    problems.append(f"{where}: a container needs a name and an image")
                ports = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
                if any(name and (len(name) > 15 or not DNS_LABEL.match(name)) for name in ports):
                    problems.append(f"{where}: port names are IANA service names (15 characters at most)")
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    port = container.get(probe, {}).get("httpGet", {}).get("port")
                    if probe in container and port not in ports and port not in ports.values():
                        problems.append(f"{where}: {probe} on port {port!r}, which the container does not declare")
                for mount in container.get("volumeMounts", []):
                    if mount["name"] not in volumes:
                        problems.append(f"{where}: volumeMount {mount['name']} names no volume")
                env = {item["name"]: item for item in container.get("env", [])}
                for item in env.values():
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if ref and not (ref["name"] in secrets or (ref["name"] in ray_tokens and ref["key"] == "auth_token")):
                        problems.append(f"{where}: env {item['name']}: Secret {ref['name']} key {ref['key']} is made "
                                        f"by nothing here")
                for argument in container.get("args", []) + container.get("command", []):
                    for variable in re.findall(r"\$\((\w+)\)", argument):
                        if variable not in env:
                            problems.append(f"{where}: $({variable}) in the command is not in the container's env")
            pods.append((labels, pod))
    for doc in of_kind("Service", documents):
        where = f"Service {doc['metadata']['name']}"
        spec = doc.get("spec", {})
        selected = [pod for labels, pod in pods
                    if spec.get("selector") and all(labels.get(k) == v for k, v in spec["selector"].items())]
        if not selected:
            problems.append(f"{where}: its selector selects no pods here")
        if not spec.get("ports"):
            problems.append(f"{where}: spec.ports is required")
        declared = {(p.get("name"), p["containerPort"]) for pod in selected for c in pod["containers"]
                    for p in c.get("ports", [])}
        for port in spec.get("ports", []):
            target = port.get("targetPort", port.get("port"))
            if not isinstance(port.get("port"), int) or not any(target in pair for pair in declared):
                problems.append(f"{where}: port {port.get('name')} targets {target!r}, which its pods do not declare")
    return problems


def test_the_built_in_kinds_have_their_fields_and_their_references_hold():
    for name, documents in manifest_files().items():
        secrets = created_secrets((MANIFESTS / name).read_text())
        assert builtin_problems(documents, secrets) == [], name
    service = manifest_files()["cameras-service.yaml"]
    assert {doc["kind"] for doc in service} == {"RayCluster", "ConfigMap", "Deployment", "Service"}
    assert of_kind("Service", service)[0]["spec"]["type"] == "ClusterIP"


def test_the_checks_of_the_built_in_kinds_can_fail():
    documents = manifest_files()["cameras-service.yaml"]
    secrets = created_secrets((MANIFESTS / "cameras-service.yaml").read_text())
    deployment = of_kind("Deployment", documents)[0]
    deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "other"
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "http"
    deployment["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"] = "nowhere"
    of_kind("Service", documents)[0]["spec"]["ports"][0]["targetPort"] = 9999
    problems = "\n".join(builtin_problems(documents, secrets))
    for expected in ("must select its template's labels", "readinessProbe on port 'http'", "Secret nowhere",
                     "targets 9999, which its pods do not declare"):
        assert expected in problems, problems


def test_the_image_versions_and_extras_agree_with_the_project():
    import ray
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)[1]
    assert ray_version == ray.__version__, "the image's Ray is the one the tests run"
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}-gpu$", dockerfile, re.M), "Ray's CUDA image"
    image = f"video-depth:{project['version']}"
    assert f"-t {image} ." in dockerfile
    containers = [c for doc in (of_kind("RayJob") + of_kind("RayCluster") + of_kind("Deployment"))
                  for c in _containers(doc)]
    assert len(containers) == 5 and {c["image"] for c in containers} == {image}
    versions = [doc["spec"].get("rayVersion") or doc["spec"]["rayClusterSpec"]["rayVersion"]
                for doc in of_kind("RayJob") + of_kind("RayCluster")]
    assert set(versions) == {ray_version}
    extras = re.search(r'pip install --no-cache-dir "\.\[([\w,]+)\]"', dockerfile)[1].split(",")
    assert set(extras) <= set(project["optional-dependencies"])
    torch_pin = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())[1]
    assert f"torch=={torch_pin} --index-url" in dockerfile
    copied = re.findall(r"^COPY --chown=ray:users (.+?) \S+$", dockerfile, re.M)
    sources = {part.rstrip("/") for line in copied for part in line.split()}
    assert {"model", "pipeline", "run_pipeline.py", "pyproject.toml"} <= sources
    ignored = (ROOT / ".dockerignore").read_text()
    assert all(f"!{source}" in ignored for source in sources), "every copied path is let through .dockerignore"
    assert all((ROOT / source).exists() for source in sources)
    assert "video-depth" in project["scripts"]
    for doc in of_kind("RayJob"):
        assert shlex.split(doc["spec"]["entrypoint"])[0] == "video-depth"


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"]["spec"]["containers"][0] for group in groups]


def test_gpus_are_asked_for_on_workers_only_with_autoscaling_bounds():
    for doc in of_kind("RayJob") + of_kind("RayCluster"):
        spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
        assert spec["enableInTreeAutoscaling"] is True
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-gpus"] == "0"
        assert "nvidia.com/gpu" not in json.dumps(head["template"]["spec"]["containers"][0]["resources"])
        for group in spec["workerGroupSpecs"]:
            resources = group["template"]["spec"]["containers"][0]["resources"]
            assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    job = of_kind("RayJob")[0]["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert job["activeDeadlineSeconds"] > 0


# Each manifest's command, run as written against a real head node ................................................

@pytest.fixture(scope="module")
def hub_home(tmp_path_factory, vits_checkpoint) -> Path:
    """An HF_HOME whose Hub cache holds `small` (random weights), as a pod's would after its first download."""
    home = tmp_path_factory.mktemp("kuberay_hf_home")
    folder = vits_checkpoint.hf_folder
    write_hub_cache(SMALL_REPO, [folder / "config.json", folder / "model.safetensors"], COMMIT, cache=home / "hub")
    return home


@pytest.mark.slow
def test_the_rayjob_entrypoint_as_kuberays_submitter_sends_it_runs_the_batch_and_a_rerun_resumes(
        ray_head, object_store, hub_home, tmp_path):
    job = of_kind("RayJob")[0]["spec"]
    words = shlex.split(job["entrypoint"])
    inputs, outputs = words[2], words[words.index("--output-dir") + 1]
    object_store.bucket(inputs.split("/")[2])  # s3://my-bucket/... on the tests' own S3 server
    for key, frames in (("a.mp4", 6), ("nested/b.mp4", 5)):
        object_store.put(clip(tmp_path, key.replace("/", "_"), width=64, height=48, frames=frames), inputs + key)
    # What KubeRay's submitter runs (ray-operator/controllers/ray/common/job.go, the schemas' commit): `ray job submit
    # --runtime-env-json JSON -- ENTRYPOINT` in one shell line; the pods' image has the model in its Hub cache
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    runtime_env["env_vars"].update(HF_HOME=str(hub_home), HF_HUB_OFFLINE="1")
    submit = ["job", "submit", "--address", ray_head.server, "--runtime-env-json", json.dumps(runtime_env), "--",
              *words]
    first = ray_cli(ray_head.environment, *submit, timeout_s=600)
    assert first.returncode == 0 and "succeeded" in first.stdout + first.stderr, first.stdout[-3000:]
    # (the head's two GPUs cannot be used by this CPU-only torch: asked of a GPU node, said, and run on the CPU)
    assert "this torch is a CPU-only build" in first.stdout and "everything runs on the CPU" in first.stdout
    keys = object_store.keys(outputs)
    assert [k for k in keys if not k.startswith("batch_status/")] == ["a_depth.mp4", "batch_report.json",
                                                                      "nested/b_depth.mp4"]
    assert len([k for k in keys if k.startswith("batch_status/")]) == 2
    assert read_video(object_store.get(outputs + "nested/b_depth.mp4", tmp_path / "b_depth.mp4"))["count"] == 5
    stamps = {key: object_store.fs.info(outputs + key)["LastModified"] for key in ("a_depth.mp4", "nested/b_depth.mp4")}

    again = ray_cli(ray_head.environment, *submit, timeout_s=600)  # backoffLimit's retry, or the same job applied again
    assert again.returncode == 0 and "2 already done, 0 to do" in again.stdout, again.stdout[-3000:]
    assert {key: object_store.fs.info(outputs + key)["LastModified"] for key in stamps} == stamps


def expand(argument: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in a container's command and args."""
    return re.sub(r"\$\((\w+)\)", lambda match: env[match[1]], argument)


def answer(url: str, token: str | None = None, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={**({"Authorization": f"Bearer {token}"} if token else {}),
                                                   **({"Host": host} if host else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.slow
def test_the_cameras_driver_joins_through_ray_client_and_answers_its_probes_service_and_scrapes(
        ray_head, hub_home, tmp_path):
    documents = manifest_files()["cameras-service.yaml"]
    container = of_kind("Deployment", documents)[0]["spec"]["template"]["spec"]["containers"][0]
    config = of_kind("ConfigMap", documents)[0]["data"]
    # The pod's files: the ConfigMap's settings as written; cameras of the tests' own (the ConfigMap's are RTSP
    # cameras of the user's network): a file played in real time, recorded
    settings, cameras, token = tmp_path / "settings.yaml", tmp_path / "cameras.yaml", tmp_path / "token"
    settings.write_text(config["settings.yaml"])
    lobby = clip(tmp_path, "lobby.mp4", width=96, height=64, frames=150)
    cameras.write_text(json.dumps({"cameras": [{"name": "lobby", "input": str(lobby), "realtime": True,
                                                "record": str(tmp_path / "lobby_depth.mp4")}]}))
    token.write_text("the-kuberay-test-token-0123456789\n")
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    # The cluster's Service address -> this head's Ray Client; the mounts -> the files above; KubeRay's Secret -> the
    # head's token
    env.update(RAY_ADDRESS=ray_head.client_address, CAMERAS_FILE=str(cameras), SETTINGS_FILE=str(settings),
               TOKEN_FILE=str(token))
    command = [*container["command"], *(expand(argument, env) for argument in container["args"])]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "control")
    base = f"http://127.0.0.1:{port}"
    assert answer(f"{base}/healthz")[0] == 0, f"port {port} is taken on this machine: the test needs it"
    driver = subprocess.Popen(command, env={**ray_head.environment, **env, "HF_HOME": str(hub_home),
                                            "HF_HUB_OFFLINE": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        probe = lambda name: answer(f"{base}{container[name]['httpGet']['path']}")[0]  # noqa: E731
        while probe("startupProbe") != 200 or probe("readinessProbe") != 200:
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the driver did not become ready"
            time.sleep(1)
        assert probe("livenessProbe") == 200
        annotations = of_kind("Deployment", documents)[0]["spec"]["template"]["metadata"]["annotations"]
        status, metrics = answer(f"http://127.0.0.1:{annotations['prometheus.io/port']}"
                                 f"{annotations['prometheus.io/path']}")
        assert status == 200 and 'camera="lobby"' in metrics
        assert answer(f"{base}/cameras")[0] == 401, "the API needs the Secret's token"
        secret = token.read_text().strip()
        status, body = answer(f"{base}/cameras", secret, host=f"video-depth-cameras-control:{port}")
        assert status == 200 and [c["name"] for c in json.loads(body)["cameras"]] == ["lobby"], "the Service's name"
        assert answer(f"{base}/cameras", secret, host=f"depth.attacker.example:{port}")[0] == 421
        while json.loads(answer(f"{base}/cameras", secret)[1])["cameras"][0]["frames_out"] < 5:
            assert time.monotonic() < deadline, "no depth"
            time.sleep(0.5)
    finally:
        driver.send_signal(signal.SIGTERM)  # what Kubernetes sends a pod it stops
        stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["cameras"]["lobby"]["frames_out"] >= 5
    assert "CPU-only build" in stderr, "the GPUs Ray sees, asked of a GPU node, cannot be used by this torch"


WAITING = """
import json, sys, threading, time
from ray.cluster_utils import Cluster
import ray
from pipeline.cluster.runtime import wait_for_gpus

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
ray.init(address=cluster.address)
started = time.monotonic()
timed_out = wait_for_gpus(1, timeout_s=2, poll_s=0.2).get("GPU", 0)
results = {}
waiter = threading.Thread(target=lambda: results.update(gpus=wait_for_gpus(2, timeout_s=120, poll_s=0.2).get("GPU")))
waiter.start()
time.sleep(1)
cluster.add_node(num_cpus=1, num_gpus=1)  # the autoscaler's new GPU workers, one after the other
time.sleep(1)
cluster.add_node(num_cpus=1, num_gpus=1)
waiter.join(timeout=120)
print(json.dumps({"timed_out": timed_out, "after_nodes": results.get("gpus"), "alive": waiter.is_alive()}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_the_job_waits_for_the_gpus_an_autoscaler_adds_and_plans_with_what_is_there_after_its_wait():
    """--wait-for-gpus on a real multi-node cluster (ray.cluster_utils): a node with a GPU added, then another,
    while the job waits; and the wait's end after its timeout, said on stderr."""
    done = subprocess.run([sys.executable, "-c", WAITING], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"timed_out": 0, "after_nodes": 2.0, "alive": False}
    assert "waiting for 1 GPUs in the Ray cluster (0 now), asked of its autoscaler, at most 2 s" in done.stderr
    assert "after 2 s the Ray cluster has 0 of the 1 GPUs waited for: planning with those" in done.stderr
    assert "waiting for 2 GPUs" in done.stderr and "of the 2 GPUs" not in done.stderr
