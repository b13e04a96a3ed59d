"""Mirroring to destinations against real registries: a source with token auth, a destination with
htpasswd behind nginx answering Artifactory's Docker API path (the `jfrog` type), the same registry
as a plain `registry` destination. Digests are equal after a mirror, the exists check's 500 and 403
are errors and never a push, Xray is asked and its failure is only a warning, and each registry only
ever sees its own credentials."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cccatalog.catalog.store import Store
from cccatalog.cli import run
from cccatalog.config import load_config
from cccatalog.destinations.run import SKIPPED
from cccatalog.destinations.sync import run_mirrors
from cccatalog.oci.client import RegistryClient
from cccatalog.redact import Redactor
from tests.artifactoryfixtures import FakeArtifactory, fake_artifactory
from tests.gitfixtures import Upstream
from tests.imagefixtures import Build, push_build, tag_is_whole
from tests.registry import ALL_MANIFESTS, USERNAME, RunningRegistry, registry_client, running_registry
from tests.waiting import wait_until

DEST_PASSWORD = "dest-only-pw-" + "7" * 12
MAIN = "main-1234567-abcdef0"
RELEASE = "v1.0.0-7654321-abcdef0"


@pytest.fixture(scope="module")
def destination_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """htpasswd with a password of its own: the source's must never be sent here, nor this one there."""
    with running_registry(tmp_path_factory.mktemp("dest"), "basic", password=DEST_PASSWORD) as registry:
        yield registry


@pytest.fixture(scope="module")
def artifactory(
    tmp_path_factory: pytest.TempPathFactory, destination_registry: RunningRegistry
) -> Iterator[FakeArtifactory]:
    with fake_artifactory(tmp_path_factory.mktemp("nginx"), destination_registry) as front:
        yield front


@dataclass(frozen=True)
class Registries:
    source: RunningRegistry  # token auth
    destination: RunningRegistry  # htpasswd, a password of its own
    artifactory: FakeArtifactory  # nginx in front of `destination`


@pytest.fixture
def regs(
    registry_token: RunningRegistry, destination_registry: RunningRegistry, artifactory: FakeArtifactory
) -> Registries:
    return Registries(registry_token, destination_registry, artifactory)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, registry_token: RunningRegistry) -> dict[str, str]:
    values = {
        "SRC_USER": USERNAME,
        "SRC_PASS": str(registry_token.password),
        "DST_USER": USERNAME,
        "DST_PASS": DEST_PASSWORD,
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return values


def push_builds(registry: RunningRegistry) -> tuple[str, Build, Build]:
    repo = f"org/rw-cli-{uuid.uuid4().hex[:8]}"
    main = push_build(registry, repo, MAIN, base=["base-os", "python"], own=f"{repo}-main")
    release = push_build(registry, repo, RELEASE, base=["base-os", "python"], own=f"{repo}-v1")
    return repo, main, release


def write_config(tmp_path: Path, source: RunningRegistry, repo: str, destination: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "git: {enabled: false, data_dir: mirrors}\n"
        "sources:\n"
        "  - name: ghcr\n    type: oci\n    auth: {user_env: SRC_USER, pass_env: SRC_PASS}\n"
        f"    codecollections:\n      - {{slug: rw-cli, image_registry: {source.host}/{repo}}}\n"
        f"destinations:\n{destination}"
    )
    return path


def jfrog(artifactory: FakeArtifactory, repo_key: str, *, xray: bool = False) -> str:
    return (
        f"  - name: acme-jfrog\n    type: jfrog\n    base_url: {artifactory.base_url}\n"
        f"    repo_key: {repo_key}\n    path_prefix: codecollections\n"
        f"    auth: {{user_env: DST_USER, pass_env: DST_PASS}}\n    enable_xray_scan: {str(xray).lower()}\n"
        "    mirror: {include_pointers: [latest, stable], include_branches: [main],\n"
        "             include_semver_tags: true}\n"
    )


def manifest_digest(registry: RunningRegistry, repo: str, tag: str) -> str | None:
    with registry_client(registry) as client:
        answer = client.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ALL_MANIFESTS})
    return answer.headers.get("Docker-Content-Digest") if answer.status_code == 200 else None


