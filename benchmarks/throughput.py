"""Training, embedding and input-pipeline throughput of triplet_keras beside the PyTorch stack.

One run on one machine measures: triplet training of our merge model and online-loss model (Keras
on JAX, on TensorFlow as a graph and with XLA, and on PyTorch, eager and optionally torch.compile)
and of torchvision ResNet50 + pytorch-metric-learning doing the same work (eager and torch.compile);
embedding extraction; decoding and resizing a folder of JPEGs; and the machine's dense matmul rate,
the practical FLOP peak. Every part runs in its own subprocess (Keras reads KERAS_BACKEND once, on
import), so one framework's threads and memory do not disturb another's. It prints a Markdown table
and writes JSON:

    .venv/bin/python benchmarks/throughput.py --device cpu --torch_python .venv-torch/bin/python

Image rates count images: a merge-model step on a batch of B images trains B / 3 triplets.
"""
import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PARTS = ("peak", "jax", "tensorflow", "keras_torch", "torch", "pipeline")
BACKENDS = {"jax": "jax", "keras_torch": "torch", "tensorflow": "tensorflow"}
TORCH_PARTS = ("keras_torch", "torch")
TRAIN_TASKS = ("merge", "online")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=48, help="training images per step (a multiple of 3)")
    parser.add_argument("--embed_batch", type=int, default=256)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--backbone", default="resnet50", help="Keras backbone (small_cnn for smoke tests)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one compiles)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the table shows the median")
    parser.add_argument("--jpegs", type=int, default=300, help="JPEG files for the pipeline part")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="pipeline reader threads")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--torch_python", default=sys.executable,
                        help="the Python that runs the PyTorch parts (torch is not a dependency of the package)")
    parser.add_argument("--keras_torch_jit", action="store_true",
                        help="also train Keras on PyTorch with jit_compile=True (torch.compile; minutes on CPU)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "throughput.json"))
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--worker_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch % 3:
        parser.error("--batch must be a multiple of 3 (the merge model trains batch / 3 triplets)")
    return args


def measure(run, images_per_step, args, **row):
    """Time ``run(steps)`` (which must finish its work before returning): once for the warm-up, then
    ``args.repeats`` times; a table row with the median rate, the spread and the warm-up seconds."""
    start = time.perf_counter()
    run(args.warmup)
    warmup = time.perf_counter() - start
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run(args.steps)
        rates.append(images_per_step * args.steps / (time.perf_counter() - start))
    return {**row, "batch": images_per_step, "images_per_s": statistics.median(rates),
            "min": min(rates), "max": max(rates), "warmup_s": warmup}


def random_batches(args, batch, count=4, seed=0):
    """``count`` batches of uint8 images (batch, S, S, 3) with labels: 4 images per class."""
    rng = np.random.default_rng(seed)
    shape = (batch, args.image_size, args.image_size, 3)
    labels = (np.arange(batch) // 4).astype("int32")
    return [(rng.integers(0, 256, shape, dtype=np.uint8), labels) for _ in range(count)]


def forward_flops(model):
    """Multiply-adds x 2 of the Conv2D and Dense layers of ``model`` (nested models included) per image."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            flops += forward_flops(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel = layer.kernel.shape
            outputs = int(np.prod(layer.output.shape[1:-1]))
            flops += 2 * int(np.prod(kernel)) * outputs
    return flops


def keras_worker(args):
    """Our merge and online models, and embedding extraction, on the current Keras backend."""
    import keras

    from triplet_keras.core.losses import OnlineTripletLoss, TripletMarginLoss
    from triplet_keras.models.networks import build_encoder, build_merge_model, build_online_model, embed_images

    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    framework = f"keras-{keras.backend.backend()}"
    batches = random_batches(args, args.batch)
    # The variants: JAX always compiles with XLA; TensorFlow runs a graph (jit_compile="auto" turns XLA
    # off on a CPU-only machine) or compiles it with XLA; PyTorch runs eager, or hands the Keras step to
    # torch.compile.
    jit_modes = {"jax": {"jit": True},
                 "tensorflow": {"graph": False, "xla": True},
                 "torch": {"eager": False, **({"jit": True} if args.keras_torch_jit else {})}}[keras.backend.backend()]
    rows = []
    for task, (variant, jit_compile) in itertools.product(TRAIN_TASKS, jit_modes.items()):
        start = time.perf_counter()
        encoder = build_encoder(args.backbone, weights=None, input_shape=(args.image_size, args.image_size, 3))
        if task == "merge":
            model, loss = build_merge_model(encoder), TripletMarginLoss(margin=0.2)
            data = [(tuple(np.split(x, 3)), np.zeros(len(x) // 3, "float32")) for x, _ in batches]
        else:
            model, loss = build_online_model(encoder), OnlineTripletLoss("batch_hard", margin=0.2)
            data = batches
        model.compile(keras.optimizers.Adam(1e-4), loss, jit_compile=jit_compile)
        build_s = time.perf_counter() - start

        def run(steps):
            model.fit(cycle(data, steps), steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)

        row = measure(run, args.batch, args, framework=framework, task=f"train {task}", variant=variant)
        rows.append({**row, "build_s": build_s, "train_flops_per_image": 3 * forward_flops(encoder)})

    images = np.concatenate([x for x, _ in random_batches(args, args.embed_batch, count=max(args.steps, args.warmup))])

    def embed(steps):
        embed_images(encoder, images[: steps * args.embed_batch], batch_size=args.embed_batch, progress=False)

    rows.append(measure(embed, args.embed_batch, args, framework=framework, task="embed", variant="predict"))
    return rows


def cycle(items, count):
    """Yield ``count`` items, going round ``items``."""
    for index in range(count):
        yield items[index % len(items)]


def torch_worker(args):
    """torchvision ResNet50 + pytorch-metric-learning: eager and compiled training, eager embedding."""
    import torch
    import torch_reference

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    bfloat16 = args.precision == "bfloat16"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    to_device = [(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device))
                 for x, y in random_batches(args, args.batch)]
    rows = []
    for task in TRAIN_TASKS:
        for compiled in (False, True):
            step = torch_reference.train_step(task, device, compiled, bfloat16)

            def run(steps):
                for images, labels in cycle(to_device, steps):
                    step(images, labels)
                sync()

            rows.append(measure(run, args.batch, args, framework="torch", task=f"train {task}",
                                variant="compiled" if compiled else "eager"))
    embed = torch_reference.embed_step(device, bfloat16)
    embed_batches = [torch.from_numpy(x).to(device) for x, _ in random_batches(args, args.embed_batch)]

    def run_embed(steps):
        for images in cycle(embed_batches, steps):
            embed(images).cpu()

    rows.append(measure(run_embed, args.embed_batch, args, framework="torch", task="embed", variant="eager"))
    return rows


def pipeline_worker(args):
    """Decode + resize a folder of JPEGs with triplet_keras.core.images in 1 and in ``args.workers`` threads;
    then epochs of a FileSplit that caches the decoded images (the warm-up epoch fills the cache)."""
    import cv2

    from triplet_keras.core.images import read_image, resize_image
    from triplet_keras.data.datasets import FileSplit

    rng = np.random.default_rng(0)
    size = (args.image_size, args.image_size)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(args.jpegs):
            # Smooth random photos, 375 x 500 like a typical camera image scaled down.
            image = cv2.resize(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), (500, 375))
            paths.append(os.path.join(folder, f"{index:05d}.jpg"))
            cv2.imwrite(paths[-1], image)
        for workers in sorted({1, args.workers}):
            with ThreadPoolExecutor(workers) as pool:

                def run(steps):
                    for _ in range(steps):
                        list(pool.map(lambda path: resize_image(read_image(path), size), paths))

                rows.append(measure(run, len(paths), args, framework="opencv", task="decode+resize JPEG",
                                    variant=f"{workers} threads"))
        split = FileSplit(paths, np.zeros(len(paths)), size, workers=args.workers, cache_bytes=2**40)

        def epochs(steps):
            for _ in range(steps):
                for start in range(0, len(paths), args.batch):
                    split.load(np.arange(start, min(start + args.batch, len(paths))))

        rows.append(measure(epochs, len(paths), args, framework="triplet_keras", task="FileSplit epoch, cached",
                            variant=f"{args.workers} threads"))
    return rows


def peak_worker(args):
    """Dense matmul rate (FLOP/s) with JAX in the benchmark's precision: the practical compute peak."""
    import jax
    import jax.numpy as jnp

    n = 1024 if args.device == "cpu" else 8192
    a = jnp.ones((n, n), args.precision)
    matmul = jax.jit(lambda x: x @ x)

    def run(steps):
        for _ in range(steps):
            result = matmul(a)
        result.block_until_ready()

    row = measure(run, 1, args, framework="jax", task="matmul peak", variant=f"{n}x{n} {args.precision}")
    row["flops_per_s"] = row["images_per_s"] * 2 * n**3
    return [row]


WORKERS = {"peak": peak_worker, "jax": keras_worker, "keras_torch": keras_worker, "tensorflow": keras_worker,
           "torch": torch_worker, "pipeline": pipeline_worker}


def run_part(part, args, argv):
    """Run one part in a fresh interpreter; its rows."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=BACKENDS.get(part, "jax"))
    if args.device == "cpu":
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        python = args.torch_python if part in TORCH_PARTS else sys.executable
        command = [python, __file__, *argv, "--worker", part, "--worker_out", out.name]
        result = subprocess.run(command, env=env)
        if result.returncode:
            print(f"part {part!r} failed (exit {result.returncode})", file=sys.stderr)
            return []
        with open(out.name) as file:
            return json.load(file)


def machine():
    """CPU model, core count, load average and accelerator, for the record."""
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as file:
            names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip() if shutil.which("nvidia-smi") else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def peak_and_flops(rows):
    """The matmul peak (FLOP/s) and the training FLOPs per image, where the rows hold them."""
    peak = next((row["flops_per_s"] for row in rows if "flops_per_s" in row), None)
    flops = next((row["train_flops_per_image"] for row in rows if "train_flops_per_image" in row), None)
    return peak, flops


def markdown(rows):
    """The results as a Markdown table, with the fraction of the matmul peak for training rows."""
    peak, flops = peak_and_flops(rows)
    lines = ["| framework | task | variant | batch | img/s (median) | min-max | warm-up s | % of peak |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "flops_per_s" in row:
            continue
        fraction = ""
        if peak and flops and row["task"].startswith("train"):
            fraction = f"{100 * row['images_per_s'] * flops / peak:.0f}%"
        lines.append(f"| {row['framework']} | {row['task']} | {row['variant']} | {row['batch']} | "
                     f"{row['images_per_s']:.1f} | {row['min']:.1f}-{row['max']:.1f} | {row['warmup_s']:.1f} | "
                     f"{fraction} |")
    return "\n".join(lines)


def flop_summary(rows):
    """One line: the matmul peak and the training FLOPs per image that the % column divides by."""
    peak, flops = peak_and_flops(rows)
    if not (peak and flops):
        return ""
    return (f"\nmatmul peak {peak / 1e9:.0f} GFLOP/s; training {flops / 1e9:.3f} GFLOP/image (3 x forward), "
            f"so the FLOP bound is {peak / flops:.0f} img/s\n")


def ratios(rows):
    """Our training rate over each PyTorch variant's, per task."""
    rate = {(row["framework"], row["task"], row["variant"]): row["images_per_s"] for row in rows}
    lines = []
    for (framework, task, variant), ours in rate.items():
        if not (framework.startswith("keras-") and task.startswith("train")):
            continue
        for theirs_variant in ("eager", "compiled"):
            theirs = rate.get(("torch", task, theirs_variant))
            if theirs:
                lines.append(f"- {task}: {framework} ({variant}) / torch {theirs_variant} = {ours / theirs:.2f}x")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        rows = WORKERS[args.worker](args)
        with open(args.worker_out, "w") as file:
            json.dump(rows, file)
        return
    started = machine()
    argv = sys.argv[1:] if argv is None else list(argv)
    rows = []
    for part in args.parts:
        rows += run_part(part, args, argv)
        print(markdown(rows), flush=True)
    report = {"machine": started, "load_average_end": machine()["load_average"], "args": vars(args), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(report, file, indent=2)
    print(f"\n{started['cpu']}, {started['cores']} cores {started['gpu']}; load average at start "
          f"{started['load_average']}, at end {report['load_average_end']}")
    print(f"{args.device}, {args.image_size} px, {args.precision}\n")
    print(markdown(rows))
    print(flop_summary(rows))
    print(ratios(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
