"""Train the white blood cell classifier: cached crops, photograph groups, a head on frozen features
(by default the mean of five fold heads, as shipped), optionally fine-tuning with a validation split.

TEST (split == "test") is read only by the final evaluation: no early stopping, checkpoint,
temperature or threshold is ever chosen on it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from edge_app.core.frames import read_image
from edge_app.core.ood import ColourGuard
from edge_app.core.scale import training_rbc_diameter
from edge_app.core.vision import CropSettings, crop_statistics
from training.crops import cache_key, cached_crops, crop_cache_file
from training.data import class_counts, read_dataset
from training.groups import grouped_stratified_split
from network.model import COLOUR_LEVELS, COLOUR_STRIDE, FEATURE_LAYERS
from evaluation.photographs import localisation_only, recover_photographs


@dataclass
class TrainConfig:
    """Every choice of a training run; saved with the model so a run can be reproduced. The defaults are
    the shipped recipe: five fold heads on frozen features, averaged, no fine-tuning."""

    input_size: int = 224
    weights: str = "imagenet"
    batch_size: int = 32
    head_epochs: int = 30
    head_lr: float = 1e-3
    finetune_epochs: int = 0  # >0 needs folds=1 (a validation split)
    finetune_lr: float = 1e-5  # higher overfits (chosen on validation, see docs/experiments/)
    finetune_from: str = "block_13_expand"
    dropout: float = 0.3
    val_fraction: float = 0.2
    patience: int = 2
    seed: int = 0
    views: int = 4  # rotations averaged inside the deployed model (network.model.with_rotation_views)
    feature_layers: tuple[str, ...] = FEATURE_LAYERS  # backbone layers pooled for the head (network.model)
    augmented_copies: int = 2  # augmented copies of each training crop whose features the head also learns from
    colour_statistics: bool = True  # the head also reads the crop's colour statistics (network.model)
    folds: int = 5  # >1: no validation split; the head is the mean of this many fold heads (training.ensemble)
    crop_scale: float = CropSettings.crop_scale  # the crop's side over the nucleus's extent (stored in the model)
    min_crop_frac: float = CropSettings.min_crop_frac  # the crop's least side over the frame's short side


COLOUR_CACHE_TAG = f"colour_statistics_{COLOUR_STRIDE}_{COLOUR_LEVELS}"  # cached features change with them


def crop_settings(config: TrainConfig) -> CropSettings:
    """The localiser and crop settings this run trains with; the model carries them to the device."""
    return CropSettings(input_size=config.input_size, crop_scale=config.crop_scale,
                        min_crop_frac=config.min_crop_frac)


def red_cell_scale(frame: pd.DataFrame, cache_dir: Path) -> tuple[float | None, int | None]:
    """(red-cell diameter, reference short side) of the model's canonical frame, from its training images.

    Each source's median red-cell diameter is measured (edge_app.core.scale); the canonical diameter is the
    largest of them, so that no laboratory's frames are shrunk and lose detail, and the reference short side
    is the median training frame's short side at that scale. (None, None) when no red cell is measured.
    """
    rows = frame[frame["split"] != "test"]
    per_source = {}
    for source, part in rows.groupby("source"):
        paths = sorted(part["filepath"])
        cache = Path(cache_dir) / f"red_cells_{cache_key(paths, CropSettings())}.json"
        if not cache.exists():
            try:
                diameter = training_rbc_diameter(paths)
            except ValueError:
                diameter = None
            sample = (read_image(p)[0] for p in paths[::max(1, len(paths) // 50)])
            short = float(np.median([min(image.shape[:2]) for image in sample if image is not None]))
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"diameter": diameter, "short_side": short}))
        per_source[source] = (json.loads(cache.read_text()), len(part))
    measured = {s: (m, n) for s, (m, n) in per_source.items() if m["diameter"]}
    if not measured:
        return None, None
    diameter = max(m["diameter"] for m, _ in measured.values())
    sides = np.concatenate([np.full(n, m["short_side"] * diameter / m["diameter"]) for m, n in measured.values()])
    for source, (m, _) in per_source.items():
        _log(f"{source}: red cells {m['diameter'] and round(m['diameter'], 1)} px across")
    return round(diameter, 2), int(round(float(np.median(sides))))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float] | None:
    """Inverse-frequency class weights, or None when classes are balanced within 10 %."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    if counts.min() == 0 or counts.max() / counts.min() <= 1.1:
        return None
    return {i: float(counts.sum() / (num_classes * c)) for i, c in enumerate(counts)}


