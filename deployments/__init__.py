"""Model side of ric: everything one model needs to be served, in rooms by idea.

- ``deployments.errors``: the one error type (``InferenceError``) with its transport-neutral codes and the
  tables to HTTP and gRPC status; the bottom of the house, importing nothing of ours.
- ``deployments.config``: the model's configuration, a typed mirror of Triton's ``model_config.proto``,
  with datatypes and the checks of a request's tensors against it.
- ``deployments.observability``: what a model reports and how it is told: Triton's statistics, host
  usage, tracing, and the log and trace settings every replica process follows.
- ``deployments.scheduling``: how requests are put together before they run: dynamic batching, queue
  policy limits, sequences and their router, the response cache.
- ``deployments.backends``: the runtimes (onnxruntime, TorchScript, TensorRT, Python) behind one interface.
- ``deployments.serving``: the running model: ModelRunner (a model's versions in one process),
  ModelService and the Model deployment, and the handle contract models and ensembles share.

Imports run one way: ``serving`` -> ``backends`` -> ``scheduling`` -> ``config`` -> ``errors``, with
``observability`` importing ``errors`` only; nothing here imports ``ensembles`` or ``cluster``. Only
``serving.model`` and ``scheduling.sequence_router`` import Ray; the rest is pure and unit-tested without it.
"""
