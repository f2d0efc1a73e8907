"""The Helm chart renders, passes its own schema, and every manifest is valid Kubernetes.

No helm binary can be installed here, so ``helm/tools/render`` (Go's
text/template + Debian's sprig + Helm's own functions, see its doc comment)
renders the chart; it is built once per source version into ``_build/``.  The
manifests are checked against the Kubernetes API schemas kubernetes-validate
ships (offline, strict: unknown fields fail), for the oldest Kubernetes the
chart supports and the newest the schemas know.  Beyond schema validity, the
configuration a pod would get is handed to the relay's own config loader, so a
chart that deploys a relay which refuses to start fails here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import mterelay
from mterelay.service.config import SETTINGS, load_config, parse_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "mterelay")
RENDERER_SOURCE = os.path.join(ROOT, "helm", "tools", "render")
BUILD = os.path.join(ROOT, "_build")
GOPATH = "/usr/share/gocode"
GO_PACKAGES = ("github.com/Masterminds/sprig", "github.com/ghodss/yaml")
OLDEST_KUBERNETES = "1.28.0"  # keep in step with kubeVersion in Chart.yaml

# What a Secret managed outside the chart (secrets.existingSecret) would hold.
EXISTING_SECRET = {
    "CLIENT_ID_SECRET": "existing-client-id-secret-0123456789",
    "STATE_SECRET": "existing-state-secret-0123456789abcd",
    "OUTBOUND_TOKEN": "existing-outbound-token",
}
MINIMAL = {"upstream": "https://api.my-company.com",
           "secrets": {"clientIdSecret": "2DkV4DDabehO8cifDktdF9elKJL0CKrk"}}
EXAMPLES = ("inbound", "outbound", "try-it")


class RenderError(Exception):
    """The renderer refused the chart; str() is its error line (as helm prints it)."""


def _go() -> str:
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if os.path.exists("/usr/lib/go/bin/go")
                                else None)
    if go is None:
        raise SkipTest("go is not installed (apt-get install golang-go; .ci/run does)")
    for package in GO_PACKAGES:
        if not os.path.isdir(os.path.join(GOPATH, "src", package)):
            raise SkipTest(f"{package} is not in {GOPATH} (apt-get install "
                           "golang-github-masterminds-sprig-dev golang-github-ghodss-yaml-dev; "
                           ".ci/run does)")
    return go


def renderer() -> str:
    """The built renderer, rebuilt only when its source changes."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(RENDERER_SOURCE)):
        with open(os.path.join(RENDERER_SOURCE, name), "rb") as handle:
            digest.update(name.encode() + b"\0" + handle.read())
    binary = os.path.join(BUILD, f"helmrender-{digest.hexdigest()[:16]}")
    if os.path.exists(binary):
        return binary
    go = _go()
    os.makedirs(BUILD, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="",
               GOCACHE=os.path.join(BUILD, "go-cache"), CGO_ENABLED="0")
    # Parallel trial workers may build at once: each builds its own file and
    # renames it into place atomically.
    partial = f"{binary}.{os.getpid()}.tmp"
    result = subprocess.run([go, "build", "-o", partial, "."], cwd=RENDERER_SOURCE, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"building the chart renderer failed:\n{result.stderr}")
    os.replace(partial, binary)
    return binary


def render(*values: dict[str, Any] | str, chart: str = CHART,
           namespace: str = "relay") -> dict[str, Any]:
    """``helm template``: values files (paths) or dicts, later ones winning."""
    binary = renderer()
    with tempfile.TemporaryDirectory() as tmp:
        args = [binary, "--output", "json", "--name", "orders", "--namespace", namespace]
        for index, value in enumerate(values):
            if isinstance(value, dict):
                path = os.path.join(tmp, f"values-{index}.yaml")
                with open(path, "w", encoding="utf-8") as handle:
                    yaml.safe_dump(value, handle)
                value = path
            args += ["-f", value]
        result = subprocess.run(args + [chart], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    rendered = json.loads(result.stdout)
    rendered["objects"] = [yaml.safe_load(m["content"]) for m in rendered["manifests"]]
    return rendered


def example(name: str) -> str:
    return os.path.join(CHART, "examples", f"{name}.yaml")


def schema_errors(values: dict[str, Any]) -> list[str]:
    import jsonschema

    with open(os.path.join(CHART, "values.schema.json"), encoding="utf-8") as handle:
        schema = json.load(handle)
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(values)]


