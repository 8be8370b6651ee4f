"""The record ric serve leaves for clients, and what connect() says when there is no server to join."""

from __future__ import annotations

import os
import stat

import pytest

from cluster.client import ServerRecord, connect, read_record, remove_record, state_file, write_record


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RIC_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def record(pid: int) -> ServerRecord:
    return ServerRecord(address="127.0.0.1:6379", node_ip="127.0.0.1", auth_mode="token", app="ric",
                        http="http://127.0.0.1:8000", grpc="127.0.0.1:8001", pid=pid)


def test_the_record_round_trips_readable_by_its_owner_only(state_dir):
    path = write_record(record(os.getpid()))
    assert path == state_file() == state_dir / "serve.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_record() == record(os.getpid())
    remove_record(os.getpid() + 1)  # another server's stop leaves it
    assert read_record() is not None
    remove_record(os.getpid())
    assert read_record() is None


def test_connect_without_a_server_says_what_to_do(state_dir):
    with pytest.raises(ConnectionError, match="no running 'ric serve' found"):
        connect()
    write_record(record(pid=2**22 + 12345))  # a server that is gone: its record is stale
    with pytest.raises(ConnectionError, match="missing or stale"):
        connect()
