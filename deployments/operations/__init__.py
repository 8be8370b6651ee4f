"""Operating a live model (ric's, not Triton's): what happens beside a request once its model has answered.

``shadow`` sends a copy of each request to a candidate (a version, or another model) and compares its answer
with the model's; ``payloads`` writes a sampled share of requests with their answers to JSON-lines files.
Both run off the request path, behind bounded queues that drop (and count) rather than wait. The traffic
split between versions is chosen before a request runs (``deployments.config.operations.Traffic``, used by
``ModelRunner``). May import ``config``, ``backends``, ``observability`` and ``errors``; no Ray.
"""
