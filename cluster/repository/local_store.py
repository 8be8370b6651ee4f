"""LocalStore: a Triton model repository folder, served in place; every node must see the same path (a
shared file system), as with Triton itself."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cluster.repository.paths import CONFIG_FILES, check_model_name
from deployments.config.model_config import ConfigError, ModelConfig, load_config


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
