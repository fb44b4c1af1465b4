"""One frame in, one result per located cell out: localise, crop, invoke, with stage timings."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge_app.core.model import Classifier
from edge_app.core.vision import Box, crop_for_model, crop_statistics, frame_red_cells, located_cells, rescale_frame

# classify_frame's timed stages, in order (ms in FrameResult.timings_ms)
FRAME_STAGES = ("rbc_estimate", "rescale", "localise", "preprocess", "invoke")
UNCERTAIN = "UNCERTAIN"
LOW_CONFIDENCE = "low confidence"
UNUSUAL_CROP = "unusual crop: colours unlike the training cells"
# A threshold this high answers no cell, even one whose probability rounds to exactly 1 (a model calibrated
# on cells that could not show its target accuracy is stored with it)
NO_ANSWER = 1.0


@dataclass
class CellResult:
    """One located cell and the model's answer for it."""

    box: Box
    probabilities: np.ndarray  # calibrated, in the order of Classifier.labels
    predicted: str             # the most probable class
    confidence: float          # its calibrated probability
    label: str                 # `predicted`, or UNCERTAIN when not confident or the crop is unusual
    invoke_ms: float
    flag: str = ""             # why the answer is UNCERTAIN (LOW_CONFIDENCE or UNUSUAL_CROP)

    @property
    def runner_up(self) -> int:
        """Index of the second most probable class (shown beside UNCERTAIN answers)."""
        return int(np.argsort(self.probabilities)[-2])

    @property
    def uncertain(self) -> bool:
        return self.label == UNCERTAIN


@dataclass
class FrameResult:
    """All cells of one frame, with the time spent in each pipeline stage (milliseconds)."""

    cells: list[CellResult]
    timings_ms: dict[str, float] = field(default_factory=dict)
    rbc_px: float | None = None  # the red-cell diameter (frame pixels) the frame was scaled by; None: not scaled
    crops: list[np.ndarray] = field(default_factory=list, repr=False)  # the model's RGB input per cell


def classify_crop(classifier: Classifier, rgb: np.ndarray) -> tuple[np.ndarray, str, float]:
    """Probabilities, top label and its confidence for one model-ready RGB crop."""
    probs = classifier.predict(rgb)
    top = int(np.argmax(probs))
    return probs, classifier.labels[top], float(probs[top])


def is_unusual_crop(classifier: Classifier, rgb: np.ndarray) -> bool:
    """Whether the model's colour guard (if it has one) finds this crop unlike the training crops."""
    guard = classifier.colour_guard
    return guard is not None and guard.is_unusual(crop_statistics(rgb, classifier.crop_settings))


def is_answered(confidence: float | np.ndarray, min_confidence: float) -> bool | np.ndarray:
    """Whether a calibrated confidence (or each of an array) reaches the answer threshold."""
    return np.logical_and(confidence >= min_confidence, min_confidence < NO_ANSWER)


def decide(label: str, confidence: float, min_confidence: float, unusual: bool = False) -> tuple[str, str]:
    """The answer to report and why: the class, or UNCERTAIN for an unusual crop or low confidence."""
    if unusual:
        return UNCERTAIN, UNUSUAL_CROP
    if not is_answered(confidence, min_confidence):
        return UNCERTAIN, LOW_CONFIDENCE
    return label, ""


def classify_frame(classifier: Classifier, bgr: np.ndarray, min_confidence: float | None = None,
                   rbc_diameter: float | None = None) -> FrameResult:
    """Locate every stained cell in a BGR frame and classify each one (boxes in the frame's pixels).

    rbc_diameter: the frame's red-cell diameter in pixels when the camera's scale is known; else it is
    estimated (when the model carries a scale).
    """
    settings = classifier.crop_settings
    threshold = classifier.min_confidence if min_confidence is None else min_confidence
    t0 = time.perf_counter()
    rbc_px, analysis = frame_red_cells(bgr, settings, rbc_diameter)
    t_estimate = time.perf_counter()
    frame = rescale_frame(bgr, settings, rbc_px, analysis)
    t1 = time.perf_counter()
    boxes = located_cells(frame, settings)
    t2 = time.perf_counter()
    crops = [crop_for_model(frame.image, box, classifier.input_size) for box in boxes]
    t3 = time.perf_counter()
    cells = []
    for box, crop in zip(boxes, crops):
        start = time.perf_counter()
        probs, label, confidence = classify_crop(classifier, crop)
        answer, flag = decide(label, confidence, threshold, is_unusual_crop(classifier, crop))
        cells.append(CellResult(frame.to_frame(box), probs, label, confidence, answer,
                                (time.perf_counter() - start) * 1000, flag))
    t4 = time.perf_counter()
    ticks = (t0, t_estimate, t1, t2, t3, t4)
    timings = {stage: (end - start) * 1000 for stage, start, end in zip(FRAME_STAGES, ticks, ticks[1:])}
    return FrameResult(cells, timings, frame.rbc_px, crops)
