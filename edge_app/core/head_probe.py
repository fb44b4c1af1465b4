"""Look inside a TFLite classifier at its head: the features the dense layer reads, and the deepest spatial
feature map pooled into them. Used by `hemato adapt` (features), explain (class activation maps) and conversion.

A second interpreter, opened only by whoever asks, with every intermediate tensor kept and the builtin kernels:
XNNPACK (the default delegate) keeps its tensors to itself. The everyday Classifier pays nothing for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.core.metadata import ModelFileError


@dataclass(frozen=True)
class SpatialPart:
    """A 4-D tensor (views, H, W, C) whose global mean is features[offset:offset + C] of the dense layer's input."""

    tensor: int
    offset: int
    channels: int


class HeadProbe:
    """An interpreter over a .tflite file (path or bytes) that exposes the dense layer's input."""

    def __init__(self, model: str | Path | bytes, threads: int | None = None):
        from edge_app.core.model import interpreter_class
        interpreter_type = interpreter_class()[0]
        resolver = __import__(interpreter_type.__module__, fromlist=["OpResolverType"]).OpResolverType
        source = {"model_content": model} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}
        self._interp = interpreter_type(**source, num_threads=threads, experimental_preserve_all_tensors=True,
                                        experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self._interp.allocate_tensors()
        self._ops = self._interp._get_ops_details()
        self._tensors = {t["index"]: t for t in self._interp.get_tensor_details()}
        dense = [op for op in self._ops if op["op_name"] == "FULLY_CONNECTED"]
        if not dense:
            raise ModelFileError("the model has no dense (FULLY_CONNECTED) layer")
        self._dense = dense[-1]  # the classifier's dense layer (the last one)
        self.features_tensor = int(self._dense["inputs"][0])
        self.width = int(self._tensors[self.features_tensor]["shape"][-1])
        self._input = self._interp.get_input_details()[0]

    def _producer(self, tensor: int) -> dict | None:
        return next((op for op in self._ops if tensor in list(op["outputs"])), None)

    def _shape(self, tensor: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self._tensors[tensor]["shape"])

    def spatial_part(self) -> SpatialPart:
        """The deepest (smallest) globally averaged 4-D feature map among the parts concatenated into the
        dense layer's input, and where its channels sit in that input."""
        parts: list[tuple[int, int, int]] = []  # (offset, channels, tensor whose spatial mean it is)

        def walk(tensor: int, offset: int) -> None:
            op = self._producer(tensor)
            if op is not None and op["op_name"] == "CONCATENATION":
                for part in op["inputs"]:
                    walk(int(part), offset)
                    offset += self._shape(int(part))[-1]
                return
            if op is not None and op["op_name"] == "MEAN":
                source = int(op["inputs"][0])
                if len(self._shape(source)) == 4:
                    parts.append((offset, self._shape(tensor)[-1], source))

        walk(self.features_tensor, 0)
        if not parts:
            raise ModelFileError("the dense layer reads no globally pooled feature map")
        offset, channels, tensor = min(parts, key=lambda p: self._shape(p[2])[1] * self._shape(p[2])[2])
        return SpatialPart(tensor, offset, channels)

    def run(self, rgb: np.ndarray) -> None:
        """Invoke on one RGB uint8 crop (S x S x 3)."""
        from edge_app.core.model import input_value
        self._interp.set_tensor(self._input["index"], input_value(rgb, self._input)[None])
        self._interp.invoke()

    def tensor(self, index: int) -> np.ndarray:
        """An intermediate tensor of the last run, dequantised to float64."""
        value = np.array(self._interp.get_tensor(index))
        if not np.issubdtype(value.dtype, np.floating):
            scale, zero = self._tensors[index]["quantization"]
            value = (value.astype(np.float64) - zero) * (scale or 1.0)
        return value.astype(np.float64)

    def features(self, rgb: np.ndarray) -> np.ndarray:
        """(views, D): the dense layer's input rows for one crop (one row per rotation view in the graph)."""
        self.run(rgb)
        return self.tensor(self.features_tensor).reshape(-1, self.width)

    def logit_range(self) -> tuple[float, float] | None:
        """(lowest, highest) logit the file can carry when it quantises the dense layer's output, else None."""
        output = int(self._dense["outputs"][0])
        for op in self._ops:
            if op["op_name"] == "QUANTIZE" and output in list(op["inputs"]):
                quantised = self._tensors[int(op["outputs"][0])]
                scale, zero = quantised["quantization"]
                info = np.iinfo(quantised["dtype"])
                return (info.min - zero) * scale, (info.max - zero) * scale
        return None
