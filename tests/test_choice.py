"""The transfer choice: candidates, the fast fits of a search against TransferClassifier, evidence,
leave-one-out (a new domain) and the search's record."""
import numpy as np
import pytest

from triplet_keras.transfer import ScoreMixture, TransferClassifier, source_whitening
from triplet_keras.transfer.choice import (
    NO_EVIDENCE_WEIGHTS,
    Candidate,
    EpisodeEvidence,
    LabelledVectors,
    Mixture,
    TransferSearch,
    candidates,
    default_candidate,
    fit_transfer,
    held_out_fold,
    compared_for_new_classes,
    leave_one_out_folds,
    no_evidence_form,
    shortlist,
)

pytestmark = pytest.mark.backend_free


def blobs(rng, classes, per_class, dim=12, shift=0.0, spread=0.6):
    """Gaussian classes around fixed centres (class c's centre from a seeded draw), moved by ``shift``."""
    centres = np.random.default_rng(7).normal(size=(20, dim)) * 2
    labels = np.repeat(np.asarray(classes), per_class)
    return centres[labels] + shift + rng.normal(scale=spread, size=(len(labels), dim)), labels


@pytest.mark.parametrize("new_classes", [True, False])
def test_fast_fits_match_transfer_classifier_for_every_kind_of_candidate(new_classes):
    rng = np.random.default_rng(0)
    source, source_labels = blobs(rng, range(6), 30)
    target_classes = range(6, 11) if new_classes else range(6)
    target, target_labels = blobs(rng, target_classes, 20, shift=0.7)
    vectors = LabelledVectors(source, source_labels, target, new_classes)
    support = np.concatenate([np.flatnonzero(target_labels == c)[:3] for c in target_classes])
    query = np.setdiff1d(np.arange(len(target)), support)
    pool = query[::2]
    checked = 0
    for candidate in candidates({("n", "f"): target.shape[1]}):
        fast = vectors.predict(candidate, support, target_labels[support], query, pool)
        model = TransferClassifier(mode=candidate.mode, whiten=candidate.shrinkage, transductive=candidate.unlabeled)
        model.fit(target[support], target_labels[support], source_emb=source, source_labels=source_labels,
                  unlabeled=target[pool] if candidate.unlabeled else None)
        np.testing.assert_array_equal(fast, model.predict(target[query]), err_msg=candidate.name)
        checked += 1
    assert checked == 13  # none, center x 4 shrinkages, each with and without the pool; translate x 3


def test_candidates_run_simplest_first_and_skip_whitening_wide_spaces():
    found = candidates({("fine_tuned", "backbone"): 64, ("pixels", "pixels"): 4096}, unlabeled=(False,))
    names = [c.name for c in found]
    assert names[:3] == ["fine_tuned backbone: none", "fine_tuned backbone: translate whiten 0.1",
                         "fine_tuned backbone: translate whiten 0.3"]
    assert [c.name for c in found if c.network == "pixels"] == ["pixels pixels: none", "pixels pixels: center"]
    assert Candidate("initial", "grid", "center", 0.3, True).name == "initial grid: center whiten 0.3 + unlabeled"
    assert Candidate(mode="none", whiten=0.3).shrinkage is None


def test_leave_one_out_folds_leave_one_shot_of_every_class_out():
    labels = np.array([0, 1, 0, 1, 0, 1, 0])
    folds = leave_one_out_folds(labels)
    assert [out.tolist() for _, out in folds] == [[0, 1], [2, 3], [4, 5]]
    assert all(np.intersect1d(kept, out).size == 0 and len(kept) + len(out) == 7 for kept, out in folds)
    assert leave_one_out_folds([0, 1, 1]) == []


def test_held_out_fold_leaves_half_the_classes_at_most_n_way_and_none_below_four():
    assert len(held_out_fold(np.arange(3), 5)) == 0
    assert len(held_out_fold(np.arange(5), 5)) == 2
    assert len(held_out_fold(np.arange(36), 26)) == 18
    np.testing.assert_array_equal(held_out_fold(np.arange(10), 3, seed=1), held_out_fold(np.arange(10), 3, seed=1))


