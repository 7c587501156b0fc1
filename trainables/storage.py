"""Where a study's shared files live: a folder every node mounts at the same path, or an object
store (`s3://bucket/prefix`, `gs://...`: any URI `pyarrow.fs.FileSystem.from_uri` opens, the
filesystems Ray accepts as `storage_path`).

The platform's code works on local paths. For a URI, `Place.local` is this node's mirror of it
(`$SC_GUIDANCE_MIRROR/<scheme>-<bucket>-<hash>/<prefix>`, by default under
`~/.cache/sc-guidance/mirror`): `pull` copies a file or folder from the store into the mirror,
`push` copies what this process wrote back. An object is written by one PUT, so a reader never
sees a torn file. For a folder, `local` is the folder itself and `pull` / `push` do nothing.

Credentials and a custom endpoint come from the environment, shared by the driver and every node
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...), as for Ray's own storage.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

MIRROR_ENV = "SC_GUIDANCE_MIRROR"


def is_uri(location: str | Path) -> bool:
    """An object-store URI (a path or a `file://` URI is a folder)."""
    return "://" in str(location) and not str(location).startswith("file://")


@dataclass(frozen=True)
class Place:
    """A folder of the study's storage: a path, or a URI mirrored on this node."""

    location: str

    @property
    def remote(self) -> bool:
        return is_uri(self.location)

    def __truediv__(self, name: str) -> Place:
        if self.remote:
            return Place(f"{self.location.rstrip('/')}/{name}")
        return Place(str(self.local / name))

    def __str__(self) -> str:
        return self.location if self.remote else str(self.local)

    @cached_property
    def local(self) -> Path:
        """This node's folder for the place: the folder itself, or its mirror."""
        if not self.remote:
            return Path(self.location.removeprefix("file://")).expanduser().resolve()
        scheme, _, rest = self.location.partition("://")
        bucket, _, prefix = rest.partition("/")
        root = Path(os.environ.get(MIRROR_ENV) or "~/.cache/sc-guidance/mirror").expanduser()
        digest = hashlib.sha256(f"{scheme}://{bucket}".encode()).hexdigest()[:12]
        return (root / f"{scheme}-{bucket}-{digest}" / prefix).resolve()

    def filesystem(self):
        """(pyarrow filesystem, path inside it) of a remote place."""
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self.location.rstrip("/"))

    def _remote_of(self, path: Path) -> tuple:
        fs, base = self.filesystem()
        rel = Path(path).resolve().relative_to(self.local).as_posix()
        return fs, base if rel == "." else f"{base}/{rel}"

    def exists(self, path: Path) -> bool:
        """Whether a file or folder under `local` exists here or in the store."""
        if Path(path).exists() or not self.remote:
            return Path(path).exists()
        import pyarrow.fs

        fs, remote = self._remote_of(path)
        return fs.get_file_info(remote).type != pyarrow.fs.FileType.NotFound

    def pull(self, path: Path | None = None, fresh: bool = False) -> bool:
        """Copy a file or folder under `local` (default all of it) from the store into the
        mirror, each with the store's modification time; False when the store has none. A
        mirrored file of the stored size is kept, unless fresh (a file that may change in
        place)."""
        path = Path(path or self.local)
        if not self.remote:
            return path.exists()
        import pyarrow.fs

        fs, remote = self._remote_of(path)
        info = fs.get_file_info(remote)
        if info.type == pyarrow.fs.FileType.NotFound:
            return False
        files = [info]
        if info.type == pyarrow.fs.FileType.Directory:
            files = fs.get_file_info(pyarrow.fs.FileSelector(remote, recursive=True))
        for file in files:
            if file.type != pyarrow.fs.FileType.File:
                continue
            target = path / file.path[len(remote) + 1 :] if file.path != remote else path
            if not fresh and target.is_file() and target.stat().st_size == file.size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            with fs.open_input_stream(file.path) as src, open(tmp, "wb") as dst:
                dst.write(src.read())
            if file.mtime is not None:  # the store's time: when a record was written, not pulled
                os.utime(tmp, (file.mtime.timestamp(),) * 2)
            os.replace(tmp, target)
        return True

    def push(self, path: Path | None = None) -> None:
        """Copy a file or folder under `local` (default all of it) into the store."""
        if not self.remote:
            return
        path = Path(path or self.local)
        fs, remote = self._remote_of(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            rel = file.relative_to(path).as_posix()
            with fs.open_output_stream(remote if rel == "." else f"{remote}/{rel}") as out:
                out.write(file.read_bytes())

    def problem(self) -> str | None:
        """None when a small object can be written, read back and removed here; else why not."""
        if not self.remote:
            return None
        probe = f".study-probe-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            fs, base = self.filesystem()
            with fs.open_output_stream(f"{base}/{probe}") as out:
                out.write(b"ok")
            with fs.open_input_stream(f"{base}/{probe}") as src:
                if src.read() != b"ok":
                    return "what was written did not read back"
            fs.delete_file(f"{base}/{probe}")
        except Exception as exc:  # noqa: BLE001 - any failure makes the store unusable
            return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        return None


def stored(location: str) -> bool:
    """Whether the file at a path or URI exists (in the store, for a URI)."""
    if not is_uri(location):
        return Path(location).expanduser().exists()
    parent = Place(location.rsplit("/", 1)[0])
    return parent.exists(parent.local / location.rsplit("/", 1)[1])


def rehomed(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A saved spec read from the folder the study is in now. The spec pins absolute places (the
    folder it was saved in: `storage`/`name`); when the folder was copied or moved (`cp -a`, `mv`,
    `rsync` to another machine), every place inside the old folder (its SQLite MLflow store, a
    `study` artifact store, the evaluation cache when it lived there) is the same place inside the
    new one, so a copy reads and writes only itself. Places outside the folder (the shared network
    cache, a tracking server, an object store) stay as written."""
    storage = spec.get("storage")
    if not isinstance(storage, str) or is_uri(storage) or not spec.get("name"):
        return spec
    saved = Path(storage).expanduser() / str(spec["name"])
    here = Path(folder).resolve()
    if saved.resolve() == here:
        return spec

    def moved(path: str) -> str:
        inside = Path(path).expanduser()
        try:
            return str(here / inside.relative_to(saved))
        except ValueError:
            return path

    out = {**spec, "storage": str(here.parent)}
    uri = spec.get("tracking_uri")
    if isinstance(uri, str) and uri.startswith("sqlite:///"):
        out["tracking_uri"] = "sqlite:///" + moved(uri.removeprefix("sqlite:///"))
    if isinstance(spec.get("artifact_store"), str) and not is_uri(spec["artifact_store"]):
        out["artifact_store"] = moved(spec["artifact_store"])
    config = spec.get("config")
    if isinstance(config, dict) and isinstance(config.get("eval.cache_dir"), str):
        out["config"] = {**config, "eval.cache_dir": moved(config["eval.cache_dir"])}
    return out
