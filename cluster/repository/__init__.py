"""Model repositories: where models come from and how every replica follows them.

Stores list models and versions and fetch a version's files (``local_store``, ``s3_store``, and
``uploaded`` for the files sent with a repository load), chosen by address in ``stores.open_store``,
sharing ``paths``; ``sync`` is the ``ric-sync`` deployment that polls the store and pushes versions and
configs to every replica, with ``model_control`` (its base class: loads and unloads for the repository
API) and ``control_state`` (what those changed, saved in Ray's key-value store); ``model_apps`` deploys models loaded after the build as applications of their
own; ``examples`` generates the example repository. May import ``ensembles`` and ``deployments``; never
``cluster.protocol``, ``cluster.app`` or ``cluster.cli``. The stores import no Ray.
"""
