"""Training: dataset readers, grouped split, TEST isolation and a tiny end-to-end run."""
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import make_smear
from training.data import DatasetError, read_dataset
from edge_app.core.vision import CropSettings
from training.groups import grouped_stratified_split
from evaluation.photographs import recover_photographs

CLASS_COLOURS = {"BLUISH": (200, 70, 90), "PURPLE": (160, 60, 150)}


def write_dataset(root: Path, train_per_class: int = 10, test_per_class: int = 3) -> Path:
    for split, n in (("TRAIN", train_per_class), ("TEST", test_per_class)):
        for c, (name, colour) in enumerate(CLASS_COLOURS.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed = i + 100 * c + (1000 if split == "TEST" else 0)
                frame = make_smear(seed=seed, nucleus_bgr=colour, cells=[(160, 120, 20 + 8 * c)])
                cv2.imwrite(str(folder / f"{i}.jpg"), frame)
    return root


def test_folder_reader_finds_splits_and_labels(tmp_path):
    frame = read_dataset(write_dataset(tmp_path, 4, 2))
    assert sorted(frame["label"].unique()) == sorted(CLASS_COLOURS)
    assert frame.groupby("split").size().to_dict() == {"test": 4, "train": 8}


def test_folder_reader_without_split_folders(tmp_path):
    for name in ("A", "B"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "x.png"), make_smear())
    frame = read_dataset(tmp_path)
    assert set(frame["split"]) == {"train"} and len(frame) == 2


def test_csv_reader_with_groups_and_relative_paths(tmp_path):
    write_dataset(tmp_path, 2, 1)
    csv = tmp_path / "cells.csv"
    pd.DataFrame({"filepath": ["TRAIN/BLUISH/0.jpg", "TRAIN/PURPLE/0.jpg", "TEST/BLUISH/0.jpg"],
                  "label": ["BLUISH", "PURPLE", "BLUISH"], "split": ["train", "train", "test"],
                  "group": ["p1", "p2", "p3"]}).to_csv(csv, index=False)
    frame = read_dataset(csv)
    assert list(frame["group"]) == ["p1", "p2", "p3"]
    assert all(Path(p).is_file() for p in frame["filepath"])


def test_csv_reader_names_missing_files(tmp_path):
    csv = tmp_path / "cells.csv"
    pd.DataFrame({"filepath": ["nope.jpg", "gone.jpg"], "label": ["A", "B"]}).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match="nope.jpg"):
        read_dataset(csv)


def test_csv_reader_requires_columns(tmp_path):
    csv = tmp_path / "cells.csv"
    csv.write_text("path,class\nx.jpg,A\n")
    with pytest.raises(DatasetError, match="filepath"):
        read_dataset(csv)


def augmented_copy(photo: np.ndarray, angle: float, mirror: bool, shift: tuple[int, int]) -> np.ndarray:
    """What the blood-cells TRAIN split holds: a photograph rotated (black corners), maybe mirrored, shifted."""
    height, width = photo.shape[:2]
    motion = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    motion[:, 2] += shift
    copy = cv2.warpAffine(photo, motion, (width, height), borderValue=(0, 0, 0))
    return copy[:, ::-1].copy() if mirror else copy


def test_recovered_photographs_join_rotated_mirrored_copies_and_nothing_else(tmp_path):
    rng = np.random.default_rng(0)
    paths, labels, truth = [], [], []
    for photo_id in range(4):
        photo = make_smear(seed=50 + photo_id, red_cells=30)
        for k in range(5):
            copy = augmented_copy(photo, float(rng.uniform(0, 360)), bool(k % 2), tuple(rng.integers(-15, 16, 2)))
            path = tmp_path / f"{photo_id}_{k}.png"
            cv2.imwrite(str(path), copy)
            paths.append(str(path))
            labels.append(photo_id % 2)  # two photographs per label
            truth.append(photo_id)
    groups = recover_photographs(paths, np.array(labels), CropSettings(), progress=False)
    truth = np.array(truth)
    for photo_id in range(4):
        assert len(set(groups[truth == photo_id])) == 1, groups  # every copy of a photograph found
    for g in np.unique(groups):
        assert len(set(truth[groups == g])) == 1, groups  # and no two photographs joined


