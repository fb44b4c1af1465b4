"""Phase 1: train the dropout + logits head on cached backbone features (backbone frozen)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def train_head(model, feats: np.ndarray, y: np.ndarray, train_pos: list[int], val_pos: list[int],
               config, class_weight: dict[int, float] | None, out_dir: Path) -> None:
    """Fit the head on all rotations of the training features; early stop on validation loss.

    feats is (rotations, N, D) and y (N,) in the same row order; train_pos/val_pos index
    both. The fitted weights are copied into model's "logits" layer and saved to
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
    x_val = feats[:, val_pos].reshape(-1, feats.shape[-1])
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
    kernel, bias = head.layers[-1].get_weights()
    logits.set_weights([kernel, bias])
    np.savez(saved, kernel=kernel, bias=bias)

