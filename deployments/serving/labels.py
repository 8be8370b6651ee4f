"""A model's label files (an output's ``label_filename`` in the model's folder, a label a line), read when
they change; Triton's classification extension names its classes from them. No Ray here."""

from __future__ import annotations

from pathlib import Path

from deployments.config.model_config import ModelConfig
from deployments.errors import invalid


class LabelFiles:
    """The label file read last, kept while its modification time stays."""

    def __init__(self):
        self._read: dict[tuple[str, int], list[str]] = {}  # (path, mtime) -> its labels

    def labels(self, config: ModelConfig, folder: Path | None, output: str) -> list[str] | None:
        """An output's labels (None without a label file, or with no version loaded)."""
        tensor = next((t for t in config.output if t.name == output), None)
        filename = (tensor.model_extra or {}).get("label_filename") if tensor is not None else None
        if not filename or folder is None:
            return None
        path = folder / filename
        try:
            if Path(filename).name != filename or filename in (".", "..") or not path.is_file():
                raise OSError(filename)
            key = (str(path), path.stat().st_mtime_ns)
            if key not in self._read:
                self._read = {key: path.read_text(errors="replace").splitlines()}
        except OSError:
            raise invalid(f"model '{config.name}': its label_filename {filename!r} is not a file in the model's "
                          "folder") from None
        return self._read[key]
