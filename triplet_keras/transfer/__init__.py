"""Few-shot transfer: class prototypes for target data from a few labelled examples and the source.

Small scikit-learn pieces, one module each: ``whitening`` (WithinClassWhitening, source_whitening),
``domain`` (class mapping, DomainCentering, the source prior, translated source points),
``prototypes`` (NearestMeanClassifier, kNN votes, transductive refinement), ``serialization``
(get_state / from_state without pickle) and ``classifier`` (TransferClassifier composing them, with a
fixed mode and whitening; ScoreMixture, the weighted sum of several TransferClassifiers' scores, each
on its own features; classifier_from_state), all imported here. Above them, in modules of their
own that this file does not import: ``choice``, the choice among them (fit_transfer, TransferSearch),
``evaluation`` (few-shot episodes, baselines) and ``metrics`` (classification, retrieval, clustering).

Notation: source embeddings x with labels y and class means mu_s(j); a labelled target support with
K_c examples of class c and class means mu_t(c); an optional unlabelled target pool u. Each target
class c is *mapped* to a source class j = map(c) (same classes in a new domain, or a given
``class_mapping``) or is *new*. Every mode ends in a nearest-prototype classifier, possibly after a
query transform T (whiten, subtract an offset, L2-normalise).

Whitening (``whiten``, a shrinkage lambda in [0, 1], None to switch it off): every mode but ``none`` first maps source, support, pool and
queries by x -> (x - m_s) W, W = S^(-1/2), S = (1 - lambda) S_w + lambda tr(S_w) / d I, S_w the
source's pooled within-class covariance and m_s the mean of its class means (source_whitening, module
``whitening``; or learnt on other labelled source data such as its pseudo-classes, the ``whitening``
argument of fit). Nearest means then use the Mahalanobis distance of the source's shared
within-class scatter: directions along which the source classes vary inside a class count less.
The modes below work in that space:

* ``none``: p_c = mu_t(c), the support alone and raw features (never whitened); the baseline.
* ``translate``: the source cluster map(c) moved by mu_t(c) - mu_s(map(c)) (a new class borrows its
  nearest source class). The translated mean is mu_t(c) itself, so with nearest means this is the
  whitened ``none``; ``knn`` instead votes among the k nearest translated source points and the support.
* ``center``: each domain centred on its own mean m and L2-normalised, T(x) = (x - m) / |x - m|
  (m_s: the mean of the source class means; m_t: the pool mean, or the mean of the support class
  means). p_c = (K_c a_t(c) + kappa a_s(map(c))) / (K_c + kappa) with a_t, a_s the class means in
  the centred spaces; a new class uses a_t(c) alone.
* ``calibrate``: p_c = (K_c mu_t(c) + kappa prior_c) / (K_c + kappa) with prior_c = mu_s(map(c)) +
  delta and delta the mean of mu_t(c) - mu_s(map(c)) over the mapped classes (0 when none is mapped).
  A new class borrows prior_c = sum_j w_j (mu_s(j) + delta), w a softmax of -d(mu_t(c) - delta,
  mu_s(j)) / temperature over its ``n_borrow`` nearest source classes, weighted by ``kappa_new``.

Transductive refinement (``transductive=True`` with a pool): soft k-means with the support fixed,
p_c <- (n_c p0_c + sum_i r_ic T(u_i)) / (n_c + sum_i r_ic), r_i = softmax(-d(T(u_i), p) / temperature),
p0 and n_c = K_c (+ kappa where a prior was used) the inductive prototypes and their weights, so the
prototypes stay anchored to the support and prior. Pool points whose largest r_ic is below
``confidence`` are left out of each step: on an unbalanced pool the plain soft k-means lets the
dominant class drag its neighbours' prototypes (tests/test_transfer.py measures both pools).
"""
from triplet_keras.core.distances import l2_normalize
from triplet_keras.core.distances import pairwise as distances  # the name callers import from here
from .classifier import MODES, ScoreMixture, TransferClassifier, classifier_from_state
from .domain import DomainCentering, borrow_weights, source_prior
from .prototypes import METRICS, NearestMeanClassifier, class_means
from .serialization import STATE_VERSION
from .whitening import Whitening, WithinClassWhitening, source_whitening

__all__ = ["DomainCentering", "METRICS", "MODES", "NearestMeanClassifier", "STATE_VERSION", "ScoreMixture",
           "TransferClassifier",
           "Whitening", "WithinClassWhitening", "borrow_weights", "class_means",
           "classifier_from_state", "distances", "l2_normalize", "source_prior", "source_whitening"]