def sync(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object], str]:
    code = run(["sync", "-c", str(config), "--no-git", "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def secret_forms(user: str, password: str) -> list[str]:
    return [password, base64.b64encode(f"{user}:{password}".encode()).decode()]


@pytest.mark.parametrize("kind", ["jfrog", "registry"])
def test_sync_mirrors_the_newest_builds_with_equal_digests_and_each_registry_sees_only_its_credentials(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, str], regs: Registries
) -> None:
    registry_token, destination_registry, artifactory = regs.source, regs.destination, regs.artifactory
    repo, main, release = push_builds(registry_token)
    key = f"k{uuid.uuid4().hex[:8]}"
    if kind == "jfrog":
        destination, target_repo = jfrog(artifactory, key), f"{key}/codecollections/rw-cli"
    else:
        destination = (
            f"  - name: site\n    type: registry\n    registry: {destination_registry.host}/{key}\n"
            "    auth: {user_env: DST_USER, pass_env: DST_PASS}\n"
        )
        target_repo = f"{key}/rw-cli"
    config = write_config(tmp_path, registry_token, repo, destination)
    registry_token.token_server.clear()  # type: ignore[union-attr]

    code, report, err = sync(config, capsys)

    assert code == 0, err
    summaries = report["destinations"]
    assert isinstance(summaries, list)
    [summary] = summaries
    assert (summary["jobs_enqueued"], summary["copied"], summary["failed"]) == (2, 2, 0)
    for build in (main, release):
        assert manifest_digest(destination_registry, target_repo, build.tag) == build.digest
        assert tag_is_whole(destination_registry, target_repo, build.tag) is True
    with Store.open(load_config(config, environ={}).state.path) as store:
        targets = {t.source_image_tag: t for t in store.mirror_targets(slug="rw-cli")}
        assert set(targets) == {MAIN, RELEASE}
        assert targets[MAIN].target_digest == main.digest
        assert (
            targets[MAIN].target_image_ref
            == f"{destination_registry.host if kind == 'registry' else artifactory.host}/{target_repo}:{MAIN}"
        )
    # the source's token server never saw the destination's password, the destination never the source's
    minted = registry_token.token_server.mints  # type: ignore[union-attr]
    assert minted
    assert {m.username for m in minted} <= {USERNAME, None}
    assert all(m.status == 200 for m in minted)
    if kind == "jfrog":
        seen = "\n".join(artifactory.requests())
        assert "HEAD /artifactory/api/docker/" + key + "/v2/codecollections/rw-cli/manifests/" + MAIN in seen
        assert 'auth="Basic ' in seen
        for form in secret_forms(USERNAME, str(registry_token.password)):
            assert form not in seen

    # the second run finds both mirrored: said in the table a user reads
    assert run(["-v", "sync", "-c", str(config), "--no-git"]) == 0
    out, err = capsys.readouterr()
    said = "0 copied, 0 already there, 0 failed (0 new jobs, 2 builds mirrored before)"
    assert f"destination {summary['name']}: {said}" in err
    [row] = [line for line in out.splitlines() if str(summary["name"]) in line]
    assert [cell.strip() for cell in row.split("│")[1:-1]] == [summary["name"], "0", "0", "0", "0", "2"]


def catalog_only(
    tmp_path: Path, registry_token: RunningRegistry, repo: str, capsys: pytest.CaptureFixture[str]
) -> Path:
    """The catalog half synced (no destination yet); returns the config path to add one to."""
    config = write_config(tmp_path, registry_token, repo, "  []\n")
    code, _, err = sync(config, capsys)
    assert code == 0, err
    return config


def mirror(config_path: Path, destination: str, env: dict[str, str]) -> tuple[Store, list[str]]:
    text = config_path.read_text().replace("destinations:\n  []\n", "destinations:\n" + destination)
    config_path.write_text(text)
    config = load_config(config_path, environ=env)
    store = Store.open(config.state.path)
    report = run_mirrors(
        config,
        store,
        environ=env,
        redactor=Redactor(),
        client_factory=lambda auth_for: RegistryClient(auth_for=auth_for, retries=0),
    )
    [summary] = report.destinations
    return store, summary.errors


@pytest.mark.parametrize("repo_key", ["answers500", "answers403", "answers401"])
def test_an_exists_check_that_answers_neither_200_nor_404_is_an_error_and_nothing_is_pushed(
    repo_key: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    regs: Registries,
) -> None:
    registry_token, destination_registry, artifactory = regs.source, regs.destination, regs.artifactory
    repo, _, _ = push_builds(registry_token)
    config = catalog_only(tmp_path, registry_token, repo, capsys)

    store, errors = mirror(config, jfrog(artifactory, repo_key), env)

    with store:
        assert len(errors) == 2
        url = f"{artifactory.base_url}/artifactory/api/docker/{repo_key}/v2/codecollections/rw-cli/manifests/"
        if repo_key != "answers500":
            status = repo_key.removeprefix("answers")
            assert all(f"cannot read {url}" in e and f"HTTP {status}" in e for e in errors), errors
        else:
            assert all(f"{url}" in e and "answered HTTP 500; nothing is pushed" in e for e in errors), errors
        assert all(DEST_PASSWORD not in e for e in errors)
        assert store.mirror_targets() == []
        total, jobs = store.list_mirror_jobs()
        assert total == 2
        assert {j.status for j in jobs} == {"pending"}  # retried by the next run, up to max_attempts
        assert store.list_destinations()["acme-jfrog"].last_sync_error
    assert manifest_digest(destination_registry, f"{repo_key}/codecollections/rw-cli", MAIN) is None


def test_xray_is_asked_after_a_push_and_its_failure_is_a_warning_not_a_failed_mirror(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, str], regs: Registries
) -> None:
    registry_token, destination_registry = regs.source, regs.destination
    repo, main, _ = push_builds(registry_token)
    config = catalog_only(tmp_path, registry_token, repo, capsys)
    key = f"k{uuid.uuid4().hex[:8]}"
    with fake_artifactory(tmp_path / "nginx", destination_registry, xray_status=503) as front:
        store, errors = mirror(config, jfrog(front, key, xray=True), env)
        requests = front.requests()
    with store:
        assert errors == []
        _, jobs = store.list_mirror_jobs(status="done")
        assert len(jobs) == 2
        detail = store.get_mirror_job(jobs[0].id)
        assert detail is not None
        assert "[xray scan trigger failed:" in str(detail.log_text)
        assert "answered HTTP 503" in str(detail.log_text)
    assert sum(line.startswith("POST /xray/api/v1/scanArtifact 503") for line in requests) == 2
    assert manifest_digest(destination_registry, f"{key}/codecollections/rw-cli", MAIN) == main.digest


