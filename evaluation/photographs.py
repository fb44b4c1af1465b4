"""Recover which training images are augmented copies of one photograph.

The blood-cells TRAIN split holds copies of a few hundred photographs, rotated by any angle,
mirrored and shifted, and the file names do not say which. A validation split that puts copies
of one cell on both sides measures memory, not generalisation. Copies are found in two steps:
a cheap descriptor that rotation and mirroring leave unchanged proposes look-alikes, and a rigid
fit of SIFT keypoints confirms them; confirmed pairs are joined into groups.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import Callable

import cv2
import numpy as np

from edge_app.core.frames import read_image
from edge_app.core.vision import CropSettings, locate_cells, stain_mask

RING_RADIUS = 64  # pixels around the cell's stain centroid that the ring descriptor covers
RINGS = 16
ANGLES = 64
HARMONICS = 8  # |FFT| terms kept per ring and channel
CANDIDATES = 25  # look-alikes checked per image
MORE_CANDIDATES = 150  # look-alikes checked for an image no pair confirmed
MIN_INLIERS = 12  # keypoint matches one rigid motion must explain (different photographs: at most ~5)
KEYPOINTS = 400

Keypoints = list[tuple[np.ndarray, np.ndarray | None]]


def localisation_only(settings: CropSettings) -> CropSettings:
    """The settings with the crop's size fixed: groups depend on where the cell is, not on how it is cropped,
    so runs with different crops share one validation split."""
    return replace(settings, input_size=CropSettings.input_size, crop_scale=1.0, min_crop_frac=0.0)


def ring_spectrum(bgr: np.ndarray, settings: CropSettings) -> np.ndarray | None:
    """Colour on rings around the located cell, as |FFT| over the angle: rotation and mirroring leave it alone.

    The centre is the stain centroid of the largest located cell, a point that moves with the cell.
    Black corners left by rotating a copy are filled with the image's median colour first.
    """
    settings = localisation_only(settings)
    boxes = locate_cells(bgr, settings)  # the box is now the stained nucleus's own extent
    if not boxes:
        return None
    box = boxes[0]
    mask = np.zeros(bgr.shape[:2], np.uint8)
    x0, y0 = max(box.x0, 0), max(box.y0, 0)
    mask[y0:box.y1, x0:box.x1] = stain_mask(bgr[y0:box.y1, x0:box.x1], settings)
    moments = cv2.moments(mask, binaryImage=True)
    if moments["m00"] == 0:
        return None
    centre = (moments["m10"] / moments["m00"], moments["m01"] / moments["m00"])
    image = bgr.astype(np.float32)
    black = image.sum(axis=2) < 30
    fill = np.median(image[~black], axis=0) if not black.all() else np.zeros(3, np.float32)
    image[black] = fill
    # warpPolar leaves samples outside the image undefined (not black): pad so that every ring is inside
    pad = RING_RADIUS + 2
    image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=[float(v) for v in fill])
    polar = cv2.warpPolar(image, (RINGS, ANGLES), (centre[0] + pad, centre[1] + pad), RING_RADIUS,
                          cv2.WARP_POLAR_LINEAR + cv2.INTER_LINEAR)
    spectrum = np.abs(np.fft.rfft(polar.astype(np.float64), axis=0))[:HARMONICS] / ANGLES
    return np.log1p(spectrum).ravel().astype(np.float32)


def keypoints(bgr: np.ndarray, sift=None) -> Keypoints:
    """SIFT keypoints (positions, descriptors) of the image and of its mirror image (SIFT is not mirror-proof).

    Keypoints on the edges of black corners left by rotation would match every rotated copy: masked out.
    """
    sift = sift or cv2.SIFT_create(nfeatures=KEYPOINTS)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    mask = cv2.erode((grey > 15).astype(np.uint8) * 255, np.ones((7, 7), np.uint8))
    found = []
    for image, image_mask in ((grey, mask), (np.ascontiguousarray(grey[:, ::-1]), np.ascontiguousarray(mask[:, ::-1]))):
        points, descriptors = sift.detectAndCompute(image, image_mask)
        found.append((np.float32([p.pt for p in points]).reshape(-1, 2), descriptors))
    return found


def _rigid_inliers(a: tuple[np.ndarray, np.ndarray | None], b: tuple[np.ndarray, np.ndarray | None],
                   matcher) -> int:
    (points_a, desc_a), (points_b, desc_b) = a, b
    if desc_a is None or desc_b is None or len(desc_a) < 5 or len(desc_b) < 5:
        return 0
    pairs = [p[0] for p in matcher.knnMatch(desc_a, desc_b, k=2) if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
    if len(pairs) < 5:
        return 0
    src = points_a[[p.queryIdx for p in pairs]]
    dst = points_b[[p.trainIdx for p in pairs]]
    motion, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if motion is None or not 0.9 < np.hypot(motion[0, 0], motion[1, 0]) < 1.1:
        return 0
    return int(inliers.sum())


def rigid_inliers(a: Keypoints, b: Keypoints, matcher=None) -> int:
    """Keypoint matches that one rotation plus shift explains between image a and image b or its mirror."""
    matcher = matcher or cv2.BFMatcher(cv2.NORM_L2)
    return max(_rigid_inliers(a[0], b[0], matcher), _rigid_inliers(a[0], b[1], matcher))


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def _nearest(spectra: np.ndarray, usable: np.ndarray, count: int) -> np.ndarray:
    """For each row, the `count` rows with the closest standardised spectra (itself and unusable rows excluded)."""
    x = np.where(usable[:, None], spectra, 0.0)
    x = (x - x[usable].mean(axis=0)) / (x[usable].std(axis=0) + 1e-6)
    squared = (x * x).sum(axis=1)
    distance = squared[:, None] + squared[None, :] - 2.0 * x @ x.T
    distance[:, ~usable] = np.inf
    np.fill_diagonal(distance, np.inf)
    count = min(count, max(int(usable.sum()) - 1, 0))
    return np.argsort(distance, axis=1)[:, :count]


def _group_one_label(images: list[np.ndarray], settings: CropSettings, report: Callable[[int], None]) -> np.ndarray:
    sift = cv2.SIFT_create(nfeatures=KEYPOINTS)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    spectra = [ring_spectrum(image, settings) for image in images]
    usable = np.array([s is not None for s in spectra])
    report(int((~usable).sum()))
    width = next((len(s) for s in spectra if s is not None), 1)
    spectra = np.stack([s if s is not None else np.zeros(width, np.float32) for s in spectra])
    points = [keypoints(image, sift) for image in images]
    groups = _UnionFind(len(images))
    if usable.sum() < 2:
        return np.array([groups.find(i) for i in range(len(images))])
    nearest = _nearest(spectra, usable, MORE_CANDIDATES)
    confirmed = np.zeros(len(images), bool)
    for i in np.flatnonzero(usable):
        for j in nearest[i, :CANDIDATES]:
            if rigid_inliers(points[i], points[j], matcher) >= MIN_INLIERS:
                groups.join(i, j)
                confirmed[i] = confirmed[j] = True
        report(1)
    for i in np.flatnonzero(usable & ~confirmed):  # a second, wider look for images nothing confirmed
        for j in nearest[i, CANDIDATES:]:
            if rigid_inliers(points[i], points[j], matcher) >= MIN_INLIERS:
                groups.join(i, j)
                break
    return np.array([groups.find(i) for i in range(len(images))])


def recover_photographs(paths: list[str], labels: np.ndarray, settings: CropSettings,
                        progress: bool = True) -> np.ndarray:
    """A group id per image: images joined by confirmed copy pairs, within a label. Unreadable images stand alone."""
    labels = np.asarray(labels)
    cv2.setRNGSeed(0)  # RANSAC draws from OpenCV's generator: same groups on every run
    groups = np.full(len(paths), -1)
    done, total = 0, len(paths)

    def report(step: int) -> None:
        nonlocal done
        done += step
        if progress and step and (done % 500 == 0 or done == total):
            print(f"\rmatching copies of photographs: {done}/{total}", end="" if done < total else "\n",
                  file=sys.stderr, flush=True)

    next_id = 0
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        images = [read_image(paths[r])[0] for r in rows]
        readable = [i for i, image in enumerate(images) if image is not None]
        local = np.arange(len(rows)) + len(rows)  # unreadable: a group each
        if readable:
            local[readable] = _group_one_label([images[i] for i in readable], settings, report)
        groups[rows] = next_id + np.unique(local, return_inverse=True)[1]
        next_id = groups[rows].max() + 1
        report(len(rows) - len(readable))
    return groups
