"""Replace one ``metadata_props`` entry of a serialized ONNX model without the ``onnx`` package.

An ONNX file is a protobuf ``ModelProto``; ``metadata_props`` is its field 14, a repeated
``StringStringEntryProto`` (key = field 1, value = field 2). The top-level fields are copied byte for byte except
the entries with the given key, and one new entry is appended: the graph itself is untouched.
"""

from __future__ import annotations

METADATA_FIELD = 14
_LENGTH_DELIMITED = 2


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint in the ONNX protobuf")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LENGTH_DELIMITED) + _encode_varint(len(payload)) + payload


def _top_level_fields(data: bytes) -> list[tuple[int, int, bytes]]:
    """(field number, wire type, raw bytes of the whole field) for each top-level field."""
    fields, pos = [], 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in the ONNX model")
        if pos > len(data):
            raise ValueError("truncated field in the ONNX protobuf")
        fields.append((number, wire, data[start:pos]))
    return fields


def _entry_key(field_bytes: bytes) -> str | None:
    """The key of a serialized metadata_props entry (the whole field, tag and length included)."""
    _, pos = _varint(field_bytes, 0)
    length, pos = _varint(field_bytes, pos)
    entry = field_bytes[pos:pos + length]
    for number, _, raw in _top_level_fields(entry):
        if number == 1:
            _, p = _varint(raw, 0)
            size, p = _varint(raw, p)
            return raw[p:p + size].decode("utf-8")
    return None


def set_metadata(model: bytes, key: str, value: str) -> bytes:
    """``model`` with its ``metadata_props`` entry ``key`` set to ``value`` (other entries and fields unchanged).

    Raises:
        ValueError: the bytes are not a well-formed protobuf message.
    """
    kept = [raw for number, wire, raw in _top_level_fields(model)
            if not (number == METADATA_FIELD and wire == _LENGTH_DELIMITED and _entry_key(raw) == key)]
    entry = _field(1, key.encode("utf-8")) + _field(2, value.encode("utf-8"))
    return b"".join(kept) + _field(METADATA_FIELD, entry)
