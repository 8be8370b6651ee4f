"""The requests a model version runs before it serves (Triton's ``model_warmup``, or one row of zeros). No
Ray here."""

from __future__ import annotations

import numpy as np

from deployments.backends import Backend, RequestInfo, Tensors
from deployments.config.dtypes import config_to_v2, numpy_dtype
from deployments.config.model_config import ModelConfig
from deployments.config.validation import to_backend_shapes
from deployments.scheduling.sequences import WARMUP_SEQUENCE, Sequences, Step


def warmup_requests(config: ModelConfig) -> list[tuple[Tensors, int]]:
    """Warm-up requests: Triton's ``model_warmup`` (zero_data / random_data inputs) if configured,
    else one row of zeros in the configured shape (dims of -1 taken as 1)."""
    lead = lambda batch: [max(batch, 1)] if config.batching else []  # noqa: E731
    samples = (config.model_extra or {}).get("model_warmup") or []
    if not samples:
        inputs = {t.name: _fill(t.datatype, lead(1) + [d if d >= 0 else 1 for d in t.dims], random=False)
                  for t in config.input if not t.optional}
        return [(inputs, 1)]
    requests = []
    for sample in samples:
        inputs = {}
        for name, spec in sample.get("inputs", {}).items():
            if "input_data_file" in spec:
                raise ValueError(f"model_warmup '{sample.get('name', '')}': input_data_file is not supported; "
                                 "use zero_data or random_data")
            datatype = config_to_v2(spec["data_type"])
            shape = lead(int(sample.get("batch_size", 1))) + [int(d) for d in spec.get("dims", [])]
            inputs[name] = _fill(datatype, shape, random=bool(spec.get("random_data")))
        requests.append((inputs, int(sample.get("count", 1)) or 1))
    return requests


def _fill(datatype: str, shape: list[int], random: bool) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    if dtype == object:
        return np.full(shape, b"", dtype=object)
    if not random:
        return np.zeros(shape, dtype)
    return np.random.default_rng(0).integers(0, 2, size=shape).astype(dtype)


def run_warmup(backend: Backend) -> None:
    """Run the config's ``model_warmup`` samples, or else one request of zeros in the configured shape,
    before a version takes traffic; a failure keeps the version out."""
    for inputs, count in warmup_requests(backend.config):
        inputs = to_backend_shapes(backend.config, inputs)
        if backend.config.sequence_batching is not None:  # a sequence of one request, as the model expects
            rows = next(iter(inputs.values())).shape[0] if backend.config.batching else 1
            inputs.update(Sequences(backend.config).controls(Step(WARMUP_SEQUENCE, True, True), rows))
        for _ in range(count):
            if backend.config.decoupled:  # its responses go nowhere; an error response fails the warm-up
                errors = []
                backend.stream(inputs, RequestInfo(),
                               lambda out, final: errors.append(out) if isinstance(out, Exception) else None)
                (result,) = errors[:1] or [None]
            else:
                (result,) = backend.execute([inputs])
            if isinstance(result, Exception):
                raise result