def test_a_tag_already_on_the_destination_is_recorded_without_a_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, str], regs: Registries
) -> None:
    registry_token, destination_registry, artifactory = regs.source, regs.destination, regs.artifactory
    repo, main, _ = push_builds(registry_token)
    key = f"k{uuid.uuid4().hex[:8]}"
    # someone pushed the main build there by hand
    push_build(
        destination_registry,
        f"{key}/codecollections/rw-cli",
        MAIN,
        base=["base-os", "python"],
        own=f"{repo}-main",
    )
    config = catalog_only(tmp_path, registry_token, repo, capsys)

    store, errors = mirror(config, jfrog(artifactory, key), env)

    with store:
        assert errors == []
        targets = {t.source_image_tag: t for t in store.mirror_targets()}
        assert targets[MAIN].target_digest == main.digest
        logs = {
            j.target_image_ref.rpartition(":")[2]: store.get_mirror_job(j.id)
            for j in store.list_mirror_jobs()[1]
        }
        assert logs[MAIN].log_text == SKIPPED  # type: ignore[union-attr]
        assert "copied" in str(logs[RELEASE].log_text)  # type: ignore[union-attr]
    with httpx.Client() as client:
        assert client.get(f"{artifactory.base_url}/v2/").status_code == 401  # the front does want credentials


# The predecessor's pydantic schemas (app/schemas/mirror.py): field -> the JSON types it may take.
DESTINATION_SUMMARY = {
    "name": (str,),
    "type": (str,),
    "enabled": (bool,),
    "base_url": (str, type(None)),
    "repo_key": (str, type(None)),
    "path_prefix": (str, type(None)),
    "enable_xray_scan": (bool,),
    "last_synced": (str, type(None)),
    "last_sync_error": (str, type(None)),
    "tracked_codecollections": (list,),
    "mirrored_tag_count": (int,),
}
MIRROR_JOB_VIEW = {
    "id": (int,),
    "cc_slug": (str,),
    "destination": (str,),
    "source_image_ref": (str,),
    "target_image_ref": (str,),
    "status": (str,),
    "attempts": (int,),
    "max_attempts": (int,),
    "last_error": (str, type(None)),
    "created_at": (str,),
    "started_at": (str, type(None)),
    "finished_at": (str, type(None)),
}
TRIGGER = {
    "destination": (str,),
    "codecollection_slug": (str, type(None)),
    "jobs_enqueued": (int,),
    "refs_already_mirrored": (int,),
    "detail": (str,),
}


def assert_shape(body: object, schema: dict[str, tuple[type, ...]]) -> None:
    assert isinstance(body, dict)
    assert set(body) == set(schema)
    for name, types in schema.items():
        assert isinstance(body[name], types), (name, body[name])
        if types[0] is int:
            assert not isinstance(body[name], bool), name


def test_the_mirror_api_and_resolve_answer_with_the_predecessors_shapes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    regs: Registries,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.apifixtures import ADMIN_TOKEN, RFC3339_UTC, bearer
    from tests.servefixtures import running_server
    from tests.test_api import check_against_doc, documented

    repo, main, _ = push_builds(regs.source)
    key = f"k{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, regs.source, repo, jfrog(regs.artifactory, key, xray=True))
    code, _, err = sync(config, capsys)
    assert code == 0, err
    monkeypatch.setenv("CCCATALOG_ADMIN_TOKEN", ADMIN_TOKEN)

    with (
        running_server(load_config(config)) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{server.server_address[1]}", timeout=30) as client,
    ):
        [destination] = client.get("/api/v1/mirror/destinations").json()
        assert_shape(destination, DESTINATION_SUMMARY)
        assert (destination["name"], destination["type"], destination["base_url"]) == (
            "acme-jfrog",
            "jfrog",
            regs.artifactory.base_url,
        )
        assert (destination["repo_key"], destination["path_prefix"]) == (key, "codecollections")
        assert (destination["mirrored_tag_count"], destination["tracked_codecollections"]) == (2, ["*"])
        assert RFC3339_UTC.match(destination["last_synced"])

        listing = client.get("/api/v1/mirror/jobs", params={"status": "done", "limit": 1}).json()
        assert set(listing) == {"total", "items"}
        assert listing["total"] == 2
        [item] = listing["items"]
        assert_shape(item, MIRROR_JOB_VIEW)
        assert (
            item["source_image_ref"]
            == f"{regs.source.host}/{repo}:{item['target_image_ref'].rpartition(':')[2]}"
        )
        detail = client.get(f"/api/v1/mirror/jobs/{item['id']}").json()
        assert_shape(detail, {**MIRROR_JOB_VIEW, "log_text": (str, type(None))})
        assert "xray scan requested" in detail["log_text"]
        assert client.get("/api/v1/mirror/jobs/999").json() == {"detail": "unknown mirror job: 999"}
        assert client.get("/api/v1/mirror/jobs", params={"limit": 0}).status_code == 422
        assert client.get("/api/v1/mirror/jobs", params={"status": "stuck"}).status_code == 422
        assert client.get("/api/v1/mirror/jobs", params={"destination": "nope"}).status_code == 404

        resolved = client.get(
            "/api/v1/catalog/codecollections/rw-cli/resolve",
            params={"pointer": "latest", "destination": "acme-jfrog"},
        ).json()
        assert resolved["target_image_ref"] == f"{regs.artifactory.host}/{key}/codecollections/rw-cli:{MAIN}"
        assert (resolved["destination"], resolved["target_digest"]) == ("acme-jfrog", main.digest)
        unknown = client.get(
            "/api/v1/catalog/codecollections/rw-cli/resolve",
            params={"pointer": "latest", "destination": "nope"},
        )
        assert (unknown.status_code, unknown.json()) == (404, {"detail": "unknown destination: nope"})

        trigger = client.post("/api/v1/mirror/destinations/acme-jfrog/sync")
        assert trigger.status_code == 401
        trigger = client.post(
            "/api/v1/mirror/destinations/acme-jfrog/codecollections/rw-cli/sync", headers=bearer()
        )
        assert trigger.status_code == 202
        assert_shape(trigger.json(), TRIGGER)
        assert (trigger.json()["jobs_enqueued"], trigger.json()["refs_already_mirrored"]) == (0, 2)
        assert client.post("/api/v1/mirror/destinations/nope/sync", headers=bearer()).status_code == 404
        drained = client.post("/api/v1/mirror/drain", params={"workers": 2}, headers=bearer())
        assert (drained.status_code, drained.json()) == (
            200,
            {"jobs_run": 0, "jobs_succeeded": 0, "jobs_failed": 0},
        )
        assert (
            client.post("/api/v1/mirror/drain", params={"workers": 33}, headers=bearer()).status_code == 422
        )
        reloaded = client.post("/api/v1/admin/reload-config", headers=bearer()).json()
        assert reloaded["destinations"] == 1

        # every mirror path of the OpenAPI document answers as it documents
        doc = client.get("/api/openapi.json").json()
        values = {"name": "acme-jfrog", "slug": "rw-cli", "id": str(item["id"])}
        checked = 0
        for path, method, operation in documented(doc):
            if path.startswith("/api/v1/mirror/"):
                response = client.request(method, path.format(**values), headers=bearer())
                assert response.status_code in (200, 202), (path, response.text)
                check_against_doc(doc, operation, response)
                checked += 1
        assert checked == 6


