"""Clear messages for the DVC remote: down, missing bucket, or missing credentials.

DVC's own errors for a ``gs://`` remote are cryptic: a missing bucket prints
``unexpected error - b/<bucket>/o``, a remote that is down retries for half a minute and
then prints an aiohttp repr, and a credentials file that does not exist is silently
taken for an access token. So ``imgclf push`` / ``imgclf pull`` (and ``make push`` /
``make pull``) check the remote first, in this order, each check cheap and offline
where it can be:

1. a remote is configured and its bucket is not the committed placeholder;
2. credentials can be found (``GOOGLE_APPLICATION_CREDENTIALS``, ``credentialpath``,
   gcloud's application-default login, or ``allow_anonymous_login`` for emulators);
3. the endpoint accepts a TCP connection (seconds, not DVC's 30 s of retries);
4. the bucket exists and can be listed with those credentials.

Only then does the real ``dvc push``/``dvc pull`` run; if it still fails, its output is
classified with the same rules (:func:`classify`).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PLACEHOLDER = "CHANGE-ME"
GCS_ENDPOINT = "https://storage.googleapis.com"
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RemoteProblem:
    """What is wrong with the remote, in words, and what to do about it."""

    kind: str  # no-remote | placeholder | credentials | unreachable | missing-bucket | permission
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}"


class RemoteError(RuntimeError):
    """Raised with a :class:`RemoteProblem` when the remote cannot be used."""

    def __init__(self, problem: RemoteProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class RemoteInfo:
    """The remote DVC would use, with its merged config (repo, --local, global)."""

    name: str
    url: str
    config: dict[str, Any]

    @property
    def is_gcs(self) -> bool:
        return self.url.startswith("gs://")

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def endpoint(self) -> str:
        """Where requests go: ``endpointurl``, the emulator variable, or Google's API."""
        if self.config.get("endpointurl"):
            return str(self.config["endpointurl"])
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            return emulator if "://" in emulator else f"http://{emulator}"
        return GCS_ENDPOINT


def remote_info(root: Path, name: str | None = None) -> RemoteInfo:
    """The named (or default) remote, as DVC's merged config sees it."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        config = repo.config
        name = name or config["core"].get("remote")
        remotes = config.get("remote", {})
    if not name or name not in remotes:
        raise RemoteError(
            RemoteProblem(
                "no-remote",
                f"no DVC remote {'named ' + repr(name) if name else 'is configured as default'}",
                "add one: dvc remote add -d gcs gs://<bucket>/dvcstore (docs/pull-requests.md)",
            )
        )
    conf = dict(remotes[name])
    return RemoteInfo(name=name, url=str(conf.get("url", "")), config=conf)


def _adc_file() -> Path:
    """gcloud's application-default credentials (``gcloud auth application-default login``)."""
    base = os.environ.get("CLOUDSDK_CONFIG") or str(Path.home() / ".config" / "gcloud")
    return Path(base) / "application_default_credentials.json"


def check_credentials(info: RemoteInfo) -> str:
    """Where the credentials come from, or a 'credentials' problem; never reads a secret."""
    if info.config.get("allow_anonymous_login"):
        return "anonymous (allow_anonymous_login: emulators and public buckets only)"
    for source, value in (
        ("credentialpath in the DVC config", info.config.get("credentialpath")),
        ("GOOGLE_APPLICATION_CREDENTIALS", os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")),
    ):
        if value:
            if not Path(value).expanduser().is_file():
                raise RemoteError(
                    RemoteProblem(
                        "credentials",
                        f"missing credentials: {source} points to {value}, which does not exist",
                        "point it at the service-account key file (JSON) you were given, or "
                        "unset it and run: gcloud auth application-default login",
                    )
                )
            return f"{source} ({value})"
    if _adc_file().is_file():
        return f"gcloud application-default login ({_adc_file()})"
    raise RemoteError(
        RemoteProblem(
            "credentials",
            f"missing credentials for {info.url}: GOOGLE_APPLICATION_CREDENTIALS is not set and "
            "there is no gcloud application-default login",
            "export GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json (a service-account key, "
            "never committed), or run: gcloud auth application-default login; in CI add the "
            "GCP_CREDENTIALS secret",
        )
    )


def _proxy_in_use() -> bool:
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "ALL_PROXY"))


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A plain TCP connect to the endpoint: fails in seconds where gcsfs retries for 30 s."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loopback = host in {"localhost", "127.0.0.1", "::1"}
    if _proxy_in_use() and not loopback:  # the proxy, not us, connects: let the request decide
        return
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise RemoteError(
            RemoteProblem(
                "unreachable",
                f"remote is down or unreachable: cannot connect to {host}:{port} ({exc})",
                "check the network (or that the storage emulator is running), and the "
                "endpointurl in .dvc/config / .dvc/config.local; retry when it is back",
            )
        ) from None


