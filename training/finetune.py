"""Phase 2: fine-tune the top of the backbone at a low learning rate, augmenting in tf.data."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from training.augment import augment


def make_dataset(crops: np.ndarray, y: np.ndarray, rows: np.ndarray, batch_size: int, training: bool, seed: int):
    """tf.data over rows of the in-memory crop array; shuffled and augmented when training."""
    import tensorflow as tf
    size = crops.shape[1]

    def load(row):
        image = tf.numpy_function(lambda r: crops[r], [row], tf.uint8)
        image.set_shape((size, size, 3))
        return image, tf.numpy_function(lambda r: y[r].astype(np.int32), [row], tf.int32)

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(rows, np.int64))
    if training:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training:
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda xy, i: (augment(xy[0], tf.stack([tf.cast(seed, tf.int64), i])), tf.reshape(xy[1], [])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda x, label: (tf.cast(x, tf.float32), tf.reshape(label, [])))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def best_val_loss(history_csv: Path, baseline_file: Path) -> float | None:
    """The validation loss a fine-tuning epoch must beat: the head-only model's or an earlier epoch's.

    Both are read from disk, so a restarted run keeps the head-only model when no epoch beat it.
    """
    losses = []
    if history_csv.exists():
        with history_csv.open() as f:
            losses = [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")]
    if baseline_file.exists():
        losses.append(float(baseline_file.read_text()))
    return min(losses) if losses else None


def epoch_summary():
    """Keras callback printing one line per epoch (the progress bar shows the steps)."""
    import keras

    def on_epoch_end(epoch, logs):
        print(f"fine-tune epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items()),
              file=sys.stderr, flush=True)
    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def without_head_dropout(model) -> None:
    """Switch off the head's dropout for fine-tuning: its dense weights are folded over raw features.

    The head was trained with dropout on standardised features (mean 0). Folded, the same dropout
    drops raw features whose mean is far from 0 while the bias still subtracts their mean share, so
    fine-tuning would learn against a scrambled head.
    """
    model.get_layer("dropout").rate = 0.0


def finetune(model, crops: np.ndarray, y: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
             config, class_weight: dict[int, float] | None, out_dir: Path) -> None:
    """Unfreeze the backbone from config.finetune_from; keep the weights with the lowest validation loss.

    Restartable: BackupAndRestore resumes an interrupted epoch loop and the best checkpoint
    (by validation loss, also across restarts) is what the model ends with.
    """
    import keras

    from network.model import unfreeze_top

    out_dir = Path(out_dir)
    best = out_dir / "checkpoints" / "best.weights.h5"
    done = out_dir / "checkpoints" / "finetune.done"
    best.parent.mkdir(parents=True, exist_ok=True)
    if config.finetune_epochs <= 0:
        return
    unfreeze_top(model, config.finetune_from)
    without_head_dropout(model)
    model.compile(optimizer=keras.optimizers.Adam(config.finetune_lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    if done.exists():
        model.load_weights(best)
        print("fine-tune: already finished, restored the best checkpoint", file=sys.stderr)
        return
    history_csv = out_dir / "history.csv"
    train_ds = make_dataset(crops, y, train_rows, config.batch_size, True, config.seed)
    val_ds = make_dataset(crops, y, val_rows, config.batch_size, False, config.seed)
    baseline = best.parent / "head_only_val_loss.txt"
    if not best.exists():
        model.save_weights(best)  # the head-only model is the baseline to beat
        head_only = float(model.evaluate(val_ds, verbose=0)[0])
        baseline.write_text(repr(head_only))
        print(f"fine-tune: head-only validation loss {head_only:.4f}", file=sys.stderr)
    threshold = best_val_loss(history_csv, baseline)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(out_dir / "checkpoints" / "backup")),
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=threshold),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        epoch_summary(),
    ]
    print(f"fine-tune: from {config.finetune_from}, lr {config.finetune_lr}, "
          f"up to {config.finetune_epochs} epochs", file=sys.stderr)
    # the dataset shuffles itself (make_dataset); Keras's own shuffle does not apply to tf.data and only warns
    model.fit(train_ds, validation_data=val_ds, epochs=config.finetune_epochs, class_weight=class_weight,
              callbacks=callbacks, shuffle=False, verbose=1 if sys.stderr.isatty() else 0)
    model.load_weights(best)
    done.touch()
