"""A minimal TensorFlow tensor-bundle writer (prefix.index + prefix.data-00000-of-00001), for
benchmark inputs only: TensorFlow is not needed to make a 10,000-variable checkpoint.

Layout per docs/formats/tensorflow.md#the-tensor-bundle: an SSTable whose first key "" holds the BundleHeaderProto and whose
other keys hold BundleEntryProtos; block trailers and tensor checksums are masked crc32c.
Needs the `crc32c` package (pip install crc32c).
"""
import struct

import crc32c
import numpy as np

DTYPES = {np.dtype("float32"): 1, np.dtype("float64"): 2, np.dtype("int32"): 3, np.dtype("int64"): 9}


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def entry(dtype, shape, offset, size, crc):
    dims = b"".join(b"\x12" + varint(len(d)) + d for d in (b"\x08" + varint(n) for n in shape))
    out = b"\x08" + varint(DTYPES[dtype]) + b"\x12" + varint(len(dims)) + dims
    if offset:
        out += b"\x20" + varint(offset)
    return out + b"\x28" + varint(size) + b"\x35" + struct.pack("<I", masked(crc))


def block(items, restart_interval=16):
    out, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        prev = key
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def with_trailer(contents):
    return contents + b"\x00" + struct.pack("<I", masked(crc32c.crc32c(contents + b"\x00")))


def write(prefix, tensors):
    """tensors: dict of name -> numpy array (C order, little-endian)."""
    items, offset = [], 0
    with open(f"{prefix}.data-00000-of-00001", "wb") as data:
        for name in sorted(tensors, key=lambda k: k.encode()):
            raw = np.ascontiguousarray(tensors[name]).tobytes()
            data.write(raw)
            items.append((name.encode(), entry(tensors[name].dtype, tensors[name].shape, offset, len(raw), crc32c.crc32c(raw))))
            offset += len(raw)
    header = b"\x08\x01\x1a\x02\x08\x01"  # num_shards 1, version {producer 1}
    data_block = with_trailer(block([(b"", header)] + items))
    meta_block = with_trailer(block([]))
    handle = lambda off, size: varint(off) + varint(size)
    index_block = with_trailer(block([(items[-1][0] + b"\x00", handle(0, len(data_block) - 5))], 1))
    meta_at, index_at = len(data_block), len(data_block) + len(meta_block)
    footer = handle(meta_at, len(meta_block) - 5) + handle(index_at, len(index_block) - 5)
    footer = footer.ljust(40, b"\x00") + struct.pack("<II", 0x8B80FB57, 0xDB477524)
    with open(f"{prefix}.index", "wb") as index:
        index.write(data_block + meta_block + index_block + footer)
