"""benchmarks/throughput.py: its Keras and pipeline parts run with tiny sizes; the ratio lines."""
import importlib.util
import os

import keras
import pytest

RUNNER = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "throughput.py")


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keras_and_pipeline_parts_run_tiny(throughput):
    args = throughput.parse_args([
        "--backbone", "small_cnn", "--image_size", "8", "--batch", "6", "--embed_batch", "4",
        "--steps", "1", "--warmup", "1", "--repeats", "1", "--jpegs", "3", "--workers", "2",
    ])
    rows = throughput.keras_worker(args) + throughput.pipeline_worker(args)
    # JAX compiles with XLA; TensorFlow runs a graph and an XLA-compiled one; PyTorch eager (torch.compile: opt-in)
    variants = {"jax": ["jit"], "tensorflow": ["graph", "xla"], "torch": ["eager"]}[keras.backend.backend()]
    modes = len(variants)
    assert [row["task"] for row in rows] == ["train merge"] * modes + ["train online"] * modes + [
        "embed", "decode+resize JPEG", "decode+resize JPEG", "FileSplit epoch, cached"]
    assert [row["variant"] for row in rows[:2 * modes]] == variants * 2
    assert all(row["images_per_s"] > 0 for row in rows)
    assert rows[0]["train_flops_per_image"] > 0
    table = throughput.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "train merge" in table


def test_measure_reports_the_median_and_spread_of_the_timed_repeats(throughput, monkeypatch):
    """A warm-up then three repeats of 2 steps of 10 images, taking 1, 4 and 2 s (clock faked)."""
    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 24.0, 30.0, 32.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    steps = []
    args = throughput.parse_args(["--steps", "2", "--warmup", "1", "--repeats", "3"])
    row = throughput.measure(steps.append, 10, args, task="t")
    assert steps == [1, 2, 2, 2]
    assert row == {"task": "t", "batch": 10, "images_per_s": 10.0, "min": 5.0, "max": 20.0, "warmup_s": 5.0}


def test_batch_must_hold_whole_triplets(throughput):
    with pytest.raises(SystemExit):
        throughput.parse_args(["--batch", "8"])


def test_ratios_compare_every_keras_row_with_both_torch_variants(throughput):
    rows = [{"framework": "keras-jax", "task": "train merge", "variant": "jit", "images_per_s": 30.0},
            {"framework": "keras-torch", "task": "train merge", "variant": "eager", "images_per_s": 60.0},
            {"framework": "keras-torch", "task": "embed", "variant": "predict", "images_per_s": 500.0},
            {"framework": "torch", "task": "train merge", "variant": "eager", "images_per_s": 75.0},
            {"framework": "torch", "task": "train merge", "variant": "compiled", "images_per_s": 100.0}]
    assert throughput.ratios(rows).splitlines() == [
        "- train merge: keras-jax (jit) / torch eager = 0.40x",
        "- train merge: keras-jax (jit) / torch compiled = 0.30x",
        "- train merge: keras-torch (eager) / torch eager = 0.80x",
        "- train merge: keras-torch (eager) / torch compiled = 0.60x",
    ]
