"""Load: Predictor.predict streams its input in batches, so memory does not grow with the number of images."""
import tracemalloc

import keras
import numpy as np

from benchmarks.bench_predict_memory import SIZE, GeneratedImages  # lazy 32 x 32 images
from images_factory import write_image
from triplet_keras.models.networks import L2Normalize
from triplet_keras.serving.predict import Predictor
from triplet_keras.transfer import NearestMeanClassifier

def small_predictor():
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = L2Normalize()(keras.layers.Dense(8)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))))
    classifier = NearestMeanClassifier().fit(np.random.default_rng(0).normal(size=(6, 8)), [0, 0, 1, 1, 2, 2])
    return Predictor(keras.Model(inputs, outputs), ["a", "b", "c"], classifier, batch_size=64)


def peak_bytes(predictor, images):
    tracemalloc.start()
    try:
        names = predictor.predict(images)
        return tracemalloc.get_traced_memory()[1], names
    finally:
        tracemalloc.stop()


def test_peak_memory_per_extra_image_is_far_below_one_image():
    predictor = small_predictor()
    predictor.predict(GeneratedImages(64))  # compile outside the measurement
    small, _ = peak_bytes(predictor, GeneratedImages(1_000))
    large, names = peak_bytes(predictor, GeneratedImages(8_000))
    assert len(names) == 8_000 and set(names) <= {"a", "b", "c"}
    per_image = (large - small) / 7_000
    # The output (an 8-d embedding, 3 probabilities, a name) costs ~100 bytes per image; holding the
    # images would cost 3 KiB each (32 x 32 x 3 uint8, which is how they reach the model).
    assert per_image < 1024, per_image
    predictor.batch_size = 8_000  # the measure itself would see the images held all at once
    whole, _ = peak_bytes(predictor, GeneratedImages(8_000))
    assert (whole - small) / 7_000 > SIZE * SIZE * 3


def test_file_paths_are_read_a_batch_at_a_time(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.png", np.full((SIZE, SIZE, 3), i % 256, np.uint8)))
             for i in range(2_000)]
    predictor = small_predictor()
    predictor.predict(paths[:64])
    small, _ = peak_bytes(predictor, paths[:250])
    large, names = peak_bytes(predictor, paths)
    assert len(names) == 2_000
    assert (large - small) / 1_750 < 1024
