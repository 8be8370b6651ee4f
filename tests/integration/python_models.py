"""Triton-form Python models that use Triton's Python backend API (BLS, the request API, error codes,
decoupled responses), written into a repository that real Triton and ric serve both load unchanged."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_model

ADD_SUB = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x + y),
                                                         pb_utils.Tensor("OUTPUT1", x - y)]))
        return responses
"""

TENSORS = """
  input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] },
          { name: "INPUT1" data_type: TYPE_INT32 dims: [ 4 ] } ]
  output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 4 ] },
           { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 4 ] } ]
"""

# Calls the model its "target" parameter names (add_sub by default), asking for OUTPUT0 only, once with
# exec() or "fan_out" times at once with async_exec() (a request each: Triton hangs when one is sent twice);
# answers the sum and how many tensors one answer held.
# The callee's error becomes its own, code and all.
BLS = """
import asyncio
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters())
            inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in ("INPUT0", "INPUT1")]
            calls = [pb_utils.InferenceRequest(model_name=params.get("target", "add_sub"), inputs=inputs,
                                               requested_output_names=["OUTPUT0"], trace=request.trace())
                     for _ in range(params.get("fan_out", 1))]
            if "fan_out" in params:
                answers = await asyncio.gather(*(call.async_exec() for call in calls))
            else:
                answers = [calls[0].exec()]
            failed = next((a for a in answers if a.has_error()), None)
            if failed is not None:
                error = pb_utils.TritonError(failed.error().message(), failed.error().code())
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            total = sum(pb_utils.get_output_tensor_by_name(a, "OUTPUT0").as_numpy() for a in answers)
            held = np.full_like(total, len(answers[0].output_tensors()))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", total),
                                                         pb_utils.Tensor("OUTPUT1", held)]))
        return responses
"""

# Decoupled: N responses, Y = 1..N.
COUNTER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            for i in range(1, n + 1):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

# Calls the decoupled counter and answers the sum and count of its responses.
BLS_STREAM = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            call = pb_utils.InferenceRequest(model_name="counter", requested_output_names=["Y"],
                                             inputs=[pb_utils.get_input_tensor_by_name(request, "N")])
            ys = [int(y.as_numpy()[0]) for r in call.exec(decoupled=True)  # the last response is empty
                  if (y := pb_utils.get_output_tensor_by_name(r, "Y")) is not None]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.array([sum(ys)], np.int32)),
                                                         pb_utils.Tensor("COUNT", np.array([len(ys)], np.int32))]))
        return responses
"""

# What the request API tells a model, as JSON; with "fail" a TritonError of that code.
INTROSPECT = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters())
            if "fail" in params:  # a TritonError with the code of that name ("": the default code)
                code = params["fail"]
                codes = [getattr(pb_utils.TritonError, code)] if code else []
                error = pb_utils.TritonError("failed on purpose", *codes)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            seen = {"id": request.request_id(), "requested": sorted(request.requested_output_names()),
                    "correlation_id": request.correlation_id(), "flags": request.flags(),
                    "timeout": request.timeout(), "cpu": pb_utils.get_input_tensor_by_name(request, "X").is_cpu(),
                    "ready": [pb_utils.is_model_ready(*m) for m in (("add_sub",), ("nope",), ("add_sub", "1"),
                                                                     ("add_sub", "9"))]}
            pb_utils.Logger.log_info("introspected")
            info = np.array([json.dumps(seen).encode()], object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("INFO", info),
                                                         pb_utils.Tensor("OTHER", np.array([0], np.int32))]))
        return responses
"""

INTROSPECT_TENSORS = """
  input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
  output [ { name: "INFO" data_type: TYPE_STRING dims: [ 1 ] }, { name: "OTHER" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

ENSEMBLE = """
platform: "ensemble"
max_batch_size: 8
""" + TENSORS + """
ensemble_scheduling { step [ { model_name: "add_sub" model_version: -1
  input_map { key: "INPUT0" value: "INPUT0" } input_map { key: "INPUT1" value: "INPUT1" }
  output_map { key: "OUTPUT0" value: "OUTPUT0" } output_map { key: "OUTPUT1" value: "OUTPUT1" } } ] }
"""


# Scores for the classification extension: SCORES = X (FP32, labelled from labels.txt), RANKS = X as INT32.
SCORES = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SCORES", x),
                                                         pb_utils.Tensor("RANKS", x.astype(np.int32))]))
        return responses
"""

SCORES_TENSORS = """
  input [ { name: "X" data_type: TYPE_FP32 dims: [ 5 ] } ]
  output [ { name: "SCORES" data_type: TYPE_FP32 dims: [ 5 ] label_filename: "labels.txt" },
           { name: "RANKS" data_type: TYPE_INT32 dims: [ 5 ] } ]
"""


# add_sub with a bare config: the model declares its tensors and batching itself (auto_complete_config).
COMPLETED = ADD_SUB.replace("class TritonPythonModel:", '''class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        for kind, add in (("INPUT", config.add_input), ("OUTPUT", config.add_output)):
            for i in range(2):
                add({"name": f"{kind}{i}", "data_type": "TYPE_INT32", "dims": [4]})
        config.set_max_batch_size(8)
        config.set_dynamic_batching()
        return config
''')


