"""The KServe v2 / Triton inference protocol: what a request crosses between a client and a model.

Pure codecs (``codec`` for v2 JSON and binary bodies, ``raw_tensors``, ``grpc_codec``, ``compression``) turn
bytes into numpy and back; ``dataplane`` is the one set of operations both transports call; ``ingress``
(HTTP routes, the Ingress deployment) and ``grpc_service`` (Triton's RPCs) are thin transports over it;
``statistics`` is the collector that sums every replica's Triton statistics. May import
``cluster.repository`` (the repository API), ``ensembles`` and ``deployments``; never ``cluster.app`` or
``cluster.cli``. The codecs import no Ray.
"""
