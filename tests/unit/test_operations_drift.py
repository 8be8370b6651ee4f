"""Drift monitoring in one process (no Ray): a profile from reference data, windows that slide, scores that
stay low for the reference's distribution and pass the threshold for a shifted one, windows of several
replicas that add up to the cluster's, and `ric profile` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from deployments.observability.statistics import VersionStatistics
from deployments.operations.drift import MAX_ELEMENTS, SLICES, ReferenceSamples, Sample, Windows, profile_of

RNG = np.random.default_rng(7)
REFERENCE = {"X": RNG.normal(0, 1, (4000, 8)).astype(np.float32),
             "T": np.array([b"cat", b"dog", b"cat", b"bird"] * 250, object)}


def fed(profile, tensors_per_request, now: float = 1000.0, window_s: float = 60.0) -> Windows:
    windows = Windows(profile, window_s, 0.25)
    for tensors in tensors_per_request:
        windows.observe(tensors, now)
    return windows


def test_the_reference_distribution_scores_low_and_a_shifted_one_passes_the_threshold():
    profile = profile_of(REFERENCE, bins=10, columns=True)
    assert set(profile["features"]) == {"X/value", *(f"X/{i}" for i in range(8)), "T/length", "T/category"}
    assert abs(profile["features"]["X/value"]["mean"]) < 0.05 and len(profile["features"]["X/value"]["edges"]) == 9
    same = fed(profile, [{"X": RNG.normal(0, 1, (1, 8)), "T": np.array([b"cat"], object)} for _ in range(400)])
    shifted = fed(profile, [{"X": RNG.normal(1, 1, (1, 8)), "T": np.array([b"eel"], object)} for _ in range(400)])
    low, high = same.window(1000.0), shifted.window(1000.0)
    assert low["X/value"].scores()["psi"] < 0.05 and low["X/3"].scores()["psi"] < 0.1
    assert high["X/value"].scores()["psi"] > 0.5 and high["X/3"].scores()["ks"] > 0.3
    assert high["T/category"].scores()["psi"] > low["T/category"].scores()["psi"]  # "eel": none of the reference
    mean, std = high["X/value"].mean_std()
    assert 0.9 < mean < 1.1 and 0.9 < std < 1.1
    assert 0.8 < high["X/value"].quantile(0.5) < 1.2 and abs(low["X/value"].quantile(0.5)) < 0.15
    assert low["X/value"].quantile(0.25) < low["X/value"].quantile(0.5) < low["X/value"].quantile(0.75)


def test_windows_slide_and_large_tensors_count_a_bounded_sample():
    profile = profile_of({"X": REFERENCE["X"]})
    windows = Windows(profile, 60.0, 0.25)
    windows.observe({"X": np.zeros((1, 8))}, now=1000.0)
    windows.observe({"X": np.zeros((500, 8))}, now=1000.0 + 30)  # 4000 values: a sample of them counts
    sampled = windows.window(1030.0)["X/value"].count - 8
    assert MAX_ELEMENTS // 2 < sampled <= MAX_ELEMENTS
    assert windows.window(1000.0 + 60 + 60 / SLICES)["X/value"].count == sampled  # the first slice is gone
    assert windows.window(1000.0 + 200) == {}


def test_the_windows_of_several_replicas_add_up_to_one_over_all_their_requests():
    profile = profile_of({"X": REFERENCE["X"]})
    requests = [{"X": RNG.normal(0.5, 1, (1, 8))} for _ in range(300)]
    one, two, both = fed(profile, requests[:100]), fed(profile, requests[100:]), fed(profile, requests)
    total = VersionStatistics()
    for replica in (one, two):
        total.merge(VersionStatistics(drift=replica.window(1000.0)))
    assert total.drift["X/value"].counts == both.window(1000.0)["X/value"].counts
    assert total.drift["X/value"].scores() == both.window(1000.0)["X/value"].scores()
    merged_twice = VersionStatistics()
    merged_twice.merge(total)
    merged_twice.merge(total)
    assert total.drift["X/value"].count == 300 * 8  # merging copies: the report merged from is left as it was


def test_ric_profile_writes_the_reference_a_drift_block_names(tmp_path):
    data = tmp_path / "reference.npz"
    np.savez(data, INPUT0=REFERENCE["X"])
    folder = tmp_path / "mlp"
    folder.mkdir()
    done = subprocess.run([str(Path(sys.executable).parent / "ric"), "profile", str(folder), "--data", str(data),
                           "--bins", "5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'key: "drift.reference" value { string_value: "reference.json" }' in done.stdout
    written = json.loads((folder / "reference.json").read_text())
    assert list(written["features"]) == ["INPUT0/value"] and len(written["features"]["INPUT0/value"]["edges"]) == 4
    bad = subprocess.run([str(Path(sys.executable).parent / "ric"), "profile", str(folder), "--data",
                          str(tmp_path / "none.csv")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "must be a .npz or .parquet file" in bad.stdout


def test_a_reference_from_the_first_requests_waits_for_all_of_them_across_replicas():
    samples, first, second = ReferenceSamples(), Sample(), Sample()
    for i in range(30):
        (first if i % 2 else second).add({"X": RNG.normal(0, 1, (1, 8))}, wanted=20)
    assert first.requests == second.requests == 15
    first.add({"X": np.zeros((1, 8))}, wanted=15)  # past its share: not kept
    assert first.requests == 15
    samples.add("m", "r1", first)
    assert samples.profile("m", 40) is None  # 15 of 40
    samples.add("m", "r2", second)
    profile = samples.profile("m", 30)
    assert profile["reference_requests"] == 30 and profile["features"]["X/value"]["count"] == 30 * 8
    assert abs(profile["features"]["X/value"]["mean"]) < 0.3
