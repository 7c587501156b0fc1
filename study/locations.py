"""Where a study keeps its records: the checks of its storage, artifact store, Ray address and
MLflow tracking URI, and the tracking URI made absolute (a study found from another folder opens
the same store)."""

from __future__ import annotations

import base64
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from study import schema
from trainables.config import shown
from trainables.storage import is_uri

TRACKING_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql", "http", "https"}
OBJECT_STORES = ("s3", "gs", "abfs", "hdfs")  # pyarrow.fs.FileSystem.from_uri's schemes


def check_locations(spec: schema.SpecModel, errors: list[str]) -> None:
    """storage, artifact_store, address and tracking_uri: places a study can use."""
    for key in ("storage", "artifact_store"):
        value = getattr(spec, key)
        scheme = value.partition("://")[0] if value is not None and is_uri(value) else None
        if scheme is not None and (scheme not in OBJECT_STORES or not value.partition("://")[2]):
            errors.append(
                f"{key}: {shown(value)} is not an object-store URI pyarrow opens; use "
                f"{' or '.join(f'{s}://BUCKET/PREFIX' for s in OBJECT_STORES)}, or a folder "
                "mounted at the same path on every node"
            )
        elif value is not None and not value.strip():
            errors.append(f"{key}: {shown(value)} is blank; give a folder, or leave the key out")
    address = spec.address or os.environ.get("RAY_ADDRESS") or ""
    if address.startswith("ray://"):
        errors.append(
            f"address: {shown(address)} is a Ray Client address, whose Tune driver would run on "
            "the head node with this machine's paths; submit the study as a job instead: ray job "
            "submit --address http://HEAD:8265 --working-dir . -- study run SPEC"
        )
    check_tracking_uri(spec.tracking_uri, errors)


def check_tracking_uri(uri: Any, errors: list[str]) -> None:
    """A tracking URI MLflow can open: sqlite at an absolute path whose folder exists or can be
    made, a SQL database, or an http(s) server that answers."""
    if uri is None:
        return
    if not isinstance(uri, str):
        errors.append(f"tracking_uri: expected a URI string, got {shown(uri)}")
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        errors.append(
            f"tracking_uri: unsupported scheme in {shown(uri)}; use one of "
            f"{sorted(TRACKING_SCHEMES)} (e.g. sqlite:////abs/path/mlflow.db or http://host:5000)"
        )
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None and not _can_create(path.parent):
            errors.append(
                f"tracking_uri: cannot create the SQLite store {shown(str(path))} (its folder "
                "cannot be made or written); give a writable path"
            )
    elif scheme in ("http", "https"):
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=5).close()
        except OSError:
            errors.append(
                f"tracking_uri: no MLflow server answers at {shown(uri)}; start it "
                "(study server, or mlflow server --host 127.0.0.1 --port 5000) or fix the URI"
            )
            return
        if _login_refused(uri):
            errors.append(
                f"tracking_uri: the MLflow server at {shown(uri)} refused the login; set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (study server prints "
                "where its admin password is)"
            )


def _login_refused(uri: str) -> bool:
    """Whether the server at uri answers 401 to a read with the environment's MLflow login (none:
    no login asked, or another error the client reports itself)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    request = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    )
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False
    return False


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// URI (relative paths against the working folder), None for an
    in-memory database."""
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:]).expanduser().absolute()


def absolute_tracking_uri(uri: str | None) -> str | None:
    """A sqlite URI with a relative path made absolute (a study found from another folder must
    open the same file); other URIs unchanged."""
    if uri is None or not uri.startswith("sqlite"):
        return uri
    path = sqlite_path(uri)
    return uri if path is None else f"{uri.split('://', 1)[0]}:///{path}"


def _can_create(folder: Path) -> bool:
    """Whether a file could be created in folder: its nearest existing ancestor is a folder this
    user can write in (probed with a temporary file, which is removed)."""

    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            return True
    except OSError:
        return False
