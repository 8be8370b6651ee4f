"""Python backend: a ``model.py`` in one of two forms.

- Triton's form: a class ``TritonPythonModel`` with ``initialize(args)``, ``execute(requests)`` and
  ``finalize()``; ``execute`` gets the list of requests of a batch and returns one response each.
- The plain form: a function ``infer(inputs)`` taking and returning a dict of numpy arrays (one merged
  batch), with an optional ``initialize(args)`` and ``finalize()``.

A decoupled model (``model_transaction_policy { decoupled: true }``) answers each request with zero, one
or many responses: in Triton's form through ``request.get_response_sender()`` (``execute`` returns None),
in the plain form ``infer(inputs)`` is a generator of output dicts.

``execute`` may be ``async def`` (run to its end on the backend's own event loop), and may call other models
(BLS: ``pb_utils.InferenceRequest(model_name=...).exec()`` / ``await ...async_exec()``, through
``self.calls``; deployments/backends/bls.py). A response's ``TritonError`` code decides the client's status,
as on Triton.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import json
import sys
from typing import Callable

from deployments.backends import Backend, Outputs, RequestInfo, Tensors, bls
from deployments.backends import triton_python_backend_utils as pb_utils
from deployments.config.model_config import ModelConfig, parse_yaml
from deployments.errors import InferenceError


class PythonBackend(Backend):
    name = "python"
    default_filename = "model.py"

    def load(self) -> None:
        # Triton models import this module by its Triton name.
        sys.modules.setdefault("triton_python_backend_utils", pb_utils)
        module_name = f"ric_model_{self.config.name}_{self.version_dir.name}".replace("-", "_").replace(".", "_")
        spec = importlib.util.spec_from_file_location(module_name, self.model_path)
        if spec is None or not self.model_path.is_file():
            raise FileNotFoundError(f"no {self.model_path.name} in version {self.version_dir.name}")
        if unserved := unserved_names(self.model_path.read_text(errors="replace")):
            raise ValueError(f"model.py uses {', '.join(f'pb_utils.{n}' for n in unserved)}, which ric does not "
                             "serve (docs/python_backend.md lists what it does)")
        module = importlib.util.module_from_spec(spec)
        bls.set_default(self.calls, (self.config.name,))  # (the module may make metric families as it loads)
        spec.loader.exec_module(module)
        if hasattr(module, "TritonPythonModel"):
            self._model = module.TritonPythonModel()
            self._infer = None
        elif callable(getattr(module, "infer", None)):
            self._model = module
            self._infer = module.infer
        else:
            raise ValueError("model.py must define a class TritonPythonModel or a function infer(inputs)")
        complete = getattr(type(self._model), "auto_complete_config", None) if self._infer is None else None
        if complete is not None:
            self.config = self._auto_completed(complete)
        args = {
            "model_config": json.dumps(self.config.served_dict()),
            "model_instance_kind": "GPU" if self.device == "cuda" else "CPU",
            "model_instance_name": f"{self.config.name}_0",
            "model_instance_device_id": "0",
            "model_repository": str(self.version_dir.parent),
            "model_version": self.version_dir.name,
            "model_name": self.config.name,
        }
        self._loop = None
        if hasattr(self._model, "initialize"):
            self._run(lambda _: self._model.initialize(args), [], [])

    def _auto_completed(self, complete) -> ModelConfig:
        """The config after the model's static ``auto_complete_config`` (Triton's), checked as a config file
        would be. A model may add inputs and outputs and set batching, not turn decoupled on or off: where
        a model runs is chosen from its config before it loads."""
        given = pb_utils.ModelConfig(self.config.to_dict())
        returned = complete(given)
        completed = returned if isinstance(returned, pb_utils.ModelConfig) else given
        config = parse_yaml(json.dumps(completed.as_dict()), f"{self.config.name}: auto_complete_config",
                            self.config.name)
        if config.decoupled != self.config.decoupled:
            raise ValueError("auto_complete_config may not change model_transaction_policy.decoupled: set it in "
                             "the model's config file too")
        return config

    def infer(self, inputs: Tensors) -> Tensors:
        outputs = self._infer(inputs)
        if not isinstance(outputs, dict):
            raise TypeError(f"infer() must return a dict of arrays, not {type(outputs).__name__}")
        return {tensor.name: outputs[tensor.name] for tensor in self.config.output if tensor.name in outputs}

    def execute(self, requests: list[Tensors], infos: list[RequestInfo] | None = None) -> list[Tensors | Exception]:
        if self._infer is not None:
            return super().execute(requests)
        infos = infos or [RequestInfo()] * len(requests)
        outputs = [tensor.name for tensor in self.config.output]
        triton_requests = [pb_utils.InferenceRequest.received([pb_utils.Tensor(n, a) for n, a in r.items()], info,
                                                              outputs)
                           for r, info in zip(requests, infos)]
        responses = self._run(self._model.execute, triton_requests, infos)
        if not isinstance(responses, (list, tuple)) or len(responses) != len(requests):
            got = f"{len(responses)} responses" if isinstance(responses, (list, tuple)) else type(responses).__name__
            raise RuntimeError(f"execute() returned {got} for {len(requests)} requests")
        return [self._result(response) for response in responses]

    def stream(self, inputs: Tensors, info: RequestInfo,
               emit: Callable[[Tensors | Exception | None, bool], None]) -> None:
        """Run one request of a decoupled model: ``emit(outputs, final)`` for each response it sends (outputs
        None: the final flag alone; an exception: an error response). Returns when ``execute`` (or the
        generator) does; a Triton model may still send afterwards, from a thread of its own."""
        if self._infer is not None:
            for outputs in self._infer(inputs):
                emit({t.name: outputs[t.name] for t in self.config.output if t.name in outputs}, False)
            emit(None, True)
            return
        sender = pb_utils.InferenceResponseSender(
            lambda response, final: emit(None if response is None else self._result(response), final), info.token)
        request = pb_utils.InferenceRequest.received([pb_utils.Tensor(n, a) for n, a in inputs.items()], info,
                                                     [tensor.name for tensor in self.config.output], sender)
        if self._run(self._model.execute, [request], [info]) is not None:
            raise RuntimeError("a decoupled model's execute() returns None: it answers through the response sender")

    def _run(self, method, requests: list, infos: list[RequestInfo]):
        """Call ``execute`` (a coroutine function too: run to its end on this backend's event loop) with its
        BLS requests carrying the models waiting on this batch, this one last."""
        callers = tuple(dict.fromkeys(c for info in infos for c in info.callers)) + (self.config.name,)
        with bls.calling(self.calls, callers):
            result = method(requests)
            if inspect.iscoroutine(result):
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                result = self._loop.run_until_complete(result)
        return result

    @staticmethod
    def _result(response: pb_utils.InferenceResponse) -> Tensors | InferenceError:
        if not isinstance(response, pb_utils.InferenceResponse):
            raise TypeError(f"execute() must return InferenceResponse objects, not {type(response).__name__}")
        if response.has_error():
            error = response.error()
            return InferenceError.from_triton(error.code(), error.message())
        tensors = {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}
        return Outputs(tensors, response._parameters) if response._parameters else tensors

    def unload(self) -> None:
        if hasattr(self._model, "finalize"):
            self._run(lambda _: self._model.finalize(), [], [])
        if self._loop is not None:
            self._loop.close()


def unserved_names(source: str) -> list[str]:
    """The names of Triton's ``pb_utils`` a model's source uses (``pb_utils.X``, ``from ... import X``) that it
    does not serve: refused when the model loads, not when a request reaches that line."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []  # (loading it says so)
    aliases, used = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "triton_python_backend_utils"}
        elif isinstance(node, ast.ImportFrom) and node.module == "triton_python_backend_utils":
            used += [a.name for a in node.names if a.name != "*"]
    used += [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and isinstance(node.value, ast.Name) and node.value.id in aliases]
    return sorted({name for name in used if not hasattr(pb_utils, name)})
