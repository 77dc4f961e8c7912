"""Choosing the transfer on episodes simulated on the source, then by leave-one-out on the support."""
import numpy as np
import pytest

from triplet_keras.evaluation import whitened_spaces
from triplet_keras.selection import (SHRINKAGES, TransferChoice, candidates, choose_transfer, halve_per_class, held_out_class_tasks,
                                     held_out_fold, leave_one_out_folds, select_transfer, simulated_tasks, support_choice,
                                     support_scores)
from triplet_keras.transfer import fit_transfer


def test_candidates_are_every_mode_and_shrinkage_but_unwhitened_translate():
    names = list(candidates())
    assert names[0] == "none" and "translate" not in names and "none whiten 0.3" not in names
    assert len(names) == 1 + 3 + 4  # none; translate whitened (unwhitened it is none); center
    assert candidates(("center",), (0.2,)) == {"center whiten 0.2": {"mode": "center", "whiten": 0.2}}


def test_halve_per_class_is_seeded_and_per_class():
    labels = np.repeat([0, 1, 2], [4, 5, 2])
    held = halve_per_class(labels, seed=3)
    assert [held[labels == c].sum() for c in range(3)] == [2, 2, 1]
    np.testing.assert_array_equal(held, halve_per_class(labels, seed=3))


def test_new_class_tasks_hold_out_every_class_and_train_on_the_others():
    train, held = np.repeat(np.arange(7), 10), np.repeat(np.arange(7), 4)
    tasks = simulated_tasks(train, held, True, n_way=5, k_shot=1)
    assert all(way == 5 for _, _, way in tasks)  # min(5, 7 - 2)
    covered = set()
    for source_rows, target_rows, _ in tasks:
        group = set(held[target_rows])
        assert len(group) == 5 and not group & set(train[source_rows])
        covered |= group
    assert covered == set(range(7))
    assert simulated_tasks(train, held, True, n_way=5, k_shot=4) == []  # 4 held-out rows: no 4-shot + query
    assert simulated_tasks(train[:30], held[:12], True, n_way=5, k_shot=1) == []  # 3 classes: 1-way groups
    [(source_rows, target_rows, way)] = simulated_tasks(train, held, False, n_way=10, k_shot=2)
    assert way == 7 and len(source_rows) == 70 and len(target_rows) == 28
    [(_, target_rows, way)] = simulated_tasks(train, np.append(held, [9, 9, 9]), False, n_way=10, k_shot=2)
    assert way == 7 and len(target_rows) == 28  # a held-out class the source lacks is no stand-in


def test_selection_scores_every_candidate_and_takes_the_best_first():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 30)
    x = rng.normal(size=(180, 8)) + 2 * np.eye(8)[labels]
    held = halve_per_class(labels)
    features = {"a": (x[~held], x[held]), "b": (x[~held], x[held])}  # equal scores: "a" wins the ties
    choice = select_transfer(features, labels[~held], labels[held], True, 5, 1, n_episodes=12)
    assert len(choice.scores) == 2 * len(candidates()) and choice.features == "a"
    best = max(choice.scores.values())
    assert choice.scores[f"a: {choice.mode if choice.whiten is None else f'{choice.mode} whiten {choice.whiten:g}'}"] == best
    assert choice.n_episodes == 12 and not choice.fallback


def test_selection_prefers_centring_when_the_held_out_domain_is_shifted():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(5, 10))
    train_labels, held_labels = np.repeat(np.arange(5), 30), np.repeat(np.arange(5), 12)
    train = centers[train_labels] + 0.8 * rng.normal(size=(150, 10))
    held = centers[held_labels] + 3.0 + 0.8 * rng.normal(size=(60, 10))  # every held-out point moved
    choice = select_transfer({"x": (train, held)}, train_labels, held_labels, False, 5, 1, n_episodes=20)
    assert choice.mode == "center"
    assert max(choice.scores.values()) > choice.scores["x: none"] + 0.1


def test_fallback_when_the_source_cannot_form_episodes():
    x, labels = np.eye(4), np.array([0, 1, 2, 3])
    choice = select_transfer({"x": (x, x)}, labels, labels, True, 5, 1)
    assert (choice.mode, choice.whiten, choice.fallback, choice.scores) == ("none", None, True, {})
    assert select_transfer({"x": (x, x)}, labels, labels, False, 5, 1).mode == "center"
    fixed = choose_transfer({"x": (x, x)}, labels, labels, True, 5, 1, mode="center", whiten=0.3)
    assert (fixed.mode, fixed.whiten, fixed.fallback) == ("center", 0.3, True)  # what was fixed holds


def test_fit_with_a_fixed_mode_chooses_only_the_shrinkage():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(6), 20)
    x = rng.normal(size=(120, 6)) + 3 * np.eye(6)[labels]
    model = fit_transfer(x[labels < 4], labels[labels < 4], x[labels >= 4][::5], labels[labels >= 4][::5],
                         mode="center", whiten="auto")
    assert model.mode_ == "center" and all(": center" in name for name in model.selection_)
    with pytest.raises(ValueError, match="whiten"):
        fit_transfer(x, labels, x[:4], labels[:4], whiten="sometimes")


