"""The deployment examples are product surface: every config loads without a warning, the Kubernetes
manifests are valid against the Kubernetes schemas (offline) and hardened, the systemd units are
hardened and call the right commands, and the Dockerfile bakes with a BuildKit secret and runs as a
non-root user with the mirrors outside the data volume. Nothing here needs docker, kubectl or systemd.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from cccatalog.config import Config, load_config
from tests.dockerfile import Stage, build_commands, parse_dockerfile

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
K8S = EXAMPLES / "kubernetes"
SYSTEMD = EXAMPLES / "systemd"

BAKED = {
    "rw-cli-codecollection": "runwhen-contrib/rw-cli-codecollection",
    "rw-public-codecollection": "runwhen-contrib/rw-public-codecollection",
    "rw-generic-codecollection": "runwhen-contrib/rw-generic-codecollection",
    "rw-workspace-utils": "runwhen-contrib/rw-workspace-utils",
    "aws-c7n-codecollection": "runwhen-contrib/aws-c7n-codecollection",
    "azure-c7n-codecollection": "runwhen-contrib/azure-c7n-codecollection",
    "ss-rw-cli-codecollection": "stewartshea/rw-cli-codecollection",
}
# The oldest Kubernetes release the manifests promise to work on, and the newest with a schema.
OLDEST_K8S = "1.27"
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASS|CREDENTIAL|AUTH|KEY", re.I)

Doc = dict[str, Any]


def _under(path: PurePosixPath | Path, parent: str) -> bool:
    return PurePosixPath(path).is_relative_to(parent)


# --- configs ---------------------------------------------------------------------------------------


def _load(path: Path) -> Config:
    config = load_config(path, environ={})
    assert config.warnings == (), f"{path} loads with warnings: {config.warnings}"
    assert config.codecollections
    return config


def _load_text(text: str, tmp_path: Path) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return _load(path)


# config.yaml and config.<kind>.yaml; kubernetes/configmap.yaml is a manifest (its configs are below).
EXAMPLE_CONFIGS = sorted(
    p for p in EXAMPLES.rglob("config*.yaml") if re.fullmatch(r"config(\.[\w-]+)?\.yaml", p.name)
)


@pytest.mark.parametrize("example", EXAMPLE_CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_config_loads_without_warnings(example: Path) -> None:
    _load(example)


def _collections(config: Config) -> set[tuple[str, str | None, str | None, str]]:
    return {(cc.slug, cc.git_url, cc.image_registry, cc.default_ref) for cc in config.codecollections}


def test_every_config_map_holds_a_config_that_loads_without_warnings(tmp_path: Path) -> None:
    maps = [d for d in _all_docs() if d["kind"] == "ConfigMap"]
    assert {m["metadata"]["name"] for m in maps} == {"cccatalog-config", "cccatalog-sync-config"}
    for config_map in maps:
        _load_text(config_map["data"]["config.yaml"], tmp_path)


def test_bake_config_lists_the_seven_codecollections() -> None:
    config = _load(EXAMPLES / "config.bake.yaml")
    assert config.git.auth.token_env == "GITHUB_TOKEN"
    assert _collections(config) == {
        (slug, f"https://github.com/{repo}", f"ghcr.io/{repo}", "main") for slug, repo in BAKED.items()
    }


def test_airgap_config_serves_the_baked_mirrors_without_egress() -> None:
    config = _load(EXAMPLES / "config.airgap.yaml")
    assert config.git.enabled
    assert not config.git.runtime_sync
    assert config.git.data_dir == Path("/opt/cc-catalog/git")
    assert not _under(config.git.data_dir, "/data")
    assert config.state.path == Path("/data/cccatalog/state.sqlite3")
    assert config.git.public_base_url
    assert _collections(config) == _collections(_load(EXAMPLES / "config.bake.yaml"))


def test_systemd_config_keeps_its_data_where_the_units_may_write() -> None:
    config = _load(SYSTEMD / "config.yaml")
    for unit in ("cccatalog-serve.service", "cccatalog-sync.service"):
        writable = _unit(SYSTEMD / unit)["Service"]["ReadWritePaths"].split()
        for path in (config.git.data_dir, config.state.path):
            assert any(_under(path, w) for w in writable), f"{unit}: {path} is not writable"


# --- Kubernetes ------------------------------------------------------------------------------------


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> list[Doc]:
    return [doc for path in _manifests() for doc in _docs(path)]


def _one(kind: str, name: str | None = None) -> Doc:
    found = [d for d in _all_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_specs() -> Iterator[tuple[str, Doc]]:
    for doc in _all_docs():
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _mounts(pod: Doc, container: Doc) -> dict[str, Doc]:
    """mountPath -> the volume mounted there."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def _container(pod: Doc) -> Doc:
    assert len(pod["containers"]) == 1
    container: Doc = pod["containers"][0]
    return container


