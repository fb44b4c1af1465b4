"""Where in the crop the evidence for an answer lies: a class activation map (CAM).

The head reads globally averaged features, so a class's logit is the dense row dotted with the mean of the
feature maps: the same dot product taken at each position, before averaging, says how much that position
added. This model's dense layer reads two pooled layers (block_6_expand_relu, block_13_expand_relu) plus colour
statistics; the map uses the deepest spatial layer's part of the row (block_13, 14 x 14 for a 224 crop) only,
so it shows that layer's share of the evidence, not the colour statistics' nor the shallower layer's. The graph
averages four rotations of the crop: each view's map is turned back and the four are averaged.

Costs nothing unless asked: a second interpreter with intermediate tensors (edge_app.core.head_probe), opened
only when an Explainer is made.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_app.core.head_probe import HeadProbe
from edge_app.core.tflite_file import read_dense_head


class Explainer:
    """Class activation maps for one .tflite model."""

    def __init__(self, model_path: str | Path, threads: int | None = None):
        data = Path(model_path).read_bytes()
        self.probe = HeadProbe(data, threads=threads)
        self.part = self.probe.spatial_part()
        self.weights = read_dense_head(data)[0]

    def activation_map(self, rgb: np.ndarray, class_index: int) -> np.ndarray:
        """(S, S) float map in [0, 1] of where the crop's evidence for the class lies (1 = most)."""
        self.probe.run(rgb)
        maps = self.probe.tensor(self.part.tensor)  # (views, H, W, C)
        row = self.weights[class_index, self.part.offset:self.part.offset + self.part.channels]
        per_view = maps @ row  # (views, H, W)
        # view j of the graph is the crop turned by j quarter turns (network.model.with_rotation_views)
        cam = np.mean([np.rot90(view, -j) for j, view in enumerate(per_view)], axis=0)
        cam = cv2.resize(cam.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_CUBIC)
        cam -= cam.min()
        top = float(cam.max())
        return cam / top if top > 0 else cam

    def overlay(self, rgb: np.ndarray, class_index: int) -> np.ndarray:
        """The crop (RGB) with its map for the class laid over it (heat_overlay)."""
        return heat_overlay(rgb, self.activation_map(rgb, class_index))


def heat_overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The crop (RGB) with the map laid over it in the JET colours (red: most evidence), RGB uint8."""
    heat = cv2.applyColorMap(np.clip(cam * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(rgb, 1 - alpha, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), alpha, 0)
