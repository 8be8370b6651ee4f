"""How a model's requests are put together before they run.

``batching`` is the dynamic batcher and the arithmetic of which requests share a batch (merge, split);
``limits`` reads the queue policy's timeouts and the batch limits off the config; ``sequences`` keeps the
sequences a replica holds (order, control tensors, implicit state) and ``sequence_router`` is the Serve
request router that sends every request of a sequence to its replica; ``response_cache`` is Triton's
response cache. May import ``deployments.config`` and ``deployments.errors``. Pure but for
``sequence_router``, which is Serve's router interface and the one module here importing Ray.
"""
