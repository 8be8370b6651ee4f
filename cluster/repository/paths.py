"""Names and paths every store shares: config file names, model-name and file-path checks, the node-local
cache. Pure; imported by the stores, never importing them."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from deployments.config.model_config import MODEL_NAME, is_relative_inside
from deployments.errors import invalid

CONFIG_FILES = ("config.pbtxt", "config.yaml", "config.yml")


def check_model_name(model: str) -> str:
    """Refuse model names that could leave the repository (``..``, slashes, odd characters)."""
    if not MODEL_NAME.fullmatch(model) or model in (".", ".."):
        raise invalid(f"invalid model name {model!r}")
    return model


def check_file_path(path: str) -> str:
    """Refuse file paths of an uploaded model that could leave its folder."""
    if not is_relative_inside(path):
        raise invalid(f"invalid file path {path!r}")
    return "/".join(PurePosixPath(path).parts)


def cache_root() -> Path:
    """The node-local cache for files that do not live on a shared file system (``RIC_CACHE_DIR``)."""
    return Path(os.environ.get("RIC_CACHE_DIR", Path.home() / ".cache" / "ric")).expanduser()