def spaces_where_one_network_separates_the_target(rng, new_domain=False):
    """Two spaces of the same images: in "good" the target classes lie apart, in "bad" on top of each
    other (only noise); the source is separable in both. The target holds new classes, or with
    ``new_domain`` the source's classes moved, and the evidence's stand-ins are held-out classes or
    (a new domain) other rows of the source classes."""
    source_good, source_labels = blobs(rng, range(6), 20)
    source_bad, _ = blobs(rng, range(6), 20)
    target_good, target_labels = blobs(rng, range(6) if new_domain else range(6, 11), 12, shift=0.5 if new_domain else 0.0)
    target_bad = rng.normal(size=target_good.shape)
    stand_in_good, stand_in_labels = blobs(rng, range(6) if new_domain else range(11, 15), 12)
    stand_in_bad = rng.normal(size=stand_in_good.shape)
    spaces = {("good", "f"): (source_good, target_good), ("bad", "f"): (source_bad, target_bad)}
    evidence = EpisodeEvidence({("good", "f"): (source_good, stand_in_good), ("bad", "f"): (source_bad, stand_in_bad)},
                               source_labels, stand_in_labels, new_classes=not new_domain, n_episodes=20)
    return spaces, source_labels, target_labels, evidence


def swapped(evidence):
    """``evidence`` that misleads: its stand-ins swapped between the two networks."""
    evidence.spaces = {("good", "f"): evidence.spaces[("bad", "f")], ("bad", "f"): evidence.spaces[("good", "f")]}
    return evidence


def test_search_takes_the_network_that_separates_held_out_classes_and_records_every_score():
    rng = np.random.default_rng(1)
    spaces, source_labels, target_labels, evidence = spaces_where_one_network_separates_the_target(rng)
    found = candidates({key: 12 for key in spaces}, unlabeled=(False,))
    support = np.array([np.flatnonzero(target_labels == c)[0] for c in range(6, 11)])
    search = TransferSearch(spaces, source_labels, found, evidence).fit(support, target_labels[support])
    assert search.decided_by == "evidence" and search.best_candidate_.network == "good"
    results = search.cv_results_
    assert len(results["candidate"]) == len(found) and sorted(results["rank"]) == list(range(1, len(found) + 1))
    assert results["candidate"][results["rank"].index(1)] == search.best_candidate_.name
    assert all(np.isnan(results["support_score"]))  # one shot: no leave-one-out
    bad = [s for s, p in zip(results["evidence_score"], results["params"]) if p["network"] == "bad"]
    assert max(bad) < 0.6 < min(s for s, p in zip(results["evidence_score"], results["params"]) if p["network"] == "good")
    query = np.setdiff1d(np.arange(len(target_labels)), support)
    assert search.score(query, target_labels[query]) > 0.9


def test_for_a_new_domain_leave_one_out_on_the_support_overrules_misleading_evidence():
    """The evidence says "bad", but with 3 shots a class the support shows that "good" separates the
    target: for a new domain, leave-one-out has the last word."""
    rng = np.random.default_rng(2)
    spaces, source_labels, target_labels, evidence = spaces_where_one_network_separates_the_target(rng, new_domain=True)
    evidence = swapped(evidence)
    found = candidates({key: 12 for key in spaces}, unlabeled=(False,))
    support = np.concatenate([np.flatnonzero(target_labels == c)[:3] for c in range(6)])
    one_shot = support[::3]
    assert TransferSearch(spaces, source_labels, found, evidence).fit(
        one_shot, target_labels[one_shot]).best_candidate_.network == "bad"
    search = TransferSearch(spaces, source_labels, found, evidence).fit(support, target_labels[support])
    assert search.decided_by == "leave-one-out" and search.n_folds_ == 3 and search.best_candidate_.network == "good"
    query = np.setdiff1d(np.arange(len(target_labels)), support)
    assert search.score(query, target_labels[query]) > 0.9


def test_for_new_classes_the_evidence_decides_at_every_k():
    """New classes: the held-out classes' episodes rank the candidates, also with 3 shots a class (the
    support's leave-one-out is not run): swapped stand-ins make the search take "bad"."""
    rng = np.random.default_rng(2)
    spaces, source_labels, target_labels, evidence = spaces_where_one_network_separates_the_target(rng)
    evidence = swapped(evidence)
    found = candidates({key: 12 for key in spaces}, unlabeled=(False,))
    support = np.concatenate([np.flatnonzero(target_labels == c)[:3] for c in range(6, 11)])
    search = TransferSearch(spaces, source_labels, found, evidence).fit(support, target_labels[support])
    assert search.decided_by == "evidence" and search.n_folds_ == 0 and search.best_candidate_.network == "bad"
    assert all(np.isnan(search.cv_results_["support_score"]))


