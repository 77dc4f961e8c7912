"""Familiar entry module: the triplet losses of triplet_keras under their usual names."""
from triplet_keras.core.losses import (
    OnlineTripletLoss,
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    pairwise_distances,
    semi_hard_triplet_loss,
    triplet_margin_loss,
)

triplet_loss = triplet_margin_loss

__all__ = [
    "OnlineTripletLoss",
    "TripletMarginLoss",
    "batch_all_triplet_loss",
    "batch_hard_triplet_loss",
    "pairwise_distances",
    "semi_hard_triplet_loss",
    "triplet_loss",
    "triplet_margin_loss",
]
