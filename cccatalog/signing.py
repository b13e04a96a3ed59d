"""SSH signatures over manifests: the one place that runs `ssh-keygen`.

A manifest is signed with `ssh-keygen -Y sign` (the format git uses for signed commits, checked by
any OpenSSH 8.2+) and checked with `ssh-keygen -Y verify` against an allowed-signers file. Nothing
is fetched and no key server is asked. Only paths go into argv: a private key stays in its file (or
in the agent named by SSH_AUTH_SOCK). ssh-keygen runs with an explicit environment, no terminal and
no standard input it could prompt on, so a passphrase-protected key fails instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from cccatalog.errors import UsageError

# Signatures of cccatalog manifests (baked, exported) are valid only in this namespace, so a signature
# the same key made for a git commit or a file of another tool cannot be passed off as one.
NAMESPACE = "cccatalog-manifest"
_TIMEOUT = 60
_INHERITED = ("PATH", "HOME", "SSH_AUTH_SOCK", "TMPDIR")


class SignatureError(UsageError):
    """A signature is missing, wrong, or made by a key the allowed signers do not list."""


def _environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: environ[k] for k in _INHERITED if k in environ}
    env.setdefault("PATH", os.defpath)
    env["LC_ALL"] = "C"
    return env


def _ssh_keygen(
    args: list[str], *, environ: Mapping[str, str], stdin: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = _environment(environ)
    binary = shutil.which("ssh-keygen", path=env["PATH"])
    if binary is None:
        raise UsageError("ssh-keygen is not installed (Debian: apt-get install openssh-client)")
    with stdin.open("rb") if stdin else open(os.devnull, "rb") as source:
        try:
            return subprocess.run(
                [binary, *args],
                stdin=source,
                capture_output=True,
                env=env,
                timeout=_TIMEOUT,
                start_new_session=True,
                check=False,
                text=True,
                errors="replace",
            )
        except subprocess.TimeoutExpired:
            raise SignatureError(f"ssh-keygen {args[1]} did not finish within {_TIMEOUT}s") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def sign(path: Path, key: Path, *, environ: Mapping[str, str]) -> Path:
    """Sign `path` with the private key file `key` (or, given a `.pub`, its key in the ssh-agent).
    Returns the signature file, `<path>.sig`."""
    if not key.is_file():
        raise UsageError(f"--sign-key {key}: no such file")
    signature = path.with_name(path.name + ".sig")
    signature.unlink(missing_ok=True)  # ssh-keygen would ask whether to overwrite it
    done = _ssh_keygen(["-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(path)], environ=environ)
    if done.returncode != 0 or not signature.is_file():
        raise SignatureError(f"--sign-key {key}: ssh-keygen could not sign: {_last_line(done.stderr)}")
    return signature


def verify(
    path: Path,
    signature: Path,
    allowed_signers: Path,
    *,
    signer: str | None,
    environ: Mapping[str, str],
    what: str,
) -> str:
    """Check that `signature` is a good signature of `path` by `signer` (or by any principal the
    allowed-signers file lists, when None). Returns the principal; raises SignatureError."""
    if not allowed_signers.is_file():
        raise UsageError(f"allowed signers file {allowed_signers}: no such file")
    if not signature.is_file():
        raise SignatureError(f"{what} is not signed ({signature.name} is missing)")
    if signer is None:
        found = _ssh_keygen(
            ["-Y", "find-principals", "-f", str(allowed_signers), "-s", str(signature)], environ=environ
        )
        principals = [p.strip() for p in found.stdout.splitlines() if p.strip()]
        if found.returncode != 0 or not principals:
            raise SignatureError(f"{what} is signed by a key that {allowed_signers} does not list")
    else:
        principals = [signer]
    detail = ""
    for principal in principals:
        checked = _ssh_keygen(
            [
                "-Y",
                "verify",
                "-f",
                str(allowed_signers),
                "-I",
                principal,
                "-n",
                NAMESPACE,
                "-s",
                str(signature),
            ],
            environ=environ,
            stdin=path,
        )
        if checked.returncode == 0:
            return principal
        detail = _last_line(checked.stderr or checked.stdout)
    if "namespace" in detail.lower():
        # the key is right and the bytes are unchanged: the signature was made for something else
        # (a git commit, another tool's file), which must not pass for a manifest signature
        raise SignatureError(
            f"{what} carries a signature made for another purpose (not in the {NAMESPACE!r} namespace): "
            f"sign it with cccatalog (export --sign-key), not ssh-keygen -n <other>: {detail}"
        )
    if signer is not None and "incorrect signature" not in detail.lower():
        raise SignatureError(f"{what} is not signed by {signer} (the key in {allowed_signers}): {detail}")
    raise SignatureError(f"{what} does not match its signature (changed after signing?): {detail}")


def check_sign_key(key: Path, *, environ: Mapping[str, str]) -> None:
    """Refuse, before anything is locked or written, a `--sign-key` that cannot sign: a missing file,
    a file that is no SSH key, or a private key with a passphrase (nobody can type it in a batch
    job: load it into ssh-agent and pass its `.pub`)."""
    if not key.is_file():
        raise UsageError(f"--sign-key {key}: no such file")
    if key.suffix == ".pub":
        done = _ssh_keygen(["-l", "-f", str(key)], environ=environ)
        if done.returncode != 0:
            raise UsageError(f"--sign-key {key}: not an SSH public key ({_last_line(done.stderr)})")
        return
    done = _ssh_keygen(["-y", "-P", "", "-f", str(key)], environ=environ)
    if done.returncode == 0:
        return
    reason = _last_line(done.stderr)
    if "passphrase" in reason.lower():
        raise UsageError(
            f"--sign-key {key}: the key has a passphrase; load it into ssh-agent (ssh-add) and pass its .pub"
        )
    raise UsageError(f"--sign-key {key}: not an SSH private key ({reason})")


_KEY_TYPES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")


def _is_public_key(key_type: str, encoded: str) -> bool:
    """`encoded` is base64 of an SSH public key blob whose own type string is `key_type`."""
    import base64
    import binascii

    if not key_type.startswith(_KEY_TYPES):
        return False
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    size = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + size] == key_type.encode() and len(blob) > 4 + size


def allowed_signers_problem(text: str) -> str | None:
    """Why `text` is not an allowed-signers file (ssh-keygen(1), ALLOWED SIGNERS), or None: every
    line that is not blank or a comment is `principals [options] keytype base64-key [comment]`."""
    signers = 0
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if not any(_is_public_key(words[i], words[i + 1]) for i in range(1, len(words) - 1)):
            return f"line {number} is not 'principals [options] key-type base64-key' with a valid SSH key"
        signers += 1
    if signers == 0:
        return "no signer in it: every signed update would be refused"
    return None
