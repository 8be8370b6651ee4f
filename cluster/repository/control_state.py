"""What users change through the repository API, kept apart from the sync that acts on it: the record of
it in Ray's key-value store, and the bookkeeping of uploaded models' files with their quota.

Ray's internal KV (the GCS) is cluster-wide, so a sync replica restarted on any node finds the record; it
is private API (Serve keeps its own checkpoints there too) and there is no public one.
"""

from __future__ import annotations

import json
from typing import Any

from ray.experimental import internal_kv

from cluster.repository.uploaded import UploadedModel, delete_files
from deployments.errors import ErrorCode, InferenceError

NAMESPACE = "ric"
KEY_PREFIX = "sync-state:"
#: The key prefix of an application's log and trace settings (kept by the statistics collector).
SETTINGS_PREFIX = "settings:"
#: The key prefix of an application's drift references taken from first requests (the collector's too).
DRIFT_PREFIX = "drift-references:"


class SavedState:
    """The record of one application's repository API changes (a JSON object) in Ray's key-value store, or
    of another state of the application's under another ``prefix``. Its calls block on the GCS: run them
    off the event loop."""

    def __init__(self, app: str, prefix: str = KEY_PREFIX):
        self.key = f"{prefix}{app}"

    def read(self) -> dict[str, Any]:
        raw = internal_kv._internal_kv_get(self.key, namespace=NAMESPACE)
        return json.loads(raw) if raw else {}

    def write(self, state: dict[str, Any]) -> None:
        internal_kv._internal_kv_put(self.key, json.dumps(state), True, namespace=NAMESPACE)

    def delete(self) -> None:
        internal_kv._internal_kv_del(self.key, namespace=NAMESPACE)


class Uploads:
    """The files each uploaded model holds (path -> digest and size), within ``limit`` bytes in all
    (``AppArgs.max_uploaded_bytes``)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.files: dict[str, dict[str, tuple[str, int]]] = {}

    def check_room(self, model: str, upload: UploadedModel) -> None:
        """Refuse (413) an upload that does not fit beside the others (``model``'s own is to be replaced)."""
        held = sum(size for name, files in self.files.items() if name != model for _, size in files.values())
        if held + upload.total_bytes > self.limit:
            raise InferenceError(ErrorCode.TOO_LARGE, f"the files of '{model}' ({upload.total_bytes} bytes) do not "
                                                      f"fit beside the other uploaded models ({held} bytes) in the "
                                                      f"limit of {self.limit} (max_uploaded_bytes)")

    def add(self, model: str, upload: UploadedModel) -> None:
        self.files[model] = {path: (upload.digests[path], upload.sizes[path]) for path in upload.digests}

    def forget(self, model: str) -> None:
        """A model's upload is gone: delete its files from Ray's key-value store, but those another holds."""
        files = self.files.pop(model, {})
        if files:
            kept = {digest for other in self.files.values() for digest, _ in other.values()}
            delete_files({digest for digest, _ in files.values()} - kept)

    def restore(self, saved: dict[str, dict[str, list]], models: set[str]) -> None:
        """Take back the bookkeeping of a saved record, for the uploaded models still served."""
        self.files = {model: {path: tuple(entry) for path, entry in files.items()}
                      for model, files in saved.items() if model in models}
