"""Will a repository fit a Ray cluster: first-fit placement, the local Ray's size, what the message says, and
where models go when the ingress autoscales."""

from __future__ import annotations

import pytest

from cluster.app import AppArgs, Reservation, reservations
from cluster.cli.main import parse_args
from cluster.cli.placement import describe, local_cpus, shortfalls
from cluster.repository.stores import open_store
from tests.conftest import write_model


def test_ten_quarter_cpu_models_fit_a_local_ray_sized_for_them():
    ten = [Reservation("ric-ingress", 1, 0.25, 0)] + [Reservation(f"m{i}", 1, 0.25, 0) for i in range(10)]
    assert shortfalls(ten, [{"CPU": 2}]) == shortfalls(ten, [{"CPU": 2.0, "GPU": 0.0}])
    assert [s.deployment for s in shortfalls(ten, [{"CPU": 2}])] == ["m7", "m8", "m9"]
    assert local_cpus(ten, cores=2) == 3
    assert shortfalls(ten, [{"CPU": local_cpus(ten, cores=2)}]) == []
    assert local_cpus(ten[:3], cores=2) == 2  # never fewer than the machine's cores


def test_gpu_replicas_pack_by_fraction_across_nodes():
    quarter = [Reservation("gpu_model", 8, 0.25, 0.25)]
    assert shortfalls(quarter, [{"CPU": 4, "GPU": 1}, {"CPU": 4, "GPU": 1}]) == []
    (short,) = shortfalls(quarter, [{"CPU": 4, "GPU": 1}])
    assert (short.deployment, short.missing, short.replicas) == ("gpu_model", 4, 8)
    assert str(short) == "'gpu_model': 4 of 8 replicas cannot be placed (each asks CPU 0.25, GPU 0.25)"


def test_the_message_names_the_cluster_and_what_to_change():
    text = describe(shortfalls([Reservation("big", 2, 1.0, 0.5)], [{"CPU": 2}]), [{"CPU": 2}])
    assert "(1 node(s), CPU 2, GPU 0 in all)" in text
    assert "'big': 2 of 2 replicas cannot be placed (each asks CPU 1, GPU 0.5)" in text
    assert "--num-cpus / --num-gpus" in text and "--replica-num-cpus" in text and "gpu_fraction" in text


def test_reservations_follow_the_configs(tmp_path):
    write_model(tmp_path, "gpu", 'instance_group [ { count: 2, kind: KIND_GPU } ]\n'
                'parameters { key: "gpu_fraction" value { string_value: "0.25" } }\n', {"1/model.py": ""})
    write_model(tmp_path, "cpu", 'parameters { key: "num_cpus" value { string_value: "1" } }\n', {"1/model.py": ""})
    found = reservations(AppArgs(repository=str(tmp_path), replica_num_cpus=0.5, ingress_replicas=2))
    assert found == [Reservation("ric-ingress", 2, 0.5, 0.0), Reservation("cpu", 1, 1.0, 0.0),
                     Reservation("gpu", 2, 0.5, 0.25)]


def test_an_autoscaled_ingress_reserves_its_minimum_and_copies_models_that_autoscale(tmp_path):
    write_model(tmp_path, "fixed", "", {"1/model.py": ""})
    write_model(tmp_path, "scaled", 'parameters { key: "autoscaling.max_replicas" value { string_value: "3" } }\n',
                {"1/model.py": ""})
    write_model(tmp_path, "sleepy", 'parameters { key: "autoscaling.min_replicas" value { string_value: "0" } }\n',
                {"1/model.py": ""})
    store_args = {"repository": str(tmp_path), "colocate": True}
    configs = {name: open_store(str(tmp_path)).config(name) for name in ("fixed", "scaled", "sleepy")}
    fixed_ingress = AppArgs(**store_args)
    assert [n for n, c in configs.items() if fixed_ingress.colocates(c)] == ["fixed"]
    scaled_ingress = AppArgs(**store_args, ingress_autoscaling={"min_replicas": 2, "max_replicas": 4})
    assert [n for n, c in configs.items() if scaled_ingress.colocates(c)] == ["fixed", "scaled"]
    assert reservations(scaled_ingress)[0] == Reservation("ric-ingress", 2, 0.25, 0.0)
    with pytest.raises(ValueError, match="min_replicas must be at least 1"):
        AppArgs(**store_args, ingress_autoscaling={"min_replicas": 0})


@pytest.mark.parametrize("flag, reason", [
    ("max_replica=3", "max_replica: Extra inputs are not permitted"),
    ("min_replicas=0", "min_replicas must be at least 1"),
    ("min_replicas=3,max_replicas=2", "min_replicas (3) exceeds max_replicas (2)"),
    ("3", "expected field=value pairs"),
])
def test_ric_serve_refuses_a_bad_ingress_autoscaling_flag_with_the_reason(flag, reason, capsys):
    with pytest.raises(SystemExit):
        parse_args(["serve", "--ingress-autoscaling", flag])
    assert reason in capsys.readouterr().err


def test_ric_serve_reads_the_ingress_autoscaling_flag():
    args = parse_args(["serve", "--ingress-autoscaling", "max_replicas=4, upscale_delay_s=5"])
    assert (args.ingress_autoscaling.min_replicas, args.ingress_autoscaling.max_replicas) == (1, 4)
    assert args.ingress_autoscaling.upscale_delay_s == 5
    assert parse_args(["serve"]).ingress_autoscaling is None


def test_the_model_control_mode_decides_whether_the_sync_polls():
    assert AppArgs().model_control_mode == "poll" and AppArgs().polls()
    assert AppArgs(model_control_mode="explicit").polls()
    assert not AppArgs(model_control_mode="none").polls()
    assert not AppArgs(poll_interval_s=0).polls()
    with pytest.raises(ValueError, match="model_control_mode"):
        AppArgs(model_control_mode="EXPLICIT-ish")
    assert parse_args(["serve"]).model_control_mode == "poll"
