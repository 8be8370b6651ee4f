"""configs/kuberay/rayservice.yaml cannot drift from the code: its serveConfigV2 loads through Serve's own
schema and the builder's argument model, and the cluster it asks for has the groups the README names."""

from __future__ import annotations

import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from cluster.app import AppArgs
from cluster.cli.haproxy import HTTP2_SETTINGS
from cluster.cli.ingress_setup import REPLICA_GRPC_MAX_MESSAGE_LENGTH
from cluster.protocol.grpc_service import SERVICER_FUNCTION
from tests.conftest import REPO_ROOT


def rayservice() -> dict:
    return yaml.safe_load((REPO_ROOT / "configs" / "kuberay" / "rayservice.yaml").read_text())


def test_serve_config_loads_through_serve_and_the_builder():
    service = rayservice()
    assert service["kind"] == "RayService"
    schema = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert schema.grpc_options.grpc_servicer_functions == [SERVICER_FUNCTION]
    (app,) = schema.applications
    assert app.import_path == "cluster.app:build" and app.route_prefix == "/"
    assert app.external_scaler_enabled
    args = AppArgs.model_validate(app.args)
    assert args.repository.startswith("s3://")


def test_every_ray_node_runs_haproxy_as_ric_serve_does():
    spec = rayservice()["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        env = {entry["name"]: entry["value"] for entry in container["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert {name: int(env[f"RAY_SERVE_HAPROXY_{name}"]) for name in HTTP2_SETTINGS} == HTTP2_SETTINGS
        assert int(env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]) > 0
        assert int(env["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"]) == REPLICA_GRPC_MAX_MESSAGE_LENGTH


def test_the_cluster_autoscales_cpu_and_gpu_worker_groups():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == ray.__version__
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert groups["gpu"]["minReplicas"] == 0 < groups["gpu"]["maxReplicas"]
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
