"""UploadedModel: a model whose files came with a repository load rather than from a store."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from cluster.repository.paths import cache_root, check_file_path, check_model_name
from deployments.config import ModelConfig
from deployments.errors import invalid


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