def test_serves_scheduler_mirrors_on_its_own_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, str], regs: Registries
) -> None:
    from tests.test_scheduler import service_for

    repo, main, _ = push_builds(regs.source)
    key = f"k{uuid.uuid4().hex[:8]}"
    config_path = write_config(tmp_path, regs.source, repo, jfrog(regs.artifactory, key))
    target_repo = f"{key}/codecollections/rw-cli"
    with service_for(load_config(config_path, environ=env), environ=env) as service:
        scheduler = service.start_scheduler(git_minutes=0, catalog_minutes=1, unit=0.05)
        assert scheduler is not None
        assert len(scheduler.threads) == 2  # the image poll and the mirror runs (every 5 "minutes")
        wait_until(
            lambda: manifest_digest(regs.destination, target_repo, MAIN) == main.digest, what="the mirror run"
        )
        wait_until(
            lambda: service.api.store.list_destinations()["acme-jfrog"].mirrored_tag_count == 2, what="both"
        )
    assert tag_is_whole(regs.destination, target_repo, MAIN) is True


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.0, 0.2])
def test_a_sync_killed_while_copying_leaves_no_broken_tag_and_the_next_sync_completes(
    after: float, tmp_path: Path, env: dict[str, str], regs: Registries
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = f"org/big-{uuid.uuid4().hex[:8]}"
    build = push_build(regs.source, repo, MAIN, base=["os", "py", "libs"], own=repo, size=3 * 1024 * 1024)
    key = f"k{uuid.uuid4().hex[:8]}"
    config_path = write_config(tmp_path, regs.source, repo, jfrog(regs.artifactory, key))
    state = load_config(config_path, environ=env).state.path
    target_repo = f"{key}/codecollections/rw-cli"
    argv = [sys.executable, "-m", "cccatalog", "sync", "-c", str(config_path), "--no-git"]
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not (state.exists() and _running_job(state)):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(after)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    assert tag_is_whole(regs.destination, target_repo, MAIN) in (None, True)  # never a tag naming nothing

    assert run(["sync", "-c", str(config_path), "--no-git"]) == 0
    assert tag_is_whole(regs.destination, target_repo, MAIN) is True
    assert manifest_digest(regs.destination, target_repo, MAIN) == build.digest
    with Store.open(state) as store:
        total, [job] = store.list_mirror_jobs()
        assert (total, job.status, job.attempts) == (1, "done", 2)


def _running_job(state: Path) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as conn:
            return (
                conn.execute("SELECT 1 FROM cccatalog_mirror_jobs WHERE status = 'running'").fetchone()
                is not None
            )
    except sqlite3.Error:
        return False


@pytest.mark.security
def test_a_destinations_token_never_reaches_the_origin_its_blobs_are_sent_to(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    regs: Registries,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.imagefixtures import OtherOriginFront

    token = "dest-token-" + uuid.uuid4().hex
    monkeypatch.setenv("DST_TOKEN", token)
    env = {**env, "DST_TOKEN": token}
    repo, main, _ = push_builds(regs.source)
    config = catalog_only(tmp_path, regs.source, repo, capsys)
    front = OtherOriginFront(regs.destination, token)
    try:
        destination = (
            f"  - name: fronted\n    type: registry\n    registry: {front.host}/fronted\n"
            "    auth: {token_env: DST_TOKEN}\n"
        )
        store, errors = mirror(config, destination, env)
        with store:
            assert errors == []
            assert {t.target_digest for t in store.mirror_targets()} >= {main.digest}
    finally:
        front.stop()
    assert manifest_digest(regs.destination, "fronted/rw-cli", MAIN) == main.digest
    to_storage = [seen for seen in front.seen if seen.origin == "storage"]
    assert to_storage  # blobs and uploads did go to the other origin
    assert all(seen.authorization is None for seen in to_storage)
    assert {seen.authorization for seen in front.seen if seen.origin == "front"} <= {f"Bearer {token}", None}


def test_a_copy_past_per_job_timeout_fails_before_its_tag_and_the_next_attempt_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, str], regs: Registries
) -> None:
    from dataclasses import replace

    from cccatalog.destinations.run import Mirrorer, enqueue

    repo, main, _ = push_builds(regs.source)
    config_path = catalog_only(tmp_path, regs.source, repo, capsys)
    key = f"k{uuid.uuid4().hex[:8]}"
    config_path.write_text(
        config_path.read_text().replace(
            "destinations:\n  []\n", "destinations:\n" + jfrog(regs.artifactory, key)
        )
    )
    config = load_config(config_path, environ=env)
    # no time at all (the config refuses less than 10 s): every copy is past its deadline after one blob
    hurried = replace(config, scheduler=replace(config.scheduler, per_job_timeout_seconds=0))
    target_repo = f"{key}/codecollections/rw-cli"
    with Store.open(config.state.path) as store:
        enqueue(store, hurried)
        ran = Mirrorer(hurried, store, environ=env, redactor=Redactor()).drain(holds_lock=True)
        assert [status for _, status in ran] == ["pending", "pending"]
        failed = store.get_mirror_job(ran[0][0].id)
        assert failed is not None
        assert "ran past per_job_timeout_seconds (0 s)" in str(failed.last_error)
        assert manifest_digest(regs.destination, target_repo, MAIN) is None  # no tag naming a missing blob

        ran = Mirrorer(config, store, environ=env, redactor=Redactor()).drain(holds_lock=True)
        assert [status for _, status in ran] == ["done", "done"]
    assert manifest_digest(regs.destination, target_repo, MAIN) == main.digest
    assert tag_is_whole(regs.destination, target_repo, MAIN) is True


