"""Phase 1: train the dropout + logits head on cached backbone features (backbone frozen)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def fold_standardisation(kernel: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                         std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense weights on raw features equal to (kernel, bias) on standardised ones: no extra op in the graph."""
    scaled = kernel / std[:, None]
    return scaled.astype(np.float32), (bias - mean @ scaled).astype(np.float32)


def train_head(model, feats: np.ndarray, y: np.ndarray, train_pos: list[int], val_pos: list[int],
               config, class_weight: dict[int, float] | None, out_dir: Path,
               augmented: np.ndarray | None = None) -> None:
    """Fit the head on all rotations of the training features; early stop on validation loss.

    Features are standardised with the training rows' mean and spread (the pooled layers differ in
    scale), and the standardisation is folded into the dense layer's weights afterwards.

    feats is (rotations, N, D) and y (N,) in the same row order; train_pos/val_pos index
    both. `augmented` (copies, len(train_pos), D) adds features of augmented training crops. The
    fitted weights are copied into model's "logits" layer and saved to
    head.weights.npz so a restarted run skips this phase.
    """
    import keras

    saved = Path(out_dir) / "head.weights.npz"
    logits = model.get_layer("logits")
    if saved.exists():
        data = np.load(saved)
        logits.set_weights([data["kernel"], data["bias"]])
        print("head: restored from head.weights.npz", file=sys.stderr)
        return
    x_train = feats[:, train_pos].reshape(-1, feats.shape[-1])
    y_train = np.tile(y[train_pos], feats.shape[0])
    if augmented is not None:  # (copies, len(train_pos), D): features of augmented training crops
        x_train = np.concatenate([x_train, augmented.reshape(-1, feats.shape[-1])])
        y_train = np.concatenate([y_train, np.tile(y[train_pos], augmented.shape[0])])
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    x_train = (x_train - mean) / std
    x_val = (feats[:, val_pos].reshape(-1, feats.shape[-1]) - mean) / std
    y_val = np.tile(y[val_pos], feats.shape[0])

    inputs = keras.Input((feats.shape[-1],))
    x = keras.layers.Dropout(config.dropout)(inputs)
    outputs = keras.layers.Dense(logits.units)(x)
    head = keras.Model(inputs, outputs)
    head.compile(optimizer=keras.optimizers.Adam(config.head_lr),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    print("head: training the classifier on frozen backbone features", file=sys.stderr)
    head.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=config.head_epochs, batch_size=256,
             class_weight=class_weight, callbacks=[stop], verbose=2)
    kernel, bias = fold_standardisation(*head.layers[-1].get_weights(), mean, std)
    logits.set_weights([kernel, bias])
    np.savez(saved, kernel=kernel, bias=bias)

