"""S3Store: a Triton model repository in S3 (``s3://bucket/prefix``), any S3-compatible endpoint.

boto3 takes its settings the usual way (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, ...).
A version's files are fetched into a node-local cache (``RIC_CACHE_DIR``, default ``~/.cache/ric``): each
file is downloaded under a temporary name, checked (size, and MD5 where the ETag is one), then renamed, so
a half-written file is never used; a file already cached with the same ETag is not downloaded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from deployments.config.model_config import ConfigError, ModelConfig, parse_pbtxt, parse_yaml
from deployments.errors import invalid
from cluster.repository.paths import CONFIG_FILES, cache_root, check_model_name

logger = logging.getLogger(__name__)

#: Files at least this large log their download progress.
PROGRESS_BYTES = 64 * 2**20
#: Seconds S3 may take to accept a connection, and to send the next bytes of an answer.
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 10


class S3Store:
    """Models under ``s3://bucket/prefix/<model>/<version>/``; configs read from S3, files cached locally."""

    def __init__(self, uri: str):
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"{uri!r} is not an s3://bucket/prefix address")
        self.uri = uri
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._client = None

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}  # a boto3 client does not pickle; each process makes its own

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Bounded: with S3 unreachable a call fails within about a minute instead of botocore's defaults
            # (60 s per connect and read, retried), while a large download that keeps flowing is not cut.
            self._client = boto3.client("s3", config=Config(connect_timeout=CONNECT_TIMEOUT_S,
                                                            read_timeout=READ_TIMEOUT_S,
                                                            retries={"mode": "standard", "max_attempts": 2}))
        return self._client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _folders(self, *parts: str) -> list[str]:
        prefix = self._key(*parts) + "/" if self._key(*parts) else ""
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return names

    def _objects(self, *parts: str) -> list[dict]:
        prefix = self._key(*parts) + "/"
        objects = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            objects += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        return objects

    def models(self) -> list[str]:
        return sorted(n for n in self._folders() if n and not n.startswith("."))

    def versions(self, model: str) -> list[int]:
        check_model_name(model)
        return sorted(int(n) for n in self._folders(model) if n.isdigit() and int(n) > 0)

    def config(self, model: str) -> ModelConfig:
        check_model_name(model)
        for filename in CONFIG_FILES:
            key = self._key(model, filename)
            try:
                text = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode()
            except self.client.exceptions.NoSuchKey:
                continue
            parse = parse_pbtxt if filename.endswith(".pbtxt") else parse_yaml
            return parse(text, f"s3://{self.bucket}/{key}", model)
        if not self.versions(model):
            raise ConfigError(f"s3://{self.bucket}/{self._key(model)}", "", "no config.pbtxt, config.yaml or version folder")
        return ModelConfig(name=model)

    def fingerprint(self, model: str, version: int) -> str:
        digest = hashlib.sha256()
        for obj in sorted(self._objects(model, str(int(version))), key=lambda o: o["Key"]):
            digest.update(f"{obj['Key']}:{obj['Size']}:{obj['ETag']};".encode())
        return digest.hexdigest()

    def fetch(self, model: str, version: int) -> Path:
        """The version's files in the node-local cache, downloading what is missing or changed, and beside
        its folder the files of the model's own folder (label files; the config is read from S3)."""
        check_model_name(model)
        objects = self._objects(model, str(int(version)))
        if not objects:
            raise FileNotFoundError(f"model '{model}' has no version {version} in {self.uri}")
        root = cache_root() / "s3" / self.bucket / self._key(model, str(int(version)))
        for obj in objects:
            relative = obj["Key"][len(self._key(model, str(int(version)))) + 1:]
            target = (root / relative).resolve()
            if root.resolve() not in target.parents:
                raise invalid(f"object {obj['Key']} would leave the cache folder")
            self._download(obj, target)
        for obj in self._model_files(model):
            name = obj["Key"].rsplit("/", 1)[-1]
            if name not in CONFIG_FILES and not name.startswith("."):
                self._download(obj, root.parent / name)
        return root

    def _model_files(self, model: str) -> list[dict]:
        """The objects directly in the model's folder (not in its version folders)."""
        prefix, files = self._key(model) + "/", []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                          Delimiter="/"):
            files += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        return files

    def _download(self, obj: dict, target: Path) -> None:
        etag = obj["ETag"].strip('"')
        marker = target.with_name(f".{target.name}.etag")
        if target.is_file() and marker.is_file() and marker.read_text() == etag:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, obj["Key"], tmp, Callback=_progress(obj))
            size = os.path.getsize(tmp)
            if size != obj["Size"]:
                raise OSError(f"{obj['Key']}: downloaded {size} bytes, expected {obj['Size']}")
            if "-" not in etag and _md5(tmp) != etag:  # a multipart ETag is no MD5
                raise OSError(f"{obj['Key']}: the download does not match its ETag")
            os.replace(tmp, target)
            marker.write_text(etag)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(obj: dict):
    """A boto3 download callback that logs every 10% of a large file."""
    if obj["Size"] < PROGRESS_BYTES:
        return None
    state = {"done": 0, "logged": 0}

    def callback(chunk: int) -> None:
        state["done"] += chunk
        tenth = state["done"] * 10 // obj["Size"]
        if tenth > state["logged"]:
            state["logged"] = tenth
            logger.info("downloading %s: %d%%", obj["Key"], tenth * 10)

    return callback
