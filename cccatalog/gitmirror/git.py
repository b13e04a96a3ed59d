"""The one place that starts git for mirroring: argv lists, an explicit environment, timeouts, redaction.

Configuration that carries secrets (the Authorization header) reaches git only through
GIT_CONFIG_COUNT/GIT_CONFIG_KEY_n/GIT_CONFIG_VALUE_n, never argv (visible in `ps`) or repo config.
Every git runs in a process group of its own, registered in a `ChildGroups` while it runs, so that it
ends with this process however that ends (see `children.py`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cccatalog.errors import GitError
from cccatalog.gitmirror.children import CHILDREN, ChildGroups
from cccatalog.gitmirror.deadlines import Watchdog
from cccatalog.redact import Redactor

# What git may inherit from the caller's environment: proxies, CA bundles, ssh setup. Everything
# else (GIT_DIR, GIT_CONFIG_*, REMOTE_USER, ...) is dropped so the caller cannot change what runs.
INHERITED_ENV = (
    "PATH",
    "HOME",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "GIT_SSL_NO_VERIFY",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_SSH_VARIANT",
    "SSH_AUTH_SOCK",
)

STDERR_TAIL_LINES = 8

log = logging.getLogger("cccatalog.git")
# A trace of the HTTP headers git sends and receives, on stderr, with Authorization and cookies
# masked by git itself (GIT_TRACE_REDACT): how a refused redirect's Location is learnt.
HTTP_TRACE_ENV = {"GIT_TRACE_CURL": "2", "GIT_TRACE_CURL_NO_DATA": "1", "GIT_TRACE_REDACT": "1"}


@dataclass(frozen=True, slots=True)
class GitResult:
    returncode: int
    stdout: str
    stderr: str


def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment every git process starts from."""
    env = {k: environ[k] for k in INHERITED_ENV if k in environ}
    env.setdefault("PATH", os.defpath)
    env.update(
        {
            "LC_ALL": "C",  # stable, parseable messages
            "GIT_TERMINAL_PROMPT": "0",  # a missing credential must fail, not hang a cron job
            "GCM_INTERACTIVE": "never",
        }
    )
    return env


def config_env(config: Mapping[str, str]) -> dict[str, str]:
    """`-c key=value` equivalents as environment variables, invisible to `ps`."""
    env = {"GIT_CONFIG_COUNT": str(len(config))}
    for i, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


class Git:
    """Runs git. Holds the base environment and the redactor every message passes through."""

    def __init__(
        self,
        *,
        redactor: Redactor,
        environ: Mapping[str, str] | None = None,
        binary: str = "git",
        children: ChildGroups = CHILDREN,
    ) -> None:
        self.redactor = redactor
        self.binary = binary
        self.children = children
        self._env = base_environment(os.environ if environ is None else environ)
        # Looked up once in the PATH git will get, not by every spawn walking it entry by entry
        # (a relative find depends on the cwd of each run: those are still looked up per run).
        found = binary if os.sep in binary else shutil.which(binary, path=self._env["PATH"])
        self._executable = found if found and os.path.isabs(found) else None
        self._watchdog = Watchdog()

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        config: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        stdin: str | None = None,
        trace_http: bool = False,
    ) -> GitResult:
        return self.start(
            args, cwd=cwd, config=config, timeout=timeout, check=check, stdin=stdin, trace_http=trace_http
        ).result()

    def start(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        config: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        stdin: str | None = None,
        trace_http: bool = False,
    ) -> GitRun:
        """Start git and return at once, so it can run beside another; `result()` waits for it.

        `trace_http`: git writes the HTTP headers of its requests and answers to stderr (masked).
        """
        if self.children.stopping:
            raise GitError(
                f"git {_subcommand(args)} not started: cccatalog is stopping ({self.children.stopping})"
            )
        env = dict(self._env)
        env.update(config_env(config or {}))
        if trace_http:
            env.update(HTTP_TRACE_ENV)
        argv = [self.binary, *args]
        # A session of its own, so a timeout can kill git's helpers (remote-https, upload-pack) too.
        proc = subprocess.Popen(
            argv,
            executable=self._executable,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.children.add(proc.pid)
        return GitRun(
            argv,
            proc,
            children=self.children,
            redactor=self.redactor,
            watchdog=self._watchdog,
            timeout=timeout,
            check=check,
            stdin=stdin,
        )


class GitRun:
    """One started git process. Always call `result()`: it reaps the process (once; then it repeats)."""

    def __init__(
        self,
        argv: list[str],
        proc: subprocess.Popen[str],
        *,
        children: ChildGroups,
        redactor: Redactor,
        watchdog: Watchdog,
        timeout: float | None,
        check: bool,
        stdin: str | None,
    ) -> None:
        self._argv = argv
        self._proc = proc
        self._children = children
        self._redactor = redactor
        self._watchdog = watchdog
        self._expired = watchdog.watch(proc, timeout)
        self._timeout = timeout
        self._check = check
        self._stdin = stdin
        self._outcome: tuple[str, str] | None = None
        self._started = time.monotonic()

    def result(self) -> GitResult:
        proc = self._proc
        if self._outcome is None:
            # A blocking communicate() and a watchdog, not communicate(timeout=...): with a timeout
            # CPython polls waitpid with growing sleeps, which costs about 0.6 ms on every git call.
            try:
                self._outcome = proc.communicate(self._stdin)
            finally:
                self._watchdog.forget(self._expired)
                if proc.returncode is not None:
                    self._children.discard(proc.pid)
        stdout, stderr = self._outcome
        name = _subcommand(self._argv[1:])
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s -> exit %s (%.0f ms)",
                self._redactor(" ".join(self._argv)),
                proc.returncode,
                (time.monotonic() - self._started) * 1000,
            )
        stopping = self._children.stopping
        if stopping and proc.returncode < 0:
            raise GitError(
                f"git {name} was stopped: cccatalog is stopping ({stopping})",
                command=self._redactor(" ".join(self._argv)),
            )
        if self._expired.is_set():
            raise GitError(
                f"git {name} timed out after {self._timeout:.0f}s (raise it in the config if need be)",
                command=self._redactor(" ".join(self._argv)),
            )
        result = GitResult(proc.returncode, stdout, self._redactor(stderr))
        if self._check and result.returncode != 0:
            raise GitError(
                f"git {name} failed (exit {result.returncode}): {summarize_stderr(result.stderr)}",
                command=self._redactor(" ".join(self._argv)),
                stderr=result.stderr,
            )
        return result


def _subcommand(args: Sequence[str]) -> str:
    """The git command name in argv, past global options like `-C <dir>`."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("-C", "-c", "--git-dir") else rest[1:]
    return rest[0] if rest else "git"


def summarize_stderr(stderr: str) -> str:
    """The last meaningful lines of git's stderr, on one line: `fatal:`/`error:` lines win."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    important = [ln for ln in lines if ln.startswith(("fatal:", "error:", "remote: error", "ssh:"))]
    chosen = (important or lines)[-STDERR_TAIL_LINES:]
    return "; ".join(chosen) or "no error output"
