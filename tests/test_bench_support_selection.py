"""benchmarks/bench_support_selection.py: leave-one-out on the support holds out one shot per class."""
import numpy as np
import pytest

from benchmarks.bench_support_selection import score_candidates
from triplet_keras.selection import SHRINKAGES, candidates


def spaces_of(source, target):
    """Every shrinkage mapped to the same (unwhitened) vectors: enough to check the folds."""
    return {("trained", "backbone", shrinkage): (source, target) for shrinkage in SHRINKAGES}


def test_leave_one_out_scores_each_held_out_shot_against_the_other_shots():
    rng = np.random.default_rng(0)
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    source = np.vstack([rng.normal(-a, 0.05, (8, 2)), rng.normal(-b, 0.05, (8, 2))])
    source_labels = np.repeat([0, 1], 8)
    # Target class 2 near a, class 3 near b; rows 0-2 and 5-7 are the 3 shots, the rest queries.
    target = np.vstack([a, a, a, a, a, b, b, b, b, b]) + rng.normal(0, 0.05, (10, 2))
    target_labels = np.repeat([2, 3], 5)
    episode = [(np.array([0, 1, 2, 5, 6, 7]), np.array([3, 4, 8, 9]))]
    names, on_queries, on_support = score_candidates(spaces_of(source, target), source_labels, target_labels,
                                                     episode, k=3)
    assert len(names) == len(candidates()) and names[0] == ("trained", "backbone", "none")
    assert on_queries[0, 0] == 1.0 and on_support[0, 0] == 1.0
    # Class 2's third shot lies on class 3. Folds 1 and 2 still get both held-out shots right (class
    # 2's mean is halfway); fold 3 holds that shot out against clean means and gets it wrong: 5 / 6.
    target[2] = b
    names, on_queries, on_support = score_candidates(spaces_of(source, target), source_labels, target_labels,
                                                     episode, k=3)
    assert on_support[0, 0] == pytest.approx(5 / 6)
