"""The README's main-job table is what the main job gives: its numbers are written by
benchmarks/readme_tables.py from a run's metrics.json, and a fresh run must give them again.

Tolerances: ``pixels`` and ``initial_encoder`` involve no training (the initial network's weights come
from the run's seed), so only float rounding across CPUs moves them: 0.005. The rows of the
fine-tuned network and the search depend on a training whose CPU kernels XLA picks per instruction
set, so another CPU ends a little elsewhere: 0.03, under the spread between training seeds (the
README's few-shot tables) and far under the margins by which the searched rows beat the baselines."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.backend_free  # init.py runs in its own interpreter, on the backend its entry point picks

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
UNTRAINED, TRAINED = 0.005, 0.03


def readme_tables():
    spec = importlib.util.spec_from_file_location("readme_tables", os.path.join(ROOT, "benchmarks", "readme_tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_main_job_table_is_written_from_a_run_and_read_back(tmp_path):
    tables = readme_tables()
    metrics = {"scores": {"test_accuracy": 0.98, "transfer_accuracy": 0.95},
               "transfer": {"1-shot": {name: {"mean": value} for name, value in zip(
                   tables.ROWS, (0.7, 0.74, 0.8, 0.88, 0.97))}},
               "saved_transfer_search": {"best_name": "fine_tuned grid: none"},
               "calibration": {"source": {"ece_after": 0.01, "ece_before": 0.02, "accepted_share": 0.9,
                                          "accepted_accuracy": 0.99, "unseen_unknown_share": 0.97}},
               "machine": {"cpu": "Some CPU", "cores": 2, "keras": "3", "backend": "jax", "load_average": 3.2},
               "seconds": 80, "cpu_seconds": 95}
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- table: main-job -->\nold\n<!-- /table -->\nafter\n")
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert tables.main(["--main-job", str(tmp_path / "metrics.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "Some CPU" in text and "old" not in text
    assert "init.py took 80 s, 95 CPU s, load average 3.2 over the 15 minutes before it ended" in text
    assert "| new classes, 1-shot: pixels / initial_encoder / auto / semi_supervised / ceiling | 0.700 / 0.740 / " \
           "**0.800** / **0.880** / 0.970 |" in text  # bold: beat both baselines
    assert "ECE 0.010 (0.020 before), 90.0% accepted, 99.0% of those right, 97.0% of never-seen" in text
    assert tables.parse_main_job_table(text) == tables.main_job_values(metrics)
    assert tables.main(["--main-job", str(tmp_path / "metrics.json"), "--readme", str(readme), "--check"]) == 0
    readme.write_text(text.replace("0.700", "0.701"))
    assert tables.main(["--main-job", str(tmp_path / "metrics.json"), "--readme", str(readme), "--check"]) == 1
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no table 'main-job'"):
        tables.main(["--main-job", str(tmp_path / "metrics.json"), "--readme", str(readme)])


@pytest.mark.end_to_end(seconds=180)
def test_the_main_job_gives_the_readme_main_job_table(tmp_path):
    """init.py as the README's main command runs it (its params.json, no KERAS_BACKEND set)."""
    tables = readme_tables()
    shutil.copy(os.path.join(ROOT, "experiments", "digits", "params.json"), tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    result = subprocess.run([sys.executable, "init.py", "--model_dir", str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ran = tables.main_job_values(metrics)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        readme = tables.parse_main_job_table(file.read())
    assert list(readme) == list(ran)
    for label, values in ran.items():
        untrained = tables.ROWS.index("initial_encoder") + 1 if " / " in label else 0
        for i, (found, expected) in enumerate(zip(values, readme[label])):
            assert found == pytest.approx(expected, abs=UNTRAINED if i < untrained else TRAINED), (label, i)
    for shots, rows in metrics["transfer"].items():  # what it printed is what it wrote
        assert f"| transfer {shots} auto | {rows['auto']['mean']:.4f}" in result.stdout
    for shots, choice in metrics["transfer_choice"].items():  # 16 stand-in classes: held-out-class evidence
        assert choice["evidence"].endswith("and their symmetries, held out of training")
        scores = choice["evidence_scores"]
        assert {name.split(" ")[0] for name in scores} == {"fine_tuned", "initial", "pixels"}
        assert scores[choice["best_by_evidence"]] == max(scores.values())
        if shots == "1-shot":  # nothing to leave out: the evidence decides, the same pick in every episode
            (pick, count), = choice["auto_picks"].items()
            inductive = {name: score for name, score in scores.items() if not name.endswith("+ unlabeled")}
            assert count == 100 and inductive[pick] == max(inductive.values())
    assert os.path.isfile(os.path.join(tmp_path, "selection_encoder", "best.keras"))  # the fold encoder
