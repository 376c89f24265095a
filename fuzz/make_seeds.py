#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/seed-*) from the committed test fixtures.
Multi-file inputs are parts joined by wfs::fuzzing::PART_SEPARATOR; a table entry part is a key
length byte, the key and the value (see fuzz/fuzz_targets/checkpoint.rs)."""
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
SEP = b"\xfe\xffWFS"


def varint(b, i):
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def block_entries(blk):
    n = int.from_bytes(blk[-4:], "little")
    end = len(blk) - 4 * (n + 1)
    i, key = 0, b""
    while i < end:
        sh, i = varint(blk, i)
        ns, i = varint(blk, i)
        vl, i = varint(blk, i)
        key = key[:sh] + blk[i:i + ns]
        i += ns
        yield key, blk[i:i + vl]
        i += vl


def table(path):
    """Every entry of an uncompressed table (TensorFlow writes bundle indexes uncompressed)."""
    b = open(path, "rb").read()
    foot = b[-48:]
    _, j = varint(foot, 0)
    _, j = varint(foot, j)
    io, j = varint(foot, j)
    isz, j = varint(foot, j)
    for _, h in block_entries(b[io:io + isz]):
        do, k = varint(h, 0)
        ds, k = varint(h, k)
        yield from block_entries(b[do:do + ds])


def entries(index):
    return [bytes([len(k)]) + k + v for k, v in table(index) if len(k) < 256]


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "seed-" + name), "wb").write(data)


def read(rel):
    return open(os.path.join(FIX, rel), "rb").read()


CKPTS = {
    "tf1_saver": "ckpt/tf1_saver/model.ckpt-5",
    "tf2_dtypes": "ckpt/tf2_dtypes/dtypes",
    "tf2_keras": "ckpt/tf2_keras/ckpt-1",
    "sharded": "ckpt/sharded/ckpt-1",
}
SAVED = {"tf_module": False, "tf1_builder": False, "k3_export": False}

shutil.rmtree(os.path.join(HERE, "corpus"), ignore_errors=True)
for name, prefix in CKPTS.items():
    put("table", name, read(prefix + ".index"))
    data = sorted(f for f in os.listdir(os.path.dirname(os.path.join(FIX, prefix))) if ".data-" in f)[0]
    shard = read(os.path.join(os.path.dirname(prefix), data))
    put("checkpoint", name, SEP.join([shard] + entries(os.path.join(FIX, prefix + ".index"))))
for name in SAVED:
    d = "savedmodel/" + name
    meta = read(d + "/keras_metadata.pb") if os.path.exists(os.path.join(FIX, d, "keras_metadata.pb")) else b""
    parts = [read(d + "/saved_model.pb"), meta, read(d + "/variables/variables.data-00000-of-00001")]
    put("savedmodel", name, SEP.join(parts + entries(os.path.join(FIX, d, "variables/variables.index"))))
# tfk_functional's saved_model.pb is 700 KB: its Keras metadata rides on tf_module's graph.
tfk = "savedmodel/tfk_functional"
put("savedmodel", "tfk_metadata", SEP.join([read("savedmodel/tf1_builder/saved_model.pb"), read(tfk + "/keras_metadata.pb"),
    read(tfk + "/variables/variables.data-00000-of-00001")] + entries(os.path.join(FIX, tfk, "variables/variables.index"))))
put("archive", "tf_module.zip", read("savedmodel/tf_module.zip"))
put("archive", "tfk_deflated.zip", read("savedmodel/tfk_deflated.zip"))
put("archive", "k3_deflated.keras", read("keras3/k3_deflated.keras"))
for i, s in enumerate(["dense_1", "..", "a/b\tc%d", "x" * 300, "é" * 200 + "\u0001..", "kernel:0"]):
    put("names", str(i), s.encode())
for i, s in enumerate([
    "dense_1\ndense_1/kernel:0\ndense_1/bias:0",
    "lstm\nlstm/lstm_cell/kernel:0\nlstm/lstm_cell/recurrent_kernel:0\nlstm/lstm_cell/bias:0",
    "BatchNormalization\ngamma\nbeta\nmoving_mean\n{\"scale\": false, \"center\": true}",
    "dense_1\ndense_1_W:0\ndense_1_b:0",
    "PReLU\nseq/p_re_lu/alpha",
]):
    put("keras_names", str(i), s.encode())
put("npy", "f32", bytes([11]) + (2).to_bytes(8, "big") + (3).to_bytes(8, "big"))
put("npy", "str", bytes([200]) + (7).to_bytes(8, "big"))
for f in ["all_dtypes.safetensors", "float6.safetensors", "sharded/model-00002-of-00002.safetensors"]:
    put("safetensors", os.path.basename(f), read("safetensors/" + f))
for f in ["fortran_be.npy", "matrix.npy", "bytes.npy", "object.npy"]:
    put("npy_file", f, read("numpy/" + f))
put("tree", "0", b"tlayers/dense/kernel\ntlayers/dense/kernel\nf../config.json\nd.\npckpt-1\ntckpt-1/variables/x\nlayers/0>layers/dense\nllatest>ckpt-1\nt\n")
# PyTorch: whole files for `torch`, their data.pkl for `pickle` (storages "0".."3" exist there).
import zipfile  # noqa: E402
for name in ["state_dict.pt", "views.pt", "dtypes.pt", "module.pt", "lightning.ckpt", "big_endian.pt",
             "state_dict_legacy.pt", "views_legacy.pt", "hostile/evil_os_system_legacy.pt"]:
    put("torch", os.path.basename(name), read("torch/" + name))
for name in ["views.pt", "module.pt", "lightning.ckpt", "protocol4.pt", "hostile/evil_root.pt"]:
    with zipfile.ZipFile(os.path.join(FIX, "torch", name)) as z:
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        put("pickle", os.path.basename(name), z.read(pkl))
put("pickle", "protocol0", b"(lp0\nI1\naVx\np1\naL1180591620717411303424L\naI-3\naF1.5\nac_codecs\nencode\np2\n(V\\u0000\np3\nVlatin1\np4\ntp5\nRp6\naNaI01\na.")
for name in ["typed.onnx", "raw.onnx", "sparse.onnx", "external_one/model.onnx"]:
    put("onnx", name.replace("/", "_"), read("onnx/" + name))
for name in ["float.tflite", "int8.tflite", "buffer_offset.tflite", "constants.tflite", "old_schema.tflite"]:
    put("tflite", name, read("tflite/" + name))
for name in ["dtypes.msgpack", "chunked.msgpack"]:
    put("flax_msgpack", name, read("jax/" + name))
for store, meta, arrays in [("v2.zarr", ".zarray", ["zstd", "blosc_lz4_shuffle", "blosc_zstd_bitshuffle", "fortran", "big_endian"]),
                            ("v3.zarr", "zarr.json", ["gzip_crc32c", "blosc", "transpose", "sharded"])]:
    for name in arrays:
        base = f"jax/{store}/{name}/"
        key = "c/0/0" if meta == "zarr.json" else "0.0"
        put("zarr", f"{store}_{name}", read(base + meta) + SEP + read(base + key))
for name in ["all_types", "align64", "big_endian", "handmade", "v1", "v2"]:
    put("gguf", name, read(f"gguf/{name}.gguf"))
# Dequantizer seeds: the tensor data of two GGUF fixtures (from their info.json tensor_data_offset).
# Quantized safetensors (fuzz_targets/quant_*.rs): the config bytes of wfs::fuzzing::quantized
# (bits, group size index into [-1, 16, 32, 64, 128], variant) that fit each fixture, then the file.
QUANT_SEEDS = [("quant_gptq", "gptq4", (4, 2, 0)), ("quant_gptq", "gptq3", (3, 0, 0)), ("quant_gptq", "gptq2_v2", (2, 1, 1)),
               ("quant_gptq", "gptq8", (8, 3, 0)), ("quant_awq", "awq", (4, 2, 0)), ("quant_bnb", "bnb", (0, 0, 0)),
               ("quant_compressed_tensors", "ct_w4_group_asym", (4, 1, 10)), ("quant_compressed_tensors", "ct_w8_channel_sym", (8, 0, 4)),
               ("quant_compressed_tensors", "ct_fp8_channel", (8, 0, 37)), ("quant_fp8_block", "fp8_block", (8, 2, 0)), ("quant_mlx", "mlx", (4, 2, 0))]
for target, case, config in QUANT_SEEDS:
    put(target, case, bytes(config) + read(f"quant/{case}/model.safetensors"))
# Readers of one file: a small fixture each. ncnn and Darknet take their pair as the text file,
# a zero byte, then the binary file (fuzz_targets/ncnn.rs, darknet.rs).
for target, name, rel in [("caffe", "cf", "inference/cf.caffemodel"), ("coreml", "fp16", "coreml/fp16.mlmodel"),
                          ("coreml", "lut4", "coreml/lut4.mlmodel"), ("ggml_legacy", "ggjt3", "inference/llama-ggjt-v3.bin"),
                          ("ggml_legacy", "whisper", "inference/whisper-ggml.bin"), ("ggml_legacy", "rwkv", "inference/rwkv-ggmf-v101.bin"),
                          ("mxnet", "mx", "inference/mx-0000.params"), ("paddle_pdparams", "layers", "paddle/layers.pdparams"),
                          ("openvino", "fp16", "openvino/compressed_fp16.xml"), ("tfjs", "uint8", "tfjs/uint8/model.json"),
                          ("torchscript", "traced", "torchscript/traced.pt")]:
    put(target, name, read(rel))
put("darknet", "dn", read("inference/dn.cfg") + b"\0" + read("inference/dn.weights"))
put("ncnn", "nc", read("inference/nc.param") + b"\0" + read("inference/nc.bin"))
put("dequantize", "blocks", read("gguf/all_types.gguf")[5184:][:4096])
put("dequantize", "handmade", read("gguf/handmade.gguf")[416:])
for name, url in [("https", "https://alice:s3cretpassword@host:8443/a/b%20c/m.h5?X-Amz-Signature=abcdef0123#frag"),
                  ("s3dir", "s3://bucket/prefix/saved_model/"), ("hf", "hf://org/repo@v1.0/sub/model.safetensors"),
                  ("http", "http://127.0.0.1:80/ckpt/ckpt-1.index?token=secretsecret"),
                  ("link", '<https://huggingface.co/api/models/o/r/tree/main?cursor=eyJmIjoiYSJ9>; rel="next", </p?c=9>; title="a, b"; rel=last')]:
    put("remote_url", name, url.encode())
