"""How a model is operated once it is live (ric extensions, none of them Triton's): a traffic split between
its versions, a shadow that gets a copy of its requests, payload logging and drift monitoring. No Ray here.

Each is a block of its own in ``config.yaml`` (``traffic: {weights: {1: 90, 2: 10}}``) or, in
``config.pbtxt``, one ``parameters`` entry per field named ``<block>.<field>`` (as ``autoscaling.<field>``):
``parameters { key: "traffic.weights" value { string_value: "1:90,2:10" } }``. Mappings are written
``key:value`` pairs joined by commas, lists joined by commas. An unknown field is refused by name.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _from_parameter_text(cls, value: Any, info) -> Any:
        """A pbtxt parameter's string form of a mapping ("1:90,2:10") or a list ("a,b")."""
        annotation = str(cls.model_fields[info.field_name].annotation)
        if not isinstance(value, str):
            return value
        if annotation.startswith("dict"):
            pairs = [item.split(":", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f"{value!r} is not a list of key:value pairs joined by commas")
            return {key.strip(): number.strip() for key, number in pairs}
        if annotation.startswith("list"):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def parameters(self, block: str) -> dict[str, dict[str, str]]:
        """The block as pbtxt ``parameters`` entries (the string forms above)."""
        out = {}
        for key, value in self.model_dump(exclude_defaults=True).items():
            if isinstance(value, dict):
                value = ",".join(f"{k}:{_text(v)}" for k, v in value.items())
            elif isinstance(value, list):
                value = ",".join(value)
            out[f"{block}.{key}"] = {"string_value": _text(value)}
        return out


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Traffic(_Block):
    """A traffic split between the model's versions: a request that names no version goes to one of the
    versions with a weight, in proportion to the weights (among those loaded; with none of them loaded, the
    newest answers, as without a split). A request naming a version gets that version."""

    weights: dict[int, float] = Field(description="Version -> its share (any non-negative numbers; they are "
                                                  "taken relative to their sum).")
    sticky_by: str = Field(default="", description="A request parameter whose value keeps its requests on one "
                                                   "version (the same value, the same version, on every replica "
                                                   "and node, while the weights stay); empty: each request drawn.")

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: dict[int, float]) -> dict[int, float]:
        if any(version < 1 for version in weights):
            raise ValueError("versions are numbers from 1")
        if any(not weight >= 0 for weight in weights.values()):
            raise ValueError("weights must be >= 0")
        if not sum(weights.values()) > 0:
            raise ValueError("at least one weight must be > 0")
        return weights

    def choose(self, served: Iterable[int], key: str | None = None) -> int | None:
        """The version for a request among the ``served`` ones (None: no version with a weight is served);
        ``key``: the sticky parameter's value, which decides instead of a random draw."""
        weighted = sorted((version, weight) for version, weight in self.weights.items()
                          if version in set(served) and weight > 0)
        if not weighted:
            return None
        point = (_unit(key) if key is not None else random.random()) * sum(w for _, w in weighted)
        for version, weight in weighted:
            point -= weight
            if point < 0:
                return version
        return weighted[-1][0]


def _unit(key: str) -> float:
    """A number in [0, 1) that depends on ``key`` only (the same in every process, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


class Shadow(_Block):
    """A candidate that gets a copy of the model's requests: a version of this model, or another model taking
    the same inputs. Its answers are never returned: each is compared with the model's own, output by output
    (exact, or within a tolerance), and counted (agreements, disagreements, errors, its latency). Copies wait
    in a bounded queue; when it is full a copy is dropped, and counted, so the shadow never holds the model
    up."""

    model: str = Field(default="", description="The candidate model (empty: this model, a version of it).")
    version: int = Field(default=0, ge=0, description="The candidate's version (0: the candidate model's "
                                                      "newest; a version of this model must be named).")
    tolerance: float = Field(default=0.0, ge=0, description="Largest absolute difference in a number that still "
                                                            "agrees (0: exact).")
    tolerances: dict[str, float] = Field(default_factory=dict, description="Output -> its own tolerance.")
    queue_size: int = Field(default=16, ge=1, description="Copies waiting or running at most (per copy of the "
                                                          "model); more are dropped.")
    sample_rate: float = Field(default=1.0, ge=0, le=1, description="The share of requests copied, 0 to 1.")

    @model_validator(mode="after")
    def _candidate(self) -> "Shadow":
        if not self.model and not self.version:
            raise ValueError("a shadow needs a model, or a version of this model")
        return self


class PayloadLog(_Block):
    """Payload logging: a share of the model's requests, with their answers, written as JSON lines to the
    application's payload log folder (``ric serve --payload-log``), off the request path."""

    sample_rate: float = Field(ge=0, le=1, description="The share of requests logged, 0 to 1.")
    redact: list[str] = Field(default_factory=list, description="Inputs and outputs whose values are never "
                                                                "written (their name, type and shape are).")
    digest_over_bytes: int = Field(default=4096, ge=0, description="A tensor larger than this is written as its "
                                                                   "SHA-256 digest instead of its values.")
    queue_size: int = Field(default=10_000, ge=1, description="Records waiting to be written at most (per copy "
                                                              "of the model); past it they are dropped, counted.")
    queue_bytes: int = Field(default=256 << 20, ge=1, description="Bytes of tensors those records may hold at "
                                                                  "most; past it they are dropped too.")


class Drift(_Block):
    """Drift monitoring: the model's inputs and outputs over a sliding window, scored against a reference
    profile (``ric profile`` writes one) by PSI and KS, per feature (deployments/operations/drift.py)."""

    reference: str = Field(default="", description="The profile's file in the model's folder (beside "
                                                   "config.pbtxt), or empty with reference_requests.")
    reference_requests: int = Field(default=0, ge=0, description="Take the profile from the model's first "
                                                                 "this many requests instead (across its copies).")
    window_s: float = Field(default=300.0, gt=0, description="The sliding window's length.")
    threshold: float = Field(default=0.25, gt=0, description="A feature whose PSI passes it is logged as a "
                                                             "warning (and shown in ric status).")

    @field_validator("reference")
    @classmethod
    def _a_file_in_the_folder(cls, value: str) -> str:
        if value and ("/" in value or "\\" in value or value in (".", "..")):
            raise ValueError(f"{value!r} must name a file in the model's folder")
        return value

    @model_validator(mode="after")
    def _one_reference(self) -> "Drift":
        if bool(self.reference) == bool(self.reference_requests):
            raise ValueError("drift needs a reference file or reference_requests (one of them)")
        return self


#: The blocks, by their name in a config.
BLOCKS: dict[str, type[_Block]] = {"traffic": Traffic, "shadow": Shadow, "payload_log": PayloadLog, "drift": Drift}


def with_operations(config, source):
    """``config`` (a ModelConfig) with the operations blocks of ``source`` (another)."""
    blocks = {block: getattr(source, block) for block in BLOCKS}
    if all(getattr(config, block) == value for block, value in blocks.items()):
        return config
    return config.model_copy(update=blocks)


def same_model(one, other) -> bool:
    """Whether two ModelConfigs serve the same model, whatever their operations blocks (which change without
    a load)."""
    return with_operations(one, other) == other

