"""Phase 1: train the dropout + logits head on cached backbone features (backbone frozen)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from network.model import fold_affine_input


def fold_standardisation(kernel: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                         std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense weights on raw features equal to (kernel, bias) on standardised ones, (x - mean) / std."""
    return fold_affine_input(kernel, bias, 1.0 / std, -mean / std)


def stacked_views(feats: np.ndarray, y: np.ndarray, pos, augmented: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of rows `pos` under every rotation, then of their augmented copies, one row each.

    feats is (rotations, N, D); augmented, when given, is (copies, len(pos), D) in pos's order.
    """
    x = feats[:, pos].reshape(-1, feats.shape[-1])
    labels = np.tile(y[pos], feats.shape[0])
    if augmented is not None:
        x = np.concatenate([x, augmented.reshape(-1, feats.shape[-1])])
        labels = np.concatenate([labels, np.tile(y[pos], augmented.shape[0])])
    return x, labels


def view_logits(feats: np.ndarray, pos, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Logits of rows `pos` averaged over the rotations, as the deployed model averages its views."""
    return (feats[:, pos] @ kernel + bias).mean(axis=0)


def fit_dense(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, config,
              class_weight: dict[int, float] | None, units: int, verbose: int = 2,
              log_csv: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dropout + dense weights (kernel, bias) on raw features, early-stopped on the validation rows' loss.

    log_csv, when given, receives one row per epoch (keras.callbacks.CSVLogger).
    Features are standardised with the training rows' mean and spread (the pooled layers differ in
    scale), and the standardisation is folded into the returned weights.
    """
    import keras
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    inputs = keras.Input((x_train.shape[-1],))
    x = keras.layers.Dropout(config.dropout)(inputs)
    outputs = keras.layers.Dense(units)(x)
    head = keras.Model(inputs, outputs)
    head.compile(optimizer=keras.optimizers.Adam(config.head_lr),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)]
    if log_csv is not None:
        callbacks.append(keras.callbacks.CSVLogger(str(log_csv)))
    head.fit((x_train - mean) / std, y_train, validation_data=((x_val - mean) / std, y_val),
             epochs=config.head_epochs, batch_size=256, class_weight=class_weight, callbacks=callbacks, verbose=verbose)
    return fold_standardisation(*head.layers[-1].get_weights(), mean, std)


def train_head(model, feats: np.ndarray, y: np.ndarray, train_pos: list[int], val_pos: list[int],
               config, class_weight: dict[int, float] | None, out_dir: Path,
               augmented: np.ndarray | None = None) -> None:
    """Fit the head on all rotations of the training features; early stop on validation loss.

    feats is (rotations, N, D) and y (N,) in the same row order; train_pos/val_pos index
    both. `augmented` (copies, len(train_pos), D) adds features of augmented training crops. The
    fitted weights are copied into model's "logits" layer and saved to
    head.weights.npz so a restarted run skips this phase; its epochs go to head_history.csv.
    """
    saved = Path(out_dir) / "head.weights.npz"
    logits = model.get_layer("logits")
    if saved.exists():
        data = np.load(saved)
        logits.set_weights([data["kernel"], data["bias"]])
        print("head: restored from head.weights.npz", file=sys.stderr)
        return
    print("head: training the classifier on frozen backbone features", file=sys.stderr)
    kernel, bias = fit_dense(*stacked_views(feats, y, train_pos, augmented), *stacked_views(feats, y, val_pos),
                             config, class_weight, logits.units, log_csv=Path(out_dir) / "head_history.csv")
    logits.set_weights([kernel, bias])
    np.savez(saved, kernel=kernel, bias=bias)

