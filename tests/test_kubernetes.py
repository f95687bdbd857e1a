"""deploy/kubernetes/: checked against the Kubernetes schemas (kubernetes-validate), and against the daemon itself.

No cluster runs here. What can be checked is: every object against the API schemas (strict: an
unknown or misspelt field fails), the container's command parsed by the daemon's own option
parser with the ConfigMap's config and the Secret's files in place, and the timings and
settings a rolling deploy depends on.
"""

from __future__ import annotations

import pytest

from tests.daemon import REPO
from tests.test_deploy import instruction, pyyaml
from voicebridge.daemon.drain import Drain
from voicebridge.daemon.tap import Options

DIRECTORY = REPO / "deploy" / "kubernetes"


def documents() -> list[dict]:
    yaml = pyyaml()
    docs = []
    for path in sorted(DIRECTORY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == kind]


@pytest.mark.parametrize("version", ["1.27.0", "latest"])
def test_every_object_passes_the_kubernetes_schemas_strictly(version):
    """The newest schemas the package knows, and those of a cluster a few releases old (clusters lag)."""
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is in the test extras (pip install kubernetes-validate)")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    kinds = []
    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)  # raises with the path
        kinds.append(doc["kind"])
    assert {"Deployment", "Service", "PodDisruptionBudget", "Secret", "ConfigMap", "Ingress"} <= set(kinds)


def container() -> dict:
    (deployment,) = of_kind("Deployment")
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def test_the_command_is_the_daemons_with_the_configmap_and_the_secret_in_place(tmp_path):
    (config_map,) = of_kind("ConfigMap")
    (secret,) = of_kind("Secret")
    config_dir, secret_dir = tmp_path / "config", tmp_path / "secrets"
    config_dir.mkdir()
    secret_dir.mkdir()
    for name, text in config_map["data"].items():
        (config_dir / name).write_text(text)
    for name in secret["stringData"]:
        (secret_dir / name).write_text("a-secret-value")
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    argv = [
        a.replace(mounts["config"], str(config_dir)).replace(mounts["secrets"], str(secret_dir)) for a in container()["args"]
    ]
    assert argv[:2] == ["twist", "voicebridge"]
    options = Options()
    options.parseOptions(argv[2:])  # the files it names exist, and the config is valid
    assert options["fleet"] is not None and options["fleet"].redis.password == "a-secret-value"
    assert "a-secret-value" not in " ".join(container()["args"]), "no secret on the command line"
    assert options["control_token"] is not None and options["auth_token"] is not None
    assert options["log-format"] == "json", "kubectl logs and log shippers read JSON lines; args replace the CMD's"


def test_a_rolling_deploy_drains_every_call_before_the_pod_is_killed():
    (deployment,) = of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container()
    options = Options()
    options.parseOptions([a for a in main["args"][2:] if not a.startswith(("--config", "--auth", "--redis-pass", "--control"))])
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # Kubernetes counts the preStop inside the grace period; then SIGTERM drains.
    needed = float(pre_stop[1]) + options["limits"].drain_timeout + Drain.grace
    assert pod["terminationGracePeriodSeconds"] > needed
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz", "503 from the drain's first moment"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz", "200 while draining: a draining pod is not restarted"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_pod_runs_unprivileged_on_a_read_only_root():
    pod = of_kind("Deployment")[0]["spec"]["template"]["spec"]
    main = container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = instruction("USER")[0].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == user, "the Dockerfile's user"
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_service_and_the_disruption_budget_select_the_deployments_pods():
    deployment = of_kind("Deployment")[0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (service,) = of_kind("Service")
    (budget,) = of_kind("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


def test_the_schema_check_would_catch_a_misspelt_field():
    import copy

    import kubernetes_validate

    deployment = copy.deepcopy(of_kind("Deployment")[0])
    spec = deployment["spec"]["template"]["spec"]
    spec["terminationGracePeriod"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