def prepare_rows(frame: pd.DataFrame, settings: CropSettings, cache_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Crop every image once (cached) and drop, with a listing, those that cannot be used."""
    crops, reasons = cached_crops(list(frame["filepath"]), settings, cache_dir)
    frame = frame.assign(reason=reasons)
    skipped = frame[frame["reason"] != ""]
    if len(skipped):
        _log(f"skipping {len(skipped)} image(s) without a usable cell, e.g. "
             + ", ".join(f"{Path(p).name} ({r})" for p, r in skipped[["filepath", "reason"]].values[:5]))
    return frame, crops


def cached_array(path: Path, shape: tuple[int, ...], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array saved at path when its shape starts with `shape`, else compute() saved there."""
    if path.exists():
        saved = np.load(path)
        if saved.shape[:len(shape)] == shape:
            return saved
    array = compute()
    np.save(path, array)
    return array


def photograph_groups(paths: list[str], labels: np.ndarray, settings: CropSettings, cache_dir: Path) -> np.ndarray:
    """Which images are copies of one photograph (evaluation.photographs), cached: matching takes minutes."""
    cache = Path(cache_dir) / f"photographs_{cache_key(paths, localisation_only(settings))}.npy"
    return cached_array(cache, (len(paths),), lambda: recover_photographs(paths, labels, settings))


def assign_groups(frame: pd.DataFrame, labels: np.ndarray, config: TrainConfig,
                  cache_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(frame, group number per usable training row), source by source: a source's given 'group' column,
    else its recovered photographs (copies of one photograph never straddle a split or a fold)."""
    frame = frame.copy()
    train_idx = np.flatnonzero((frame["split"] == "train") & (frame["reason"] == ""))
    names = np.empty(len(frame), dtype=object)
    for source in frame["source"].unique():
        idx = train_idx[(frame["source"].to_numpy()[train_idx] == source)]
        if len(idx) == 0:
            continue  # a source used only for validation or TEST
        given = frame["group"].iloc[idx]
        if given.notna().any():
            names[idx] = given.fillna(frame["filepath"].iloc[idx]).to_numpy()
            _log(f"{source}: grouped by the given 'group' column ({given.nunique()} groups)")
            continue
        found = photograph_groups(list(frame["filepath"].iloc[idx]), labels[idx], crop_settings(config), cache_dir)
        names[idx] = [f"photo{g}" for g in found]
        sizes = np.bincount(found)
        _log(f"{source}: found {len(sizes)} photographs among {len(idx)} training images (copies per photograph: "
             f"median {int(np.median(sizes))}, most {sizes.max()}; {int((sizes == 1).sum())} images matched none)")
    frame.loc[frame.index[train_idx], "group"] = names[train_idx]
    # a group name means something only within its own source
    keys = [f"{source}\0{name}" for source, name in zip(frame["source"].to_numpy()[train_idx], names[train_idx])]
    return frame, pd.factorize(np.array(keys))[0]


def assign_validation(frame: pd.DataFrame, labels: np.ndarray, config: TrainConfig, cache_dir: Path) -> pd.DataFrame:
    """Mark validation rows: the given 'val' split, else a grouped split of 'train' stratified by source and class."""
    if (frame["split"] == "val").any():
        return frame.copy()
    frame, groups = assign_groups(frame, labels, config, cache_dir)
    train_idx = np.flatnonzero((frame["split"] == "train") & (frame["reason"] == ""))
    sources = frame["source"].to_numpy()[train_idx]
    strata = np.array([f"{s}/{label}" for s, label in zip(sources, labels[train_idx])])
    is_val = grouped_stratified_split(strata, groups, config.val_fraction, config.seed)
    frame.loc[frame.index[train_idx[is_val]], "split"] = "val"
    return frame


def fit_colour_guard(crops: np.ndarray, frame: pd.DataFrame, settings: CropSettings) -> tuple[ColourGuard, dict]:
    """Fit the out-of-distribution guard, one region per source on its training crops with its limit on its
    validation crops (its training crops when it has none); report the share flagged per source and split."""
    split, source = frame["split"].to_numpy(), frame["source"].to_numpy()
    usable = (frame["reason"] == "").to_numpy()

    def stats(mask: np.ndarray) -> np.ndarray:
        return np.array([crop_statistics(crops[r], settings) for r in np.flatnonzero(usable & mask)])

    by_source, flagged = {}, {}
    for name in frame["source"].unique():
        train, val = stats((split == "train") & (source == name)), stats((split == "val") & (source == name))
        if len(train) > crop_statistics(crops[0], settings).size + 1:  # enough crops for a covariance
            by_source[name] = (train, val if len(val) else train)
    guard = ColourGuard.fit_sources(by_source)
    for name in frame["source"].unique():
        for part in ("train", "val", "test"):
            s = stats((split == part) & (source == name))
            if len(s):
                flagged[f"{name}/{part}"] = round(float(np.mean(guard.distance(s) > 1.0)), 4)
    return guard, {"regions": list(by_source), "share_flagged": flagged}


def provenance(config: TrainConfig, sources: Path | list[Path], frame: pd.DataFrame) -> dict:
    """What the model was trained on and how, for its metadata (`hemato info` shows it)."""
    paths = [sources] if isinstance(sources, (str, Path)) else sources
    fitted = frame[frame["split"] != "test"]
    return {"config": asdict(config), "sources": [str(p) for p in paths], "date": time.strftime("%Y-%m-%d"),
            "images_per_source": {str(k): int(v) for k, v in fitted["source"].value_counts().sort_index().items()}}


def run_training(sources: Path | list[Path], out_dir: Path, config: TrainConfig, cache_dir: Path | None = None) -> dict:
    """Train, evaluate and save a model; returns the report (also written to report.json)."""
    import keras
    import tensorflow as tf

    from training import ensemble, evaluate, finetune, head
    from training.features import (ROTATIONS, augmented_features, feature_extractor, features_cache_file,
                                   rotated_features)
    from network.model import build_model, with_rotation_views

    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / "cache"
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    frame = read_dataset(sources)
    _log("images per class, source and split:\n" + class_counts(frame).to_string())
    labels_sorted = sorted(frame["label"].unique())
    rbc_diameter, reference_short_side = red_cell_scale(frame, cache_dir)
    settings = replace(crop_settings(config), rbc_diameter_px=rbc_diameter, reference_short_side=reference_short_side)
    _log(f"canonical scale: red cells {rbc_diameter} px across, reference short side {reference_short_side} px")
    frame, crops = prepare_rows(frame, settings, cache_dir)
    y = frame["label"].map({name: i for i, name in enumerate(labels_sorted)}).to_numpy()
    usable = (frame["reason"] == "").to_numpy()

    model = build_model(len(labels_sorted), config.input_size, config.weights, config.dropout, config.feature_layers,
                        config.colour_statistics)
    fit_rows = np.flatnonzero(usable & (frame["split"] != "test").to_numpy())
    feats_file = features_cache_file(crop_cache_file(list(frame["filepath"]), settings, cache_dir), config.weights,
                                     len(fit_rows), config.feature_layers + ((COLOUR_CACHE_TAG,)
                                                                             if config.colour_statistics else ()))
    feats = cached_array(feats_file, (ROTATIONS, len(fit_rows), model.get_layer("pool").output.shape[-1]),
                         lambda: rotated_features(feature_extractor(model), crops[fit_rows],
                                                  label="backbone features"))
    if config.folds > 1:  # every training photograph trains the head; a given 'val' split stays held out
        frame, groups = assign_groups(frame, y, config, cache_dir)
    else:
        frame = assign_validation(frame, y, config, cache_dir)
    split = frame["split"].to_numpy()
    train_rows = np.flatnonzero(usable & (split == "train"))
    val_rows = np.flatnonzero(usable & (split == "val"))
    if len(val_rows) == 0 and config.folds <= 1:
        raise ValueError("no validation images: need at least two groups per class in the training data")
    _log(f"train {len(train_rows)} / validation {len(val_rows)} images")
    frame.drop(columns=["reason"]).to_csv(out_dir / "splits.csv", index=False)

    weights = class_weights(y[train_rows], len(labels_sorted))
    position = {row: i for i, row in enumerate(fit_rows)}
    augmented = None
    if config.augmented_copies > 0:
        rows = f"{config.augmented_copies}:{config.seed}:{train_rows.tolist()}"
        key = hashlib.sha256(rows.encode()).hexdigest()[:8]
        aug_file = feats_file.with_name(f"{feats_file.stem}_augmented_{key}.npy")
        augmented = cached_array(aug_file, (config.augmented_copies, len(train_rows)),
                                 lambda: augmented_features(feature_extractor(model), crops[train_rows],
                                                            config.augmented_copies, config.seed))
    out_of_fold = None
    if config.folds > 1:
        _log(f"head: {config.folds} fold heads, averaged; calibration on nested out-of-fold logits "
             "(no fine-tuning: it needs a validation split)")
        logits = ensemble.train_ensemble_head(model, feats, y[fit_rows], np.array([position[r] for r in train_rows]),
                                              groups, config, weights, out_dir, augmented)
        out_of_fold = dict(zip(train_rows.tolist(), logits))
    else:
        head.train_head(model, feats, y[fit_rows], [position[r] for r in train_rows],
                        [position[r] for r in val_rows], config, weights, out_dir, augmented)
        finetune.finetune(model, crops, y, train_rows, val_rows, config, weights, out_dir)
    model.save(out_dir / "model.keras")
    if not (out_dir / "history.csv").exists() and (out_dir / "head_history.csv").exists():
        shutil.copyfile(out_dir / "head_history.csv", out_dir / "history.csv")  # no fine-tuning: the head's epochs

    report = evaluate.evaluate_and_calibrate(with_rotation_views(model, config.views), crops, y, frame,
                                             labels_sorted, out_dir, out_of_fold)
    guard, report["ood"] = fit_colour_guard(crops, frame, settings)
    metadata = {"ood": guard.to_dict(), "labels": labels_sorted, "input_size": config.input_size, "output": "logits", "views": config.views,
                "crop": settings.to_dict(), "temperature": report["calibration"]["temperature"],
                "min_confidence": report["calibration"]["min_confidence"],
                "model_name": "wbc_mobilenetv2", "training": provenance(config, sources, frame)}
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))
    report["wall_time_s"] = round(time.time() - started, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report