def test_for_new_classes_leave_one_out_compares_the_pool_twins_and_the_best_without_the_pool():
    """A candidate that leads the evidence only with the pool must beat, on the support, its twin
    without the pool and the evidence's best without the pool."""
    fine, pixels = Candidate("fine_tuned", "grid", "center", 0.3), Candidate("pixels", "pixels", "center")
    fine_pool, pixels_pool = (Candidate(**{**c.as_dict(), "unlabeled": True}) for c in (fine, pixels))
    evidence = {fine: 0.90, fine_pool: 0.92, pixels: 0.85, pixels_pool: 0.95}
    assert compared_for_new_classes(pixels_pool, list(evidence), evidence) == [pixels_pool, pixels, fine]
    assert compared_for_new_classes(fine_pool, list(evidence), evidence) == [fine_pool, fine]
    assert compared_for_new_classes(fine, [fine, pixels], {fine: 0.9, pixels: 0.8}) == [fine]
    assert compared_for_new_classes(fine_pool, list(evidence), {}) == [fine_pool, fine]  # no evidence: the twins
    start = Candidate("initial", "backbone", "center")
    start_pool = Candidate(**{**start.as_dict(), "unlabeled": True})
    mixed, mixed_pool = Mixture((fine, start), (0.8, 0.2)), Mixture((fine_pool, start_pool), (0.8, 0.2))
    found = [fine, fine_pool, start, start_pool]
    assert compared_for_new_classes(mixed_pool, found, {}) == [mixed_pool, mixed]  # a Mixture's twin: its members'
    assert compared_for_new_classes(mixed, [fine, fine_pool, start], {}) == [mixed]  # a member has no twin: alone
    assert no_evidence_form(found, pooled=True, new_classes=True) == mixed_pool
    assert no_evidence_form(found, pooled=True, new_classes=False) == fine_pool  # a new domain: the default alone
    # the members must use the pool alike
    assert no_evidence_form([fine_pool, start], pooled=True, new_classes=True) == fine_pool


def test_search_without_evidence_or_shots_takes_the_documented_fallback():
    rng = np.random.default_rng(3)
    spaces, source_labels, target_labels, _ = spaces_where_one_network_separates_the_target(rng)
    found = candidates({key: 12 for key in spaces}, unlabeled=(False,))
    support = np.array([np.flatnonzero(target_labels == c)[0] for c in range(6, 11)])
    search = TransferSearch(spaces, source_labels, found).fit(support, target_labels[support])
    assert search.decided_by == "fallback" and search.best_candidate_ == Candidate("good", "f", "center", 0.3)
    with pytest.raises(ValueError, match="unlabelled pool"):
        TransferSearch(spaces, source_labels, [Candidate("good", "f", "center", unlabeled=True)]).fit(
            support, target_labels[support])


def test_the_default_is_center_whitened_on_the_fine_tuned_grid_with_the_pool_when_there_is_one():
    found = candidates({("fine_tuned", "backbone"): 12, ("fine_tuned", "grid"): 48, ("initial", "backbone"): 12,
                        ("pixels", "pixels"): 4000})
    assert default_candidate(found, pooled=False) == Candidate("fine_tuned", "grid", "center", 0.3)
    assert default_candidate(found, pooled=True) == Candidate("fine_tuned", "grid", "center", 0.3, unlabeled=True)
    only_modes = [c for c in found if c.mode == "none"]  # transfer_mode "none" asked for: the nearest one
    assert default_candidate(only_modes, pooled=False) == Candidate("fine_tuned", "grid", "none")
    listed = shortlist(found, {})
    assert len(listed) == 8 and len({(c.space, c.unlabeled) for c in listed}) == 8
    assert Candidate("pixels", "pixels", "center") in listed  # too wide to whiten: its nearest form
    assert all(c.mode == "center" and c.whiten == 0.3 for c in listed if c.network != "pixels")


