"""The names of the ways to choose triplets, defined once for the package.

Offline (OFFLINE_STRATEGIES, :func:`triplet_keras.core.mining.mine_triplets`): triplets mined between
epochs over the embeddings of a whole split, then trained with a fixed (anchor, positive, negative)
loss. Online (ONLINE_STRATEGIES, :class:`triplet_keras.core.losses.OnlineTripletLoss`): triplets chosen
inside each batch by the loss itself. "semi_hard" names the online one too (ONLINE_SYNONYMS), as
in the loss functions and the Keras files written before the names were unified.

Semi-hard, for an anchor-positive pair (a, p), with d the training distance:

* online, "batch_semi_hard" (the DESIGN definition): the closest negative farther than the positive,
  min {d(a, n) : d(a, n) > d(a, p)}; where none exists, the farthest negative.
* offline, "semi_hard" (FaceNet): the closest negative farther than the positive when it also lies
  within the margin, d(a, n) < d(a, p) + margin; otherwise the closest negative (as "hard"). A
  mined triplet stays in the training set for a whole epoch, so one that already satisfies the
  margin while a harder negative exists is not kept.
"""
OFFLINE_STRATEGIES = ("random", "semi_hard", "hard")
ONLINE_STRATEGIES = ("batch_all", "batch_hard", "batch_semi_hard")
ONLINE_SYNONYMS = {"semi_hard": "batch_semi_hard"}


def online_strategy(name):
    """The name in ONLINE_STRATEGIES for ``name`` (a synonym included); ValueError for any other."""
    strategy = ONLINE_SYNONYMS.get(name, name)
    if strategy not in ONLINE_STRATEGIES:
        raise ValueError(f"strategy must be one of {ONLINE_STRATEGIES + tuple(ONLINE_SYNONYMS)}, got {name!r}")
    return strategy