# Its own metrics (Triton's custom metrics API): a counter by X, a gauge set to 2X then up 1, a histogram of X.
METERED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        family = pb_utils.MetricFamily  # (a family lives as long as its object: kept here)
        self.families = [family(name="metered_requests", description="Requests seen", kind=family.COUNTER),
                         family(name="metered_level", description="A level", kind=family.GAUGE),
                         family(name="metered_sizes", description="Sizes seen", kind=family.HISTOGRAM)]
        self.requests = self.families[0].Metric(labels={"model": "metered", "kind": "x"})
        self.level = self.families[1].Metric(labels={"model": "metered"})
        self.sizes = self.families[2].Metric(labels={"model": "metered"}, buckets=[1.0, 5.0, 10.0])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = int(pb_utils.get_input_tensor_by_name(request, "X").as_numpy()[0])
            self.requests.increment(x)
            self.level.set(2 * x)
            self.level.increment(1)
            self.sizes.observe(x)
            seen = np.array([self.requests.value(), self.level.value()], np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", seen)]))
        return responses
"""

# Works for X seconds unless the request is cancelled first; counts what it ran and saw in its own metric.
PATIENT = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.family = pb_utils.MetricFamily(name="patient_requests", description="Requests run and seen cancelled",
                                            kind=pb_utils.MetricFamily.COUNTER)
        self.ran = self.family.Metric(labels={"what": "ran"})
        self.cancelled = self.family.Metric(labels={"what": "cancelled"})

    def execute(self, requests):
        responses = []
        for request in requests:
            self.ran.increment(1)
            until = time.monotonic() + float(pb_utils.get_input_tensor_by_name(request, "X").as_numpy()[0])
            while time.monotonic() < until and not request.is_cancelled():
                time.sleep(0.01)
            if request.is_cancelled():
                self.cancelled.increment(1)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([1], np.int32))]))
        return responses
"""


# Loads or unloads the model its "load" / "unload" parameter names (pb_utils.load_model / unload_model) and
# answers "done" or the error's text; with "ready", whether that model is ready (pb_utils.is_model_ready).
CONTROLLER = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters())
            try:
                if "ready" in params:
                    seen = str(pb_utils.is_model_ready(params["ready"]))
                elif "load" in params:
                    pb_utils.load_model(params["load"])
                    seen = "done"
                else:
                    pb_utils.unload_model(params["unload"])
                    seen = "done"
            except Exception as exc:
                seen = str(exc)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("INFO", np.array([seen.encode()], object)),
                                                         pb_utils.Tensor("OTHER", np.array([0], np.int32))]))
        return responses
"""


def python(name: str, extra: str = "", tensors: str = TENSORS, batch: int = 8) -> str:
    return f'name: "{name}"\nbackend: "python"\nmax_batch_size: {batch}\n{extra}\n{tensors}'


def write_repository(root: Path) -> Path:
    """The models above in ``root``: add_sub, bls (calls a model), counter (decoupled), bls_stream (calls
    counter), introspect and sequence (what the request API tells a model), ensemble (add_sub as a step),
    scores (classification, four labels for five classes), completed (add_sub through auto_complete_config),
    metered (its own metrics), patient (works until its request is cancelled), controller (loads and unloads
    models)."""
    write_model(root, "add_sub", python("add_sub", "dynamic_batching {}"), {"1/model.py": ADD_SUB})
    write_model(root, "bls", python("bls", "dynamic_batching {}"), {"1/model.py": BLS})
    write_model(root, "counter", python("counter", "model_transaction_policy { decoupled: true }",
                                        'input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                                        'output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]', 0),
                {"1/model.py": COUNTER})
    sums = ('input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
            'output [ { name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] }, '
            '{ name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]')
    write_model(root, "bls_stream", python("bls_stream", "", sums, 0), {"1/model.py": BLS_STREAM})
    write_model(root, "introspect", python("introspect", "", INTROSPECT_TENSORS, 0), {"1/model.py": INTROSPECT})
    write_model(root, "sequence", python("sequence", "sequence_batching { }", INTROSPECT_TENSORS, 0),
                {"1/model.py": INTROSPECT})
    write_model(root, "ensemble", ENSEMBLE, {"1/.keep": ""})
    write_model(root, "completed", 'name: "completed"\nbackend: "python"\n', {"1/model.py": COMPLETED})
    write_model(root, "scores", python("scores", "", SCORES_TENSORS),
                {"1/model.py": SCORES, "labels.txt": "cat\ndog\nbird\nfish\n"})
    write_model(root, "metered", python("metered", "", 'input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                                        'output [ { name: "SEEN" data_type: TYPE_FP32 dims: [ 2 ] } ]', 0),
                {"1/model.py": METERED})
    write_model(root, "patient", python("patient", "", 'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
                                        'output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]', 0),
                {"1/model.py": PATIENT})
    write_model(root, "controller", python("controller", "", INTROSPECT_TENSORS, 0), {"1/model.py": CONTROLLER})
    return root

