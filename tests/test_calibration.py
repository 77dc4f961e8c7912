"""Calibration pieces on their own: the temperature fit, thresholds wired into a Calibration, and the
saved form (predictor.json entries of versions 2 and 3)."""
import json

import numpy as np
import pytest

from triplet_keras.serving.calibration import (Calibration, acceptance_thresholds, fit_calibration, fit_temperature,
                                               saved_calibration, saved_calibration_problems)

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def nll(scores, labels, temperature):
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    return -np.mean(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(axis=1)))


def test_fit_temperature_is_the_nll_minimum_on_a_grid():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    scores = rng.normal(size=(500, 4)) + 2.0 * np.eye(4)[labels]
    grid = np.exp(np.linspace(np.log(1e-2), np.log(1e2), 4001))
    best = grid[np.argmin([nll(scores, labels, t) for t in grid])]
    assert fit_temperature(scores, labels) == pytest.approx(best, rel=1e-2)


@pytest.mark.parametrize("target_precision", [None, 0.8])
def test_fit_calibration_thresholds_the_scores_at_the_fitted_temperature(target_precision):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 400)
    scores = rng.normal(size=(400, 3)) + 1.0 * np.eye(3)[labels]
    noise = rng.random(400)

    def acceptance(temperature):  # the probability score and a second column that ignores the temperature
        z = np.exp(scores / temperature)
        return np.stack([1 - (z / z.sum(axis=1, keepdims=True)).max(axis=1), noise], axis=1)

    calibration = fit_calibration(scores, labels, acceptance, ["probability", "neighbours"], 0.9, target_precision, 4)
    temperature = fit_temperature(scores, labels)
    correct = np.argmax(scores, axis=1) == labels
    thresholds, share = acceptance_thresholds(acceptance(temperature), 0.9, correct, target_precision)
    assert calibration == Calibration(temperature, {"probability": thresholds[0], "neighbours": thresholds[1]},
                                      0.9 if target_precision is None else share, target_precision, 4)
    if target_precision is not None:
        assert correct.mean() < 0.8 and 0 < share < 1


def test_saved_calibration_round_trips_and_reads_version_2():
    calibration = Calibration(0.7, {"neighbours": 0.3, "probability": 0.2}, 0.95, 0.9, 3)
    entry = json.loads(json.dumps(calibration._asdict()))
    assert saved_calibration_problems(entry, 3) == [] and saved_calibration(entry, 3) == calibration
    assert saved_calibration_problems(None, 3) == [] and saved_calibration(None, 3) is None
    old = {"temperature": 0.5, "threshold": 0.25, "accept_rate": 0.9}
    assert saved_calibration_problems(old, 2) == []
    assert saved_calibration(old, 2) == Calibration(0.5, {"distance": 0.25}, 0.9)
    for change, problem in [({"temperature": 0.0}, "temperature > 0"), ({"thresholds": {}}, "must name one or more"),
                            ({"accept_rate": float("nan")}, "finite numbers"), ({"neighbours": True}, "int >= 1")]:
        assert problem in saved_calibration_problems({**entry, **change}, 3)[0]
    assert "threshold, accept_rate" in saved_calibration_problems(entry, 2)[0]
