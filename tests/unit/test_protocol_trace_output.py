"""Triton's trace settings (global and per model, checked by name) and the trace files they steer:
roots admit their traces (children that came first wait for them), trace_count counts traces written,
log_frequency splits them over numbered files, and files stay inside the trace folder."""

from __future__ import annotations

import json
import os
import stat

import pytest

from cluster.protocol.trace_output import TraceOutput, resolve
from deployments.errors import InferenceError
from deployments.observability.trace_settings import DEFAULTS, TraceSettings


def span(trace: str, span_id: str, parent: str | None = None, model: str = "m") -> dict:
    return {"trace_id": trace, "span_id": span_id, "parent_id": parent, "name": span_id, "start_ns": 1,
            "end_ns": 2, "attributes": {"model": model}, "events": []}


def lines(path) -> list[str]:
    return [json.loads(line)["span_id"] for line in path.read_text().splitlines()]


def test_model_settings_override_the_global_ones_and_null_clears_them():
    settings = TraceSettings()
    settings.update(None, {"trace_rate": "10", "trace_level": "TIMESTAMPS"})
    settings.update("m", {"trace_rate": 2, "trace_count": "5"})
    assert settings.of("m") == {**DEFAULTS, "trace_level": ["TIMESTAMPS"], "trace_rate": "2", "trace_count": "5"}
    assert settings.of("other")["trace_rate"] == "10" and settings.traced("other")
    settings.update("m", {"trace_rate": None})
    assert settings.of("m")["trace_rate"] == "10"
    settings.update(None, {"trace_level": None})
    assert not settings.traced("m")
    assert TraceSettings(settings.to_dict()).to_dict() == settings.to_dict()  # saved and read back


@pytest.mark.parametrize("change, words", [
    ({"trace_level": ["TENSORS"]}, "TENSORS is not served"), ({"trace_level": "LOUD"}, "unknown trace_level"),
    ({"trace_rate": "0"}, ">= 1"), ({"trace_count": "-2"}, ">= -1"), ({"log_frequency": "x"}, "integer"),
    ({"trace_mode": "opentelemetry"}, "not served"), ({"rate": "1"}, "unknown trace setting 'rate'")])
def test_bad_settings_are_refused_by_name_and_change_nothing(change, words):
    settings = TraceSettings()
    with pytest.raises(InferenceError, match=words):
        settings.update(None, {"trace_rate": "7", **change})
    assert settings.of(None) == DEFAULTS


def test_children_wait_for_their_root_and_the_count_stops_traces(tmp_path):
    settings = TraceSettings()
    settings.update(None, {"trace_file": str(tmp_path / "t.jsonl"), "trace_level": "TIMESTAMPS", "trace_count": "2"})
    out = TraceOutput()
    assert not out.write([span("a", "a-child", "a-root")], settings)  # its root has not come yet
    assert not (tmp_path / "t.jsonl").exists()
    assert out.write([span("a", "a-root"), span("b", "b-root")], settings)  # two traces counted
    assert settings.of(None)["trace_count"] == "0" and not settings.traced(None)
    out.write([span("c", "c-root"), span("b", "b-child", "b-root")], settings)  # c is past the count
    assert lines(tmp_path / "t.jsonl") == ["a-root", "a-child", "b-root", "b-child"]


def test_log_frequency_splits_traces_over_numbered_files(tmp_path):
    settings = TraceSettings()
    settings.update(None, {"trace_file": str(tmp_path / "t"), "log_frequency": "2", "trace_level": "TIMESTAMPS"})
    out = TraceOutput()
    out.write([span(t, f"{t}-root") for t in "abc"], settings)
    out.write([span("c", "c-child", "c-root")], settings)
    assert lines(tmp_path / "t.0") == ["a-root", "b-root"]
    assert lines(tmp_path / "t.1") == ["c-root", "c-child"]


def test_trace_files_stay_in_the_trace_folder(tmp_path):
    assert resolve(str(tmp_path), "x.jsonl") == str(tmp_path / "x.jsonl")
    assert resolve(str(tmp_path), str(tmp_path / "x")) == str(tmp_path / "x")
    for name in ("../x", "/etc/passwd", str(tmp_path), str(tmp_path / "sub" / "x"), "sub/x", ".."):
        with pytest.raises(InferenceError, match="outside the trace folder"):
            resolve(str(tmp_path), name)


def test_the_trace_folder_is_made_private_and_refused_when_anyone_else_could_write_in_it(tmp_path):
    """The review's takeover: another user makes the default folder first (or leaves it open), has a file in
    it accepted as trace_file, then swaps the file for a link to a file of their choice."""
    made = tmp_path / "made" / "traces"
    assert resolve(str(made), "t.jsonl") == str(made / "t.jsonl")
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o777)
    open_folder.chmod(0o777)
    with pytest.raises(InferenceError, match="is open to other users \\(mode 777; it must be 0700\\)"):
        resolve(str(open_folder), "t.jsonl")
    linked = tmp_path / "linked"
    linked.symlink_to(made)
    with pytest.raises(InferenceError, match="is a symbolic link"):
        resolve(str(linked), "t.jsonl")
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(InferenceError, match="belongs to another user"):
            resolve(str(theirs), "t.jsonl")


def test_a_trace_file_swapped_for_a_link_is_not_followed(tmp_path):
    folder, victim = tmp_path / "traces", tmp_path / "victim"
    victim.write_text("untouched\n")
    settings = TraceSettings()
    settings.update(None, {"trace_file": resolve(str(folder), "t.jsonl"), "trace_level": "TIMESTAMPS"})
    output = TraceOutput()
    output.write([span("a", "a-root")], settings)
    (folder / "t.jsonl").unlink()
    (folder / "t.jsonl").symlink_to(victim)
    output.write([span("b", "b-root")], settings)  # dropped, with a warning: never written through the link
    assert victim.read_text() == "untouched\n"
    folder.chmod(0o755)  # loosened after the start: nothing more is written there
    (folder / "t.jsonl").unlink()
    output.write([span("c", "c-root")], settings)
    assert not (folder / "t.jsonl").exists()
    folder.chmod(0o700)  # tightened again, but a second name of a file elsewhere was planted meanwhile
    os.link(victim, folder / "t.jsonl")
    output.write([span("d", "d-root")], settings)
    assert victim.read_text() == "untouched\n"
    with pytest.raises(InferenceError, match="NUL"):
        resolve(str(folder), "a\0b")