@pytest.mark.parametrize("manifest", _manifests(), ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid_against_the_schemas(manifest: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate", minversion="1.28")
    docs = _docs(manifest)
    assert docs
    for doc in docs:
        for version in (OLDEST_K8S, kv.latest_version()):
            # strict: unknown fields (a typo, a field from a newer release) fail too.
            kv.validate(doc, version, strict=True)


def test_kustomization_lists_the_air_gapped_set_and_mentions_the_rest() -> None:
    text = (K8S / "kustomization.yaml").read_text()
    kustomization = yaml.safe_load(text)
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert {"configmap.yaml", "deployment.yaml", "service.yaml"} <= set(resources)
    for name in resources:
        assert (K8S / name).is_file(), name
    for path in _manifests():
        assert path.name in text, f"kustomization.yaml does not mention {path.name}"


def test_every_pod_runs_hardened() -> None:
    pods = dict(_pod_specs())
    assert set(pods) == {"cccatalog", "cccatalog-sync"}
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "privileged" not in sc, name
            # The single binary unpacks itself under /tmp: with a read-only root it needs a volume.
            assert "emptyDir" in _mounts(pod, container)["/tmp"], name


def test_secrets_come_only_from_secret_key_refs() -> None:
    assert not [d for d in _all_docs() if d["kind"] == "Secret"], "secrets are created out of band"
    seen = set()
    for name, pod in _pod_specs():
        for container in pod["containers"]:
            assert "envFrom" not in container, name
            for env in container.get("env", []):
                assert "value" not in env or not SECRET_NAME.search(env["name"]), (name, env["name"])
                if "valueFrom" in env:
                    assert set(env["valueFrom"]) == {"secretKeyRef"}, (name, env["name"])
                    seen.add(env["name"])
    assert seen == {"CCCATALOG_ADMIN_TOKEN", "GITHUB_TOKEN"}


def test_deployment_probes_health_and_readiness_on_the_serving_port() -> None:
    pod = _one("Deployment", "cccatalog")["spec"]["template"]["spec"]
    container = _container(pod)
    assert container["command"][:2] == ["cccatalog", "serve"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    admin = next(e for e in container["env"] if e["name"] == "CCCATALOG_ADMIN_TOKEN")
    assert admin["valueFrom"]["secretKeyRef"]["optional"] is True

    service = _one("Service", "cccatalog")["spec"]
    labels = _one("Deployment", "cccatalog")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] == "http"


def test_deployment_mounts_the_airgap_config_and_writes_only_under_data(tmp_path: Path) -> None:
    pod = _one("Deployment", "cccatalog")["spec"]["template"]["spec"]
    container = _container(pod)
    mounts = _mounts(pod, container)
    config_map = _one("ConfigMap", mounts["/etc/cccatalog"]["configMap"]["name"])
    assert "config.yaml" in config_map["data"]
    assert container["command"][-2:] == ["--config", "/etc/cccatalog/config.yaml"]
    assert {"emptyDir", "persistentVolumeClaim"} & set(mounts["/data"])

    config = _load_text(config_map["data"]["config.yaml"], tmp_path)
    airgap = _load(EXAMPLES / "config.airgap.yaml")
    # The same catalog as the file the image ships; only the clone URL is the in-cluster Service's.
    assert replace(config.git, public_base_url=None) == replace(airgap.git, public_base_url=None)
    assert (config.sources, config.state, config.serve) == (airgap.sources, airgap.state, airgap.serve)
    assert config.git.public_base_url == "http://cccatalog.cc-catalog.svc.cluster.local/git"
    assert _one("Service", "cccatalog")["spec"]["ports"][0]["port"] == 80
    # Mirrors are baked into the image (read-only root), the state is on the /data volume.
    assert not any(_under(config.git.data_dir, m) for m in mounts)
    assert _under(config.state.path, "/data")
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > config.serve.shutdown_grace_seconds


def test_cronjob_syncs_onto_the_claim_one_run_at_a_time(tmp_path: Path) -> None:
    cronjob = _one("CronJob", "cccatalog-sync")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    container = _container(pod)
    assert container["command"][:2] == ["cccatalog", "sync"]
    token = next(e for e in container["env"] if e["name"] == "GITHUB_TOKEN")
    assert "secretKeyRef" in token["valueFrom"]

    mounts = _mounts(pod, container)
    claim = mounts["/data"]["persistentVolumeClaim"]["claimName"]
    assert claim == "cccatalog-data"
    assert _one("PersistentVolumeClaim", claim)
    config_map = _one("ConfigMap", mounts["/etc/cccatalog"]["configMap"]["name"])
    config = _load_text(config_map["data"]["config.yaml"], tmp_path)
    assert config.git.enabled
    assert config.git.runtime_sync
    assert config.git.auth.token_env == token["name"]
    assert _under(config.git.data_dir, "/data")
    assert _under(config.state.path, "/data")
    assert _collections(config) == _collections(_load(EXAMPLES / "config.bake.yaml"))


# --- Kubernetes, replicas on PostgreSQL (examples/kubernetes/ha) ------------------------------------

HA = K8S / "ha"


def _ha_docs() -> dict[str, Doc]:
    """kind -> the one document of that kind in ha/."""
    docs = [d for p in sorted(HA.glob("*.yaml")) if p.name != "kustomization.yaml" for d in _docs(p)]
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize(
    "manifest", sorted(p for p in HA.glob("*.yaml") if p.name != "kustomization.yaml"), ids=lambda p: p.name
)
def test_ha_manifest_is_valid_against_the_schemas(manifest: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate", minversion="1.28")
    for doc in _docs(manifest):
        for version in (OLDEST_K8S, kv.latest_version()):
            kv.validate(doc, version, strict=True)


def test_ha_kustomization_applies_everything_but_the_secret_template() -> None:
    text = (HA / "kustomization.yaml").read_text()
    resources = yaml.safe_load(text)["resources"]
    assert set(resources) == {"configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml"}
    assert "secret.yaml" in text  # mentioned, with how to create the real one
    assert "kubectl -n cc-catalog create secret generic cccatalog-database" in text


def test_ha_runs_three_hardened_replicas_that_a_drain_takes_one_at_a_time() -> None:
    docs = _ha_docs()
    deployment, pdb, service = docs["Deployment"], docs["PodDisruptionBudget"], docs["Service"]
    assert deployment["spec"]["replicas"] == 3
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert service["spec"]["selector"].items() <= labels.items()
    pod = deployment["spec"]["template"]["spec"]
    container = _container(pod)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "emptyDir" in _mounts(pod, container)["/tmp"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert pod["terminationGracePeriodSeconds"] > 30


def test_ha_replicas_read_the_database_url_from_the_secret_and_keep_only_caches_locally(
    tmp_path: Path,
) -> None:
    docs = _ha_docs()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = _container(pod)
    [url_env] = [e for e in container["env"] if e["name"] == "CCCATALOG_STATE_URL"]
    ref = url_env["valueFrom"]["secretKeyRef"]
    secret = docs["Secret"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "url")
    assert "optional" not in ref  # without its database a replica has no catalog to serve
    for env in container["env"]:
        assert "value" not in env or not SECRET_NAME.search(env["name"]), env["name"]

    mounts = _mounts(pod, container)
    config_map = docs["ConfigMap"]
    assert mounts["/etc/cccatalog"]["configMap"]["name"] == config_map["metadata"]["name"]
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    environ = {"CCCATALOG_STATE_URL": secret["stringData"]["url"]}
    config = load_config(path, environ=environ)
    assert config.warnings == ()
    assert config.state.backend == "postgresql"
    assert "CHANGE-ME" not in config.state.display
    assert config.state.secrets(environ) == ["CHANGE-ME"]
    assert "CHANGE-ME" not in config_map["data"]["config.yaml"]
    # this replica's own files go to its emptyDir; the mirrors are baked into the image
    assert "emptyDir" in mounts["/data"]
    assert _under(config.state.local_dir, "/data")
    assert not any(_under(config.git.data_dir, m) for m in mounts)
    assert not config.git.runtime_sync
    assert config.images.runtime_sync
    assert _collections(config) == _collections(_load(EXAMPLES / "config.bake.yaml"))


# --- systemd ---------------------------------------------------------------------------------------


class _UnitParser(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr  # systemd keys are case-sensitive


def _unit(path: Path) -> configparser.ConfigParser:
    parser = _UnitParser(strict=False, interpolation=None)
    parser.read_string(path.read_text(), source=str(path))
    return parser


def _yes(value: str) -> bool:
    return value.lower() in ("yes", "true", "on", "1")


@pytest.mark.parametrize(
    ("unit", "command", "types"),
    [
        ("cccatalog-serve.service", "serve", ("simple", "exec", "notify")),
        ("cccatalog-sync.service", "sync", ("oneshot",)),
    ],
)
def test_systemd_service_is_hardened_and_runs_cccatalog(
    unit: str, command: str, types: tuple[str, ...]
) -> None:
    service = _unit(SYSTEMD / unit)["Service"]
    assert service["Type"] in types
    argv = shlex.split(service["ExecStart"])
    assert PurePosixPath(argv[0]).name == "cccatalog"
    assert argv[1] == command
    assert argv[argv.index("--config") + 1] == "/etc/cccatalog/config.yaml"

    assert _yes(service.get("DynamicUser", "no")) or service.get("User", "root") not in ("root", "0")
    assert service["ProtectSystem"] == "strict"
    assert _yes(service["NoNewPrivileges"])
    assert _yes(service["PrivateTmp"])
    assert _yes(service["ProtectHome"])
    assert service["ReadWritePaths"].split() == ["/var/lib/cccatalog"]
    assert service["CapabilityBoundingSet"] == ""
    # Tokens come from a root-only file, never from the unit itself (world-readable).
    assert service["EnvironmentFile"].lstrip("-") == "/etc/cccatalog/cccatalog.env"
    assert not SECRET_NAME.search(service.get("Environment", ""))


def test_systemd_timer_runs_sync_hourly_with_jitter() -> None:
    timer = _unit(SYSTEMD / "cccatalog-sync.timer")
    assert timer["Timer"]["Unit"] == "cccatalog-sync.service"
    assert timer["Timer"]["OnCalendar"] == "hourly"
    assert timer["Timer"]["RandomizedDelaySec"]
    assert _yes(timer["Timer"]["Persistent"])
    assert timer["Install"]["WantedBy"] == "timers.target"


# --- Dockerfile ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[str], dict[str, Stage], Stage]:
    directives, stages = parse_dockerfile((EXAMPLES / "Dockerfile").read_text())
    return directives, {s.name: s for s in stages}, stages[-1]


def _chain(stages: dict[str, Stage], stage: Stage) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stage]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


DockerfileParts = tuple[list[str], dict[str, Stage], Stage]


def test_dockerfile_builds_the_binary_then_bakes_then_runs_slim(dockerfile: DockerfileParts) -> None:
    directives, stages, final = dockerfile
    assert directives[0] == "syntax=docker/dockerfile:1.6"
    build = stages["build"]
    assert build.base == "python:3.11-slim-bookworm"
    # The one way the binary is built: the build stage runs tools/build_binary.sh on the copied tree.
    args, commands = build_commands(build)
    assert [c.split()[-1] for c in commands] == ["tools/build_binary.sh"]
    assert args["PYINSTALLER_VERSION"] in (ROOT / "tools" / "build_binary.sh").read_text()
    assert "bake" in stages
    # The runtime descends from debian:bookworm-slim (the glibc the binary was built against).
    chain = _chain(stages, final)
    assert chain[-1].base == "debian:bookworm-slim"
    assert "bake" not in [s.name for s in chain]
    installs = " ".join(i.args for s in chain for i in s.all("RUN"))
    assert re.search(r"apt-get install .*\bgit\b", installs)
    assert "ca-certificates" in installs
    copies = [i for s in chain for i in s.all("COPY")]
    assert any(
        i.flags().get("from") == "build" and i.words() == ["/src/dist/cccatalog", "/usr/local/bin/cccatalog"]
        for i in copies
    )


def test_dockerfile_bakes_with_a_secret_mount_and_no_secret_in_args(dockerfile: DockerfileParts) -> None:
    _, stages, _ = dockerfile
    bake = stages["bake"]
    (run,) = [i for i in bake.all("RUN") if "cccatalog bake" in i.args]
    assert "type=secret,id=github_token" in run.flags()["mount"]
    argv = run.words()
    assert argv[argv.index("--config") + 1] == "examples/config.bake.yaml"
    assert argv[argv.index("--dest") + 1] == "/opt/cc-catalog/git"
    assert argv[argv.index("--token-file") + 1] == "/run/secrets/github_token"
    for stage in stages.values():
        for instruction in stage.all("ARG") + stage.all("ENV"):
            assert not SECRET_NAME.search(instruction.args), instruction.args
        for instruction in stage.instructions:
            assert not re.search(r"gh[pousr]_|github_pat_", instruction.args)


def test_dockerfile_runtime_is_non_root_with_mirrors_outside_the_volume(dockerfile: DockerfileParts) -> None:
    _, _, final = dockerfile
    users = final.all("USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1].args.split(":")[0]
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot check it"
    assert int(user) != 0

    airgap = _load(EXAMPLES / "config.airgap.yaml")
    (mirrors,) = [i for i in final.all("COPY") if i.flags().get("from") == "bake"]
    assert mirrors.words()[-1] == str(airgap.git.data_dir)
    volumes = [v for i in final.all("VOLUME") for v in i.words()]
    assert volumes == ["/data"]
    assert not any(_under(airgap.git.data_dir, v) for v in volumes)
    assert _under(airgap.state.path, "/data")
    # An arbitrary uid is always in group 0: give the group the owner's rights on what it writes.
    assert any("chmod -R g=u" in i.args for i in final.all("RUN"))

    env = {}
    for instruction in final.all("ENV"):
        name, _, value = instruction.args.partition("=")
        env[name] = value
    config_copy = [i.words() for i in final.all("COPY") if not i.flags().get("from")]
    assert ["examples/config.airgap.yaml", env["CCCATALOG_CONFIG"]] in config_copy
    assert env["CCCATALOG_CONFIG"] == "/etc/cccatalog/config.yaml"
    assert [i.args for i in final.all("EXPOSE")] == [str(airgap.serve.port)]
    (healthcheck,) = final.all("HEALTHCHECK")
    assert healthcheck.words()[0] == "CMD"
    # over HTTP to the running server (tests/test_release_image.py runs it against a stopped one)
    assert json.loads(healthcheck.args.partition("CMD")[2])[:2] == ["cccatalog", "probe"]
    assert final.all("ENTRYPOINT")[-1].words() == ["cccatalog"]
    assert final.all("CMD")[-1].words() == ["serve"]


def test_dockerfile_copies_only_files_that_exist_and_ignores_local_state(dockerfile: DockerfileParts) -> None:
    _, stages, _ = dockerfile
    for stage in stages.values():
        for copy in stage.all("COPY"):
            if copy.flags().get("from"):
                continue
            for source in copy.words()[:-1]:
                if source != ".":
                    assert (ROOT / source).exists(), source
    ignored = (EXAMPLES / "Dockerfile.dockerignore").read_text().split()
    assert ".git" in ignored
    assert "**/*.sqlite3" in ignored


def test_the_docs_build_the_binary_with_the_command_the_image_and_ci_run(dockerfile: DockerfileParts) -> None:
    """docs/deploying.md's binary section, the Dockerfile's build stage and .ci/run: one command."""
    _, stages, _ = dockerfile
    _, commands = build_commands(stages["build"])
    script = commands[0].split()[-1]
    section = (ROOT / "docs" / "deploying.md").read_text().split("## The single binary", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.splitlines()] == [script]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 tests/dockerfile.py" in ci  # runs those build-stage commands
    assert "export CCCATALOG_BINARY" in ci
