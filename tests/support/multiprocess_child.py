"""A training script for the multi-process kill/SIGTERM tests, in one or several JAX processes.

It is what a user's script looks like: build, compile, fit with
`rs.OrbaxCheckpoint` (or, with `--backup`, `rs.BackupAndRestore`, DIRECTORY
then being a local directory or a bucket URL) and `rs.LearningRateScheduler`;
rerunning it after any interruption continues the same run.

    python tests/support/multiprocess_child.py DIRECTORY OUT_DIR [--save-freq N|epoch]
        [--processes 2 --process-id I --port P] [--samples N] [--epochs N]
        [--batch-size N] [--big] [--sleep S] [--no-ckpt] [--sync] [--backup]
        [--seed-per-process] [--grain]

With `--processes 2` it joins a two-process JAX run on 127.0.0.1 (CPU
collectives over gloo, two CPU devices per process) and trains with
`keras.distribution.DataParallel`, feeding its own half of the data.
With `--grain` the data is a shuffled `grain.MapDataset` with a random map
(the same shuffle in every process), each process batching its own shard
`ds[process_id::processes]`.
It prints `start` when training begins and `batch E B` after each batch,
and at the end writes OUT_DIR/result-I.json and OUT_DIR/weights-I.npz.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("directory")
    p.add_argument("out_dir")
    p.add_argument("--save-freq", default="epoch")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--big", action="store_true", help="add two 2048-wide layers (~17 MB of weights)")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--no-ckpt", action="store_true")
    p.add_argument("--sync", action="store_true", help="save_on_background=False")
    p.add_argument("--backup", action="store_true", help="rs.BackupAndRestore instead of rs.OrbaxCheckpoint")
    p.add_argument("--seed-per-process", action="store_true",
                   help="seed the host RNGs (the batch order) differently in each process")
    p.add_argument("--grain", action="store_true",
                   help="feed a shuffled grain.MapDataset with a random map, sharded per process")
    a = p.parse_args(argv)

    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if a.processes > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    import jax

    if a.processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np
    from keras import ops

    import resumable_scheduler as rs

    if a.processes > 1:
        keras.distribution.initialize(f"127.0.0.1:{a.port}", num_processes=a.processes, process_id=a.process_id)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
        )

    def schedule(epoch, lr):
        return lr if epoch < 10 else lr * ops.exp(-0.1)

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            print("start", flush=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            print(f"batch {self.epoch} {batch}", flush=True)
            if a.sleep:
                time.sleep(a.sleep)

    keras.utils.set_random_seed(0)
    n = a.samples
    x = np.arange(n * 20, dtype="float32").reshape(n, 20) / (n * 20)
    y = np.zeros((n, 10), dtype="float32")
    share = n // a.processes
    x, y = (v[a.process_id * share:(a.process_id + 1) * share] for v in (x, y))
    layers = [keras.Input((20,)), keras.layers.Dropout(0.2)]
    if a.big:
        layers += [keras.layers.Dense(2048), keras.layers.Dense(2048)]
    layers.append(keras.layers.Dense(10))
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(), loss="mse")
    callbacks = [rs.LearningRateScheduler(schedule)]
    if not a.no_ckpt:
        save_freq = a.save_freq if a.save_freq == "epoch" else int(a.save_freq)
        kind = rs.BackupAndRestore if a.backup else rs.OrbaxCheckpoint
        callbacks.append(kind(a.directory, save_freq=save_freq, save_on_background=not a.sync))
    callbacks.append(Progress())
    if a.seed_per_process:
        # Each process shuffles its half in its own order (the model, built
        # above, is the same in both): a resume that gave a process another
        # process's host RNG state would train other batches.
        import random

        np.random.seed(1000 + a.process_id)
        random.seed(1000 + a.process_id)
    if a.grain:
        import grain

        full_x = np.arange(n * 20, dtype="float32").reshape(n, 20) / (n * 20)
        full_y = np.full((n, 10), 0.01, dtype="float32")

        def noise(e, r):
            return e[0] + r.normal(size=20).astype("float32") * 0.01, e[1]

        ds = grain.MapDataset.range(n).shuffle(seed=7).map(lambda i: (full_x[i], full_y[i]))
        ds = ds[a.process_id::a.processes].random_map(noise, seed=3 + a.process_id).batch(a.batch_size)
        model.fit(ds, epochs=a.epochs, callbacks=callbacks, verbose=0)
    else:
        model.fit(x, y, epochs=a.epochs, batch_size=a.batch_size, callbacks=callbacks, verbose=0)

    os.makedirs(a.out_dir, exist_ok=True)
    i = a.process_id
    np.savez(os.path.join(a.out_dir, f"weights-{i}.npz"), *[np.asarray(w) for w in model.get_weights()])
    with open(os.path.join(a.out_dir, f"result-{i}.json"), "w") as f:
        json.dump({
            "lr": float(ops.convert_to_numpy(model.optimizer.learning_rate)),
            "iterations": int(ops.convert_to_numpy(model.optimizer.iterations)),
        }, f)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
