"""The running model: the top of ``deployments``.

``runner`` is ``ModelRunner``, a model's versions in one process (load, check requests, run batches; no
Ray: benchmarks and unit tests use it as the in-process baseline; ``warmup``, the requests a version runs
before it serves; ``pending``, a request checked and waiting to run, and how a batch counts); ``model`` is
``ModelService`` (one model with dynamic batching, sequences, the response cache, statistics and tracing)
and the ``Model`` Serve deployment that runs one per replica (``follow``: how it applies what the sync
pushes); ``served`` is the handle contract every served model and ensemble offers, with ``LocalHandle``
for models colocated in process and ``ResultTensor`` for tensors left in Ray's object store. May import
every other room of ``deployments``; never ``ensembles`` or ``cluster``.
"""
