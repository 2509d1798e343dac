import json
import os
import subprocess
import sys

import pytest

from sae.bench import bench_size, loss_curve_match


def test_sparse_step_follows_the_dense_loss_curve():
    match = loss_curve_match(32, 256, 8, steps=6)
    assert match["max_rel_diff"] < 1e-4
    assert match["ours"][-1] < match["ours"][0]


def test_bench_row_has_a_ratio_per_measured_reference():
    row = bench_size(16, 64, 4, steps=1)
    assert row["ours"] > 0 and row["ratio_vs_dense"] > 0
    for name in ("sparsify", "sae_lens"):
        assert isinstance(row[name], str) or row[f"ratio_vs_{name}"] > 0


def test_json_output_parses_even_when_a_reference_library_prints():
    # One OpenMP thread: two spinning on a busy 2-core machine made this run 4x slower (measured).
    proc = subprocess.run(
        [sys.executable, "-m", "sae", "bench", "--quick", "--json", "--steps", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert set(json.loads(proc.stdout)) == {"machine", "sizes", "loss_match", "extraction"}


def test_pack_bench_measures_forward_steps_and_both_sweeps():
    from sae.pack_bench import predicted_speedup, run_pack_benchmark

    results = run_pack_benchmark(quick=True, rounds=1, device="cpu")
    assert set(results["sae_step_s"]) == {"8", "16", "32", "64"}
    assert results["forward_s"] > 0 and results["packed_s"] > 0
    assert results["ideal_s"] == results["forward_s"] + sum(results["sae_step_s"].values())
    assert results["speedup"] == results["one_at_a_time_s"] / results["packed_s"]
    assert predicted_speedup(5.7, 0.3, 4) == pytest.approx(3.478, abs=1e-3)
    assert predicted_speedup(1.0, 1.0, 1) == 1.0
