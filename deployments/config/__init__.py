"""The model's configuration: a typed mirror of Triton's ``model_config.proto``.

``model_config`` holds ``ModelConfig`` and loads ``config.pbtxt`` / ``config.yaml`` into it (checked by
protobuf against the message ``tritonclient`` ships); ``messages`` holds its nested messages (tensors,
batching, sequences, instance groups, version policy, autoscaling); ``dtypes`` maps Triton's config
datatypes, the v2 protocol's and numpy's; ``validation`` checks a request's tensors (and a backend's
outputs) against the config. Pure: may import ``deployments.errors`` only, and no Ray.
"""