@pytest.mark.slow
def test_on_a_terminal_sync_shows_the_git_bar_then_a_copy_bar_per_image(
    tmp_path: Path, env: dict[str, str], regs: Registries, make_upstream: Callable[[str], Upstream]
) -> None:
    import os
    import pty
    import subprocess
    import sys

    repo, _, _ = push_builds(regs.source)
    key = f"k{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, regs.source, repo, jfrog(regs.artifactory, key))
    upstream = make_upstream("rw-cli")
    config.write_text(
        config.read_text()
        .replace("git: {enabled: false, data_dir: mirrors}", "git: {enabled: true, data_dir: mirrors}")
        .replace(
            "{slug: rw-cli, image_registry:", f"{{slug: rw-cli, git_url: '{upstream.url}', image_registry:"
        )
    )
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cccatalog", "sync", "-c", str(config)],
        env={**os.environ, **env, "COLUMNS": "160", "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(60) == 0, seen.decode(errors="replace")[-2000:]
    text = seen.decode(errors="replace")
    assert "Traceback" not in text
    assert "sync" in text  # the git half's bar
    assert "copy" in text  # a bar per image copied, named after it
    assert f"{regs.source.host}/{repo}" in text


@pytest.fixture
def pg_state(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> str:
    """The state in a new PostgreSQL database, as a replica's environment names it."""
    monkeypatch.setenv("CCCATALOG_STATE_URL", pg_url)
    return pg_url


def test_mirroring_with_the_state_on_postgresql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, str], regs: Registries, pg_state: str
) -> None:
    pg_url = pg_state
    repo, main, release = push_builds(regs.source)
    key = f"k{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, regs.source, repo, jfrog(regs.artifactory, key))

    code, report, err = sync(config, capsys)

    assert code == 0, err
    summaries = report["destinations"]
    assert isinstance(summaries, list)
    assert (summaries[0]["copied"], summaries[0]["failed"]) == (2, 0)
    with Store.open(pg_url) as store:
        assert {t.target_digest for t in store.mirror_targets(slug="rw-cli")} == {main.digest, release.digest}
        assert store.list_mirror_jobs(status="done")[0] == 2
    assert tag_is_whole(regs.destination, f"{key}/codecollections/rw-cli", RELEASE) is True
