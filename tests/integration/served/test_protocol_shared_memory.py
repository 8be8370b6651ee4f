"""Triton's system shared memory extension, as its clients use it: stock tritonclient (HTTP and gRPC) and
tritonclient.utils.shared_memory regions in /dev/shm; tensors go through the regions, not the bodies."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from tests.integration.served.conftest import CASES, reference

@pytest.fixture(autouse=True)
def no_regions(endpoints):
    """Every region is unregistered before and after each test."""
    client = httpclient.InferenceServerClient(endpoints.http.removeprefix("http://"))
    client.unregister_system_shared_memory()
    yield
    client.unregister_system_shared_memory()


@pytest.fixture
def regions():
    """Creates /dev/shm regions with unique keys; destroys them after the test."""
    made = []

    def create(size: int):
        name = f"ric-test-{uuid.uuid4().hex[:8]}"
        handle = shm.create_shared_memory_region(name, f"/{name}", size)
        made.append(handle)
        return name, f"/{name}", handle

    yield create
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def test_inputs_and_outputs_travel_through_shared_memory(transport, regions, repository):
    module, client = transport
    inputs = CASES["simple"]
    size = inputs["INPUT0"].nbytes
    in_name, in_key, in_handle = regions(2 * size)
    out_name, out_key, out_handle = regions(2 * size)
    shm.set_shared_memory_region(in_handle, [inputs["INPUT0"]])
    shm.set_shared_memory_region(in_handle, [inputs["INPUT1"]], offset=size)
    client.register_system_shared_memory(in_name, in_key, 2 * size)
    client.register_system_shared_memory(out_name, out_key, 2 * size)

    tensors = [module.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    tensors[0].set_shared_memory(in_name, size)
    tensors[1].set_shared_memory(in_name, size, offset=size)
    outputs = [module.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
    outputs[0].set_shared_memory(out_name, size)
    outputs[1].set_shared_memory(out_name, size, offset=size)
    result = client.infer("simple", tensors, outputs=outputs)

    expected = reference(repository, "simple", inputs)
    if module is httpclient:  # the body carries no data, only the name, datatype and shape
        assert result.get_output("OUTPUT0") == {"name": "OUTPUT0", "datatype": "INT32", "shape": [2, 16]}
    else:
        assert list(result.get_response().raw_output_contents) == [b"", b""]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [2, 16]), expected["OUTPUT0"])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [2, 16], offset=size),
                                  expected["OUTPUT1"])
    status = client.get_system_shared_memory_status(**({"as_json": True} if module is grpcclient else {}))
    listed = status["regions"].values() if module is grpcclient else status
    assert {(r["name"], r["key"], int(r["byte_size"])) for r in listed} == {
        (in_name, in_key, 2 * size), (out_name, out_key, 2 * size)}

    client.unregister_system_shared_memory(in_name)
    with pytest.raises(InferenceServerException, match=f"Unable to find shared memory region: '{in_name}'"):
        client.infer("simple", tensors, outputs=outputs)
    assert client.infer("simple", _plain(module, inputs)).as_numpy("OUTPUT0").shape == (2, 16)


def test_bytes_tensors_through_shared_memory(transport, regions):
    module, client = transport
    text = CASES["text_stats"]["TEXT"]
    serialized = serialize_byte_tensor(text)
    serialized_size = serialized_byte_size(serialized)
    in_name, in_key, in_handle = regions(serialized_size)
    out_name, out_key, out_handle = regions(256)
    shm.set_shared_memory_region(in_handle, [serialized])
    client.register_system_shared_memory(in_name, in_key, serialized_size)
    client.register_system_shared_memory(out_name, out_key, 256)
    tensor = module.InferInput("TEXT", list(text.shape), "BYTES")
    tensor.set_shared_memory(in_name, serialized_size)
    upper = module.InferRequestedOutput("UPPER")
    upper.set_shared_memory(out_name, 256)
    result = client.infer("text_stats", [tensor], outputs=[upper, module.InferRequestedOutput("LENGTH")])
    got = shm.get_contents_as_numpy(out_handle, np.object_, list(text.shape))
    assert got.tolist() == [[b"ABC"], ["HéLLO".encode()]]
    assert result.as_numpy("LENGTH").tolist() == [[3], [6]]  # not in shared memory: in the body


def test_bad_regions_and_slices_get_triton_errors_and_serving_goes_on(transport, regions):
    module, client = transport
    name, key, handle = regions(64)
    with pytest.raises(InferenceServerException, match="Unable to open shared memory region: '/ric-no-such-key'"):
        client.register_system_shared_memory("nope", "/ric-no-such-key", 64)
    with pytest.raises(InferenceServerException, match="holds 64 bytes"):
        client.register_system_shared_memory(name, key, 128)  # larger than the object
    client.register_system_shared_memory(name, key, 64)
    with pytest.raises(InferenceServerException, match=f"shared memory region '{name}' already in manager"):
        client.register_system_shared_memory(name, key, 64)

    inputs = CASES["simple"]
    tensors = _plain(module, inputs)
    too_far = module.InferInput("INPUT0", [2, 16], "INT32")
    too_far.set_shared_memory(name, 128)
    with pytest.raises(InferenceServerException, match=f"Invalid offset \\+ byte size for shared memory region: '{name}'"):
        client.infer("simple", [too_far, tensors[1]])
    small = module.InferRequestedOutput("OUTPUT0")
    small.set_shared_memory(name, 64)  # 128 bytes of output
    with pytest.raises(InferenceServerException, match="'OUTPUT0' \\(64 bytes\\) should be at least 128 bytes"):
        client.infer("simple", tensors, outputs=[small])
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported"):
        client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)
    client.unregister_cuda_shared_memory()  # as Triton clients do at start: nothing to unregister
    assert client.infer("simple", tensors).as_numpy("OUTPUT0").shape == (2, 16)


def test_an_input_with_data_and_a_region_is_refused_with_triton_text(server, regions):
    name, key, _ = regions(64)
    requests.post(f"{server}/v2/systemsharedmemory/region/{name}/register",
                  json={"key": key, "offset": 0, "byte_size": 64}, timeout=30).raise_for_status()
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16,
                        "parameters": {"shared_memory_region": name, "shared_memory_byte_size": 64}},
                       {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}]}
    response = requests.post(f"{server}/v2/models/simple/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"] == ("Input must set only one of the following fields: 'data', 'binary_data_size' "
                                        "in 'parameters', 'shared_memory_region' in 'parameters'. But set 'data' "
                                        "'shared_memory_region'")
    requests.post(f"{server}/v2/systemsharedmemory/unregister", timeout=30).raise_for_status()


def test_a_region_registered_on_another_node_is_refused_by_name(endpoints, regions):
    """Registrations are the application's (Ray's key-value store); one made through an ingress replica on
    another node names that node instead of reading this node's /dev/shm."""
    import ray

    from cluster.names import APP_NAME
    from cluster.protocol.codec import SharedSlice
    from cluster.protocol.shared_memory import SharedMemory

    name, key, _ = regions(64)
    here = ray.get_runtime_context().get_node_id()
    elsewhere = SharedMemory(APP_NAME, "another-node")

    async def scenario():
        await elsewhere.register(name, key, 0, 64)
        try:
            with pytest.raises(Exception, match=f"registered on node another-node, but this request reached an "
                                                f"ingress replica on node {here}"):
                await SharedMemory(APP_NAME, here).write_outputs({"Y": np.zeros(4, np.int32)},
                                                                 {"Y": SharedSlice(name, 16)})
        finally:
            await elsewhere.unregister(name)

    asyncio.run(scenario())


