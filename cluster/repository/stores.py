"""Model stores: list models and versions and give a replica a version's files.

Every store answers ``models()``, ``config(model)`` (as written, not yet auto-completed), ``versions(model)``,
``fetch(model, version)`` (a local folder with the version's files) and ``fingerprint(model, version)``
(changes whenever the version's files do): ``LocalStore`` (``local_store.py``) for a folder, ``S3Store``
(``s3_store.py``) for ``s3://bucket/prefix``, ``UploadedModel`` (``uploaded.py``) for one model whose files
came with a repository load. :func:`open_store` is the one place that picks a store from an address; the
stores share ``paths.py`` and import nothing back from here.
"""

from __future__ import annotations

from cluster.repository.local_store import LocalStore


def open_store(address: str):
    """The store for a repository address: ``s3://bucket/prefix`` or a local folder."""
    if address.startswith("s3://"):
        from cluster.repository.s3_store import S3Store  # boto3 only when asked for

        return S3Store(address)
    return LocalStore(address)
