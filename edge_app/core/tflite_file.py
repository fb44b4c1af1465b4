"""Read and patch a TFLite flatbuffer without TensorFlow: the dense head's weights and the metadata JSON.

Pure Python on top of edge_app.core.metadata's flatbuffer reader. Two edits, both leave every other byte alone:
- the last FULLY_CONNECTED op's float32 weight and bias buffers are overwritten in place (same sizes);
- the HematoVision metadata JSON is written after the flatbuffer's end and its Buffer.data offset pointed at it
  (a flatbuffer offset points forward, so a longer document fits; the old bytes are zeroed, never read).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.core.metadata import (_MODEL_BUFFERS, METADATA_NAME, ModelFileError, _Table, metadata_buffers,
                                    metadata_document, model_table)

# Field numbers in the TFLite schema (tensorflow/lite/schema/schema.fbs), beside those metadata.py reads.
_MODEL_OPCODES, _MODEL_SUBGRAPHS = 1, 2
_SUBGRAPH_TENSORS, _SUBGRAPH_OPERATORS = 0, 3
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_BUFFER = 0, 1, 2
_OPERATOR_OPCODE, _OPERATOR_INPUTS = 0, 1
_OPCODE_DEPRECATED, _OPCODE_BUILTIN = 0, 3
FULLY_CONNECTED, FLOAT32 = 9, 0


def _ints(table: _Table, index: int) -> list[int]:
    vec = table._vector(index)
    return [] if vec is None else list(struct.unpack_from(f"<{vec[1]}i", table.buf, vec[0]))


@dataclass(frozen=True)
class DenseHead:
    """Where the last dense layer's float32 weights (classes x features) and bias lie in the file."""

    weights_at: int
    bias_at: int | None  # None: the converter dropped an all-zero bias
    classes: int
    features: int
    input_tensor: int  # the tensor the dense layer reads (the interpreter's index in the main subgraph)


def _buffer_data_at(buffers: list[_Table], index: int) -> tuple[int, int]:
    """(position, length) of a buffer's inline data."""
    vec = buffers[index]._vector(0)
    if vec is None or vec[1] == 0:
        raise ModelFileError("the dense layer's weights are not stored inline in the file")
    return vec


def find_dense_head(data: bytes) -> DenseHead:
    """The last FULLY_CONNECTED op of the main subgraph, with float32 constant weights and bias."""
    try:
        model = model_table(data)
        codes = [max(c.scalar(_OPCODE_DEPRECATED, "<b"), c.scalar(_OPCODE_BUILTIN, "<i"))
                 for c in model.tables(_MODEL_OPCODES)]
        graph = model.tables(_MODEL_SUBGRAPHS)[0]
        tensors, buffers = graph.tables(_SUBGRAPH_TENSORS), model.tables(_MODEL_BUFFERS)
        dense = [op for op in graph.tables(_SUBGRAPH_OPERATORS)
                 if codes[op.scalar(_OPERATOR_OPCODE, "<I")] == FULLY_CONNECTED]
        if not dense:
            raise ModelFileError("the model has no dense (FULLY_CONNECTED) layer to adapt")
        inputs = _ints(dense[-1], _OPERATOR_INPUTS)
        weights = tensors[inputs[1]]
        bias = tensors[inputs[2]] if len(inputs) > 2 and inputs[2] >= 0 else None
        if any(t.scalar(_TENSOR_TYPE, "<b") != FLOAT32 for t in (weights, bias) if t is not None):
            raise ModelFileError("the model's dense layer is not float32 (an int8 head cannot be rewritten)")
        classes, features = _ints(weights, _TENSOR_SHAPE)
        w_at, w_len = _buffer_data_at(buffers, weights.scalar(_TENSOR_BUFFER, "<I"))
        b_at, b_len = _buffer_data_at(buffers, bias.scalar(_TENSOR_BUFFER, "<I")) if bias is not None \
            else (None, 4 * classes)
        if w_len != 4 * classes * features or b_len != 4 * classes:
            raise ModelFileError("the dense layer's buffers do not match its shape")
        return DenseHead(w_at, b_at, classes, features, inputs[0])
    except (struct.error, IndexError, ValueError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"corrupt TFLite flatbuffer: {exc}") from exc


def read_dense_head(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(weights classes x features, bias) of the last dense layer, float64 copies."""
    head = find_dense_head(data)
    w = np.frombuffer(data, "<f4", head.classes * head.features, head.weights_at)
    b = np.frombuffer(data, "<f4", head.classes, head.bias_at) if head.bias_at is not None else np.zeros(head.classes)
    return w.reshape(head.classes, head.features).astype(np.float64), b.astype(np.float64)


def with_dense_head(data: bytes, weights: np.ndarray, bias: np.ndarray) -> bytes:
    """A copy of the model with the last dense layer's weights and bias replaced (same shapes)."""
    head = find_dense_head(data)
    if head.bias_at is None:
        raise ModelFileError("the model's dense layer has no bias to refit (its converter dropped an all-zero one)")
    if weights.shape != (head.classes, head.features) or bias.shape != (head.classes,):
        raise ValueError(f"new head {weights.shape}/{bias.shape}, file has ({head.classes}, {head.features})")
    out = bytearray(data)
    out[head.weights_at:head.weights_at + weights.size * 4] = np.ascontiguousarray(weights, "<f4").tobytes()
    out[head.bias_at:head.bias_at + bias.size * 4] = np.ascontiguousarray(bias, "<f4").tobytes()
    return bytes(out)


def with_metadata(data: bytes, metadata: dict[str, Any]) -> bytes:
    """A copy of the model whose HematoVision metadata is `metadata` (as convert.metadata_writer embeds it)."""
    buffer = dict(metadata_buffers(model_table(data))).get(METADATA_NAME)
    if buffer is None:
        raise ModelFileError(f"the model has no '{METADATA_NAME}' metadata to replace")
    field = buffer._field(0)
    if field is None:
        raise ModelFileError("the model's metadata is not stored inline")
    old_at, old_len = buffer._vector(0)
    document = metadata_document(metadata)
    out = bytearray(data)
    out[old_at:old_at + old_len] = bytes(old_len)
    out.extend(bytes(-len(out) % 16))  # the new vector's length prefix, aligned
    start = len(out)
    out.extend(struct.pack("<I", len(document)) + document)
    out.extend(bytes(-len(out) % 16))
    struct.pack_into("<I", out, field, start - field)
    return bytes(out)


def write_model(path: Path, data: bytes) -> None:
    """Write the file through a temporary name, so a failure never leaves half a model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