def test_ring_spectrum_does_not_depend_on_what_lies_outside_the_frame():
    """Rings that reach past the frame's edge must see the frame's own fill colour, not undefined memory."""
    from evaluation.photographs import HARMONICS, RING_RADIUS, RINGS, ring_spectrum
    frame = make_smear(width=160, height=120, seed=3, red_cells=4, cells=[(22, 60, 20)])
    fill = [float(v) for v in np.median(frame.reshape(-1, 3), axis=0)]
    pad = RING_RADIUS + 2
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=fill)
    spectrum = ring_spectrum(frame, CropSettings()).reshape(HARMONICS, RINGS, 3)
    assert np.isfinite(spectrum).all()
    # each ring's mean colour (harmonic 0); finer terms move with the noise-stained pixels the box takes in
    np.testing.assert_allclose(spectrum[0], ring_spectrum(padded, CropSettings()).reshape(HARMONICS, RINGS, 3)[0],
                               atol=0.05)


def test_ring_spectrum_is_the_same_for_any_crop_so_runs_share_a_split():
    from evaluation.photographs import ring_spectrum
    frame = make_smear(seed=4, cells=[(150, 110, 24)])
    tight = ring_spectrum(frame, CropSettings(crop_scale=1.0, min_crop_frac=0.2))
    np.testing.assert_array_equal(tight, ring_spectrum(frame, CropSettings(crop_scale=2.4, min_crop_frac=0.5)))


def test_grouped_split_keeps_each_group_on_one_side_and_stratifies():
    labels = np.repeat([0, 1], 50)
    groups = np.repeat(np.arange(20), 5)
    is_val = grouped_stratified_split(labels, groups, 0.2, seed=1)
    for g in np.unique(groups):
        assert len(set(is_val[groups == g])) == 1
    for label in (0, 1):
        assert 0.1 <= is_val[labels == label].mean() <= 0.3


def _train(data: Path, out: Path, **options) -> dict:
    from training.train import TrainConfig, run_training
    options = {"folds": 1, "finetune_epochs": 1, **options}  # a validation split, so that the tiny run also fine-tunes
    config = TrainConfig(input_size=32, weights="none", head_epochs=2, finetune_from="block_13_expand", batch_size=8,
                         seed=3, **options)
    return run_training(data, out, config)


def test_tiny_end_to_end_outputs_exist_and_load(tmp_path):
    import keras
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    report = _train(data, out, crop_scale=1.6, min_crop_frac=0.35)
    for name in ("model.keras", "metadata.json", "history.csv", "head_history.csv", "report.json", "confusion_test.png",
                 "reliability.png", "risk_coverage.png", "splits.csv"):
        assert (out / name).is_file(), name
    from network.model import custom_objects
    model = keras.models.load_model(out / "model.keras", custom_objects=custom_objects())
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 2)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["labels"] == sorted(CLASS_COLOURS) and meta["input_size"] == 32 and meta["output"] == "logits"
    assert (meta["crop"]["crop_scale"], meta["crop"]["min_crop_frac"]) == (1.6, 0.35)  # the device crops alike
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["splits"]) == {"val", "test"} and saved["splits"]["test"]["n"] == 6
    assert {"accuracy", "macro_f1", "per_class", "confusion"} <= set(report["splits"]["test"])
    augmented = list((out / "cache").glob("features_*_augmented_*.npy"))  # the head also saw jittered crops
    assert len(augmented) == 1 and np.load(augmented[0]).shape[:2] == (2, 16)
    # Restartable: a second run in the same folder resumes from its checkpoints.
    again = _train(data, out, crop_scale=1.6, min_crop_frac=0.35)
    assert again["calibration"] == report["calibration"]


def test_test_split_never_reaches_training_or_choices(tmp_path, monkeypatch):
    """Rows of TEST never enter feature caching, head, fine-tuning or calibration."""
    import training.finetune as finetune
    import training.train as train
    data = write_dataset(tmp_path / "data")
    seen = {"dataset_rows": [], "feature_crops": 0}
    real_make_dataset, real_features = finetune.make_dataset, train.__dict__.get("rotated_features")

    def spy_dataset(crops, y, rows, *args, **kwargs):
        seen["dataset_rows"].extend(int(r) for r in rows)
        return real_make_dataset(crops, y, rows, *args, **kwargs)

    import training.features as features
    real_rotated = features.rotated_features

    def spy_features(extractor, crops, *args, **kwargs):
        seen["feature_crops"] += len(crops)
        return real_rotated(extractor, crops, *args, **kwargs)

    monkeypatch.setattr(finetune, "make_dataset", spy_dataset)
    monkeypatch.setattr(features, "rotated_features", spy_features)
    out = tmp_path / "run"
    _train(data, out)
    splits = pd.read_csv(out / "splits.csv")
    test_rows = set(np.flatnonzero(splits["split"] == "test"))
    assert test_rows and not test_rows & set(seen["dataset_rows"])
    assert seen["feature_crops"] == int((splits["split"] != "test").sum())


