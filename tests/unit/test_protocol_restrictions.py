"""Triton's restricted APIs: the command-line form, which route belongs to which API group, and the checks
each transport runs (Triton's texts; HTTP 403, gRPC UNAVAILABLE)."""

from __future__ import annotations

import pytest

from cluster.app import AppArgs
from cluster.protocol.restrictions import Restriction, Restrictions, http_api_group
from deployments.errors import ErrorCode, InferenceError


def test_the_command_line_form_parses_groups_key_and_value():
    parsed = Restriction.parse("model-repository, statistics:Admin-Key=a=b")
    assert parsed == Restriction(apis=["model-repository", "statistics"], key="admin-key", value="a=b")
    for bad in ("model-repository", "model-repository:key", ":k=v", "nope:k=v", "health:a b=c"):
        with pytest.raises(ValueError):
            Restriction.parse(bad)


def test_each_group_may_be_restricted_once():
    with pytest.raises(ValueError, match="'health' is restricted more than once"):
        AppArgs(restricted_apis=[{"apis": ["health"], "key": "a", "value": "1"},
                                 {"apis": ["metadata", "health"], "key": "b", "value": "2"}])


@pytest.mark.parametrize("path, method, group", [
    ("", "GET", "metadata"), ("health/live", "GET", "health"), ("health/ready", "GET", "health"),
    ("models/m/ready", "GET", "health"), ("models/m/versions/2/ready", "GET", "health"),
    ("models/m", "GET", "metadata"), ("models/m/versions/2", "GET", "metadata"),
    ("models/m/infer", "POST", "inference"), ("models/m/versions/2/infer", "POST", "inference"),
    ("models/m/config", "GET", "model-config"), ("models/m/stats", "GET", "statistics"),
    ("models/stats", "GET", "statistics"), ("repository/index", "POST", "model-repository"),
    ("repository/models/m/load", "POST", "model-repository"), ("systemsharedmemory/status", "GET", "shared-memory"),
    ("cudasharedmemory/region/r/register", "POST", "shared-memory"), ("trace/setting", "GET", "trace"),
    ("logging", "POST", "logging"), ("models/m/nope", "GET", None), ("other", "GET", None),
])
def test_every_route_belongs_to_its_triton_api_group(path, method, group):
    assert http_api_group([p for p in path.split("/") if p], method) == group


def test_a_restricted_group_needs_its_header_and_value_and_the_others_do_not():
    checks = Restrictions([Restriction(apis=["model-repository"], key="admin-key", value="secret")])
    checks.check_http("model-repository", {"admin-key": "secret"})
    checks.check_http("inference", {})
    checks.check_grpc("model-repository", {"triton-grpc-protocol-admin-key": "secret"})
    for headers in ({}, {"admin-key": "wrong"}, {"other": "secret"}):
        with pytest.raises(InferenceError) as info:
            checks.check_http("model-repository", headers)
        assert info.value.code == ErrorCode.RESTRICTED and info.value.http_status == 403
        assert info.value.message == "This API is restricted, expecting header 'admin-key'"
    with pytest.raises(InferenceError) as info:
        checks.check_grpc("model-repository", {"admin-key": "secret"})  # gRPC needs Triton's prefix
    assert info.value.message == "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
