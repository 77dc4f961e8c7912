"""Mixed precision end to end: train one epoch, save, load, resume one more, on the merge and the online
models; the layers compute in the low dtype, the loss and the embeddings stay float32 and finite."""
from dataclasses import replace

import keras
import numpy as np
import pytest

from triplet_keras.pipeline import end_to_end
from triplet_keras.pipeline.config import load_config
from triplet_keras.models.networks import load_model

TINY = {"dataset": "digits", "backbone": "small_cnn", "weights": "none", "embedding_dim": 8, "freeze_layers": 0,
        "batch_size": 48, "samples_per_class": 4, "epochs": 1, "learning_rate": 0.003,
        "validation_fraction": 0.0, "test_fraction": 0.7, "max_per_class": 30, "loader_workers": 1}


@pytest.fixture
def policy():
    yield
    keras.config.set_dtype_policy("float32")


@pytest.mark.end_to_end(seconds=35)
@pytest.mark.parametrize("strategy", ["semi_hard", "batch_hard"])  # merge model, online model
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_saves_loads_and_resumes(tmp_path, policy, precision, strategy, capsys):
    config = load_config("/nonexistent-folder", {**TINY, "precision": precision, "strategy": strategy})
    keras.config.set_dtype_policy(precision)  # as end_to_end.run does
    data = end_to_end.prepare_data(config.data, config.seed)
    end_to_end.train(config, data, str(tmp_path), restart=False)
    longer = replace(config, training=replace(config.training, epochs=2))
    trained = end_to_end.train(longer, data, str(tmp_path), restart=False)
    assert "resuming" in capsys.readouterr().out
    assert len(trained.history["loss"]) == 2 and np.all(np.isfinite(trained.history["loss"]))
    model = load_model(tmp_path / "last.keras", compile=True)
    assert model.get_layer("encoder").get_layer("embedding").dtype_policy.name == precision
    assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(w))) for w in model.weights)
    images = data.train.load(np.arange(16))
    embeddings = trained.encoder.predict_on_batch(images)
    assert embeddings.dtype == np.float32 and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
    labels = data.train.labels[:16]
    if strategy == "batch_hard":
        loss = model.loss(labels, model(images))
    else:
        loss = model.loss(np.zeros(4), model([images[:4], images[4:8], images[8:12]]))
    assert keras.ops.convert_to_numpy(loss).dtype == np.float32 and np.isfinite(keras.ops.convert_to_numpy(loss))
    if precision == "mixed_float16":  # the optimizer scales the loss so float16 gradients do not underflow
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
