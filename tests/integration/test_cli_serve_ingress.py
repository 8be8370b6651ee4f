"""``ric serve``'s front door as a user meets it: the ingress replica's own listeners (``--ingress direct``,
the default). Every listener follows ``--host`` but what Serve hard-codes, slow clients are cut off (stalled,
or trickling their headers), one address cannot hold every connection, a Content-Length of 19 digits is
refused, concurrent large gRPC messages on one connection are all answered, and large tensors reach a
model's own deployment and pass between an ensemble's steps. HAProxy's ingress: test_cli_serve_haproxy.py."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient

from cluster.repository.examples import onnx_add_sub
from tests.conftest import write_model
from tests.integration.conftest import assert_huge_lengths_refused, free_port, ric_serving, wait_for

HEADER_TIMEOUT_S = 4
BODY_TIMEOUT_S = 8
MAX_CLIENT_CONNECTIONS = 16
#: Concurrent gRPC requests of this many bytes in and out stalled HAProxy 2.8 with Serve's HTTP/2 settings.
LARGE_BYTES = 16 << 20


@pytest.fixture(scope="module")
def ric(tmp_path_factory):
    with ric_serving(tmp_path_factory.mktemp("home"), "--dashboard-port", str(free_port()), "--client-timeout-s",
                     "2", "--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s",
                     str(BODY_TIMEOUT_S), "--max-client-connections", str(MAX_CLIENT_CONNECTIONS)) as server:
        yield server


def listeners(pid: int) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of a process and its descendants."""
    found = set()
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port, process.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def is_loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1") or address.startswith("::ffff:127.")


def test_with_host_127_0_0_1_nothing_that_answers_the_api_listens_elsewhere(ric):
    """ric serve --host 127.0.0.1 (the default): the HTTP and gRPC ports (the ingress replica's own), the
    dashboard and Ray's own daemons listen on loopback only, and no proxy runs. What listens on every interface
    is one socket per Serve replica, its internal gRPC server (replica to replica, refusing calls without
    Ray's token), as docs/operations.md lists: each such socket is named here by what it is, and none answers
    the Triton API."""
    found = listeners(ric.process.pid)
    public = {(address, port, name) for address, port, name in found if not is_loopback(address)}
    ours = {(port, name) for address, port, name in found if port in (ric.http_port, ric.grpc_port)}
    assert {port for port, _ in ours} == {ric.http_port, ric.grpc_port}, found
    assert {name for _, name in ours} == {"ray::ServeReplica:ric:ric-ingress"}, ours
    assert not [name for _, _, name in found if name in ("haproxy", "ray::ProxyActor")], found
    replicas = {name for _, _, name in public if name.startswith("ray::ServeReplica")}
    unexpected = {entry for entry in public if entry[2] not in replicas}
    assert not unexpected, unexpected
    assert len(public) == len(replicas), public  # one internal gRPC server each, nothing more
    with ThreadPoolExecutor(8) as pool:
        answering = [port for port, answer in zip(
            [p for _, p, _ in public], pool.map(models_answered, [p for _, p, _ in public])) if answer is not None]
    assert not answering, answering


def models_answered(port: int, attempts: int = 3) -> set[str] | None:
    """The models the repository index lists on ``port``, over HTTP and gRPC, each asked on ``attempts``
    fresh connections (a port two servers share answers from either); None when neither protocol answers."""
    names, answered = set(), False
    for _ in range(attempts):
        try:
            response = requests.post(f"http://127.0.0.1:{port}/v2/repository/index", timeout=2)
            if response.ok:
                names |= {model["name"] for model in response.json()}
                answered = True
        except (requests.RequestException, ValueError):
            pass
        try:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            index = client.get_model_repository_index(as_json=True, client_timeout=2)
            names |= {model["name"] for model in index.get("models", [])}
            answered = True
        except Exception:  # not a gRPC port, or not Triton's service: nothing answered
            pass
    return names if answered else None


def test_two_servers_on_one_machine_each_answer_only_their_own_models_on_every_port(ric, tmp_path_factory):
    """A second ric serve with another repository beside the module's: every TCP port either server's
    processes listen on (HTTP, gRPC, metrics, HAProxy's, Serve's and Ray's) is asked for the repository
    index; none answers with the other server's models. Serve's fixed ports are chosen free per server
    (docs/operations.md); before, both servers' ingress replicas bound Serve's direct-ingress gRPC port
    40000 (SO_REUSEPORT) and the second server's gRPC clients got the first one's models."""
    root = tmp_path_factory.mktemp("other-repository")
    write_model(root, "other_add_sub", "", {"1/model.onnx": onnx_add_sub()})
    with ric_serving(tmp_path_factory.mktemp("other-home"), str(root), "--no-dashboard") as other:
        mine, theirs = (sorted({port for _, port, _ in listeners(server.process.pid)}) for server in (ric, other))
        with ThreadPoolExecutor(16) as pool:
            answers = dict(zip(mine + theirs, pool.map(models_answered, mine + theirs)))
    assert answers[ric.http_port] and answers[ric.grpc_port] and "simple" in answers[ric.grpc_port], answers
    assert answers[other.http_port] == answers[other.grpc_port] == {"other_add_sub"}, answers
    assert not [port for port in mine if answers[port] and "other_add_sub" in answers[port]], answers
    assert not [port for port in theirs if answers[port] and answers[port] != {"other_add_sub"}], answers
    print(f"ports asked: {len(mine)} and {len(theirs)}; answering the API: "
          f"{sorted(p for p in mine if answers[p] is not None)} and {sorted(p for p in theirs if answers[p] is not None)}")


def cut_off(connection: socket.socket, trickle: bool, within_s: float) -> tuple[bytes, int]:
    """Wait for the server's answer (or close) on a connection mid-headers, sending a header byte every second
    meanwhile when ``trickle``: the answer and how many bytes were sent. Fails if it stays open ``within_s``."""
    deadline = time.monotonic() + within_s
    sent = 0
    while time.monotonic() < deadline:
        if select.select([connection], [], [], 1.0)[0]:
            return connection.recv(64), sent
        if trickle:
            try:
                connection.sendall(b"X")
            except OSError:  # closed under us
                return b"", sent
            sent += 1
    raise AssertionError(f"the server kept a {'trickling' if trickle else 'stalled'} client {within_s} s ({sent} bytes)")


def test_a_stalled_client_and_one_trickling_its_headers_are_cut_off_and_the_server_answers_on(ric):
    """A client that stops mid-headers, and one that trickles them a byte a second, are cut off after
    --header-timeout-s in all: 408."""
    for trickle in (False, True):
        with socket.create_connection(("127.0.0.1", ric.http_port), timeout=30) as slow:
            slow.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            answer, sent = cut_off(slow, trickle, within_s=30)
            assert answer.startswith(b"HTTP/1.1 408") or answer == b"", (trickle, sent, answer)
            assert sent >= (2 if trickle else 0), sent  # the trickle outlasted the client timeout
    assert requests.get(f"{ric.url}/v2/health/ready", timeout=30).ok


def test_slow_uploads_hold_only_what_they_sent_and_are_cut_off_after_the_body_timeout(ric):
    """The review's two uploads, each declaring 23 MB of JSON (at 24x for decoding, the whole default 1 GiB
    in-flight budget between them), and nine declaring 60 MB of binary tensors (at 2x, as much again), each
    sending a byte a second: other requests are answered meanwhile (the budget holds what has arrived), and
    each upload is answered 408 after --body-timeout-s in all."""
    simple = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}
                         for n in ("INPUT0", "INPUT1")]}
    uploads, answers = [], {}
    started = time.monotonic()
    for headers in [b"Content-Type: application/json\r\nContent-Length: 23000000"] * 2 + [
            b"Inference-Header-Content-Length: 1\r\nContent-Length: 60000000"] * 9:
        upload = socket.create_connection(("127.0.0.1", ric.http_port), timeout=30)
        upload.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n\r\n{")
        uploads.append(upload)
    codes = []
    while len(answers) < len(uploads) and time.monotonic() - started < 40:
        for upload in uploads:
            if upload not in answers:
                if select.select([upload], [], [], 0)[0]:
                    answers[upload] = (upload.recv(4096), time.monotonic() - started)
                else:
                    upload.sendall(b" ")  # within the 2 s client timeout: only the body timeout cuts it off
        if len(codes) < 10:
            codes.append(requests.post(f"{ric.url}/v2/models/simple/infer", json=simple, timeout=30).status_code)
        time.sleep(1.0)
    for upload in uploads:
        upload.close()
    assert len(codes) >= 5 and set(codes) == {200}, codes  # a request a second while the uploads were open
    assert len(answers) == len(uploads), f"an upload was still open after {time.monotonic() - started:.0f} s"
    for answer, after_s in answers.values():
        assert answer.startswith(b"HTTP/1.1 408") and f"did not arrive within {BODY_TIMEOUT_S} s".encode() in answer, answer
        assert BODY_TIMEOUT_S - 1 <= after_s <= BODY_TIMEOUT_S + 10, after_s


def test_one_client_address_cannot_hold_more_than_its_connections(ric):
    """--max-client-connections: with that many connections open from one address (slow clients, say), the
    next one's request answers 429; once they close, requests are answered again."""
    held = []
    try:
        for _ in range(MAX_CLIENT_CONNECTIONS):
            connection = socket.create_connection(("127.0.0.1", ric.http_port), timeout=30)
            connection.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append(connection)
        refused = requests.get(f"{ric.url}/v2/health/ready", timeout=30)
    finally:
        for connection in held:
            connection.close()
    assert refused.status_code == 429, refused.text
    assert refused.json() == {"error": f"more than {MAX_CLIENT_CONNECTIONS} connections from this address"}
    wait_for(lambda: requests.get(f"{ric.url}/v2/health/ready", timeout=30).ok, timeout_s=30,
             what="requests answered once the connections closed")


def test_a_content_length_of_19_digits_or_more_is_refused(ric):
    """The replicas' own listener refuses them before anything is read."""
    assert_huge_lengths_refused(ric.http_port, ric.url)


def test_concurrent_large_grpc_requests_on_one_connection_are_all_answered(ric):
    """Eight 16 MB requests at a time on one gRPC channel (one HTTP/2 connection), twelve rounds (through
    HAProxy with Serve's HTTP/2 settings, forwarding stopped in most such runs). Every answer must be its
    input."""
    rng = np.random.default_rng(0)
    tensors = [rng.random((1, LARGE_BYTES // 4), np.float32) for _ in range(8)]

    async def rounds() -> list[bool]:
        client = grpcaio.InferenceServerClient(f"127.0.0.1:{ric.grpc_port}")
        try:
            same = []
            for _ in range(12):
                same += await asyncio.gather(*(infer(client, x) for x in tensors))
            return same
        finally:
            await client.close()

    async def infer(client: grpcaio.InferenceServerClient, x: np.ndarray) -> bool:
        request = grpcaio.InferInput("INPUT0", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        answer = await client.infer("identity", [request], client_timeout=60)
        return np.array_equal(answer.as_numpy("OUTPUT0"), x)

    assert asyncio.run(rounds()) == [True] * 96


def test_large_tensors_reach_an_ensemble_and_pass_between_its_steps(ric):
    """detect_classify runs in its own deployment and its steps in theirs: a 5 MB image goes from the ingress
    to the ensemble and on to the detector, and 2.6 MB of crops from the detector to the classifier in
    requests of 64 rows, all by reference (with Serve's gRPC between replicas, which refused messages over
    4 MB, this answered 500 "internal error: AioRpcError"). The answer equals the steps' own answers."""
    rng = np.random.default_rng(1)
    image = rng.standard_normal((20480, 64)).astype(np.float32)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{ric.http_port}", network_timeout=120)

    def infer(model: str, name: str, x: np.ndarray) -> httpclient.InferResult:
        request = httpclient.InferInput(name, list(x.shape), "FP32")
        request.set_data_from_numpy(x, binary_data=True)
        return client.infer(model, [request])

    answer = infer("detect_classify", "IMAGE", image)
    boxes = np.flatnonzero(image.mean(axis=1) > 0)
    assert 10000 < len(boxes) < 10500 and answer.as_numpy("BOXES").tolist() == boxes.tolist()
    scores = answer.as_numpy("SCORES")
    assert scores.shape == (len(boxes), 10)
    for rows in (slice(0, 64), slice(5000, 5064), slice(len(boxes) - 64, None)):
        np.testing.assert_allclose(scores[rows], infer("mlp", "INPUT0", image[boxes[rows]]).as_numpy("OUTPUT0"),
                                   rtol=1e-5, atol=1e-6)
