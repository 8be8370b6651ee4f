"""Triton's sequence batcher, inside one model replica: the sequences it holds, their order, their control
tensors. No Ray here (the router in ``deployments/scheduling/sequence_router.py`` sends every request of a sequence to
the replica holding it).

A request names its sequence with the ``sequence_id`` parameter (a non-zero integer or a non-empty string,
Triton's correlation id) and marks its first and last request with ``sequence_start`` / ``sequence_end``.
Requests of one sequence run one at a time, in the order they arrived (a batch never holds two of one
sequence, so batches mix sequences); each gets the control tensors its config declares (START, END, READY,
CORRID) beside its inputs, and the implicit state (``state``): the state the sequence's last request
wrote, or zeros at its start, as the state input; the state output is kept, not answered. A sequence idle for ``max_sequence_idle_microseconds`` is released; a request
for a sequence this replica does not hold (never started, ended, released, or held by a replica that was
lost) answers a clear error rather than starting from a silently empty state.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import numpy as np

from deployments.config.model_config import ModelConfig
from deployments.config.messages import SequenceBatching
from deployments.config.dtypes import numpy_dtype, config_to_v2
from deployments.errors import invalid

#: The request parameters that carry the sequence (taken out before the model sees the parameters).
SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
#: Released sequences remembered, to say why their next request fails.
REMEMBERED = 10_000
#: The correlation id of a warm-up request (a sequence of one: START and END), a number every CORRID type holds.
WARMUP_SEQUENCE = 1


@dataclass
class Sequence:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0  # requests of this sequence in the replica (waiting for their turn or running)
    state: dict[str, np.ndarray] = field(default_factory=dict)  # implicit state, by state input name


@dataclass(frozen=True)
class Step:
    """One request's place in its sequence."""

    correlation_id: int | str
    start: bool
    end: bool


def sequence_step(model: str, parameters: dict | None) -> Step:
    """The sequence a request belongs to, from its parameters (Triton's errors when it names none)."""
    parameters = parameters or {}
    correlation_id = parameters.get("sequence_id", 0)
    if isinstance(correlation_id, bool) or not isinstance(correlation_id, (int, str)) or correlation_id in (0, ""):
        raise invalid(f"inference request to model '{model}' must specify a non-zero or non-empty correlation ID")
    return Step(correlation_id, bool(parameters.get("sequence_start")), bool(parameters.get("sequence_end")))


def model_parameters(parameters: dict | None) -> dict | None:
    """The request's parameters less the sequence's own."""
    if not parameters:
        return parameters
    return {k: v for k, v in parameters.items() if k not in SEQUENCE_PARAMETERS} or None


class Sequences:
    """The sequences one replica holds for one model."""

    def __init__(self, config: ModelConfig, clock: Callable[[], float] = time.monotonic):
        self.model = config.name
        self.batching: SequenceBatching = config.sequence_batching
        self.batched = config.max_batch_size > 0
        self._clock = clock
        self._held: dict[int | str, Sequence] = {}
        self._released: OrderedDict[int | str, str] = OrderedDict()  # correlation id -> why

    def __len__(self) -> int:
        return len(self._held)

    def release_idle(self) -> None:
        """Release the sequences idle longer than max_sequence_idle_microseconds."""
        now = self._clock()
        for correlation_id, sequence in list(self._held.items()):
            if not sequence.busy and now - sequence.last_used > self.batching.idle_s:
                self._release(correlation_id, f"it was idle for more than {self.batching.idle_s:g} s "
                                              "(max_sequence_idle_microseconds)")

    def _release(self, correlation_id: int | str, why: str) -> None:
        del self._held[correlation_id]
        self._released[correlation_id] = why
        self._released.move_to_end(correlation_id)
        while len(self._released) > REMEMBERED:
            self._released.popitem(last=False)

    @asynccontextmanager
    async def turn(self, step: Step) -> AsyncIterator[Sequence]:
        """Wait for this request's turn in its sequence (the ones before it, in arrival order, done)."""
        self.release_idle()
        sequence = self._held.get(step.correlation_id)
        if sequence is None:
            if not step.start:
                why = self._released.get(step.correlation_id, "this replica holds no such sequence (it was never "
                                                               "started, or its replica was lost)")
                raise invalid(f"inference request for sequence {step.correlation_id} to model '{self.model}' must "
                              f"specify the START flag on the first request of the sequence: {why}")
            sequence = self._held[step.correlation_id] = Sequence()
            self._released.pop(step.correlation_id, None)
        sequence.busy += 1
        try:
            async with sequence.lock:
                if step.start:
                    sequence.state = {}
                yield sequence
        finally:
            sequence.busy -= 1
            sequence.last_used = self._clock()
            if step.end and self._held.get(step.correlation_id) is sequence:
                self._release(step.correlation_id, "it ended")

    @property
    def state_outputs(self) -> list[str]:
        return [state.output_name for state in self.batching.state]

    def keep_state(self, sequence: Sequence, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keep the state outputs for the sequence's next request; the rest is the answer."""
        for state in self.batching.state:
            if state.output_name not in outputs:
                raise invalid(f"model '{self.model}' did not write its state output '{state.output_name}'")
            sequence.state[state.input_name] = outputs[state.output_name]
        return {name: array for name, array in outputs.items() if name not in self.state_outputs}

    def controls(self, step: Step, rows: int, sequence: Sequence | None = None) -> dict[str, np.ndarray]:
        """The control tensors of one request (``[rows, 1]`` for a batching model, ``[1]`` otherwise) and its
        state inputs (the sequence's, else the initial state)."""
        shape = (rows, 1) if self.batched else (1,)
        tensors = {}
        for state in self.batching.state:
            held = sequence.state.get(state.input_name) if sequence is not None else None
            if held is None:
                dims = [max(d, 0) for d in state.dims]
                held = np.zeros(([rows] if self.batched else []) + dims, numpy_dtype(state.datatype))
            tensors[state.input_name] = held
        for control_input in self.batching.control_input:
            (control,) = control_input.control
            if control.kind == "CONTROL_SEQUENCE_CORRID":
                datatype = config_to_v2(control.data_type)
                value = step.correlation_id
                if datatype == "BYTES":
                    tensors[control_input.name] = np.full(shape, str(value).encode(), dtype=object)
                else:
                    tensors[control_input.name] = np.full(shape, _integer_id(value, self.model), numpy_dtype(datatype))
                continue
            flag = {"CONTROL_SEQUENCE_START": step.start, "CONTROL_SEQUENCE_END": step.end,
                    "CONTROL_SEQUENCE_READY": True}[control.kind]
            for values, dtype in ((control.int32_false_true, np.int32), (control.fp32_false_true, np.float32),
                                  (control.bool_false_true, np.bool_)):
                if values:
                    tensors[control_input.name] = np.full(shape, values[int(flag)], dtype)
        return tensors


def _integer_id(value: int | str, model: str) -> int:
    if isinstance(value, int):
        return value
    raise invalid(f"model '{model}' takes integer correlation IDs (its CORRID control is a number), got '{value}'")


def sequence_key(parameters: Any) -> int | str | None:
    """The correlation id a request's parameters name, if any (for routing; no checks)."""
    if isinstance(parameters, dict):
        correlation_id = parameters.get("sequence_id")
        if isinstance(correlation_id, (int, str)) and not isinstance(correlation_id, bool) and correlation_id not in (0, ""):
            return correlation_id
    return None
