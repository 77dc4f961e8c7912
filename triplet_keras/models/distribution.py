"""Data-parallel training over several devices with the backend's own engine.

JAX: :func:`data_parallel` sets Keras' ``DataParallel`` distribution. Each batch is sharded over the
devices and the model replicated, and the train step is compiled for the whole (global) batch, so
an online triplet loss mines over every image of the batch, exactly as on one device.

TensorFlow: :func:`data_parallel` returns a ``tf.distribute.MirroredStrategy`` scope to build,
compile and fit the model in. There each replica computes the loss on its own slice of the batch;
wrap an online loss in :class:`GlobalBatchLoss` so it all-gathers the labels and embeddings of every
replica first and mines over the global batch too.

The global batch must divide evenly by the number of devices.

Several processes (JAX; one a host, or several on one machine): every process calls
:func:`initialize_processes` first, then :func:`data_parallel` over the devices of all processes.
Each process feeds only its own rows of every global batch, the i-th of ``num_processes`` equal
slices for process i (:class:`ProcessShard`); gradients are all-reduced over the processes (over
Gloo on CPUs), so every process ends with the same weights as one process training on the global
batches (see docs/reliability.md).
"""
import contextlib

import keras


def initialize_processes(coordinator_address, num_processes, process_id):
    """Join a JAX job of ``num_processes`` processes, before any other JAX work.

    ``coordinator_address`` is "host:port" of process 0, reachable from every process. CPU
    collectives go over Gloo (TCP), so processes that only have CPUs train together too.
    """
    if keras.backend.backend() != "jax":
        raise ValueError(f"multi-process training needs the jax backend, not {keras.backend.backend()!r}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must lie in [0, {num_processes}), got {process_id}")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize(job_addresses=coordinator_address, num_processes=num_processes,
                                  process_id=process_id)


def data_parallel(devices=None):
    """Train data-parallel over ``devices`` (default: every accelerator, or every CPU device).

    Returns a context manager: build, compile (and, on TensorFlow, load) the model inside it.
    On JAX with several processes, the devices are those of every process, and each process feeds
    its own share of the global batches (:class:`ProcessShard`): Keras' own sharding is for tf.data
    only, so it is switched off.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        devices = devices or keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
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


class ProcessShard(keras.utils.PyDataset):
    """This process's rows of every batch of ``dataset``, a PyDataset of global batches built alike
    (same data, same seed) in every process: rows [i b / n, (i + 1) b / n) of each array of a batch
    of b rows, for process i of n (by default JAX's process index and count).
    ``pydataset_kwargs`` (workers, ...) go to ``keras.utils.PyDataset``."""

    def __init__(self, dataset, process_id=None, num_processes=None, **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        if process_id is None or num_processes is None:
            import jax

            process_id, num_processes = jax.process_index(), jax.process_count()
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must lie in [0, {num_processes}), got {process_id}")
        self.dataset = dataset
        self.process_id = process_id
        self.num_processes = num_processes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        batch = self.dataset[index]
        rows = len(keras.tree.flatten(batch)[0])
        if rows % self.num_processes:
            raise ValueError(f"a batch of {rows} rows does not divide over {self.num_processes} processes")
        share = rows // self.num_processes
        return keras.tree.map_structure(lambda array: array[self.process_id * share : (self.process_id + 1) * share],
                                        batch)

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


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
