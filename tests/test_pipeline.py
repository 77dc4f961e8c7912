"""init.py end to end on a tiny digits configuration: files, metrics, predictors, resume and restart.

One run through the real command line is shared (module fixture); a test that changes a model folder
works on a copy, so the tests pass in any order and alone."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import init
from triplet_keras.serving.predict import Predictor
from triplet_keras.transfer import ScoreMixture

ROOT = Path(__file__).resolve().parents[1]  # where init.py is, whatever the working directory
TINY = {
    "dataset": "digits", "backbone": "small_cnn", "weights": "none", "embedding_dim": 16, "freeze_layers": 0,
    "strategy": "semi_hard", "batch_size": 64, "epochs": 2, "learning_rate": 0.003,
    "source_classes": ["0", "1", "2", "3", "4"], "shots": [1, 5], "episodes": 5, "plot_method": "pca",
    "transfer_features": "grid", "transfer_shift_average": 1,
}
DEFAULT = "fine_tuned grid: center whiten 0.3"  # choice.default_candidate without a pool
MIXED = "0.8 x (fine_tuned grid: center whiten 0.3) + 0.2 x (initial grid: center)"  # choice.no_evidence_form
MIXED_POOL = "0.8 x (fine_tuned grid: center whiten 0.3 + unlabeled) + 0.2 x (initial grid: center + unlabeled)"


def run_init(model_dir, *flags):
    """init.py's main() in this process (no second interpreter start-up): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            init.main(["--model_dir", str(model_dir), *flags])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
            print(exit.code, file=sys.stderr)
    return subprocess.CompletedProcess(flags, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One full run through the real command line (a separate interpreter), reused by the tests below."""
    model_dir = tmp_path_factory.mktemp("digits")
    (model_dir / "params.json").write_text(json.dumps(TINY))
    result = subprocess.run([sys.executable, "init.py", "--model_dir", str(model_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return model_dir, result


@pytest.mark.end_to_end(seconds=100)
def test_run_leaves_every_artefact(experiment):
    model_dir, _ = experiment
    for name in ("best.keras", "last.keras", "state.json", "history.csv", "metrics.json",
                 "embeddings/vectors.tsv", "embeddings/metadata.tsv", "embeddings/embeddings.npz",
                 "logs/projector_config.pbtxt", "plots/loss_curves.png", "plots/confusion_matrix.png",
                 "plots/transfer_map.png", "predictor/predictor.json", "predictor_transfer/predictor.json",
                 "plots/reliability_source.png", "plots/reliability_transfer.png", "predictor/gallery.npz",
                 "predictor_transfer/gallery.npz", "predictor_transfer/selection.json"):
        assert (model_dir / name).is_file(), name
    assert any(name.startswith("train") for name in os.listdir(model_dir / "logs"))
    assert not [name for name in os.listdir(model_dir) if name.startswith(".tmp")]
    history = (model_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3
    splits = [line.split("\t")[1] for line in (model_dir / "embeddings/metadata.tsv").read_text().splitlines()[1:]]
    assert splits.count("support") == 5 * 5  # max(shots) labelled images of each of the 5 target classes
    assert splits.count("test") > 0 and splits.count("target") > 0


@pytest.mark.end_to_end(seconds=100)
def test_metrics_are_useful_and_complete(experiment):
    model_dir, result = experiment
    metrics = json.loads((model_dir / "metrics.json").read_text())
    scores = metrics["scores"]
    assert scores["test_accuracy"] > 0.6  # 5 classes: chance is 0.2
    assert scores["transfer_accuracy"] > 0.4  # 5 new classes from 5 images each: chance is 0.2
    # the scores are those of the exported test embeddings, recomputed here
    from triplet_keras.transfer import metrics as reference

    with np.load(model_dir / "embeddings/embeddings.npz", allow_pickle=False) as arrays:
        test = arrays["split"] == "test"
        embeddings, labels = arrays["embeddings"][test], np.unique(arrays["label"][test], return_inverse=True)[1]
    expected = {**reference.retrieval_scores(embeddings, labels), **reference.clustering_scores(embeddings, labels)}
    for key in ("precision_at_1", "map_at_r", "r_precision", "nmi", "ami"):
        assert scores[f"test_{key}"] == pytest.approx(expected[key], abs=1e-6), key
    for shots in ("1-shot", "5-shot"):
        rows = metrics["transfer"][shots]
        assert set(rows) == {"none", "translate", "center", "auto", "semi_supervised", "pixels", "initial_encoder",
                             "ceiling"}
        assert all(rows[name]["n_episodes"] == 5 for name in rows)  # every row on the same episodes
        choice = metrics["transfer_choice"][shots]
        # 5 source classes without pseudo_classes: a 2-class fold, too few to stand for 5 ways, so no evidence
        assert choice["evidence"] is None and choice["evidence_scores"] == {} and choice["best_by_evidence"] is None
        assert choice["mode_rows_on"] == DEFAULT  # the mode rows on the default form's features and whitening
        assert sum(choice["auto_picks"].values()) == 5 and sum(choice["semi_supervised_picks"].values()) == 5
        assert not any(name.endswith("+ unlabeled") for name in choice["auto_picks"])  # auto needs no pool
        # new classes without evidence: the default form's scores mixed with the starting network's
        assert choice["auto_picks"] == {MIXED: 5}
        if shots == "1-shot":  # nothing to leave out: the pool is used
            assert choice["semi_supervised_picks"] == {MIXED_POOL: 5}
        else:  # leave-one-out on the use of the pool
            assert set(choice["semi_supervised_picks"]) <= {MIXED, MIXED_POOL}
    search = metrics["saved_transfer_search"]
    assert search["decided_by"] == "leave-one-out" and search["n_folds"] == 5 and search["evidence"] is None
    assert search["best_name"] in (MIXED, MIXED_POOL)
    assert len(search["cv_results"]["candidate"]) == 39 + 2 and search["cv_results"]["rank"].count(1) == 1
    assert not (model_dir / "selection_encoder").exists()  # no fold encoder trained for no evidence
    assert len(metrics["fine_tuning_verdict"]) == 4  # auto and semi_supervised at each K
    assert all(line in result.stdout for line in metrics["fine_tuning_verdict"])
    assert metrics["epochs_trained"] == 2
    assert metrics["cpu_seconds"] > 0 and metrics["machine"]["load_average"] >= 0  # what the run cost, how shared
    calibration = metrics["calibration"]
    for report in calibration.values():
        assert report["temperature"] > 0 and report["accept_rate"] == 0.95
        assert 0 <= report["ece_after"] <= 1 and 0 <= report["ece_before"] <= 1
        assert 0 < report["accepted_share"] <= 1 and 0 <= report["accepted_accuracy"] <= 1
    assert 0 <= calibration["source"]["unseen_unknown_share"] <= 1  # digits 5-9 were never seen by it
    assert "unseen_unknown_share" not in calibration["transfer"]
    # the target images outside the support, cut in halves: one calibrates, the other is reported on
    assert abs(calibration["transfer"]["n_calibration"] - calibration["transfer"]["n_report"]) <= 1
    assert "| test_accuracy |" in result.stdout and "==> summary" in result.stdout


@pytest.mark.end_to_end(seconds=100)
def test_saved_predictors_classify_new_images(experiment):
    model_dir, _ = experiment
    from triplet_keras.data.datasets import load_dataset

    data = load_dataset("digits")
    target = np.isin(data.test.labels, [5, 6, 7, 8, 9])
    images, labels = data.test.load(np.flatnonzero(target)), data.test.labels[target]
    predictor = Predictor.load(str(model_dir / "predictor_transfer"))
    assert predictor.class_names == ["5", "6", "7", "8", "9"]
    selection = json.loads((model_dir / "predictor_transfer" / "selection.json").read_text())
    best = selection["best_candidate"]
    assert predictor.features_from == selection["best_name"] and f"saved transfer predictor: {selection['best_name']}" \
        in experiment[1].stdout
    # without evidence the mixture of the default form and the starting network's (test_metrics_are_useful_and_complete)
    assert isinstance(predictor.classifier, ScoreMixture) and best["weights"] == [0.8, 0.2]
    for member, params in zip(predictor.classifier.members_, best["members"]):
        assert (member.mode_, member.whiten_) == (params["mode"], params["whiten"])
    ranked = selection["cv_results"]["rank"].index(1)
    assert selection["cv_results"]["params"][ranked] == best  # the candidate its 5-shot support ranked first
    scored = [s for s in selection["cv_results"]["support_score"] if s is not None]  # JSON: NaN is null
    assert selection["cv_results"]["support_score"][ranked] == max(scored) and len(scored) == 2  # the pool twins
    # side by side: small_cnn's last 2 x 2 x 128 map (grid features, averaged over shifted copies), fine-tuned
    # and as it started (transfer_features: grid)
    assert predictor.encoder.output_shape[-1] == 512 + 512 and predictor.classifier.widths == [512, 512]
    assert predictor.encoder.get_layer("fine_tuned_grid").get_layer("shifted_copies").shift == 1
    predicted = predictor.predict(images, reject_unknown=False)
    assert np.mean(np.array(predicted) == labels.astype(str)) > 0.5
    assert predictor.calibration is not None and len(predictor.gallery.ids) == 25  # the support
    source = Predictor.load(str(model_dir / "predictor"))
    assert source.class_names == ["0", "1", "2", "3", "4"]
    assert source.encoder.output_shape[-1] == 16
    assert source.calibration is not None and set(source.gallery.labels) == set(source.class_names)
    assert set(source.lookup(images[:3], k=2).labels.ravel()) <= set(source.class_names)


@pytest.mark.end_to_end(seconds=100)
def test_rerun_resumes_and_restart_starts_over(experiment, tmp_path):
    model_dir = tmp_path / "copy"  # the shared run stays as it is for the other tests
    shutil.copytree(experiment[0], model_dir)
    resumed = run_init(model_dir, "--epochs", "3", "--episodes", "2", "--shots", "[1]",
                       "--transfer_features", "embedding", "--transfer_whiten", "null")  # not model parameters
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "epochs 3..3" in resumed.stdout
    assert json.loads((model_dir / "state.json").read_text())["epoch"] == 2
    transfer = Predictor.load(str(model_dir / "predictor_transfer"))  # the 16-d embeddings of both networks, mixed
    assert transfer.encoder.output_shape[-1] == 16 + 16
    assert all(member.whitening_.size == 0 for member in transfer.classifier.members_)
    changed = run_init(model_dir, "--embedding_dim", "8", "--margin", "0.3")
    assert changed.returncode != 0 and "embedding_dim 16 -> 8; margin 0.2 -> 0.3. Pass --restart" in changed.stderr
    # a restart takes changed model parameters; 3 source classes are too few for a fold encoder (held_out_fold)
    restarted = run_init(model_dir, "--restart", "--embedding_dim", "8", "--epochs", "1", "--episodes", "2",
                         "--shots", "[1]", "--source_classes", '["0", "1", "2"]')
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resuming" not in restarted.stdout
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 1 and Predictor.load(str(model_dir / "predictor")).encoder.output_shape[-1] == 8


@pytest.mark.parametrize("flags, message", [
    (["--data_dir", "no/such/folder"], "no/such/folder"),
    (["--source_classes", '["0", "zebra"]'], "zebra"),
    (["--margin", "wide"], "margin must be of type float"),
    (["--source_classes", '["0"]'], "triplets need at least two such classes"),
    (["--pseudo_classes", "true", "--image_size", "[8, 6]"], "pseudo_classes need square images"),
    (["--source_classes", json.dumps([str(d) for d in range(10)])], "leave some for the transfer target"),
    (["--transfer_whiten", "1.5"], "a shrinkage between 0 and 1"),
    (["--test_fraction", "0"], "the test split is empty: raise test_fraction"),
    (["--transfer_shift_average", "8"], "transfer_shift_average: shift_average 8 moves the whole image"),
    (["--image_size", "0"], "image_size must be a positive int (a square) or two positive ints"),
    (["--backbone_size", "[32, 32, 3]"], "backbone_size must be a positive int"),
    (["--max_per_class", "0"], "max_per_class must be at least 1"),
])
def test_bad_configuration_fails_before_training(tmp_path, flags, message):
    (tmp_path / "params.json").write_text(json.dumps(TINY))
    result = run_init(tmp_path, *flags)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "last.keras").exists()


def test_max_per_class_and_a_square_image_size_reach_the_dataset(tmp_path):
    from triplet_keras.pipeline.config import load_config
    from triplet_keras.pipeline.end_to_end import prepare_data

    config = load_config(str(tmp_path), {**TINY, "max_per_class": 10, "image_size": 12})
    data = prepare_data(config.data, config.seed)
    labels = np.concatenate([split.labels for split in (data.train, data.validation, data.test)])
    assert np.bincount(labels).tolist() == [10] * 5 and data.train.image_shape == (12, 12, 3)
    assert sum(len(split) for split in data.target.splits) == 50 and data.target.new_classes


def test_too_few_images_per_class_is_a_clear_error(tmp_path):
    import cv2

    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "data" / name / "only.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "params.json").write_text(json.dumps({**TINY, "source_classes": None}))
    result = run_init(tmp_path, "--data_dir", str(tmp_path / "data"))
    assert result.returncode != 0 and "single image" in result.stderr and "data/a" in result.stderr


def test_imagenet_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    from triplet_keras.models import networks

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(networks, "IMAGENET_HOST", ("192.0.2.1", 9))  # TEST-NET-1: never answers
    (tmp_path / "params.json").write_text(json.dumps({**TINY, "backbone": "resnet50", "weights": "imagenet"}))
    result = run_init(tmp_path)
    assert result.returncode != 0 and "--weights none" in result.stderr
    assert not (tmp_path / "last.keras").exists()


@pytest.mark.end_to_end(seconds=60)
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax", reason="2 virtual devices: JAX run only")
def test_distributed_run_over_two_devices(tmp_path):
    """Offline triplets, data-parallel over 2 virtual CPU devices: a batch that does not divide is a
    clear error before training; 30 triplets per batch (1,259 train triplets: the last batch is topped
    up to 30) train and evaluate to the end. All ten digits are source classes: no transfer target (the
    transfer does not depend on how the encoder was trained; the shared run covers it)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    (tmp_path / "params.json").write_text(json.dumps({**TINY, "epochs": 1, "distribute": True,
                                                      "source_classes": None}))
    command = [sys.executable, "init.py", "--model_dir", str(tmp_path)]
    odd = subprocess.run(command + ["--batch_size", "33"], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=900)
    assert odd.returncode != 0 and "batches of 33 do not divide over 2 devices" in odd.stderr, odd.stderr[-2000:]
    assert not (tmp_path / "last.keras").exists()
    even = subprocess.run(command + ["--batch_size", "30"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=900)
    assert even.returncode == 0, even.stderr[-3000:]
    assert "data-parallel training over 2 devices" in even.stdout and "42/42" in even.stdout  # 1,259 triplets, 30 a step
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["scores"]["test_accuracy"] > 0.5 and metrics["transfer"] == {}
