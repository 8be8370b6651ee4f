"""Cluster side of ric, in rooms by idea; ``cluster.app`` (the Serve application builder) sits on top.

- ``cluster.protocol``: the KServe v2 / Triton protocol, HTTP and gRPC over one data plane, and the Ingress.
- ``cluster.repository``: model stores (local, S3), the sync deployment, models loaded at run time, the
  example repository.
- ``cluster.cli``: the ``ric`` command line and its tools (``ric serve``, ``ric perf``).
- ``cluster.client``: ``connect()`` for other Ray jobs, numpy in and out (imports ``cluster.names`` only).
- ``cluster.names``: the Serve names of an application's parts, shared by all of the above.

Imports run one way: ``cli`` -> ``app`` -> ``protocol`` -> ``repository`` -> ``ensembles`` -> ``deployments``.
"""
