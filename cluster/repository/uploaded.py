"""UploadedModel: a model whose files came with a repository load rather than from a store.

The files are kept once, in Ray's cluster-wide key-value store under the SHA-256 of their content
(``publish``), and the model travels to its replicas (through the Serve controller, which checkpoints
deployment arguments) as those digests alone; each replica fetches a version's files into its node's cache
on first use. The sync bounds what uploaded models hold in all (``AppArgs.max_uploaded_bytes``) and deletes
a model's files when it is unloaded or replaced (``delete_files``); a replica evicts a model's earlier
uploads from its node's cache when it fetches a new one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from cluster.repository.paths import cache_root, check_file_path, check_model_name
from deployments.config.model_config import ModelConfig
from deployments.errors import invalid

#: Where the files live in Ray's key-value store (private API, as Serve's own checkpoints use it).
KV_NAMESPACE = "ric"
KV_PREFIX = "upload:"
#: A staging folder older than this was left by a process that died while writing it.
STAGING_LEFTOVER_S = 600.0


def delete_files(digests: set[str]) -> None:
    """Delete uploaded files from Ray's key-value store by digest (call where Ray runs)."""
    from ray.experimental import internal_kv

    for digest in digests:
        internal_kv._internal_kv_del(KV_PREFIX + digest, namespace=KV_NAMESPACE)


class UploadedModel:
    """One model whose files came with a repository load (Triton's ``file:<version>/<name>`` parameters)
    rather than from the store: its files by path, as content digests (and, where it was made, the bytes)."""

    def __init__(self, model: str, config: ModelConfig, files: dict[str, bytes]):
        self.model = check_model_name(model)
        self._config = config
        self._files = {check_file_path(path): bytes(content) for path, content in files.items()}
        self.digests = {path: hashlib.sha256(data).hexdigest() for path, data in self._files.items()}
        self.sizes = {path: len(data) for path, data in self._files.items()}
        if not self.versions(model):
            raise invalid(f"the files of the load of '{model}' hold no version (file:<version>/<name>)")

    def __repr__(self) -> str:
        return f"UploadedModel({self.model!r}, {sorted(self.digests)})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # the replicas fetch the files by digest, not with the arguments

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def publish(self) -> None:
        """Keep the files in Ray's key-value store, where the replicas fetch them (call where Ray runs)."""
        from ray.experimental import internal_kv

        for path, data in self._files.items():
            internal_kv._internal_kv_put(KV_PREFIX + self.digests[path], data, False, namespace=KV_NAMESPACE)

    def config(self, model: str) -> ModelConfig:
        return self._config

    def versions(self, model: str) -> list[int]:
        heads = {path.split("/", 1)[0] for path in self.digests if "/" in path}
        return sorted(int(head) for head in heads if head.isdigit() and int(head) > 0)

    def _version_paths(self, version: int) -> list[str]:
        return sorted(path for path in self.digests if path.startswith(f"{int(version)}/"))

    def fingerprint(self, model: str, version: int) -> str:
        digest = hashlib.sha256()
        for path in self._version_paths(version):
            digest.update(f"{path}:{self.sizes[path]}:{self.digests[path]}:".encode())
        return digest.hexdigest()

    def _content(self, path: str) -> bytes:
        data = self._files.get(path)
        if data is None:
            from ray.experimental import internal_kv

            data = internal_kv._internal_kv_get(KV_PREFIX + self.digests[path], namespace=KV_NAMESPACE)
            if data is None:
                raise FileNotFoundError(f"the uploaded file '{path}' of model '{self.model}' is gone (the model "
                                        "was unloaded or replaced)")
        return data

    def fetch(self, model: str, version: int) -> Path:
        """The version's files in a local folder, written once (to a temporary name, then renamed). Folders
        of this model's other uploads, and staging leftovers, are evicted from the node's cache."""
        paths = self._version_paths(version)
        if not paths:
            raise FileNotFoundError(f"model '{model}' has no version {version}")
        folder = cache_root() / "uploaded" / f"{self.model}-{int(version)}-{self.fingerprint(model, version)[:16]}"
        if folder.is_dir():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        self._evict(folder.parent)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        prefix = f"{int(version)}/"
        try:
            for path in paths:
                target = staging / path.removeprefix(prefix)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self._content(path))
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():  # another replica on this node renaming the same files first is fine
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def _evict(self, cache: Path) -> None:
        """Remove this model's folders from earlier uploads (other content) and old staging leftovers."""
        current = {f"{self.model}-{v}-{self.fingerprint(self.model, v)[:16]}" for v in self.versions(self.model)}
        ours = re.compile(rf"{re.escape(self.model)}-\d+-[0-9a-f]{{16}}")
        for entry in cache.iterdir():
            stale_upload = ours.fullmatch(entry.name) is not None and entry.name not in current
            leftover = entry.name.startswith(".") and time.time() - entry.stat().st_mtime > STAGING_LEFTOVER_S
            if stale_upload or leftover:
                shutil.rmtree(entry, ignore_errors=True)
