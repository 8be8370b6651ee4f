"""Model stores: list models and versions and give a replica a version's files.

``LocalStore`` serves a Triton model repository folder in place; every node must see the same path
(a shared file system), as with Triton itself. ``S3Store`` (``cluster/repository/s3_store.py``) reads
``s3://bucket/prefix`` and caches versions on each node. :func:`open_store` picks one from an address.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from deployments.config import MODEL_NAME, ConfigError, ModelConfig, load_config
from deployments.errors import invalid

CONFIG_FILES = ("config.pbtxt", "config.yaml", "config.yml")


def check_model_name(model: str) -> str:
    """Refuse model names that could leave the repository (``..``, slashes, odd characters)."""
    if not MODEL_NAME.match(model) or model in (".", ".."):
        raise invalid(f"invalid model name {model!r}")
    return model


def check_file_path(path: str) -> str:
    """Refuse file paths of an uploaded model that could leave its folder."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or "\\" in path or "\0" in path or any(p in (".", "..") for p in parts):
        raise invalid(f"invalid file path {path!r}")
    return "/".join(parts)


def cache_root() -> Path:
    """The node-local cache for files that do not live on a shared file system (``RIC_CACHE_DIR``)."""
    return Path(os.environ.get("RIC_CACHE_DIR", Path.home() / ".cache" / "ric")).expanduser()


def open_store(address: str):
    """The store for a repository address: ``s3://bucket/prefix`` or a local folder."""
    if address.startswith("s3://"):
        from cluster.repository.s3_store import S3Store

        return S3Store(address)
    return LocalStore(address)


class LocalStore:
    """A Triton model repository on a local (or shared) file system: ``<root>/<model>/<version>/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a folder")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def models(self) -> list[str]:
        """Model folders, sorted; hidden folders are skipped as Triton skips them."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def model_dir(self, model: str) -> Path:
        """The folder of a model; names that could leave the repository are refused."""
        return self.root / check_model_name(model)

    def config(self, model: str) -> ModelConfig:
        """The model's config as written (not yet auto-completed).

        A model folder without a config file gets an empty one named after the folder, which the
        backend completes from the model file (Triton's auto-complete).
        """
        folder = self.model_dir(model)
        if not any((folder / name).is_file() for name in CONFIG_FILES):
            if not self.versions(model):
                raise ConfigError(str(folder), "", "no config.pbtxt, config.yaml or version folder")
            return ModelConfig(name=model)
        return load_config(folder)

    def versions(self, model: str) -> list[int]:
        """Version numbers: the model's sub-folders named by a positive integer."""
        folder = self.model_dir(model)
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)

    def fetch(self, model: str, version: int) -> Path:
        """The local folder holding a version's files (in place for a local store)."""
        path = self.model_dir(model) / str(int(version))
        if not path.is_dir():
            raise FileNotFoundError(f"model '{model}' has no version {version}")
        return path

    def fingerprint(self, model: str, version: int) -> str:
        """Changes whenever a file of the version is added, removed, resized or rewritten."""
        root = self.model_dir(model) / str(int(version))
        digest = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.hexdigest()


class UploadedModel:
    """One model whose files came with a repository load (Triton's ``file:<version>/<name>`` parameters)
    rather than from the store. It travels to the replicas in their arguments and writes a version's files
    into the node-local cache on first use, in a folder named after their content."""

    def __init__(self, model: str, config: ModelConfig, files: dict[str, bytes]):
        self.model = check_model_name(model)
        self._config = config
        self.files = {check_file_path(path): bytes(content) for path, content in files.items()}
        if not self.versions(model):
            raise invalid(f"the files of the load of '{model}' hold no version (file:<version>/<name>)")

    def __repr__(self) -> str:
        return f"UploadedModel({self.model!r}, {sorted(self.files)})"

    def config(self, model: str) -> ModelConfig:
        return self._config

    def versions(self, model: str) -> list[int]:
        heads = {path.split("/", 1)[0] for path in self.files if "/" in path}
        return sorted(int(head) for head in heads if head.isdigit() and int(head) > 0)

    def _version_files(self, version: int) -> dict[str, bytes]:
        prefix = f"{int(version)}/"
        return {path.removeprefix(prefix): data for path, data in sorted(self.files.items()) if path.startswith(prefix)}

    def fingerprint(self, model: str, version: int) -> str:
        digest = hashlib.sha256()
        for path, data in self._version_files(version).items():
            digest.update(f"{path}:{len(data)}:".encode())
            digest.update(data)
        return digest.hexdigest()

    def fetch(self, model: str, version: int) -> Path:
        """The version's files in a local folder, written once (to a temporary name, then renamed)."""
        files = self._version_files(version)
        if not files:
            raise FileNotFoundError(f"model '{model}' has no version {version}")
        folder = cache_root() / "uploaded" / f"{self.model}-{int(version)}-{self.fingerprint(model, version)[:16]}"
        if folder.is_dir():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            for path, data in files.items():
                (staging / path).parent.mkdir(parents=True, exist_ok=True)
                (staging / path).write_bytes(data)
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():  # another replica on this node renaming the same files first is fine
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder
