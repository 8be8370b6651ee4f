"""Payload logging and shadow comparison in one process (no Ray): what a line holds (values, digests,
redactions), that pandas reads the files, sampling, that a sink that is down loses nothing it accepted
while the records past the queue are counted as dropped, and that a folder sink writes only in a folder of
the server's own."""

from __future__ import annotations

import hashlib
import stat
import time

import numpy as np
import pandas
import pytest

from deployments.config.operations import PayloadLog, Shadow
from deployments.errors import invalid
from deployments.operations import payloads
from deployments.operations.payloads import FolderSink, PayloadWriter
from deployments.operations.shadow import agree
from deployments.private_files import UnsafeFolder


@pytest.fixture(autouse=True)
def quick_files(monkeypatch):
    monkeypatch.setattr(payloads, "MAX_FILE_S", 0.2)


def wait_until(check, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_lines_hold_values_digests_and_redactions_and_pandas_reads_them(tmp_path):
    writer = PayloadWriter("m", "r1", FolderSink(str(tmp_path)))
    settings = PayloadLog(sample_rate=1.0, redact=["SECRET"], digest_over_bytes=64)
    big = np.arange(100, dtype=np.float32)
    inputs = {"X": np.array([[1, 2, 3]], np.int32), "SECRET": np.array([[7]], np.int32), "BIG": big,
              "TEXT": np.array([b"hello", "wörld".encode()], object)}
    writer.offer(settings, 2, "req-1", 1700000000.5, 2_500_000, inputs, {"Y": np.array([[0.5]], np.float32)})
    writer.offer(settings, 2, "req-2", 1700000001.0, 1_000_000, inputs, None, invalid("bad shape"))
    wait_until(lambda: writer.counts()[2].written == 2)
    writer.stop()
    (path,) = (tmp_path / "m").glob("*/*.jsonl")
    frame = pandas.read_json(path, lines=True)
    assert list(frame["id"]) == ["req-1", "req-2"] and list(frame["version"]) == [2, 2]
    assert list(frame["status"]) == ["OK", "INVALID_ARGUMENT"] and frame["error"][1] == "bad shape"
    assert frame["latency_ms"][0] == 2.5 and frame["replica"][0] == "r1" and frame["time"][0] == 1700000000.5
    first = frame["inputs"][0]
    assert first["X"] == {"datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]}
    assert first["SECRET"] == {"datatype": "INT32", "shape": [1, 1], "redacted": True}
    assert first["BIG"] == {"datatype": "FP32", "shape": [100], "sha256": hashlib.sha256(big.tobytes()).hexdigest()}
    assert first["TEXT"]["data"] == ["hello", "wörld"]
    assert frame["outputs"][0] == {"Y": {"datatype": "FP32", "shape": [1, 1], "data": [0.5]}}
    assert frame["outputs"][1] == {}
    assert not list(tmp_path.rglob(".writing-*"))  # every file appeared whole


def test_inputs_are_copied_when_offered(tmp_path):
    writer = PayloadWriter("m", "r1", FolderSink(str(tmp_path)))
    reused = np.array([1, 2], np.int32)  # a shared-memory region the client writes again once answered
    writer.offer(PayloadLog(sample_rate=1.0), 1, "a", 0.0, 0, {"X": reused}, {})
    reused[:] = 9
    wait_until(lambda: writer.counts()[1].written == 1)
    writer.stop()
    (path,) = (tmp_path / "m").glob("*/*.jsonl")
    assert pandas.read_json(path, lines=True)["inputs"][0]["X"]["data"] == [1, 2]


def test_a_share_of_requests_is_sampled(tmp_path):
    writer = PayloadWriter("m", "r1", FolderSink(str(tmp_path)))
    for i in range(2000):
        writer.offer(PayloadLog(sample_rate=0.1), 1, str(i), 0.0, 0, {"X": np.zeros(1)}, {})
    assert 130 < writer.counts()[1].logged < 270  # 10 %, sd ~13
    writer.offer(PayloadLog(sample_rate=0.0), 3, "none", 0.0, 0, {"X": np.zeros(1)}, {})
    assert 3 not in writer.counts()
    writer.stop()


class DownSink(FolderSink):
    """A folder that refuses writes while ``down`` (the sink's outage)."""

    down = True

    def write(self, name: str, data: bytes) -> None:
        if self.down:
            raise ConnectionError("the sink is down")
        super().write(name, data)


def test_a_sink_that_is_down_drops_past_the_queue_and_writes_what_it_accepted_once_back(tmp_path, monkeypatch):
    monkeypatch.setattr(payloads, "MAX_BACKOFF_S", 0.2)
    sink = DownSink(str(tmp_path))
    writer = PayloadWriter("m", "r1", sink)
    settings = PayloadLog(sample_rate=1.0, queue_size=20)
    for i in range(100):
        writer.offer(settings, 1, f"r{i}", 0.0, 0, {"X": np.array([i])}, {})
        time.sleep(0.002)
    counts = writer.counts()[1]
    assert (counts.logged, counts.dropped, counts.written) == (20, 80, 0)  # 20 held at most
    sink.down = False
    wait_until(lambda: writer.counts()[1].written == writer.counts()[1].logged)
    writer.stop()
    ids = [line for path in tmp_path.rglob("*.jsonl") for line in pandas.read_json(path, lines=True)["id"]]
    assert len(ids) == len(set(ids)) == writer.counts()[1].logged  # each accepted record once
    assert len(ids) + writer.counts()[1].dropped == 100


def test_shadow_answers_agree_within_their_tolerance_only():
    ours = {"Y": np.array([1.0, 2.0], np.float32), "L": np.array([b"a"], object)}
    exact, loose = Shadow(version=2), Shadow(version=2, tolerance=0.01, tolerances={"Z": 0.0})
    assert agree(ours, {k: v.copy() for k, v in ours.items()}, exact)
    near = {"Y": np.array([1.0, 2.005], np.float32), "L": np.array([b"a"], object)}
    assert not agree(ours, near, exact) and agree(ours, near, loose)
    assert not agree(ours, {"Y": ours["Y"]}, loose)  # an output missing
    assert not agree(ours, {"Y": ours["Y"][:1], "L": ours["L"]}, loose)  # another shape
    assert not agree(ours, {"Y": ours["Y"], "L": np.array([b"b"], object)}, loose)
    assert agree({"Y": np.array([np.nan])}, {"Y": np.array([np.nan])}, exact)


def test_string_outputs_queue_bytes_and_a_stop_that_writes_what_is_held(tmp_path, monkeypatch):
    monkeypatch.setattr(payloads, "MAX_FILE_S", 30.0)  # nothing is cut before the stop
    writer = PayloadWriter("m", "r1", FolderSink(str(tmp_path)))
    settings = PayloadLog(sample_rate=1.0, queue_bytes=10_000, redact=["HUGE"])
    writer.offer(settings, 1, "text", 0.0, 0, {"X": np.zeros(2)}, {"Y": np.array([b"cat", b"dog"])})
    writer.offer(settings, 1, "redacted", 0.0, 0, {"HUGE": np.zeros((1000, 1000))}, {})  # keeps no bytes of it
    writer.offer(settings, 1, "big", 0.0, 0, {"X": np.zeros(2000)}, {})  # 16 kB: past the bound, dropped
    assert (writer.counts()[1].logged, writer.counts()[1].dropped) == (2, 1)
    writer.stop()
    lines = pandas.concat([pandas.read_json(p, lines=True) for p in tmp_path.rglob("*.jsonl")], ignore_index=True)
    assert sorted(lines["id"]) == ["redacted", "text"] and writer.counts()[1].written == 2
    text = lines[lines["id"] == "text"].iloc[0]
    assert text["outputs"]["Y"] == {"datatype": "BYTES", "shape": [2], "data": ["cat", "dog"]}
    assert lines[lines["id"] == "redacted"].iloc[0]["inputs"]["HUGE"] == {"datatype": "FP64", "shape": [1000, 1000],
                                                                          "redacted": True}


def test_what_a_stopping_replica_cannot_write_is_counted_lost_and_later_records_dropped(tmp_path):
    writer = PayloadWriter("m", "r1", DownSink(str(tmp_path)))
    for i in range(3):
        writer.offer(PayloadLog(sample_rate=1.0), 1, f"r{i}", 0.0, 0, {"X": np.zeros(1)}, {})
    writer.stop()  # three tries, then it gives up
    writer.offer(PayloadLog(sample_rate=1.0), 1, "late", 0.0, 0, {"X": np.zeros(1)}, {})
    counts = writer.counts()[1]
    assert (counts.logged, counts.written, counts.lost, counts.dropped) == (3, 0, 3, 1)
    assert not list(tmp_path.rglob("*.jsonl"))


def test_a_folder_sink_writes_only_in_a_folder_of_the_servers_own(tmp_path):
    """The records are clients' requests: a folder made 0700 if missing; a link, or one others may write in
    or read, refused by name before anything is written."""
    fresh = tmp_path / "new" / "payloads"
    FolderSink(str(fresh)).write("m/day/one.jsonl", b"{}\n")
    assert (fresh / "m" / "day" / "one.jsonl").read_bytes() == b"{}\n"
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(elsewhere)
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    for root, why in ((tmp_path / "link", "is a symbolic link"), (open_folder, "is open to other users")):
        with pytest.raises(UnsafeFolder, match=why):
            FolderSink(str(root)).write("m/day/one.jsonl", b"{}\n")
    assert not list(elsewhere.iterdir()) and not list(open_folder.iterdir())
