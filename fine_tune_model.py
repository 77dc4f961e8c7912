"""Familiar entry module: the model builders of triplet_keras under their usual names."""
from triplet_keras.models.networks import build_encoder, build_merge_model, build_online_model, load_model

fine_tuned_models = build_merge_model

__all__ = ["build_encoder", "build_merge_model", "build_online_model", "fine_tuned_models", "load_model"]
