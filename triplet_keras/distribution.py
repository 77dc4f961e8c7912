"""Data-parallel training over several devices with the backend's own engine.

JAX: :func:`data_parallel` sets Keras' ``DataParallel`` distribution. Each batch is sharded over the
devices and the model replicated, and the train step is compiled for the whole (global) batch, so
an online triplet loss mines over every image of the batch, exactly as on one device.

TensorFlow: :func:`data_parallel` returns a ``tf.distribute.MirroredStrategy`` scope to build,
compile and fit the model in. There each replica computes the loss on its own slice of the batch;
wrap an online loss in :class:`GlobalBatchLoss` so it all-gathers the labels and embeddings of every
replica first and mines over the global batch too.

The global batch must divide evenly by the number of devices. For several hosts (JAX), call
``keras.distribution.initialize()`` on every host first, then :func:`data_parallel` (see
docs/reliability.md).
"""
import contextlib

import keras


def data_parallel(devices=None):
    """Train data-parallel over ``devices`` (default: every accelerator, or every CPU device).

    Returns a context manager: build, compile (and, on TensorFlow, load) the model inside it.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        devices = devices or keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(devices).scope()
    raise ValueError(f"data-parallel training needs the jax or tensorflow backend, not {backend!r}")


def replica_count():
    """How many devices the current setting trains on: the JAX distribution's mesh, the TensorFlow
    strategy in scope, else 1."""
    backend = keras.backend.backend()
    if backend == "jax":
        distribution = keras.distribution.distribution()
        return 1 if distribution is None else int(distribution.device_mesh.devices.size)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    return 1


@keras.saving.register_keras_serializable(package="triplet_keras")
class GlobalBatchLoss(keras.losses.Loss):
    """``loss`` computed over the labels and embeddings of every tf.distribute replica.

    Inside a TensorFlow replica context with several replicas, ``y_true`` and ``y_pred`` are
    all-gathered along the batch axis first (the gradient flows back to each replica's slice) and
    the loss is divided by the number of replicas, whose gradients tf.distribute sums (Keras scales
    per-sample losses so, but not a scalar one); anywhere else ``loss`` is applied unchanged.
    """

    def __init__(self, loss, name=None, **kwargs):
        loss = keras.losses.deserialize(loss) if isinstance(loss, dict) else loss
        super().__init__(name=name or loss.name, **kwargs)
        self.loss = loss

    def call(self, y_true, y_pred):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            context = tf.distribute.get_replica_context()
            replicas = context.num_replicas_in_sync if context is not None else 1
            if replicas > 1:
                y_true, y_pred = context.all_gather(y_true, axis=0), context.all_gather(y_pred, axis=0)
                # Keras does not scale a scalar loss by 1 / replicas; the summed gradients need it.
                return self.loss.call(y_true, y_pred) / replicas
        return self.loss.call(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "loss": keras.losses.serialize(self.loss)}
