"""Write the HematoVision JSON metadata into a converted TFLite flatbuffer (needs TensorFlow; to replace it
without TensorFlow: edge_app.core.tflite_file.with_metadata)."""
from __future__ import annotations

from typing import Any

import numpy as np

from edge_app.core.metadata import METADATA_NAME, metadata_document


def embed_metadata(tflite_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """Return the model with `metadata` stored as JSON under METADATA_NAME (replacing any earlier copy)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    document = metadata_document(metadata)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(document, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(meta: Any) -> str:
    name = meta.name
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)