def as_another_user(*command: str) -> None:
    """Runs a command as ``nobody`` where this test runs as root (the attacker of the security review), else
    as this user: the server's refusal does not depend on who made the object, only on what it is."""
    prefix = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 and shutil.which("runuser") else []
    subprocess.run([*prefix, *command], check=True, timeout=30)


@pytest.fixture
def shm_objects():
    """Paths in /dev/shm for objects a test makes; removed after it."""
    made: list[Path] = []

    def path() -> Path:
        made.append(Path("/dev/shm") / f"ric-test-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield path
    for each in made:
        if each.is_dir() and not each.is_symlink():
            each.rmdir()
        else:
            each.unlink(missing_ok=True)


def test_a_region_is_only_a_regular_file_of_the_servers_user(server, shm_objects, tmp_path):
    """A key names an object in world-writable /dev/shm, and the server reads and writes it as its own user:
    a link to a file elsewhere, a second name of another file, a directory, a FIFO or another user's file is
    refused at registration with Triton's text, and nothing is read or written through it."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only" * 8)
    secret.chmod(0o600)
    link = shm_objects()
    as_another_user("ln", "-s", str(secret), str(link))
    original = shm_objects()
    original.write_bytes(b"\0" * 64)
    second_name = shm_objects()
    os.link(original, second_name)
    folder = shm_objects()
    folder.mkdir()
    fifo = shm_objects()
    os.mkfifo(fifo)
    cases = {link: "a symbolic link", second_name: "a file with more than one name", folder: "not a regular file",
             fifo: "not a regular file"}
    if os.geteuid() == 0 and shutil.which("runuser"):
        theirs = shm_objects()
        as_another_user("truncate", "-s", "64", str(theirs))
        cases[theirs] = "not owned by the server's user"

    for path, reason in cases.items():
        response = requests.post(f"{server}/v2/systemsharedmemory/region/r/register",
                                 json={"key": f"/{path.name}", "offset": 0, "byte_size": 64}, timeout=30)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"].startswith(f"Unable to open shared memory region: '/{path.name}'"), response.text
        assert reason in response.json()["error"]
    assert requests.get(f"{server}/v2/systemsharedmemory/status", timeout=30).json() == []
    assert secret.read_bytes() == b"root only" * 8
    body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16} for n in ("INPUT0", "INPUT1")]}
    assert requests.post(f"{server}/v2/models/simple/infer", json=body, timeout=30).status_code == 200


def _plain(module, inputs):
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), "INT32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors
