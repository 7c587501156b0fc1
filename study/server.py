"""`study server`: the team's MLflow tracking server on a SQL database (SQLite in its store by
default, PostgreSQL for a team: `pip install '.[server]'`), run artifacts served from its store,
and MLflow's basic-auth app on by default.

Logins: the admin user `admin`, its password from MLFLOW_AUTH_ADMIN_PASSWORD or, without it, from
`<store>/admin-password` (written with mode 600 on the first start; refused if others can read it).
MLflow creates the admin user on the first start against an empty user store and ignores the
password after that (change it with MLflow's update-password API). Clients (a study's driver, the
UI's browser) log in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. Every check here
runs before the server starts; a failing one is a StudyError (exit 2, one line).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from study.errors import StudyError
from study.runner import check_writable

SERVER_BACKENDS = ("sqlite", "postgresql", "mysql")
ADMIN_USER = "admin"
PASSWORD_FILE = "admin-password"
PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"  # what MLflow's auth app itself reads
AUTH_CONFIG = """[mlflow]
default_permission = READ
database_uri = {database}
admin_username = {user}
admin_password = {password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


@dataclass
class ServerLaunch:
    """What `study server` starts: the command line, its environment, and what it tells the user."""

    cmd: list[str]
    env: dict[str, str]
    store: Path
    login: str  # how a client logs in ('' without authentication)


def check_port(host: str, port: int) -> None:
    """StudyError unless port is 1-65535 and free on host."""
    if not 1 <= port <= 65535:
        raise StudyError(f"--port must be 1-65535, got {port}")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise StudyError(
                f"cannot listen on {host}:{port} (in use or not this machine's address); "
                "choose another --port"
            ) from None


def _redacted(uri: str) -> str:
    """The URI without its password."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    return uri.replace(f":{parsed.password}@", ":***@", 1)


def check_backend(backend: str) -> None:
    """StudyError unless backend is a SQL URI of a kind the server takes, its driver is installed
    and (for a database server) it answers within 5 s."""
    scheme = backend.split(":", 1)[0].split("+")[0]
    if scheme not in SERVER_BACKENDS:
        raise StudyError(
            f"--backend {_redacted(backend)!r}: use a SQL database URI "
            f"({', '.join(SERVER_BACKENDS)}), e.g. postgresql://user@host/mlflow, or leave it out "
            "for SQLite in --store"
        )
    if scheme == "sqlite":
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(backend, connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
    except ModuleNotFoundError as exc:
        raise StudyError(
            f"--backend {scheme}: its driver {exc.name} is not installed; pip install '.[server]'"
        ) from None
    except Exception as exc:  # sqlalchemy's OperationalError and the drivers' own
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
        raise StudyError(
            f"cannot reach the database {_redacted(backend)} ({first}); start it or fix --backend"
        ) from None


def admin_password(store: Path) -> tuple[str, str]:
    """(password, where it came from): MLFLOW_AUTH_ADMIN_PASSWORD, else <store>/admin-password,
    made with mode 600 the first time. StudyError if that file is readable by others."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV], f"${PASSWORD_ENV}"
    path = store / PASSWORD_FILE
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise StudyError(
                f"the password file {path} can be read by others (mode {mode:o}); chmod 600 {path}"
            )
        return path.read_text().strip(), str(path)
    password = secrets.token_urlsafe(18)
    _write_private(path, password + "\n")
    return password, str(path)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 600 from its creation, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def server_launch(args: Any) -> ServerLaunch:
    """The checked `mlflow server` launch for `study server` (nothing started, the store made
    and, with authentication, its password and auth config written)."""
    if not 1 <= args.port <= 65535 or args.workers < 1:
        raise StudyError(
            f"--port must be 1-65535 and --workers >= 1, got {args.port} and {args.workers}"
        )
    store = Path(args.store).expanduser().resolve()
    check_writable(store, f"the server's store {store} is not writable; give --store a folder")
    backend = args.backend or f"sqlite:///{store / 'mlflow.db'}"
    check_backend(backend)
    check_port(args.host, args.port)
    store.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend]
    cmd += ["--artifacts-destination", str(store / "artifacts"), "--serve-artifacts"]
    cmd += ["--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    if args.no_auth:
        return ServerLaunch(cmd, env, store, "")
    if importlib.util.find_spec("flask_wtf") is None:
        raise StudyError(
            "the server's logins need MLflow's auth app (Flask-WTF is not installed): "
            "pip install '.[server]', or start it with --no-auth on a trusted network"
        )
    password, source = admin_password(store)
    config = store / "basic_auth.ini"
    _write_private(
        config,
        AUTH_CONFIG.format(
            database=f"sqlite:///{store / 'basic_auth.db'}", user=ADMIN_USER, password=password
        ),
    )
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", _secret_key(store))
    login = (
        f"logins: user {ADMIN_USER}, password in {source}; clients set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )
    return ServerLaunch(cmd + ["--app-name", "basic-auth"], env, store, login)


def _secret_key(store: Path) -> str:
    """The key Flask signs the UI's CSRF tokens with, kept in the store (mode 600) so that every
    worker and every restart agree."""
    path = store / "flask-secret-key"
    if not path.exists():
        _write_private(path, secrets.token_hex(32))
    return path.read_text().strip()
