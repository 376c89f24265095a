"""Reads a safetensors file two independent ways and prints what it holds, as JSON.

1. Its own parser (json + struct, nothing from wfs or safetensors) checks the layout against
   the rules of the reference reader (docs/formats/safetensors.md#header-and-offset-validation) and the reference writer's padding.
2. The real `safetensors` package: `safe_open(..., framework="numpy")` must list the same keys
   and metadata and give each tensor numpy can hold with the same dtype, shape and bytes;
   `safetensors.numpy.load_file` must do the same when every dtype is one numpy has.

Prints {"metadata": {...}, "tensors": [{"name", "dtype", "shape", "sha256"}, ...] (in file
order), "numpy_loaded": N}. Any broken rule is an AssertionError (non-zero exit).
Usage: python3 safetensors_check.py FILE
"""
import hashlib
import json
import struct
import sys

import numpy as np
from safetensors import safe_open
import safetensors.numpy

BITS = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32,
        "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64, "F8_E5M2": 8,
        "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6,
        "F6_E3M2": 6}
NUMPY = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "U64": "uint64",
         "I32": "int32", "U32": "uint32", "I16": "int16", "U16": "uint16", "I8": "int8",
         "U8": "uint8", "BOOL": "bool", "C64": "complex64"}


def unique_keys(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
    return dict(pairs)


def parse(path):
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) >= 8, "HeaderTooSmall"
    (n,) = struct.unpack("<Q", data[:8])
    assert n <= 100_000_000, "HeaderTooLarge"
    assert 8 + n <= len(data), "InvalidHeaderLength"
    assert (8 + n) % 8 == 0, f"8 + N = {8 + n} is not a multiple of 8 (the writer pads)"
    text = data[8:8 + n].decode("utf-8")
    body = text.rstrip(" ")
    assert body.endswith("}") and body.startswith("{"), "only spaces may pad the JSON"
    header = json.loads(body, object_pairs_hook=unique_keys)
    names = list(header)
    assert names[0] == "__metadata__", "the writer puts __metadata__ first"
    metadata = header.pop("__metadata__")
    assert isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()), "__metadata__ is map<str, str>"
    end = 0
    tensors = []
    for name, entry in header.items():
        assert set(entry) == {"dtype", "shape", "data_offsets"}, (name, entry)
        dtype, shape, (begin, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
        assert dtype in BITS, f"{name}: unknown dtype {dtype}"
        assert all(isinstance(d, int) and d >= 0 for d in shape), (name, shape)
        assert begin == end, f"InvalidOffset({name}): begins at {begin}, the previous ends at {end}"
        assert stop >= begin, f"InvalidOffset({name})"
        bits = int(np.prod(shape, dtype=object)) * BITS[dtype]
        assert bits % 8 == 0, f"MisalignedSlice({name})"
        assert stop - begin == bits // 8, f"TensorInvalidInfo({name})"
        end = stop
        raw = data[8 + n + begin:8 + n + stop]
        tensors.append({"name": name, "dtype": dtype, "shape": shape, "sha256": hashlib.sha256(raw).hexdigest()})
    assert 8 + n + end == len(data), "MetadataIncompleteBuffer"
    return metadata, tensors


def main():
    path = sys.argv[1]
    metadata, tensors = parse(path)
    loaded = 0
    with safe_open(path, framework="numpy") as f:
        assert sorted(f.keys()) == sorted(t["name"] for t in tensors), "safe_open lists other keys"
        assert f.metadata() == metadata, (f.metadata(), metadata)
        for t in tensors:
            if t["dtype"] not in NUMPY:
                continue
            array = f.get_tensor(t["name"])
            assert str(array.dtype) == NUMPY[t["dtype"]] and list(array.shape) == t["shape"], (t, array.dtype, array.shape)
            assert hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() == t["sha256"], t["name"]
            loaded += 1
    if all(t["dtype"] in NUMPY for t in tensors):
        arrays = safetensors.numpy.load_file(path)
        assert list(arrays) == [t["name"] for t in tensors] or sorted(arrays) == sorted(t["name"] for t in tensors)
        for t in tensors:
            assert hashlib.sha256(arrays[t["name"]].tobytes()).hexdigest() == t["sha256"], t["name"]
    json.dump({"metadata": metadata, "tensors": tensors, "numpy_loaded": loaded}, sys.stdout)


main()
