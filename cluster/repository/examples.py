"""The example model repository: configs live in ``configs/example-repository``, model files are
generated here on first use (small, seeded, nothing downloaded).

The writers are also how tests and benchmarks make their models.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

EXAMPLE = "example"
EXAMPLE_ROOT = Path(__file__).resolve().parents[2] / "configs" / "example-repository"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def onnx_mlp(sizes: tuple[int, ...] = (64, 256, 10), seed: int = 0, input_name: str = "INPUT0",
             output_name: str = "OUTPUT0") -> bytes:
    """An FP32 MLP (Gemm + Relu between layers) with a dynamic batch dim."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    current = input_name
    for layer, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{layer}"), numpy_helper.from_array(b, f"b{layer}")]
        last = layer == len(sizes) - 2
        out = output_name if last else f"h{layer}"
        gemm_out = out if last else f"g{layer}"
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=weights,
    )
    return _serialize(helper.make_model(graph))


def onnx_add_sub(size: int = 16) -> bytes:
    """Triton's classic ``simple`` model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32)."""
    from onnx import TensorProto, helper

    io = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", size])  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "simple", [io("INPUT0"), io("INPUT1")], [io("OUTPUT0"), io("OUTPUT1")],
    )
    return _serialize(helper.make_model(graph))


def onnx_identity(elements: int | None = None) -> bytes:
    """An FP32 Identity over ``[batch, elements]`` (``INPUT0`` -> ``OUTPUT0``; any number of elements when
    None): the server's cost of moving a tensor, with no compute."""
    from onnx import TensorProto, helper

    width = elements or "elements"
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])  # noqa: E731
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "identity",
                              [io("INPUT0")], [io("OUTPUT0")])
    return _serialize(helper.make_model(graph))


def onnx_accumulator() -> bytes:
    """A stateful sequence model for Triton's implicit state: ``OUTPUT = INPUT + (STATE_IN unless START)``,
    written to ``STATE_OUT`` too (FP32 ``[batch, 1]``; ``START`` INT32)."""
    from onnx import TensorProto, helper, numpy_helper

    io = lambda name, kind=TensorProto.FLOAT: helper.make_tensor_value_info(name, kind, ["batch", 1])  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Cast", ["START"], ["start"], to=TensorProto.FLOAT),
         helper.make_node("Sub", ["one", "start"], ["keep"]),
         helper.make_node("Mul", ["STATE_IN", "keep"], ["previous"]),
         helper.make_node("Add", ["previous", "INPUT"], ["OUTPUT"]),
         helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"])],
        "accumulator", [io("INPUT"), io("START", TensorProto.INT32), io("STATE_IN")], [io("OUTPUT"), io("STATE_OUT")],
        initializer=[numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    return _serialize(helper.make_model(graph))


def _serialize(model) -> bytes:
    from onnx import checker

    model.opset_import[0].version = 17
    model.ir_version = 8  # readable by every onnxruntime from 1.15 on
    checker.check_model(model)
    return model.SerializeToString()


def torchscript_linear(in_features: int = 4, out_features: int = 2, seed: int = 0) -> bytes:
    """A TorchScript ``nn.Linear`` (``INPUT__0`` -> ``OUTPUT__0`` in Triton's naming)."""
    import io

    import torch

    torch.manual_seed(seed)
    module = torch.jit.script(torch.nn.Linear(in_features, out_features).eval())
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def example_repository(root: Path = EXAMPLE_ROOT) -> Path:
    """The example repository, its model files generated if missing. Returns its folder."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"the example repository {root} ships with the source checkout; pass a repository folder instead"
        )
    writers = {
        root / "mlp" / "1" / "model.onnx": onnx_mlp,
        root / "simple" / "1" / "model.onnx": onnx_add_sub,
        root / "identity" / "1" / "model.onnx": onnx_identity,
        root / "linear_torch" / "1" / "model.pt": torchscript_linear,
    }
    for path, writer in writers.items():
        if path.exists():
            continue
        try:
            _atomic_write(path, writer())
        except ImportError as exc:  # torch is an optional extra; that model then reports why it is down
            path.parent.mkdir(parents=True, exist_ok=True)
            logger.warning("skipped %s: %s", path.relative_to(root), exc)
    return root