def test_feature_cache_is_keyed_by_images_and_weights_not_only_by_size(tmp_path):
    from edge_app.core.vision import CropSettings
    from training.crops import crop_cache_file
    from training.features import features_cache_file
    a = read_dataset(write_dataset(tmp_path / "a", 4, 0))
    b = read_dataset(write_dataset(tmp_path / "b", 4, 0))  # same size, other images
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"first")
    crops_a = crop_cache_file(list(a["filepath"]), CropSettings(), tmp_path / "cache")
    crops_b = crop_cache_file(list(b["filepath"]), CropSettings(), tmp_path / "cache")
    first = features_cache_file(crops_a, str(weights), len(a))
    assert first == features_cache_file(crops_a, str(weights), len(a))  # stable: the cache is found again
    assert first != features_cache_file(crops_b, str(weights), len(b))
    weights.write_bytes(b"other weights")
    assert first != features_cache_file(crops_a, str(weights), len(a))


def config_from_train_cli(monkeypatch, *args: str):
    """The TrainConfig `hemato train DATA *args` builds (training itself is stopped before it starts)."""
    import training.train as train
    from hemato.cli import main as hemato
    seen = {}

    def fake_run_training(source, out, config, cache):
        seen["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr(train, "run_training", fake_run_training)
    assert hemato(["train", "data", *args]) == 2
    return seen["config"]


def test_train_cli_passes_the_crop_settings(monkeypatch):
    import training.train as train
    config = config_from_train_cli(monkeypatch, "--crop-scale", "1.4", "--min-crop-frac", "0.3")
    assert (config.crop_scale, config.min_crop_frac) == (1.4, 0.3)
    settings = train.crop_settings(config)
    assert (settings.crop_scale, settings.min_crop_frac, settings.input_size) == (1.4, 0.3, 224)


def test_cached_features_are_the_keras_backbones_features():
    """The feature cache is computed through TFLite for speed; it must hold what the Keras extractor gives."""
    from training.features import feature_extractor, rotated_features
    from network.model import build_model
    extractor = feature_extractor(build_model(2, input_size=32, weights="none"))
    crops = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    feats = rotated_features(extractor, crops)
    assert feats.shape == (4, 5, extractor.output_shape[-1])
    for k in range(4):
        expected = np.asarray(extractor(np.rot90(crops, k, axes=(1, 2)).astype(np.float32), training=False))
        np.testing.assert_allclose(feats[k], expected, rtol=1e-4, atol=1e-4)


def _probs(confidence: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Two-class probabilities with the given top confidence on the predicted class."""
    probs = np.empty((len(confidence), 2))
    probs[np.arange(len(confidence)), predicted] = confidence
    probs[np.arange(len(confidence)), 1 - predicted] = 1 - confidence
    return probs


def test_threshold_reaches_the_target_on_validation_and_answers_everything_when_all_is_right():
    from evaluation.calibration import choose_threshold, coverage_at
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 400)
    y = np.zeros(400, int)
    wrong = rng.uniform(size=400) > confidence  # errors where confidence is low
    probs = _probs(confidence, wrong.astype(int))
    threshold = choose_threshold(probs, y, 0.98)
    coverage, accuracy = coverage_at(probs, y, threshold)
    assert accuracy >= 0.98 and 0 < coverage < 1
    assert choose_threshold(_probs(confidence, np.zeros(400, int)), y, 0.98) == confidence.min()


def test_threshold_is_stricter_when_errors_come_in_whole_photographs():
    """Ten copies of each photograph: resampling photographs sees the errors' clustering, images alone do not."""
    from evaluation.calibration import choose_threshold
    photo_confidence = np.linspace(0.5, 1.0, 100)
    photo_wrong = np.arange(100) == 20  # one photograph of 100 wrong, at confidence 0.6: 99 % right overall
    confidence = np.repeat(photo_confidence, 10) + np.tile(np.linspace(-0.002, 0.002, 10), 100)
    probs = _probs(np.clip(confidence, 0.5, 1.0), np.repeat(photo_wrong, 10).astype(int))
    y = np.zeros(1000, int)
    by_image = choose_threshold(probs, y, 0.98)
    by_photograph = choose_threshold(probs, y, 0.98, groups=np.repeat(np.arange(100), 10))
    assert by_image == probs.max(axis=1).min()  # 10 errors in 1,000 independent images: answer everything
    assert by_photograph > 0.6  # one bad photograph in 100 could as well be two: stop above it


def test_head_reads_the_pooled_feature_layers_and_the_backbone_stops_at_the_deepest():
    from network.model import FEATURE_LAYERS, backbone_of, build_model
    model = build_model(4, input_size=32, weights="none", colour_statistics=False)
    assert model.get_layer("pool").output.shape[-1] == 192 + 576 and FEATURE_LAYERS[-1] == "block_13_expand_relu"
    names = {layer.name for layer in backbone_of(model).layers}
    assert "block_13_expand_relu" in names and "out_relu" not in names and "block_14_expand" not in names
    classic = build_model(4, input_size=32, weights="none", feature_layers=("out_relu",), colour_statistics=False)
    assert classic.get_layer("pool").output.shape[-1] == 1280
    with pytest.raises(ValueError, match="not in the backbone"):
        build_model(4, input_size=32, weights="none", feature_layers=("block_99_relu",))


def test_colour_statistics_are_the_crop_s_channel_moments_and_rgb_histogram():
    """The in-graph statistics equal a plain numpy count on every 8th pixel of every 8th row."""
    import keras
    from network.model import COLOUR_FEATURES, build_model
    model = build_model(4, input_size=32, weights="none")
    assert model.get_layer("pool").output.shape[-1] == 192 + 576 + COLOUR_FEATURES
    statistics = keras.Model(model.inputs, model.get_layer("colour_statistics").output)
    crops = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    crops[0] = 200.0  # one colour only: a single full bin, no spread
    got = np.asarray(statistics(crops))
    for crop, row in zip(crops, got):
        pixels = crop[::8, ::8].reshape(-1, 3)
        level = np.minimum(pixels // 64, 3).astype(int)  # 4 levels per channel
        histogram = np.bincount(level[:, 0] * 16 + level[:, 1] * 4 + level[:, 2], minlength=64) / len(pixels)
        expected = np.concatenate([pixels.mean(axis=0) / 255, pixels.std(axis=0) / 255, np.sqrt(histogram)])
        np.testing.assert_allclose(row, expected, atol=1e-5)
    assert got[0][6:].max() == pytest.approx(1.0) and np.count_nonzero(got[0][6:]) == 1


def test_standardisation_folds_into_the_dense_layer_exactly():
    from training.head import fold_standardisation
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (50, 6))
    mean, std = x.mean(axis=0), x.std(axis=0)
    kernel, bias = rng.normal(size=(6, 4)), rng.normal(size=4)
    folded_kernel, folded_bias = fold_standardisation(kernel, bias, mean, std)
    np.testing.assert_allclose(x @ folded_kernel + folded_bias, ((x - mean) / std) @ kernel + bias, rtol=1e-4, atol=1e-4)


def test_train_defaults_are_the_shipped_recipe(monkeypatch):
    from network.model import FEATURE_LAYERS
    config = config_from_train_cli(monkeypatch)
    assert (config.folds, config.finetune_epochs, config.views, config.augmented_copies) == (5, 0, 4, 2)
    assert config.colour_statistics and config.weights == "imagenet"
    assert config.feature_layers == FEATURE_LAYERS == ("block_6_expand_relu", "block_13_expand_relu")


def test_feature_cache_is_keyed_by_the_pooled_layers(tmp_path):
    from training.features import features_cache_file
    crops = tmp_path / "crops_224_abc.npz"
    default = features_cache_file(crops, "none", 10)
    assert features_cache_file(crops, "none", 10, ("out_relu",)) == default
    assert features_cache_file(crops, "none", 10, ("block_6_expand_relu", "block_13_expand_relu")) != default


def test_a_restarted_fine_tune_must_still_beat_the_head_only_model(tmp_path):
    """An interrupted run resumed with only worse epochs on record keeps the head-only baseline to beat."""
    from training.finetune import best_val_loss
    history, baseline = tmp_path / "history.csv", tmp_path / "head_only_val_loss.txt"
    history.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.4,5.7,0.72,0.79\n")
    assert best_val_loss(history, baseline) == 0.79
    baseline.write_text("0.417")
    assert best_val_loss(history, baseline) == 0.417
    assert best_val_loss(tmp_path / "none.csv", tmp_path / "none.txt") is None


def test_fine_tuning_trains_the_head_the_device_runs():
    """In training mode the model must compute what inference computes (BatchNorm frozen, no raw-feature
    dropout): under dropout the folded head would answer unlike itself."""
    from training.finetune import without_head_dropout
    from network.model import build_model, unfreeze_top
    model = build_model(4, input_size=32, weights="none")
    rng = np.random.default_rng(0)
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([rng.normal(0, 5, kernel.shape).astype(np.float32), bias])
    crops = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    unfreeze_top(model, "block_13_expand")
    inference = np.asarray(model(crops, training=False))
    assert not np.allclose(np.asarray(model(crops, training=True)), inference, atol=1e-3)  # dropout on raw features
    without_head_dropout(model)
    np.testing.assert_allclose(np.asarray(model(crops, training=True)), inference, rtol=1e-4, atol=1e-4)


def test_two_laboratories_with_different_class_sets_train_one_model(tmp_path):
    """Each image keeps its source: labels are the union, validation is reported and guarded per source."""
    lab_a = write_dataset(tmp_path / "lab-a", 8, 2)
    lab_b = tmp_path / "lab-b"
    for c, (name, colour) in enumerate({**CLASS_COLOURS, "PINKISH": (150, 90, 200)}.items()):
        (lab_b / name).mkdir(parents=True)
        for i in range(8):
            frame = make_smear(seed=5000 + 50 * c + i, nucleus_bgr=colour, cells=[(160, 120, 24)])
            frame = np.clip(frame.astype(int) + (0, 10, 25), 0, 255).astype(np.uint8)  # another stain
            cv2.imwrite(str(lab_b / name / f"{i}.jpg"), frame)
    frame = read_dataset([lab_a, lab_b])
    assert set(frame["source"]) == {"lab-a", "lab-b"} and frame["label"].nunique() == 3
    out = tmp_path / "run"
    report = _train([lab_a, lab_b], out, finetune_epochs=0, augmented_copies=0)
    splits = pd.read_csv(out / "splits.csv")
    val = splits[splits["split"] == "val"]
    assert set(val["source"]) == {"lab-a", "lab-b"}  # stratified per source
    assert set(report["splits"]["val"]["by_source"]) == {"lab-a", "lab-b"}
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["labels"] == ["BLUISH", "PINKISH", "PURPLE"]
    assert [r["source"] for r in meta["ood"]["regions"]] == ["lab-a", "lab-b"]
    assert meta["training"]["images_per_source"] == {"lab-a": 16, "lab-b": 24}


def test_canonical_scale_keeps_the_sharper_laboratory_and_reaches_the_model(tmp_path):
    """The canonical red-cell diameter is the largest source's, so no laboratory's frames are shrunk."""
    from training.train import red_cell_scale
    small, large = tmp_path / "small", tmp_path / "large"
    rows = []
    for root, size in ((small, (320, 240)), (large, (480, 360))):
        (root / "A").mkdir(parents=True)
        for i in range(6):
            path = root / "A" / f"{i}.png"
            cv2.imwrite(str(path), make_smear(*size, seed=i, red_cells=25))
            rows.append((str(path), "A", "train", root.name))
    frame = pd.DataFrame(rows, columns=["filepath", "label", "split", "source"])
    diameter, short_side = red_cell_scale(frame, tmp_path / "cache")
    drawn_large = 2 * int(360 * 0.08)  # make_smear's red cells: radius 8 % of the short side
    assert diameter == pytest.approx(drawn_large, rel=0.1)
    assert short_side == pytest.approx(360, rel=0.1)  # both sources' frames, at that scale


def test_a_laboratory_seen_only_in_test_is_left_out_of_training(tmp_path):
    """Leave-one-lab-out: the held-out laboratory's rows are all TEST, and the run still trains."""
    lab_a = write_dataset(tmp_path / "lab-a", 8, 0)
    lab_b = write_dataset(tmp_path / "lab-b", 0, 3)
    report = _train([lab_a, lab_b], tmp_path / "run", finetune_epochs=0, augmented_copies=0)
    assert set(report["splits"]["test"]["by_source"]) == {"lab-b"}
