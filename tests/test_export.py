"""Atomic writes, JSON and the embedding export (TSV + npz + TensorBoard projector config)."""
import json
import os

import numpy as np
import pytest

from triplet_keras.core.export import atomic_write, export_embeddings, write_json, write_text

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def test_atomic_write_replaces_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    seen = []

    def write(temporary):
        seen.append(temporary)
        with open(temporary, "w") as file:
            file.write("new")

    path.write_text("old")
    assert atomic_write(path, write) == str(path)
    assert path.read_text() == "new"
    assert os.path.dirname(seen[0]) == str(tmp_path)
    assert os.path.basename(seen[0]).startswith(".") and seen[0].endswith(".txt")
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_failure_keeps_old_file_and_removes_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def write(temporary):
        with open(temporary, "w") as file:
            file.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, write)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_write_json_converts_numpy_and_nan(tmp_path):
    path = write_json(tmp_path / "sub" / "metrics.json",
                      {"b": np.float32(0.5), "a": np.arange(3), "nan": float("nan"), "t": (np.int64(2), np.inf)})
    text = open(path).read()
    assert json.loads(text) == {"a": [0, 1, 2], "b": 0.5, "nan": None, "t": [2, None]}
    assert text.index('"a"') < text.index('"b"') and "\n  " in text


def test_write_text(tmp_path):
    assert open(write_text(tmp_path / "a.txt", "é\n"), encoding="utf-8").read() == "é\n"


def test_export_embeddings_round_trip(tmp_path):
    embeddings = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    metadata = {"label": ["cat", "dog", "a\tb", "new\nline", "x"], "split": ["train"] * 5, "domain": [1, 1, 2, 2, 2]}
    paths = export_embeddings(tmp_path / "export", embeddings, metadata, log_dir=tmp_path / "logs")

    np.testing.assert_array_equal(np.loadtxt(paths["vectors"], delimiter="\t", dtype=np.float32), embeddings)
    rows = np.loadtxt(paths["metadata"], delimiter="\t", dtype=str, comments=None)
    assert rows.shape == (6, 3)
    assert list(rows[0]) == ["label", "split", "domain"]
    assert list(rows[1:, 0]) == ["cat", "dog", "a\\tb", "new\\nline", "x"]
    assert list(rows[1:, 2]) == ["1", "1", "2", "2", "2"]

    with np.load(paths["arrays"], allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays["embeddings"], embeddings)
        assert list(arrays["label"]) == metadata["label"] and arrays["domain"].dtype.kind == "U"

    config = open(paths["projector"]).read()
    assert config.startswith("embeddings {")
    for key, name in (("tensor_path", "vectors"), ("metadata_path", "metadata")):
        line = next(line for line in config.splitlines() if line.strip().startswith(key))
        target = os.path.join(tmp_path / "logs", json.loads(line.split(":", 1)[1]))
        assert os.path.samefile(target, paths[name])


def test_export_embeddings_without_log_dir_writes_three_files(tmp_path):
    export_embeddings(tmp_path, np.zeros((2, 4)), {"label": ["a", "b"]})
    assert sorted(os.listdir(tmp_path)) == ["embeddings.npz", "metadata.tsv", "vectors.tsv"]


def test_export_embeddings_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="'split'"):
        export_embeddings(tmp_path, np.zeros((3, 2)), {"label": ["a", "b", "c"], "split": ["train"]})
    with pytest.raises(ValueError, match="2-D"):
        export_embeddings(tmp_path, np.zeros(3), {"label": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="column"):
        export_embeddings(tmp_path, np.zeros((3, 2)), {})
    assert os.listdir(tmp_path) == []