def check_bucket(root: Path, info: RemoteInfo) -> None:
    """List the bucket through DVC's own filesystem object (same config, same credentials)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        fs = repo.cloud.get_remote(info.name).fs
        try:
            fs.fs.ls(info.bucket, detail=False)
        except Exception as exc:
            problem = classify(f"{type(exc).__name__}: {exc}", info)
            if problem is None:
                raise
            raise RemoteError(problem) from None


def check_remote(root: Path, name: str | None = None) -> tuple[RemoteInfo, str]:
    """All checks in order; returns the remote and a one-line description of it."""
    info = remote_info(root, name)
    if PLACEHOLDER.lower() in info.url.lower():
        raise RemoteError(
            RemoteProblem(
                "placeholder",
                f"remote {info.name!r} still points at the placeholder bucket ({info.url})",
                f"set your team's bucket once: dvc remote modify {info.name} url "
                "gs://<your-bucket>/dvcstore (commit .dvc/config)",
            )
        )
    if not info.is_gcs:
        return info, f"remote {info.name!r} ({info.url}): not gs://, checked by dvc itself"
    creds = check_credentials(info)
    check_reachable(info.endpoint)
    check_bucket(root, info)
    return info, f"remote {info.name!r} ({info.url}) via {info.endpoint}: OK, credentials: {creds}"


_UNREACHABLE = re.compile(
    r"Cannot connect to host|Connection refused|Connect call failed|Name or service not known|"
    r"Temporary failure in name resolution|nodename nor servname|Network is unreachable|"
    r"ServerDisconnectedError|ConnectionResetError|timed out",
    re.IGNORECASE,
)
_CHECKOUT_FAILED = re.compile(r"Checkout failed for following targets")
_MISSING_FILES = re.compile(r"do not exist neither locally nor on remote|Missing cache files")
_MISSING_BUCKET = re.compile(
    r"b/[^/\s]+/o\b|NoSuchBucket|bucket does not exist|Not Found.*bucket", re.IGNORECASE
)
_CREDENTIALS = re.compile(
    r"DefaultCredentialsError|Could not automatically determine credentials|Anonymous caller|"
    r"Invalid Credentials|invalid_grant|\b401\b|Unauthorized|RefreshError|"
    r"oauth2\.googleapis\.com|tokeninfo",
    re.IGNORECASE,
)
_PERMISSION = re.compile(r"\b403\b|Forbidden|does not have storage\.", re.IGNORECASE)


def classify(text: str, info: RemoteInfo | None = None) -> RemoteProblem | None:
    """Turn an error text (a gcsfs exception, DVC's output) into a problem, or None."""
    where = f" {info.url}" if info else ""
    bucket = info.bucket if info else "<bucket>"
    if _MISSING_BUCKET.search(text):
        return RemoteProblem(
            "missing-bucket",
            f"missing bucket: gs://{bucket} does not exist (remote{where})",
            f"create it (gcloud storage buckets create gs://{bucket}) or fix the bucket name: "
            "dvc remote modify <remote> url gs://<bucket>/dvcstore",
        )
    if _CREDENTIALS.search(text):
        return RemoteProblem(
            "credentials",
            f"missing or invalid credentials for the remote{where}",
            "export GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json (a valid service-account "
            "key) or run: gcloud auth application-default login",
        )
    if _PERMISSION.search(text):
        return RemoteProblem(
            "permission",
            f"the credentials were accepted but may not use the bucket{where}",
            "grant the service account roles/storage.objectViewer on the bucket to pull, and "
            "roles/storage.objectCreator as well to push (docs/pull-requests.md)",
        )
    if _CHECKOUT_FAILED.search(text):
        missing = _MISSING_FILES.search(text) is not None
        return RemoteProblem(
            "checkout",
            "dvc pull could not check out some outputs: "
            + (
                "they are not in the remote"
                if missing
                else "what the remote sent does not hash to dvc.lock (with `verify = true` "
                "DVC refuses a changed or corrupted object), or it is not there"
            )
            + f" (remote{where})",
            "push the right files from a machine that has them (`make push`), or rebuild them "
            "(`dvc repro`); do not trust the remote's copy until then",
        )
    if _UNREACHABLE.search(text):
        return RemoteProblem(
            "unreachable",
            f"remote is down or unreachable{where}",
            "check the network (or that the storage emulator is running) and retry",
        )
    return None


def run_dvc(root: Path, command: str, args: list[str], remote: str | None = None) -> int:
    """``dvc push``/``dvc pull`` after :func:`check_remote`; a classified message on failure.

    Output is passed through as it arrives (progress bars included) and kept so that a
    failure can be explained.
    """
    info, line = check_remote(root, remote)
    print(line, file=sys.stderr)
    cmd = ["dvc", command, *(["-r", info.name] if remote else []), *args]
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    seen: list[str] = []
    for chunk in proc.stdout:
        sys.stdout.write(chunk)
        seen.append(chunk)
    code = proc.wait()
    if code != 0:
        problem = classify("".join(seen), info)
        if problem is not None:
            raise RemoteError(problem)
    return code
