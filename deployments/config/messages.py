"""The nested messages of a model's configuration, each a mirror of one message of Triton's
``model_config.proto`` (tensors, dynamic and sequence batching, instance groups, version policy) plus ric's
``Autoscaling``; ``deployments.config.model_config.ModelConfig`` holds them and loads the files.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.config.dtypes import config_to_v2


class _Mirror(BaseModel):
    """A mirror of one proto message: unknown keys are refused (protobuf has checked them already)."""

    model_config = ConfigDict(extra="forbid")


class Reshape(_Mirror):
    shape: list[int] = Field(default_factory=list, description="Shape the backend sees, batch dim excluded.")


class TensorConfig(_Mirror):
    """One ``output`` entry, and the fields an input shares."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Tensor name as the client sends it.")
    data_type: str = Field(description="Triton type name, e.g. TYPE_FP32; TYPE_STRING is v2 BYTES.")
    dims: list[int] = Field(default_factory=list, description="Shape without the batch dim; -1 is any size.")
    reshape: Reshape | None = Field(default=None, description="Shape handed to the backend instead of dims.")

    @field_validator("dims")
    @classmethod
    def _dims_known(cls, dims: list[int]) -> list[int]:
        if any(d < -1 for d in dims):
            raise ValueError("dims must be -1 (any size) or >= 0")
        return dims

    @property
    def datatype(self) -> str:
        """The v2 protocol datatype (FP32, BYTES, ...)."""
        return config_to_v2(self.data_type)


class InputConfig(TensorConfig):
    """One ``input`` entry: a tensor that may be optional."""

    optional: bool = Field(default=False, description="An input the request may leave out.")


class QueuePolicy(_Mirror):
    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    default_timeout_microseconds: int = Field(default=0, ge=0, description="0 waits forever.")
    allow_timeout_override: bool = False
    max_queue_size: int = Field(default=0, ge=0, description="Requests waiting per replica; 0 is no limit.")


class DynamicBatching(_Mirror):
    model_config = ConfigDict(extra="allow")

    preferred_batch_size: list[int] = Field(default_factory=list, description="Batch sizes to aim for.")
    max_queue_delay_microseconds: int = Field(default=0, ge=0, description="Longest wait to fill a batch.")
    preserve_ordering: bool = False
    default_queue_policy: QueuePolicy | None = None
    priority_levels: int = Field(default=0, ge=0, description="Priority levels, 1 the highest; 0: one level.")
    default_priority_level: int = Field(default=0, ge=0, description="The level of requests that name none.")
    priority_queue_policy: dict[int, QueuePolicy] = Field(default_factory=dict, description="Per level.")

    def priority(self, requested: Any) -> int:
        """The level a request's ``priority`` parameter puts it at (0 or absent: the default level); 0 when
        the model has no levels. Raises ValueError outside 1..priority_levels."""
        if not self.priority_levels:
            return 0
        if requested in (None, 0):
            return self.default_priority_level or self.priority_levels
        if isinstance(requested, bool) or not isinstance(requested, int) or not 0 < requested <= self.priority_levels:
            raise ValueError(f"priority {requested!r} is not a level in 1..{self.priority_levels}")
        return requested

    def queue_policy(self, level: int) -> QueuePolicy | None:
        """The queue policy of a priority level: its own, else the default one."""
        return self.priority_queue_policy.get(level) or self.default_queue_policy


class SequenceControl(_Mirror):
    """How one control tensor carries one signal (Triton's ``ModelSequenceBatching.Control``)."""

    kind: Literal["CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_READY", "CONTROL_SEQUENCE_END",
                  "CONTROL_SEQUENCE_CORRID"] = "CONTROL_SEQUENCE_START"
    int32_false_true: list[int] = Field(default_factory=list)
    fp32_false_true: list[float] = Field(default_factory=list)
    bool_false_true: list[bool] = Field(default_factory=list)
    data_type: str = Field(default="", description="CORRID's tensor type: TYPE_UINT64, TYPE_INT64 or TYPE_STRING.")


class ControlInput(_Mirror):
    name: str
    control: list[SequenceControl] = Field(default_factory=list)