def kubernetes_errors(obj: dict[str, Any], version: str) -> list[str]:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except SchemaNotFoundError:
        if obj["apiVersion"] != "monitoring.coreos.com/v1":
            raise
        return service_monitor_errors(obj)
    except kubernetes_validate.ValidationError as error:
        return [f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): "
                f"{'/'.join(map(str, error.absolute_path))}: {error.message}"]
    return []


def service_monitor_errors(obj: dict[str, Any]) -> list[str]:
    """The Prometheus Operator CRD is not among the built-in schemas: check its shape."""
    errors = []
    spec = obj.get("spec", {})
    if set(obj) - {"apiVersion", "kind", "metadata", "spec"}:
        errors.append("ServiceMonitor: unexpected top-level fields")
    if not spec.get("selector", {}).get("matchLabels"):
        errors.append("ServiceMonitor: spec.selector.matchLabels is required")
    for endpoint in spec.get("endpoints") or [None]:
        if not isinstance(endpoint, dict) or not isinstance(endpoint.get("port"), str):
            errors.append("ServiceMonitor: every endpoint needs a named port")
    return errors


def by_kind(rendered: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in rendered["objects"] if obj["kind"] == kind]


def relay_deployment(rendered: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = [d for d in by_kind(rendered, "Deployment")
                     if d["spec"]["template"]["spec"]["containers"][0]["name"] == "relay"]
    return deployment


def relay_environment(rendered: dict[str, Any]) -> tuple[dict[str, str], str]:
    """The environment and config file a relay pod of this release starts with."""
    pod = relay_deployment(rendered)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secrets = {s["metadata"]["name"]: s for s in by_kind(rendered, "Secret")}
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["secretRef"]["name"]
        if name in secrets:
            environ.update({k: base64.b64decode(v).decode()
                            for k, v in secrets[name].get("data", {}).items()})
        else:
            environ.update(EXISTING_SECRET)
    for variable in container.get("env", []):
        environ[variable["name"]] = variable["value"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    directory, filename = os.path.split(environ["CONFIG_FILE"])
    (volume,) = [name for name, path in mounts.items() if path == directory]
    maps = {m["metadata"]["name"]: m for m in by_kind(rendered, "ConfigMap")}
    config_file = maps[volumes[volume]["configMap"]["name"]]["data"][filename]
    return environ, config_file


class RendererTests(SynchronousTestCase):
    """The renderer behaves as Helm does where charts commonly depend on it."""

    def setUp(self) -> None:
        self.chart = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.chart)
        os.mkdir(os.path.join(self.chart, "templates"))
        self.write("Chart.yaml", "apiVersion: v2\nname: t\nversion: 0.1.0\nappVersion: '2'\n")
        self.write("values.yaml", "a: {b: 1, c: two, keep: true}\nbig: 1000000\n")
        self.write("templates/_h.tpl", '{{- define "t.x" -}}x-{{ . }}{{- end }}')
        self.write("templates/empty.yaml", "{{- if false }}\nkind: Nothing\n{{- end }}\n")
        self.write("templates/NOTES.txt", "notes for {{ .Release.Name }}")

    def write(self, name: str, text: str) -> None:
        with open(os.path.join(self.chart, name), "w", encoding="utf-8") as handle:
            handle.write(text)

    def test_helm_semantics(self) -> None:
        self.write("templates/cm.yaml", """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "t.x" "y" }}
data:
  merged: {{ toYaml .Values.a | quote }}
  missing: "{{ .Values.nothing }}"
  big: "{{ .Values.big }}"
  tpl: {{ tpl "{{ .Values.a.b }}" . | quote }}
  fromYaml: {{ (fromYaml "k: v").k }}
  where: {{ .Release.Name }}-{{ .Release.Namespace }}-{{ .Chart.Name }}-{{ .Template.Name }}
  kube: "{{ .Capabilities.KubeVersion.Major }}.{{ .Capabilities.KubeVersion.Minor }}"
---
""")
        rendered = render({"a": {"c": None, "d": 3}}, chart=self.chart, namespace="ns")
        (cm,) = rendered["objects"]
        self.assertEqual(cm["metadata"]["name"], "x-y")
        self.assertEqual(cm["data"], {
            # a user null removes a default; maps merge; keys sorted as Helm's toYaml does
            "merged": "b: 1\nd: 3\nkeep: true",
            "missing": "",  # missingkey=zero and "<no value>" removed
            "big": "1e+06",  # values are read through JSON: numbers are float64, as in Helm
            "tpl": "1",
            "fromYaml": "v",
            "where": "orders-ns-t-t/templates/cm.yaml",
            "kube": "1.30",
        })
        self.assertEqual(rendered["notes"], "notes for orders")
        self.assertEqual([m["source"] for m in rendered["manifests"]], ["t/templates/cm.yaml"])

    def test_required_and_fail_stop_rendering(self) -> None:
        self.write("templates/cm.yaml", '{{ required "need .Values.x" .Values.x }}')
        with self.assertRaises(RenderError) as caught:
            render(chart=self.chart)
        self.assertIn("need .Values.x", str(caught.exception))
        self.write("templates/cm.yaml", '{{ fail "no way" }}')
        self.assertRaises(RenderError, render, chart=self.chart)

    def test_invalid_yaml_output_is_an_error(self) -> None:
        self.write("templates/cm.yaml", "kind: [unclosed\n")
        with self.assertRaises(RenderError) as caught:
            render(chart=self.chart)
        self.assertIn("YAML parse error on t/templates/cm.yaml", str(caught.exception))


_RENDERED: dict[str, dict[str, Any]] = {}


class ChartCase:
    """Checks every rendering of the chart must pass; subclasses pick the values."""

    values: tuple[dict[str, Any] | str, ...] = ()
    expect_redis = False
    expect_metrics = True  # metrics.enabled is the chart's default
    rendered: dict[str, Any]

    def setUp(self) -> None:
        key = json.dumps(self.values, sort_keys=True)
        if key not in _RENDERED:
            _RENDERED[key] = render(*self.values)
        self.rendered = json.loads(json.dumps(_RENDERED[key]))  # a copy per test

    def test_values_match_the_schema(self) -> None:
        self.assertEqual(schema_errors(self.rendered["values"]), [])

    def test_every_manifest_is_valid_kubernetes(self) -> None:
        import kubernetes_validate.utils

        known = kubernetes_validate.utils.all_versions()
        oldest = max(known[0], OLDEST_KUBERNETES, key=lambda v: tuple(map(int, v.split("."))))
        errors = []
        for obj in self.rendered["objects"]:
            for version in (oldest, known[-1]):
                errors += kubernetes_errors(obj, version)
        self.assertEqual(errors, [])

    def test_names_are_unique_and_namespaced(self) -> None:
        keys = [(o["kind"], o["metadata"]["name"]) for o in self.rendered["objects"]]
        self.assertEqual(len(keys), len(set(keys)), keys)
        for obj in self.rendered["objects"]:
            self.assertEqual(obj["metadata"]["namespace"], "relay", obj["kind"])
            self.assertEqual(obj["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm")

    def test_pod_is_locked_down(self) -> None:
        pod = relay_deployment(self.rendered)["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertEqual(pod["securityContext"]["runAsUser"], 10001)  # the image's uid
        self.assertFalse(pod["automountServiceAccountToken"])
        container = pod["containers"][0]
        security = container["securityContext"]
        self.assertTrue(security["readOnlyRootFilesystem"])
        self.assertFalse(security["allowPrivilegeEscalation"])
        self.assertEqual(security["capabilities"]["drop"], ["ALL"])
        # The only writable place is an in-memory /tmp.
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        self.assertEqual(len(tmp), 1)
        self.assertIn("limits", container["resources"])
        self.assertIn("requests", container["resources"])

    def test_probes(self) -> None:
        container = relay_deployment(self.rendered)["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        liveness = container["livenessProbe"]["httpGet"]
        self.assertEqual((liveness["path"], liveness["port"]), ("/api/mte-echo", "http"))
        readiness = container["readinessProbe"]["httpGet"]
        if self.expect_metrics:
            self.assertEqual((readiness["path"], readiness["port"]), ("/readyz", "metrics"))
            environ, _ = relay_environment(self.rendered)
            self.assertEqual(environ["METRICS_PORT"], str(ports["metrics"]))
        else:
            self.assertEqual((readiness["path"], readiness["port"]), ("/api/mte-echo", "http"))
            self.assertNotIn("metrics", ports)

    def test_graceful_rolling_update(self) -> None:
        deployment = relay_deployment(self.rendered)
        self.assertEqual(deployment["spec"]["strategy"]["type"], "RollingUpdate")
        self.assertEqual(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0)
        pod = deployment["spec"]["template"]["spec"]
        environ, _ = relay_environment(self.rendered)
        pre_stop = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
        self.assertEqual(environ["SHUTDOWN_GRACE"], "25")
        self.assertGreater(pod["terminationGracePeriodSeconds"],
                           pre_stop + float(environ["SHUTDOWN_GRACE"]))

    def test_the_relay_accepts_its_configuration(self) -> None:
        environ, config_file = relay_environment(self.rendered)
        config = load_config(environ, parse_yaml(config_file, "ConfigMap"), file_source="ConfigMap")
        self.assertEqual(config.upstream, self.rendered["values"]["upstream"].rstrip("/"))
        container = relay_deployment(self.rendered)["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.assertEqual(config.listen_endpoint, f"tcp:{ports['http']}")
        self.assertEqual(config.store_kind, "redis" if self.expect_redis else "memory")

    def test_services_reach_the_pods(self) -> None:
        deployments = by_kind(self.rendered, "Deployment")
        for service in by_kind(self.rendered, "Service"):
            selector = service["spec"]["selector"]
            targets = [d for d in deployments
                       if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
            self.assertEqual(len(targets), 1, service["metadata"]["name"])
            ports = {p["name"] for p in targets[0]["spec"]["template"]["spec"]["containers"][0]
                     ["ports"]}
            for port in service["spec"]["ports"]:
                self.assertIn(port["targetPort"], ports)
        for deployment in deployments:
            self.assertLessEqual(deployment["spec"]["selector"]["matchLabels"].items(),
                                 deployment["spec"]["template"]["metadata"]["labels"].items())

    def test_autoscaler_and_budget_target_the_relay(self) -> None:
        deployment = relay_deployment(self.rendered)
        for hpa in by_kind(self.rendered, "HorizontalPodAutoscaler"):
            self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"])
            self.assertNotIn("replicas", deployment["spec"])
        for pdb in by_kind(self.rendered, "PodDisruptionBudget"):
            self.assertEqual(pdb["spec"]["selector"], deployment["spec"]["selector"])
        replicas = deployment["spec"].get("replicas", 2)
        self.assertEqual(bool(by_kind(self.rendered, "PodDisruptionBudget")), replicas > 1)


class MinimalValuesTests(ChartCase, SynchronousTestCase):
    """The chart's defaults plus only what the schema requires."""

    values = (MINIMAL,)

    def test_defaults_make_a_single_memory_store_replica(self) -> None:
        kinds = sorted(o["kind"] for o in self.rendered["objects"])
        self.assertEqual(kinds, ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"])
        self.assertEqual(relay_deployment(self.rendered)["spec"]["replicas"], 1)


class InboundExampleTests(ChartCase, SynchronousTestCase):
    values = (example("inbound"),)
    expect_redis = True
    expect_metrics = True

    def test_shape(self) -> None:
        kinds = {o["kind"] for o in self.rendered["objects"]}
        self.assertEqual(kinds, {"ConfigMap", "Deployment", "Service", "ServiceAccount",
                                 "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                 "ServiceMonitor"})  # no Secret: existingSecret
        self.assertEqual(by_kind(self.rendered, "Service")[0]["spec"]["type"], "LoadBalancer")


class OutboundExampleTests(ChartCase, SynchronousTestCase):
    values = (example("outbound"),)

    def test_outbound_token_reaches_the_relay(self) -> None:
        environ, config_file = relay_environment(self.rendered)
        config = load_config(environ, parse_yaml(config_file))
        self.assertIsNotNone(config.outbound_token)
        self.assertEqual(relay_deployment(self.rendered)["metadata"]["labels"]
                         ["app.kubernetes.io/component"], "outbound-relay")


class TryItExampleTests(ChartCase, SynchronousTestCase):
    values = (example("try-it"),)
    expect_redis = True

    def test_in_chart_redis(self) -> None:
        environ, _ = relay_environment(self.rendered)
        (redis_service,) = [s for s in by_kind(self.rendered, "Service")
                            if s["metadata"]["name"].endswith("-redis")]
        self.assertEqual(environ["REDIS_URL"],
                         f"redis://{redis_service['metadata']['name']}:6379/0")
        (redis,) = [d for d in by_kind(self.rendered, "Deployment") if d is not
                    relay_deployment(self.rendered)]
        pod = redis["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertTrue(pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"])


class MetricsAndRotationTests(ChartCase, SynchronousTestCase):
    """Chart-managed secrets during a CLIENT_ID_SECRET rotation, metrics without a monitor."""

    values = (MINIMAL, {"metrics": {"enabled": True},
                        "secrets": {"clientIdSecretPrevious": "the-previous-client-id-secret-01",
                                    "stateSecret": "a-separate-state-secret-0123456789"}})
    expect_metrics = True

    def test_previous_secret_is_accepted(self) -> None:
        environ, config_file = relay_environment(self.rendered)
        config = load_config(environ, parse_yaml(config_file))
        self.assertEqual(len(config.client_id_secrets), 2)
        self.assertEqual(config.state_secret, "a-separate-state-secret-0123456789")


class RefusalTests(SynchronousTestCase):
    """Values that would deploy a relay that cannot work are refused up front."""

    def assertRefused(self, values: dict[str, Any], message: str) -> None:
        with self.assertRaises(RenderError) as caught:
            render(MINIMAL, values)
        self.assertIn(message, str(caught.exception))

    def test_defaults_alone_are_refused(self) -> None:
        with self.assertRaises(RenderError) as caught:
            render()
        self.assertIn("upstream is required", str(caught.exception))
        errors = schema_errors(render(MINIMAL)["values"] | {"upstream": ""})
        self.assertTrue(any(e.startswith("upstream:") for e in errors), errors)

    def test_a_secret_source_is_required(self) -> None:
        values = render(MINIMAL)["values"]
        values["secrets"] = {"clientIdSecret": ""}
        self.assertNotEqual(schema_errors(values), [])
        values["secrets"] = {"clientIdSecret": "too-short"}
        self.assertNotEqual(schema_errors(values), [])
        values["secrets"] = {"existingSecret": "mine"}
        self.assertEqual(schema_errors(values), [])
        self.assertRefused({"secrets": {"clientIdSecret": ""}}, "secrets.existingSecret")

    def test_unknown_config_key_is_refused_by_the_schema(self) -> None:
        values = render(MINIMAL)["values"]
        values["config"]["corsOrigin"] = ["https://typo.example"]
        self.assertNotEqual(schema_errors(values), [])

    def test_inbound_replicas_need_redis(self) -> None:
        self.assertRefused({"replicaCount": 3}, "needs shared pair state")
        self.assertRefused({"autoscaling": {"enabled": True}}, "needs shared pair state")
        render(MINIMAL, {"replicaCount": 3, "role": "outbound"})

    def test_grace_period_must_cover_the_shutdown_grace(self) -> None:
        self.assertRefused({"terminationGracePeriodSeconds": 30},
                           "terminationGracePeriodSeconds must exceed")

    def test_service_monitor_needs_metrics(self) -> None:
        self.assertRefused({"serviceMonitor": {"enabled": True}, "metrics": {"enabled": False}},
                           "needs metrics.enabled")


class ChartMetadataTests(SynchronousTestCase):
    def test_app_version_is_the_relay_version(self) -> None:
        with open(os.path.join(CHART, "Chart.yaml"), encoding="utf-8") as handle:
            chart = yaml.safe_load(handle)
        self.assertEqual(chart["appVersion"], mterelay.__version__)
        self.assertTrue(OLDEST_KUBERNETES.startswith(chart["kubeVersion"].lstrip(">=")[:4]))

    def test_schema_config_keys_are_relay_settings(self) -> None:
        """config: takes relay YAML keys, but none the chart sets itself and no secrets."""
        with open(os.path.join(CHART, "values.schema.json"), encoding="utf-8") as handle:
            allowed = set(json.load(handle)["properties"]["config"]["properties"])
        relay_keys = {s.yaml_key for s in SETTINGS} | {"debug"}
        self.assertLessEqual(allowed, relay_keys)
        chart_managed = {"upstream", "port", "listen", "redisURL", "clientIdSecret",
                         "clientIdSecretPrevious", "outboundToken", "stateSecret"}
        self.assertEqual(allowed & chart_managed, set())