def test_without_evidence_a_new_domain_compares_networks_and_new_classes_mix_them():
    """A new domain: leave-one-out among each space's default form. New classes: the fixed Mixture of
    the default form's scores and the starting network's unwhitened form's, at any K (numpy reference),
    refitted as a ScoreMixture on the two spaces side by side."""
    rng = np.random.default_rng(5)
    spaces, source_labels, target_labels, _ = spaces_where_one_network_separates_the_target(rng, new_domain=True)
    spaces = {("fine_tuned", "grid"): spaces[("bad", "f")], ("initial", "backbone"): spaces[("good", "f")]}
    found = candidates({key: 12 for key in spaces}, unlabeled=(False,))
    support = np.concatenate([np.flatnonzero(target_labels == c)[:3] for c in range(6)])
    search = TransferSearch(spaces, source_labels, found).fit(support, target_labels[support])
    assert search.decided_by == "leave-one-out" and search.best_candidate_ == Candidate("initial", "backbone", "center", 0.3)
    assert np.sum(~np.isnan(search.cv_results_["support_score"])) == 2  # each space's default form
    new_classes = target_labels + 6  # the same support as new classes
    default, start = Candidate("fine_tuned", "grid", "center", 0.3), Candidate("initial", "backbone", "center")
    query = np.setdiff1d(np.arange(len(new_classes)), support)
    for rows in (support, support[::3]):  # three shots a class, and one
        search = TransferSearch(spaces, source_labels, found).fit(rows, new_classes[rows])
        assert search.decided_by == "fallback" and search.best_candidate_ == Mixture((default, start), NO_EVIDENCE_WEIGHTS)
        assert search.cv_results_["candidate"][search.best_index_] == search.best_candidate_.name
        assert search.cv_results_["rank"][search.best_index_] == 1
        scores = 0.0
        for weight, part in zip((0.8, 0.2), (default, start)):
            fitted = part.estimator().fit(spaces[part.space][1][rows], new_classes[rows], source_emb=spaces[part.space][0],
                                          source_labels=source_labels)
            scores = scores + weight * -fitted.prototype_distances(spaces[part.space][1][query])
        expected = fitted.classes_[np.argmax(scores, axis=1)]
        np.testing.assert_array_equal(search.predict(query), expected)
        assert isinstance(search.best_estimator_, ScoreMixture)
        side_by_side = np.hstack([spaces[key][1] for key in (default.space, start.space)])
        np.testing.assert_array_equal(search.best_estimator_.predict(side_by_side[query]), expected)


def test_fit_transfer_auto_returns_a_fitted_classifier_of_a_searched_candidate():
    rng = np.random.default_rng(4)
    source, source_labels = blobs(rng, range(8), 20)
    target, target_labels = blobs(rng, range(8, 13), 10, shift=0.5)
    support = np.concatenate([np.flatnonzero(target_labels == c)[:2] for c in range(8, 13)])
    query = np.setdiff1d(np.arange(len(target)), support)
    model = fit_transfer(source, source_labels, target[support], target_labels[support], unlabeled=target[query])
    assert model.mode_ in ("none", "translate", "center") and model.score(target[query], target_labels[query]) > 0.9
    fixed = fit_transfer(source, source_labels, target[support], target_labels[support], mode="center", whiten=0.3)
    expected = TransferClassifier(mode="center", whiten=0.3).fit(
        target[support], target_labels[support], source_emb=source, source_labels=source_labels)
    np.testing.assert_allclose(fixed.means_, expected.means_)
    whitening = source_whitening(source, source_labels, 0.3)
    np.testing.assert_allclose(fixed.whitening_, whitening.matrix)
    with pytest.raises(ValueError, match="need a fixed mode"):
        fit_transfer(source, source_labels, target[support], target_labels[support], kappa=3.0)


@pytest.mark.parametrize("pool_kind", ["unbalanced", "with foreign classes"])
def test_the_search_with_an_awkward_pool_is_not_worse_than_without_one(pool_kind):
    """A pool 80% of one class, or half of it from classes the support does not have: the refinement
    keeps only confident points, and the leave-one-out decides whether to use it at all, so the search
    with the pool stays within two points of the search without one."""
    rng = np.random.default_rng(11)
    source, source_labels = blobs(rng, range(6), 30, spread=0.9)
    target, target_labels = blobs(rng, range(6, 16), 40, shift=0.5, spread=1.1)
    spaces = {("n", "f"): (source, target)}
    found = candidates({("n", "f"): target.shape[1]})
    inductive_only = [c for c in found if not c.unlabeled]
    gains = []
    for draw in range(8):
        classes = rng.choice(np.arange(6, 16), 5, replace=False)
        support = np.concatenate([rng.choice(np.flatnonzero(target_labels == c), 3, replace=False) for c in classes])
        rest = np.setdiff1d(np.flatnonzero(np.isin(target_labels, classes)), support)
        query = rest[::2]
        if pool_kind == "unbalanced":
            first = rest[target_labels[rest] == classes[0]]
            pool = np.concatenate([first] + [rest[target_labels[rest] == c][:2] for c in classes[1:]])
        else:
            foreign = np.flatnonzero(~np.isin(target_labels, classes))
            pool = np.concatenate([rest[1::2], rng.choice(foreign, len(rest[1::2]), replace=False)])
        with_pool = TransferSearch(spaces, source_labels, found, refit=False).fit(support, target_labels[support], pool)
        without = TransferSearch(spaces, source_labels, inductive_only, refit=False).fit(support, target_labels[support])
        gains.append(with_pool.score(query, target_labels[query]) - without.score(query, target_labels[query]))
    assert np.mean(gains) > -0.02
