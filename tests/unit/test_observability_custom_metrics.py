"""A model's own metrics (Triton's pb_utils.MetricFamily): the registry, the sums over copies, the text."""

from __future__ import annotations

import pytest

from cluster.protocol.metrics import custom_families, exposition
from deployments.observability.custom_metrics import Registry, merge


def metered(registry: Registry, owner: str = "metered") -> None:
    """What the differential tier's `metered` model does for X = 3 then X = 2."""
    requests = registry.family(owner, "metered_requests", "Requests seen", "counter")
    level = registry.family(owner, "metered_level", "A level", "gauge")
    sizes = registry.family(owner, "metered_sizes", "Sizes seen", "histogram")
    keys = (registry.metric(requests, {"model": "metered", "kind": "x"}, None),
            registry.metric(level, {"model": "metered"}, None),
            registry.metric(sizes, {"model": "metered"}, [1.0, 5.0, 10.0]))
    for x in (3, 2):
        registry.update(requests, keys[0], "increment", x)
        registry.update(level, keys[1], "set", 2 * x)
        registry.update(level, keys[1], "increment", 1)
        registry.update(sizes, keys[2], "observe", x)


def lines(snapshot) -> list[str]:
    return exposition(custom_families(snapshot)).decode().splitlines()


def test_the_text_is_tritons_for_the_same_calls():
    registry = Registry()
    metered(registry)
    # As Triton 2.51 wrote them for the same model and requests (labels sorted, histogram count/sum/buckets).
    assert lines(registry.snapshot("metered")) == [
        "# HELP metered_level A level", "# TYPE metered_level gauge", 'metered_level{model="metered"} 5',
        "# HELP metered_requests Requests seen", "# TYPE metered_requests counter",
        'metered_requests{kind="x",model="metered"} 5',
        "# HELP metered_sizes Sizes seen", "# TYPE metered_sizes histogram",
        'metered_sizes_count{model="metered"} 2', 'metered_sizes_sum{model="metered"} 5',
        'metered_sizes_bucket{model="metered",le="1"} 0', 'metered_sizes_bucket{model="metered",le="5"} 2',
        'metered_sizes_bucket{model="metered",le="10"} 2', 'metered_sizes_bucket{model="metered",le="+Inf"} 2']


def test_copies_sum_sample_by_sample_and_models_in_one_process_keep_theirs_apart():
    one, other = Registry(), Registry()
    metered(one)
    metered(other)
    summed = lines(merge([one.snapshot("metered"), other.snapshot("metered")]))
    assert 'metered_requests{kind="x",model="metered"} 10' in summed
    assert 'metered_sizes_bucket{model="metered",le="5"} 4' in summed
    metered(one, owner="another")  # the same family name, another model in the same process
    assert lines(one.snapshot("metered")) == lines(other.snapshot("metered"))


def test_what_triton_refuses_or_crashes_on_is_refused_by_name():
    registry = Registry()
    counter = registry.family("m", "c", "d", "counter")
    key = registry.metric(counter, {}, None)
    with pytest.raises(ValueError, match="only goes up"):
        registry.update(counter, key, "increment", -1)
    with pytest.raises(ValueError, match="takes increment"):
        registry.update(counter, key, "set", 3)
    with pytest.raises(ValueError, match="already a counter"):
        registry.family("m", "c", "d", "gauge")
    with pytest.raises(ValueError, match="needs buckets"):
        registry.metric(registry.family("m", "h", "d", "histogram"), {}, None)
    with pytest.raises(ValueError, match="server's own"):
        registry.family("m", "nv_inference_count", "d", "counter")
    with pytest.raises(ValueError, match="labels"):
        registry.metric(counter, {"a": 1}, None)


def test_a_family_goes_with_its_last_object():
    registry = Registry()
    family = registry.family("m", "c", "d", "counter")
    registry.family("m", "c", "d", "counter")  # a second object of the same family
    key = registry.metric(family, {}, None)
    registry.drop(family)
    registry.update(family, key, "increment", 1)  # the other object keeps it
    registry.drop(family)
    assert registry.snapshot("m") == {}
    with pytest.raises(ValueError, match="has been deleted"):
        registry.update(family, key, "increment", 1)