def test_held_out_fold_leaves_half_the_classes_at_most_n_way_and_none_below_four():
    fold = held_out_fold(np.arange(5), n_way=5, seed=1)
    assert len(fold) == 2 and set(fold) <= set(range(5))
    np.testing.assert_array_equal(fold, held_out_fold(np.arange(5), 5, seed=1))
    assert len(held_out_fold(np.arange(40), n_way=5)) == 5
    assert len(held_out_fold(np.array([3, 7, 9]), n_way=5)) == 0


def test_held_out_class_tasks_use_every_row_and_the_classes_with_enough_images():
    train, held = np.repeat([0, 1, 2], 10), np.repeat([5, 6, 7], [4, 4, 1])
    [(source_rows, target_rows, way)] = held_out_class_tasks(train, held, n_way=5, k_shot=2)
    assert len(source_rows) == 30 and set(held[target_rows]) == {5, 6} and way == 2
    assert held_out_class_tasks(train, held, n_way=5, k_shot=4) == []  # one class with K + 1 rows


def test_given_tasks_replace_the_simulated_ones():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(6, 10))
    train_labels, unseen_labels = np.repeat(np.arange(4), 20), np.repeat([4, 5], 12)
    train = centers[train_labels] + 0.5 * rng.normal(size=(80, 10))
    unseen = centers[unseen_labels] + 4.0 + 0.5 * rng.normal(size=(24, 10))  # far from the source mean
    tasks = held_out_class_tasks(train_labels, unseen_labels, 5, 1)
    choice = choose_transfer({"x": (train, unseen)}, train_labels, unseen_labels, True, 5, 1, n_episodes=10,
                             tasks=tasks)
    assert choice.n_episodes == 10 and not choice.fallback and len(choice.scores) == len(candidates())
    assert choose_transfer({"x": (train, unseen)}, train_labels, unseen_labels, True, 5, 1, tasks=[]).fallback


def test_leave_one_out_folds_leave_one_shot_of_every_class_out():
    folds = leave_one_out_folds(["b", "a", "b", "a", "b"])  # a: rows 1, 3; b: rows 0, 2, 4
    assert [(kept.tolist(), out.tolist()) for kept, out in folds] == [([2, 3, 4], [1, 0]), ([0, 1, 4], [3, 2])]
    assert leave_one_out_folds([0, 0, 1]) == []  # class 1 has one shot: nothing to fit it on when left out


def test_support_scores_count_the_shots_right_when_left_out():
    # 3 new classes on the axes, 3 shots each; the second shot of class 0 lies on class 1's axis. Left out,
    # it is wrong; kept, it pulls class 0's mean halfway but every other shot is still right: 8 of 9.
    shots = np.eye(4)[[0, 1, 0, 1, 1, 1, 2, 2, 2]]
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    source, source_labels = np.eye(4)[[3, 3]] + [[0, 0, 0, 0], [0, 0, 0, 1]], np.array([7, 8])
    target = np.vstack([np.zeros((2, 4)), shots])  # the support is rows 2..10 of the target
    full, short = np.arange(2, 11), np.arange(2, 9)  # short: class 2 has one shot there
    scores = support_scores("x", {None: (source, target)}, source_labels, np.r_[[5, 5], labels], [full, short],
                            {"none": {"mode": "none"}})
    assert scores == [{"x: none": pytest.approx(8 / 9)}, {}]


def test_support_choice_takes_the_best_score_and_breaks_ties_by_the_source_episodes():
    choice = TransferChoice("a", "none", None, {"b: center": 0.7, "b: none": 0.6, "a: none": 0.9}, 100)
    methods = candidates()
    chosen = support_choice(choice, {"a: none": 0.8, "b: none": 0.9, "b: center": 0.9}, methods, 4)
    assert (chosen.features, chosen.mode, chosen.whiten, chosen.support_folds) == ("b", "center", None, 4)
    assert chosen.scores == choice.scores and chosen.key == "b: center" and chosen.as_dict()["support_scores"]
    assert support_choice(choice, {}, methods, 0) is choice  # one shot of a class: the source episodes decide


def test_support_scores_of_new_classes_need_only_the_source_class_means():
    rng = np.random.default_rng(3)
    source_labels, target_labels = np.repeat(np.arange(6), 25), np.repeat(np.arange(10, 14), 6)
    source = rng.normal(size=(150, 8)) + 1.5 * rng.normal(size=(6, 8))[source_labels]
    target = rng.normal(size=(24, 8)) + 1.2 * rng.normal(size=(4, 8))[target_labels - 10] + 2.0
    spaces = whitened_spaces(source, source_labels, target, SHRINKAGES)
    support = np.concatenate([np.flatnonzero(target_labels == c)[:4] for c in range(10, 14)])
    methods = {**candidates(), "calibrate": {"mode": "calibrate"}}
    [by_means] = support_scores("x", spaces, source_labels, target_labels, [support], methods)
    [by_rows] = support_scores("x", spaces, source_labels, target_labels, [support], methods, class_mapping={})
    assert by_means == by_rows and len(by_means) == len(methods)  # {}: no class mapped, every source row used
    assert len(set(by_means.values())) > 1  # the candidates do differ here
