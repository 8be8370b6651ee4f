"""Will a repository fit a Ray cluster: first-fit placement, the local Ray's size, and what the message says."""

from __future__ import annotations

from cluster.app import AppArgs, Reservation, reservations
from cluster.cli.placement import describe, local_cpus, shortfalls
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
