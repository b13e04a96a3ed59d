"""The release image, exercised as far as a machine without a docker engine allows.

From examples/Dockerfile's own text: the runtime stage's RUN (the /data volume's owner and modes) runs
with its paths moved under a temporary root; mirrors are baked by the binary from local upstreams of
the very collections `config.airgap.yaml` lists, and left as the bake stage leaves them (root-owned,
read-only to others). Then the ENTRYPOINT + CMD run as the image's USER (setpriv, uid 10001, group 0)
with the image's ENV, `check` passes on that air-gapped layout, a `git clone` goes through, and the
HEALTHCHECK's own CMD passes against the running server, fails while the server is stopped (SIGSTOP)
and passes again after SIGCONT. The binary is the one the build stage made (tests/binaryfixtures.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.binaryfixtures import Binary
from tests.dockerfile import Stage, stages
from tests.gitfixtures import GIT_ENV, Upstream, git

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.binary,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to switch uid"
    ),
]

ROOT = Path(__file__).resolve().parent.parent
AIRGAP = ROOT / "examples" / "config.airgap.yaml"


def _runtime() -> Stage:
    return list(stages().values())[-1]


def _env_of(stage: Stage) -> dict[str, str]:
    env = {}
    for instruction in stage.all("ENV"):
        name, _, value = instruction.args.partition("=")
        env[name] = value
    return env


@pytest.fixture
def image_root(binary: Binary) -> Iterator[Path]:
    """A world-readable directory standing in for the image's filesystem root."""
    root = Path(tempfile.mkdtemp(prefix="cccatalog-image-"))
    try:
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _moved(text: str, root: Path) -> str:
    """The image's absolute paths, under `root`."""
    for path in ("/opt/cc-catalog", "/data", "/etc/cccatalog"):
        text = text.replace(path, f"{root}{path}")
    return text


def test_the_image_runs_as_its_user_and_its_healthcheck_asks_the_server(
    binary: Binary, image_root: Path
) -> None:
    runtime = _runtime()
    env_image = {k: _moved(v, image_root) for k, v in _env_of(runtime).items()}
    (user,) = [i.args for i in runtime.all("USER")]
    uid = int(user)
    system_path = ":".join(
        dict.fromkeys(str(Path(shutil.which(t) or t).parent) for t in ("git", "ssh-keygen"))
    )
    base_env = {"PATH": f"{binary.bindir}:{system_path}", "LC_ALL": "C.UTF-8", **GIT_ENV}

    # The bake stage's result: the airgap config's collections, from local upstreams, root-owned.
    airgap = yaml.safe_load(AIRGAP.read_text())
    slugs = [cc["slug"] for source in airgap["sources"] for cc in source["codecollections"]]
    upstreams = {slug: Upstream(image_root / "upstreams" / slug) for slug in slugs}
    bake_config = image_root / "bake.yaml"
    collections = [{"slug": s, "git_url": u.url} for s, u in upstreams.items()]
    bake_config.write_text(
        yaml.safe_dump(
            {
                "git": {"enabled": True, "data_dir": str(image_root / "bake-state")},
                "sources": [{"name": "local", "type": "static", "codecollections": collections}],
            }
        )
    )
    mirrors = Path(_moved("/opt/cc-catalog/git", image_root))
    bake = subprocess.run(
        ["cccatalog", "bake", "-c", str(bake_config), "--dest", str(mirrors)],
        env={**base_env, "HOME": str(image_root)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bake.returncode == 0, bake.stderr
    subprocess.run(["chmod", "-R", "u=rwX,go=rX", str(mirrors)], check=True)  # as the bake RUN does

    # The runtime stage: its config in place, then its own RUN (paths moved under the root).
    config = Path(env_image["CCCATALOG_CONFIG"])
    config.parent.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config.write_text(_moved(AIRGAP.read_text(), image_root).replace("host: 0.0.0.0", "host: 127.0.0.1"))
    (run,) = runtime.all("RUN")
    subprocess.run(["/bin/sh", "-c", _moved(run.args, image_root)], check=True)
    assert (image_root / "data" / "cccatalog").stat().st_uid == uid

    # CCCATALOG_PORT moves the port (8080 may be taken here); serve and the health check both read it.
    env = {**base_env, **env_image, "CCCATALOG_PORT": str(port)}
    as_user = ["setpriv", f"--reuid={uid}", "--regid=0", "--clear-groups"]

    def as_image_user(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_user, *argv], env=env, cwd="/", capture_output=True, text=True, timeout=timeout, check=False
        )

    check = as_image_user("cccatalog", "check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    checks = {c["subject"]: c for c in json.loads(check.stdout)["checks"]}
    assert "read-only, as baked mirrors are" in checks["git.data_dir"]["detail"]

    (healthcheck,) = runtime.all("HEALTHCHECK")
    health_cmd: list[str] = json.loads(healthcheck.args.partition("CMD")[2])
    entry = [*runtime.all("ENTRYPOINT")[-1].words(), *runtime.all("CMD")[-1].words()]
    log = (image_root / "serve.log").open("wb")
    proc = subprocess.Popen(
        [*as_user, *entry], env=env, cwd="/", stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while (probe := as_image_user(*health_cmd)).returncode != 0:
            assert proc.poll() is None, (image_root / "serve.log").read_text()
            assert time.monotonic() < deadline, probe.stderr + (image_root / "serve.log").read_text()
            time.sleep(0.2)
        assert probe.stdout.splitlines()[0] == "200"
        assert Path(f"/proc/{proc.pid}").stat().st_uid == uid  # the entrypoint runs as the image's user
        clone = image_root / "clone"
        git("clone", "-q", f"http://127.0.0.1:{port}/git/{slugs[0]}.git", str(clone))
        assert git("rev-parse", "HEAD", cwd=clone) == upstreams[slugs[0]].sha("main")

        os.killpg(proc.pid, signal.SIGSTOP)  # a hung server: the kernel still accepts connections
        try:
            stopped = as_image_user(*health_cmd)
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        assert stopped.returncode == 1
        assert "no answer within" in stopped.stderr
        assert as_image_user(*health_cmd).returncode == 0

        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, (image_root / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