class SequenceStrategy(_Mirror):
    """``direct`` or ``oldest``: both batch the next requests of different sequences (one per sequence)."""

    model_config = ConfigDict(extra="allow")

    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    preferred_batch_size: list[int] = Field(default_factory=list)


class SequenceState(_Mirror):
    """Implicit state: the model reads ``input_name`` and writes ``output_name``; the server keeps it per
    sequence between requests (zeros at the start, or ``initial_state``'s zero_data)."""

    model_config = ConfigDict(extra="allow")

    input_name: str
    output_name: str
    data_type: str
    dims: list[int] = Field(default_factory=list, description="Without the batch dim; -1 starts empty.")
    initial_state: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def datatype(self) -> str:
        return config_to_v2(self.data_type)


class SequenceBatching(_Mirror):
    """Triton's sequence batcher: every request of a sequence (one correlation id) reaches the same replica
    and runs in order, with control tensors telling the model where a sequence starts and ends."""

    model_config = ConfigDict(extra="allow")

    direct: SequenceStrategy | None = None
    oldest: SequenceStrategy | None = None
    max_sequence_idle_microseconds: int = Field(
        default=0, ge=0, description="A sequence idle this long is released (0: Triton's default, 1 s).")
    control_input: list[ControlInput] = Field(default_factory=list)
    state: list[SequenceState] = Field(default_factory=list)

    @property
    def idle_s(self) -> float:
        return (self.max_sequence_idle_microseconds or 1_000_000) / 1e6

    @property
    def strategy(self) -> SequenceStrategy:
        return self.oldest or self.direct or SequenceStrategy()


class InstanceGroup(_Mirror):
    model_config = ConfigDict(extra="allow")

    name: str = ""
    kind: Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL"] = "KIND_AUTO"
    count: int = Field(default=1, ge=1, description="Instances: Serve replicas of the model.")
    gpus: list[int] = Field(default_factory=list, description="Triton's device ids; Ray places GPUs itself.")
    gpu_fraction: float | None = Field(
        default=None, gt=0, description="GPUs per instance (ric extension), e.g. 0.25 packs four on one GPU."
    )

    @field_validator("count", mode="before")
    @classmethod
    def _count_default(cls, count: int) -> int:
        return count or 1  # proto3 writes an omitted count as 0; Triton reads it as 1


class LatestPolicy(_Mirror):
    num_versions: int = Field(default=1, ge=1)


class SpecificPolicy(_Mirror):
    versions: list[int] = Field(default_factory=list)


class VersionPolicy(_Mirror):
    """Which versions are served: the latest N (default 1), all, or specific ones."""

    latest: LatestPolicy | None = None
    all: dict[str, Any] | None = None
    specific: SpecificPolicy | None = None

    @model_validator(mode="after")
    def _latest_by_default(self) -> "VersionPolicy":
        if self.latest is None and self.all is None and self.specific is None:
            self.latest = LatestPolicy()
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those in the repository, ascending."""
        ordered = sorted(available)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific.versions)]
        return ordered[-self.latest.num_versions :]


class Autoscaling(_Mirror):
    """Replica autoscaling (ric extension), mapped onto Serve's ``autoscaling_config``: replicas follow the
    requests each one has in flight or queued. YAML: ``autoscaling: {min_replicas: 1, ...}``; pbtxt:
    ``parameters { key: "autoscaling.min_replicas" value { string_value: "1" } }``, one per field."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas; 0 scales to zero when idle (the "
                                                           "first request then waits for a replica).")
    max_replicas: int = Field(default=4, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(default=2.0, gt=0, description="Requests in flight or queued per "
                                                                         "replica that the autoscaler aims for.")
    upscale_delay_s: float = Field(default=30.0, ge=0, description="How long load must stay high before adding.")
    downscale_delay_s: float = Field(default=600.0, ge=0, description="How long load must stay low before removing.")
    look_back_period_s: float = Field(default=30.0, gt=0, description="Window the load is averaged over.")

    @model_validator(mode="after")
    def _bounds(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self

    def serve_config(self) -> dict[str, float]:
        return self.model_dump()


class ModelParameter(_Mirror):
    string_value: str = ""
