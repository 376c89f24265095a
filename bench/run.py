#!/usr/bin/env python3
"""wfs benchmark: generates its own inputs, then measures wfs against a baseline taken in the
same run. Every figure is the median of N runs; ratios compare medians. See bench/README.md.

    sudo python3 bench/run.py            # full size (~1 GiB inputs), 5 runs per figure
    sudo python3 bench/run.py --quick    # ~1 minute smoke run (64 MiB inputs, 3 runs)

Needs Python 3 with h5py and numpy (crc32c too for figure (c), safetensors for figures 8 and
12, nginx and curl for figure 12), fusermount3/FUSE, and root for dropping the page cache (`echo 3 > /proc/sys/vm/drop_caches`)
before cold runs; without root, "cold" runs are warm and the report says so. Missing modules
are reported before anything runs.
"""

import argparse
import importlib.util
import json
import os
import queue
import random
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import h5py
    import numpy as np
except ImportError as e:
    sys.exit(f"bench: missing Python module {e.name}: {sys.executable} -m pip install {e.name}")

# Python modules that only some figures need (by --only number), checked before anything runs
# so that a missing one is reported with how to install it, not as a crash after the others.
FIGURE_MODULES = {7: ["crc32c"], 8: ["safetensors"], 12: ["safetensors"], 13: ["safetensors"]}
FIGURE_NAMES = {7: "(c)", 11: "(t)"}


def check_figure_modules(figures):
    """Exits with how to install what the chosen figures need, if anything is missing."""
    missing = {f: [m for m in FIGURE_MODULES.get(f, []) if importlib.util.find_spec(m) is None] for f in figures}
    missing = {f: mods for f, mods in missing.items() if mods}
    if missing:
        mods = sorted({m for ms in missing.values() for m in ms})
        others = ",".join(str(f) for f in sorted(set(figures) - set(missing)))
        sys.exit(f"bench: figure(s) {', '.join(FIGURE_NAMES.get(f, str(f)) for f in sorted(missing))} need the Python "
                 f"module(s) {', '.join(mods)}: {sys.executable} -m pip install {' '.join(mods)}"
                 + (f" (or run the others: --only {others})" if others else ""))


REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
GiB = 1 << 30


# ----------------------------------------------------------------------------- helpers

def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_size(s):
    s = s.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": MiB, "G": GiB}.get(s[-1:], 1)
    return int(float(s.rstrip("KMG")) * mult)


def human(n):
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def median(xs):
    return statistics.median(xs)


CAN_DROP = os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches():
    """Empties the kernel page cache (source file, plain file, and unmounted FUSE files)."""
    os.sync()
    if CAN_DROP:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def timed(cmd, **kw):
    """Seconds a command takes (spawn included), failing loudly."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t


def warm(path):
    """Pulls a file into the page cache."""
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


# ----------------------------------------------------------------------------- wfs

def locate_wfs(explicit):
    if explicit:
        return Path(explicit).resolve()
    exe = REPO / "target" / "release" / "wfs"
    if shutil.which("cargo"):
        log("building wfs (cargo build --release; first build compiles HDF5, ~2 min) ...")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    if not exe.exists():
        sys.exit(f"bench: {exe} not found and cargo is not available; pass --wfs PATH")
    return exe


class Wfs:
    def __init__(self, exe, root):
        self.exe = str(exe)
        self.mnt = root / "mnt"

    def mount(self, source, *extra):
        subprocess.run([self.exe, "mount", str(source), str(self.mnt), *extra], check=True)
        return self.mnt

    def umount(self):
        subprocess.run([self.exe, "umount", str(self.mnt)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def decodes(self):
        return int(os.getxattr(self.mnt, "user.wfs.decodes"))


# ----------------------------------------------------------------------------- inputs

def plan(total, n_tensors, seed=1):
    """Keras-style layers: (layer, [(weight name, shape)]) totalling about `total` bytes of float32
    in about `n_tensors` tensors: one large tensor (1/4), four medium ones (1/16 each), and the rest
    (1/2) spread over dense / conv / batch-norm layers of log-normally mixed sizes."""
    rng = random.Random(seed)
    elems = lambda b: max(1, b // 4)
    layers = []
    big_cols = 4096 if total >= 256 * MiB else 1024
    layers.append(("embedding", [("embedding/embeddings:0", (elems(total // 4) // big_cols, big_cols))]))
    med_cols = 2048 if total >= 256 * MiB else 512
    for i in range(4):
        layers.append((f"big_dense_{i}", [(f"big_dense_{i}/kernel:0", (elems(total // 16) // med_cols, med_cols)),
                                          (f"big_dense_{i}/bias:0", (med_cols,))]))
    rest = total // 2
    kinds = []
    count = 9
    while count < n_tensors:
        kind = ("dense", "conv2d", "batch_normalization")[len(kinds) % 3]
        kinds.append(kind)
        count += 4 if kind == "batch_normalization" else 2
    weights = [rng.lognormvariate(0, 1.2) for _ in kinds]
    scale = rest / sum(weights)
    for i, (kind, w) in enumerate(zip(kinds, weights)):
        name = f"{kind}_{i}"
        b = max(64, int(w * scale))
        if kind == "dense":
            cols = 256 if b >= 256 * 1024 else 64
            layers.append((name, [(f"{name}/kernel:0", (max(1, elems(b) // cols), cols)), (f"{name}/bias:0", (cols,))]))
        elif kind == "conv2d":
            cout = 128 if b >= 256 * 1024 else 32
            cin = max(1, elems(b) // (9 * cout))
            layers.append((name, [(f"{name}/kernel:0", (3, 3, cin, cout)), (f"{name}/bias:0", (cout,))]))
        else:
            n = max(1, elems(b) // 4)
            layers.append((name, [(f"{name}/{v}:0", (n,)) for v in ("gamma", "beta", "moving_mean", "moving_variance")]))
    return layers


def row_chunks(shape, target=256 * 1024):
    """Chunks of whole rows (last dimension complete), about `target` bytes, a multiple of 4 KiB
    where possible: a 4 KiB-aligned read of the tensor's bytes then lies in one chunk."""
    if len(shape) < 2:
        return (min(shape[0], target // 4),) if shape[0] else None
    row = int(np.prod(shape[1:])) * 4
    return (max(1, min(shape[0], target // row)),) + tuple(shape[1:])


def write_keras_h5(path, layers, gzip, seed=2, chunks=row_chunks):
    """A Keras legacy full-model .h5 (docs/formats/keras.md#legacy-hdf5-files): root attrs model_config / keras_version /
    backend, /model_weights with layer_names, one group per layer with weight_names."""
    rng = np.random.default_rng(seed)
    config = {"class_name": "Sequential", "config": {"name": "bench", "layers": [
        {"class_name": "Dense", "config": {"name": name}} for name, _ in layers]}}
    with h5py.File(path, "w", libver="earliest") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        mw.attrs["backend"] = b"tensorflow"
        mw.attrs["keras_version"] = b"2.15.0"
        for name, weights in layers:
            g = mw.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode() for w, _ in weights])
            for wname, shape in weights:
                data = (rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.05).reshape(shape)
                kw = {}
                if gzip:
                    kw = dict(compression="gzip", compression_opts=1, shuffle=True, chunks=chunks(shape))
                g.create_dataset(wname, data=data, **kw)


def make_inputs(work, total, n_tensors):
    layers = plan(total, n_tensors)
    n = sum(len(w) for _, w in layers)
    src = {"plain": work / "model.h5", "gzip": work / "model_gzip.h5", "auto": work / "big_autochunk.h5"}
    stamp = work / "inputs.json"
    want = {"total": total, "tensors": n, "version": 3}
    if stamp.exists() and json.loads(stamp.read_text()) == want and all(p.exists() for p in src.values()):
        log(f"reusing inputs in {work}")
    else:
        t = time.perf_counter()
        log(f"generating {n} tensors, {human(total)} per file, in {work} ...")
        write_keras_h5(src["plain"], layers, gzip=False)
        write_keras_h5(src["gzip"], layers, gzip=True)
        # The large tensor alone, gzip with h5py's automatic chunk shape (what users get).
        write_keras_h5(src["auto"], layers[:1], gzip=True, chunks=lambda s: True)
        stamp.write_text(json.dumps(want))
        log(f"  done in {time.perf_counter() - t:.0f} s")
    big = layers[0][1][0]
    meds = [l[1][0] for l in layers[1:5]]
    return src, layers, n, big, meds


# ----------------------------------------------------------------------------- figures

class Results:
    def __init__(self):
        self.rows = []

    def add(self, figure, what, value, baseline, ratio, target, ok):
        self.rows.append((figure, what, value, baseline, ratio, target, ok))
        mark = {True: "met", False: "MISSED", None: "-"}[ok]
        log(f"  [{figure}] {what}: {value} | baseline {baseline} | {ratio} | target {target}: {mark}")

    def table(self):
        out = ["| # | measurement | wfs | baseline (same run) | ratio | target | |",
               "|---|---|---|---|---|---|---|"]
        for figure, what, value, baseline, ratio, target, ok in self.rows:
            mark = {True: "met", False: "**missed**", None: ""}[ok]
            out.append(f"| {figure} | {what} | {value} | {baseline} | {ratio} | {target} | {mark} |")
        return "\n".join(out)


def ms(s):
    return f"{s * 1000:.1f} ms" if s < 10 else f"{s:.1f} s"


def mbs(nbytes, s):
    return f"{nbytes / MiB / s:.0f} MiB/s"


def mount_and_walk(w, src):
    """Mounts src and walks the whole tree with `ls -R`; leaves it mounted. Returns the seconds
    until `wfs mount` returned and until the walk was done."""
    t = time.perf_counter()
    w.mount(src)
    t_mounted = time.perf_counter()
    subprocess.run(["ls", "-R", str(w.mnt)], check=True, stdout=subprocess.DEVNULL)
    return t_mounted - t, time.perf_counter() - t


def fig_mount(w, src, n, runs, res):
    lister = ("import h5py,sys\nf=h5py.File(sys.argv[1],'r')\nnames=[]\n"
              "f.visititems(lambda n,o: names.append(n) if isinstance(o,h5py.Dataset) else None)\n"
              "print(len(names))\n")
    mount_t, ready_t, py_t = [], [], []
    for _ in range(runs):
        mounted, ready = mount_and_walk(w, src)
        w.umount()
        mount_t.append(mounted)
        ready_t.append(ready)
        py_t.append(timed([sys.executable, "-c", lister, str(src)], stdout=subprocess.DEVNULL))
    m, r, p = median(mount_t), median(ready_t), median(py_t)
    res.add(1, f"`wfs mount` returns ({n} tensors, source in page cache)", ms(m), "", "", "< 50 ms", m < 0.05)
    res.add(1, "`wfs mount` + `ls -R` done vs h5py listing script", ms(r), ms(p), f"{p / r:.1f}x faster",
            ">= 10x", p / r >= 10)


def fig_sequential(w, src, work, big, runs, res):
    (wname, shape) = big
    nbytes = int(np.prod(shape)) * 4
    rel = f"layers/embedding/{wname.split('/', 1)[1].removesuffix(':0')}.raw"
    plain = work / "big.plain"
    if not plain.exists() or plain.stat().st_size != nbytes:
        with h5py.File(src, "r") as f:
            f[f"model_weights/embedding/{wname}"][()].tofile(plain)
    reader = ("import h5py,sys\nf=h5py.File(sys.argv[1],'r')\nf[sys.argv[2]][()]\n")
    cat = lambda p: timed(["cat", str(p)], stdout=subprocess.DEVNULL)
    cold, warm_, hot, h5c, h5w, plain_cold, shm_hot = [], [], [], [], [], [], []
    shm = Path("/dev/shm/wfs-bench-big.plain") if os.path.isdir("/dev/shm") else None
    if shm:
        shutil.copyfile(plain, shm)
    for _ in range(runs):
        if shm:
            warm(shm)
            shm_hot.append(cat(shm))
        drop_caches()
        plain_cold.append(cat(plain))
        drop_caches()
        w.mount(src)
        cold.append(cat(w.mnt / rel))
        warm_.append(cat(w.mnt / rel))
        w.umount()
        warm(plain)
        hot.append(cat(plain))
        drop_caches()
        h5c.append(timed([sys.executable, "-c", reader, str(src), f"model_weights/embedding/{wname}"]))
        h5w.append(timed([sys.executable, "-c", reader, str(src), f"model_weights/embedding/{wname}"]))
    c, wm, h, hc, hw, pc = map(median, (cold, warm_, hot, h5c, h5w, plain_cold))
    what = f"{human(nbytes)} tensor `.raw`"
    if shm:
        shm.unlink()
        t = median(shm_hot)
        res.add(2, f"(limit) warm read of {what} vs hot `cat` of the plain file on tmpfs (4 KiB pages, like the "
                   f"FUSE page cache; ext4 uses large folios)", mbs(nbytes, wm), mbs(nbytes, t), f"{t / wm:.0%}", "", None)
    res.add(2, f"first read (cold) of {what}", mbs(nbytes, c), f"hot `cat` of plain file {mbs(nbytes, h)}",
            f"{h / c:.0%}", ">= 20%", h / c >= 0.2)
    res.add(2, f"(limit) first read (cold) of {what} vs cold `cat` of the plain file (the disk)", mbs(nbytes, c),
            mbs(nbytes, pc), f"{pc / c:.0%}", "", None)
    res.add(2, f"first read (cold) of {what} vs h5py `f[p][()]` cold (fresh interpreter)", ms(c), ms(hc),
            f"{hc / c:.2f}x faster", "> 1x", hc / c > 1)
    res.add(2, f"warm read (kernel cache) of {what}", mbs(nbytes, wm), f"hot `cat` of plain file {mbs(nbytes, h)}",
            f"{h / wm:.0%}", ">= 50%", h / wm >= 0.5)
    res.add(2, "(info) h5py `f[p][()]` with source in page cache", ms(hw), f"wfs warm {ms(wm)}",
            f"{hw / wm:.2f}x", "", None)


EXTRACT = """import h5py, numpy as np, os, sys
out = sys.argv[2]
def save(name, obj):
    if isinstance(obj, h5py.Dataset):
        p = os.path.join(out, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        np.save(p + ".npy", obj[()])
with h5py.File(sys.argv[1], "r") as f:
    f["model_weights"].visititems(save)
"""


COPY_NPY = """import shutil, sys
from pathlib import Path
m, out = Path(sys.argv[1]), Path(sys.argv[2])
for row in (m / "tensors.tsv").read_text().splitlines()[1:]:
    rel = row.split("\t")[0]
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(m / rel, out / rel)
"""


def fig_extract(w, src, out_root, label, runs, res):
    out = Path(tempfile.mkdtemp(prefix="wfs-bench-out-", dir=out_root))
    wfs_t, npy_t, py_t = [], [], []
    for _ in range(runs):
        for side in ("wfs", "npy", "h5py"):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            drop_caches()
            if side == "wfs":
                w.mount(src)
                wfs_t.append(timed(["cp", "-r", str(w.mnt / "layers"), str(out)]))
                w.umount()
            elif side == "npy":
                w.mount(src)
                npy_t.append(timed([sys.executable, "-c", COPY_NPY, str(w.mnt), str(out)]))
                w.umount()
            else:
                py_t.append(timed([sys.executable, "-c", EXTRACT, str(src), str(out)]))
    shutil.rmtree(out, ignore_errors=True)
    a, n, b = median(wfs_t), median(npy_t), median(py_t)
    res.add(3, f"extract all, {label}, cold, into {out_root}: `cp -r MNT/layers` (4 files per tensor: "
               f".npy+.raw+.shape+.dtype, 2x the bytes) vs h5py script np.save-ing each dataset (.npy)",
            ms(a), ms(b), f"{b / a:.2f}x faster", ">= 2x", b / a >= 2)
    res.add(3, f"extract all, {label}, cold: like for like, only the .npy files copied (Python shutil.copyfile "
               f"from the mount) vs the same h5py script", ms(n), ms(b), f"{b / n:.2f}x faster", "(info)", None)


def fig_random(w, srcs, big, runs, res, reads=300):
    (wname, shape) = big
    rel = f"layers/embedding/{wname.split('/', 1)[1].removesuffix(':0')}.raw"
    nbytes = int(np.prod(shape)) * 4
    rng = random.Random(3)
    offsets = [rng.randrange(0, nbytes // 4096) * 4096 for _ in range(reads)]
    cols = shape[-1]
    for label, src in srcs:
        with h5py.File(src, "r") as f:
            ds = f[f"model_weights/embedding/{wname}"]
            chunk = ds.chunks
            # h5py baseline: the same 4 KiB (1024 float32 of one row) per read, in one process.
            base = []
            for _ in range(runs):
                t = time.perf_counter()
                for o in offsets:
                    e = o // 4
                    ds[e // cols, e % cols:e % cols + 1024]
                base.append((time.perf_counter() - t) / reads)
        touched = sum((((o // 4) % cols + 1023) // chunk[-1]) - (((o // 4) % cols) // chunk[-1]) + 1 for o in offsets) / reads
        warm(src)
        per_read, per_decodes = [], []
        for _ in range(runs):
            w.mount(src)
            fd = os.open(w.mnt / rel, os.O_RDONLY)
            d0 = w.decodes()
            t = time.perf_counter()
            for o in offsets:
                os.pread(fd, 4096, o)
            per_read.append((time.perf_counter() - t) / reads)
            per_decodes.append((w.decodes() - d0) / reads)
            os.close(fd)
            w.umount()
        d, p, b = median(per_decodes), median(per_read), median(base)
        target = "<= 1 decode/read" if touched <= 1 else f"<= chunks touched ({touched:.0f}); 1 is impossible here"
        res.add(4, f"random 4 KiB pread, {label}, chunks {chunk}: chunks decoded per read "
                   f"(a read's bytes lie in {touched:.2f} chunks)", f"{d:.2f}", f"{touched:.2f} chunks touched",
                "", target, d <= max(1.0, touched))
        res.add(4, f"random 4 KiB pread, {label}: time per read (source in page cache)", ms(p),
                f"h5py `ds[r, c:c+1024]` {ms(b)}", f"{b / p:.2f}x faster", "", None)


def vm_hwm(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def read_all(paths, threads=4):
    todo = list(paths)
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                if not todo:
                    return
                p = todo.pop()
            with open(p, "rb", buffering=0) as f:
                while f.read(MiB):
                    pass

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def tensor_files(mnt, ext):
    rows = (mnt / "tensors.tsv").read_text().splitlines()[1:]
    return [mnt / (r.split("\t")[0].removesuffix(".npy") + ext) for r in rows]


def fig_rss(w, src, runs, res, cache=64 * MiB):
    peaks = []
    h5_peaks = []
    for _ in range(runs):
        proc = subprocess.Popen([w.exe, "mount", str(src), str(w.mnt), "-f", "--cache-size", str(cache)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(500):
            if os.path.ismount(w.mnt):
                break
            time.sleep(0.01)
        files = tensor_files(w.mnt, ".raw") + tensor_files(w.mnt, ".npy")
        read_all(files)
        peaks.append(vm_hwm(proc.pid))
        w.umount()
        proc.wait(timeout=30)
        out = subprocess.run([sys.executable, "-c", EXTRACT.replace("np.save(p + \".npy\", obj[()])", "obj[()]")
                              + "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
                              str(src), "/nonexistent"], check=True, capture_output=True, text=True)
        h5_peaks.append(int(out.stdout.split()[-1]) * 1024)
    p, h = median(peaks), median(h5_peaks)
    res.add(5, f"daemon peak RSS (VmHWM), `--cache-size {cache // MiB}M`, all .raw+.npy of gzip model read by 4 threads",
            human(p), f"h5py reading every dataset: {human(h)}", "", f"<= {human(cache + 64 * MiB)}",
            p <= cache + 64 * MiB)


def fig_concurrent(w, src, label, meds, runs, res):
    rels = [f"layers/big_dense_{i}/kernel.raw" for i in range(4)]
    nbytes = sum(int(np.prod(s)) * 4 for _, s in meds)
    seq, par = [], []
    for _ in range(runs):
        drop_caches()
        w.mount(src)
        t = time.perf_counter()
        for r in rels:
            subprocess.run(["cat", str(w.mnt / r)], check=True, stdout=subprocess.DEVNULL)
        seq.append(time.perf_counter() - t)
        w.umount()
        drop_caches()
        w.mount(src)
        t = time.perf_counter()
        ps = [subprocess.Popen(["cat", str(w.mnt / r)], stdout=subprocess.DEVNULL) for r in rels]
        for p in ps:
            p.wait()
        par.append(time.perf_counter() - t)
        w.umount()
    s, p = median(seq), median(par)
    res.add(6, f"4 readers of 4 different {human(nbytes // 4)} tensors, {label}, cold: concurrent vs one after another",
            f"{ms(p)} ({mbs(nbytes, p)})", f"{ms(s)} ({mbs(nbytes, s)})", f"{s / p:.2f}x faster", "> 1x", s / p > 1)


def fig_checkpoint(w, work, total, runs, res, n=10_000):
    """(c) A 10,000-variable TF checkpoint written by bench/tf_bundle.py (no TensorFlow needed)."""
    import tf_bundle
    prefix = work / "ckpt10k" / "ckpt-1"
    if not prefix.with_suffix(".index").exists():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(3)
        per = max(total // n // 4, 1)
        tf_bundle.write(str(prefix), {f"model/layer_{i}/kernel/.ATTRIBUTES/VARIABLE_VALUE":
                                      rng.standard_normal(per, dtype=np.float32) for i in range(n)})
    data = prefix.parent / "ckpt-1.data-00000-of-00001"
    mount_t, ready_t, floor_t, read_t, cat_t = [], [], [], [], []
    for _ in range(runs):
        mounted, ready = mount_and_walk(w, prefix)
        files = tensor_files(w.mnt, ".raw")
        drop_caches()
        t0 = time.perf_counter()
        read_all(files, threads=1)
        read_t.append(time.perf_counter() - t0)
        w.umount()
        mount_t.append(mounted)
        ready_t.append(ready)
        floor_t.append(timed([sys.executable, "-c", "import numpy"]))
        drop_caches()
        cat_t.append(timed(["cat", str(data)], stdout=subprocess.DEVNULL))
    m, r, f, rd, c = (median(x) for x in (mount_t, ready_t, floor_t, read_t, cat_t))
    res.add("(c)", f"`wfs mount` returns ({n} checkpoint variables)", ms(m), "", "", "< 50 ms", m < 0.05)
    res.add("(c)", "checkpoint mount + `ls -R` vs `python3 -c 'import numpy'` (floor of any Python reader)",
            ms(r), ms(f), f"{f / r:.1f}x", "", None)
    res.add("(c)", f"cold read of every variable's .raw ({n} files) vs cold `cat` of the data file",
            ms(rd), ms(c), f"{c / rd:.2f}x", "", None)


TORCH_WRITE = """import sys, torch
total, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
g = torch.Generator().manual_seed(4)
big = total // 4 // 4
sd = {"embedding.weight": torch.randn(big // 4096, 4096, generator=g)}
per = max((total - big * 4) // 4 // (n - 1), 1)
for i in range(n - 1):
    sd[f"layers.{i}.weight"] = torch.randn(per, generator=g)
torch.save(sd, path)
"""
TORCH_KEYS = ("import sys, torch\nsd = torch.load(sys.argv[1], mmap=True, weights_only=True)\n"
              "print(len(list(sd.keys())))\n")


def fig_torch(w, work, total, n, runs, res, python):
    """(t) A torch.save state dict: mount vs listing its keys with torch, and the first read of
    its largest tensor vs cold `dd` of the same bytes of the file."""
    import zipfile
    src = work / "state_dict.pt"
    if not src.exists():
        log(f"  writing {src} with torch ...")
        subprocess.run([python, "-c", TORCH_WRITE, str(total), str(n), str(src)], check=True)
    with zipfile.ZipFile(src) as z:
        member = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    with open(src, "rb") as f:
        f.seek(member.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
    offset, nbytes = member.header_offset + 30 + int(name_len) + int(extra_len), member.file_size
    dd = ["dd", f"if={src}", "of=/dev/null", "bs=1M", f"skip={offset}", f"count={nbytes}",
          "iflag=skip_bytes,count_bytes", "status=none"]
    warm(src)
    ready_t, keys_t, cold_t, dd_t = [], [], [], []
    for _ in range(runs):
        _, ready = mount_and_walk(w, src)
        w.umount()
        ready_t.append(ready)
        keys_t.append(timed([python, "-c", TORCH_KEYS, str(src)], stdout=subprocess.DEVNULL))
        drop_caches()
        w.mount(src)
        cold_t.append(timed(["cat", str(w.mnt / "tensors/embedding/weight.raw")], stdout=subprocess.DEVNULL))
        w.umount()
        drop_caches()
        dd_t.append(timed(dd))
        warm(src)
    r, k, c, d = (median(x) for x in (ready_t, keys_t, cold_t, dd_t))
    res.add("(t)", f"torch state dict ({n} tensors, {human(total)}): `wfs mount` + `ls -R` vs "
            "`torch.load(mmap=True, weights_only=True)` listing keys (fresh interpreter)", ms(r), ms(k),
            f"{k / r:.1f}x faster", ">= 5x", k / r >= 5)
    res.add("(t)", f"first read (cold) of its {human(nbytes)} tensor `.raw` vs cold `dd` of the same bytes",
            mbs(nbytes, c), mbs(nbytes, d), f"{d / c:.0%}", ">= 70%", d / c >= 0.7)
# With OUT `-` the file goes to standard output: save_file writes a temporary file and renames
# it over its target, so save_file(..., "/dev/null") would replace the device with a file.
SAVE_SAFETENSORS = """import h5py, sys
from safetensors.numpy import save, save_file
tensors = {}
def take(name, obj):
    if isinstance(obj, h5py.Dataset):
        tensors[name] = obj[()]
with h5py.File(sys.argv[1], "r") as f:
    f["model_weights"].visititems(take)
if sys.argv[2] == "-":
    sys.stdout.buffer.write(save(tensors, metadata={"format": "pt"}))
else:
    save_file(tensors, sys.argv[2], metadata={"format": "pt"})
"""


def fig_safetensors(w, src, out_root, runs, res):
    """(8) model.safetensors: copying it against copying every .raw of the mount, and `wfs convert`
    against an h5py + safetensors script. Source in page cache, fresh mount per copy."""
    out = Path(tempfile.mkdtemp(prefix="wfs-bench-st-", dir=out_root))
    whole, raws, conv, script, floor, conv_null, script_null, cat = [], [], [], [], [], [], [], []
    nbytes = 0
    for _ in range(runs):
        warm(src)
        w.mount(src)
        nbytes = (w.mnt / "model.safetensors").stat().st_size
        whole.append(timed(["cp", str(w.mnt / "model.safetensors"), str(out)]))
        w.umount()
        shutil.rmtree(out)
        out.mkdir()
        w.mount(src)
        rels = [str(p.relative_to(w.mnt)) for p in tensor_files(w.mnt, ".raw")]
        raws.append(timed(["cp", "--parents", *rels, str(out)], cwd=w.mnt))
        w.umount()
        shutil.rmtree(out)
        out.mkdir()
        conv.append(timed([w.exe, "convert", str(src), str(out / "c.safetensors")]))
        (out / "c.safetensors").unlink()
        script.append(timed([sys.executable, "-c", SAVE_SAFETENSORS, str(src), str(out / "s.safetensors")]))
        (out / "s.safetensors").unlink()
        floor.append(timed(["dd", "if=/dev/zero", f"of={out / 'zeros'}", f"bs={MiB}", f"count={nbytes // MiB}",
                            "status=none"]))
        (out / "zeros").unlink()
        conv_null.append(timed([w.exe, "convert", str(src), "-"], stdout=subprocess.DEVNULL))
        script_null.append(timed([sys.executable, "-c", SAVE_SAFETENSORS, str(src), "-"], stdout=subprocess.DEVNULL))
        cat.append(timed(["cat", str(src)], stdout=subprocess.DEVNULL))
    shutil.rmtree(out, ignore_errors=True)
    a, b, c, d, f, cn, sn, r = map(median, (whole, raws, conv, script, floor, conv_null, script_null, cat))
    res.add(8, f"`cp MNT/model.safetensors` ({human(nbytes)}) into {out_root} vs `cp` of every `.raw` of the same "
               f"mount (source in page cache, fresh mount)", mbs(nbytes, a), mbs(nbytes, b), f"{b / a:.0%}",
            ">= 80%", b / a >= 0.8)
    res.add(8, f"`wfs convert model.h5 out.safetensors` into {out_root} vs h5py + `safetensors.numpy.save_file` "
               f"script (source in page cache)", ms(c), ms(d), f"{d / c:.2f}x faster", ">= 3x", d / c >= 3)
    res.add(8, f"(limit) writing {human(nbytes)} of zeros into {out_root} with `dd` (what both sides pay to write "
               f"the file)", ms(f), f"wfs convert {ms(c)}", f"{f / c:.0%}", "", None)
    res.add(8, "`wfs convert model.h5 -` > /dev/null vs the same script's `save(...)` > /dev/null (the converters "
               "alone, without the destination's cost)", ms(cn), ms(sn), f"{sn / cn:.2f}x faster", ">= 3x",
            sn / cn >= 3)
    res.add(8, "(limit) `cat model.h5` > /dev/null (reading the source once)", ms(r), f"wfs convert - {ms(cn)}",
            f"{r / cn:.0%}", "", None)


def write_safetensors(path, layers, seed=2):
    """The same tensors as a safetensors file (docs/formats/safetensors.md#layout), written by hand so that the
    benchmark needs no safetensors package: HF-style names, F32, offsets back to back."""
    rng = np.random.default_rng(seed)
    header, offset = {"__metadata__": {"format": "np"}}, 0
    for name, weights in layers:
        for wname, shape in weights:
            key = "model." + wname.removesuffix(":0").replace("/", ".")
            nbytes = int(np.prod(shape)) * 4
            header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for _, weights in layers:
            for _, shape in weights:
                (rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.05).tofile(f)
    return next(k for k in header if k != "__metadata__")


def fig_safetensors_source(w, work, layers, n, runs, res):
    """(s) A safetensors file of the same tensors: mount time against listing its keys with
    safetensors.safe_open, and the first read of the large tensor against cold `cat` of the same
    bytes from a plain file and against safe_open(...).get_tensor."""
    src = work / "model.safetensors"
    stamp = work / "safetensors.json"
    if stamp.exists() and src.exists():
        big = json.loads(stamp.read_text())["big"]
    else:
        log(f"  writing {src} ...")
        big = write_safetensors(src, layers)
        stamp.write_text(json.dumps({"big": big}))
    rel = "tensors/" + big.replace(".", "/") + ".raw"
    have_st = subprocess.run([sys.executable, "-c", "import safetensors"], capture_output=True).returncode == 0
    lister = "import sys\nfrom safetensors import safe_open\nwith safe_open(sys.argv[1], 'numpy') as f: print(len(list(f.keys())))\n"
    getter = "import sys\nfrom safetensors import safe_open\nwith safe_open(sys.argv[1], 'numpy') as f: f.get_tensor(sys.argv[2])\n"
    plain = work / "big_st.plain"
    with open(src, "rb") as f:
        hlen = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(hlen))[big]
        begin, end = entry["data_offsets"]
        if not plain.exists() or plain.stat().st_size != end - begin:
            f.seek(8 + hlen + begin)
            plain.write_bytes(f.read(end - begin))
    nbytes = end - begin
    cat = lambda p: timed(["cat", str(p)], stdout=subprocess.DEVNULL)
    # The floor: a file with no tensors (daemon start and FUSE mount alone).
    empty = work / "empty.safetensors"
    empty.write_bytes((8).to_bytes(8, "little") + b"{}      ")
    mount_t, empty_t, list_t, cold, plain_cold, get_t = [], [], [], [], [], []
    for _ in range(runs):
        # The cold reads below drop the page cache: the source and the wfs binary are made
        # resident again before the timed mounts.
        warm(src)
        subprocess.run([w.exe, "info", str(empty)], stdout=subprocess.DEVNULL, check=True)
        for source, times in ((src, mount_t), (empty, empty_t)):
            t = time.perf_counter()
            w.mount(source)
            times.append(time.perf_counter() - t)
            w.umount()
        if have_st:
            list_t.append(timed([sys.executable, "-c", lister, str(src)], stdout=subprocess.DEVNULL))
        drop_caches()
        plain_cold.append(cat(plain))
        drop_caches()
        w.mount(src)
        cold.append(cat(w.mnt / rel))
        w.umount()
        if have_st:
            drop_caches()
            get_t.append(timed([sys.executable, "-c", getter, str(src), big]))
    m, c, pc = median(mount_t), median(cold), median(plain_cold)
    lt = f"safe_open keys {ms(median(list_t))}" if have_st else "(safetensors not installed)"
    res.add("(s)", f"`wfs mount` returns (safetensors, {n} tensors, {human(src.stat().st_size)}, in page cache)", ms(m), lt,
            f"{median(list_t) / m:.1f}x faster" if have_st else "", "< 20 ms", m < 0.02)
    res.add("(s)", f"first read (cold) of a {human(nbytes)} safetensors tensor `.raw` vs cold `cat` of the same bytes",
            mbs(nbytes, c), mbs(nbytes, pc), f"{pc / c:.0%}", ">= 70%", pc / c >= 0.7)
    res.add("(s)", "(info) `wfs mount` of a safetensors file with no tensors (daemon start and FUSE mount)",
            ms(median(empty_t)), "", "", "", None)
    if have_st:
        g = median(get_t)
        res.add("(s)", "first read (cold) vs `safe_open(...).get_tensor` cold (fresh interpreter)", ms(c), ms(g),
                f"{g / c:.2f}x faster", "> 1x", g / c > 1)


COMPARE_SAFETENSORS = """
import sys
import numpy as np
from safetensors import safe_open
# Tensor by tensor, in float64: what `wfs diff` reports (differing count, max abs, RMS, cosine).
with safe_open(sys.argv[1], "numpy") as a, safe_open(sys.argv[2], "numpy") as b:
    for key in a.keys():
        x, y = a.get_tensor(key).astype(np.float64).ravel(), b.get_tensor(key).astype(np.float64).ravel()
        d = np.abs(x - y)
        print(key, int((x != y).sum()), d.max(initial=0), np.sqrt(np.mean(d * d)), x @ y / np.sqrt((x @ x) * (y @ y)))
"""


def fig_diff(w, work, layers, runs, res):
    """(13) `wfs diff` of two identical safetensors files (a copy) against `cmp` of the two files
    and against a numpy script that loads both with safe_open and compares tensor by tensor.
    Both files in page cache."""
    src = work / "model.safetensors"
    if not src.exists():
        log(f"  writing {src} ...")
        write_safetensors(src, layers)
    copy = work / "model-copy.safetensors"
    if not copy.exists() or copy.stat().st_size != src.stat().st_size:
        shutil.copyfile(src, copy)
    n = sum(len(weights) for _, weights in layers)
    diff_t, cmp_t, script_t = [], [], []
    for _ in range(runs):
        warm(src)
        warm(copy)
        diff_t.append(timed([w.exe, "diff", str(src), str(copy)], stdout=subprocess.DEVNULL))
        cmp_t.append(timed(["cmp", str(src), str(copy)], stdout=subprocess.DEVNULL))
        script_t.append(timed([sys.executable, "-c", COMPARE_SAFETENSORS, str(src), str(copy)], stdout=subprocess.DEVNULL))
    d, c, p = median(diff_t), median(cmp_t), median(script_t)
    size = human(src.stat().st_size)
    res.add(13, f"`wfs diff` of two identical {size} safetensors files ({n} tensors, in page cache) vs `cmp` of "
                f"the two files", ms(d), ms(c), f"{c / d:.0%}", ">= 80%", c / d >= 0.8)
    res.add(13, "`wfs diff` vs a numpy script: safe_open both, compare tensor by tensor in float64",
            ms(d), ms(p), f"{p / d:.2f}x faster", ">= 3x", p / d >= 3)


# ----------------------------------------------------------------------------- remote (figure 12)

class Nginx:
    """nginx on 127.0.0.1 serving `root` over HTTP (sendfile, keep-alive), started by the
    benchmark with a generated config, as tests/remote.rs does; stopped by `stop`."""

    def __init__(self, root, work):
        self.dir = Path(tempfile.mkdtemp(prefix="wfs-bench-nginx-", dir=work))
        (self.dir / "tmp").mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        d = self.dir
        (d / "nginx.conf").write_text(
            f"user root; daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n"
            f"  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n"
            "  log_format counted '$request_method $uri $status \"$http_range\"';\n"
            f"  access_log {d}/access.log counted;\n"
            "  default_type application/octet-stream; sendfile on; keepalive_requests 100000;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {root}; }}\n"
            "}\n")
        self.proc = subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def requests(self):
        """The access log's lines so far."""
        log_file = self.dir / "access.log"
        return log_file.read_text().splitlines() if log_file.exists() else []

    def stop(self):
        self.proc.terminate()  # SIGTERM: the master stops its worker before it exits
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for_port(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: nothing listens on 127.0.0.1:{port}")


class DelayProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` that models a link with `rtt` seconds of
    round-trip latency and no bandwidth limit (`tc netem` needs a kernel module this VM lacks).
    Every chunk of bytes, in either direction, is forwarded rtt/2 after it arrived, without
    holding back what arrives meanwhile: a request reaches the server rtt/2 after it was sent,
    and its response starts arriving rtt/2 after the server sent it, then streams at full speed.
    A new connection's first bytes also wait one rtt (the TCP handshake). With rtt=0 it merely
    relays, which shows whether the proxy itself limits throughput."""

    CHUNK = 1 << 20

    def __init__(self, upstream, rtt):
        self.upstream, self.rtt = upstream, rtt
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client):
        if self.rtt:
            time.sleep(self.rtt)
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for src, dst in ((client, server), (server, client)):
            if self.rtt:
                pending = queue.SimpleQueue()
                threading.Thread(target=self._receive, args=(src, pending), daemon=True).start()
                threading.Thread(target=self._send_late, args=(pending, dst), daemon=True).start()
            else:
                threading.Thread(target=self._relay, args=(src, dst), daemon=True).start()

    @staticmethod
    def _close(src, dst):
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass

    def _relay(self, src, dst):
        buf = memoryview(bytearray(self.CHUNK))
        try:
            while n := src.recv_into(buf):
                dst.sendall(buf[:n])
        except OSError:
            pass
        self._close(src, dst)

    def _receive(self, src, pending):
        try:
            while data := src.recv(self.CHUNK):
                pending.put((time.monotonic() + self.rtt / 2, data))
        except OSError:
            pass
        pending.put((0, b""))

    def _send_late(self, pending, dst):
        try:
            while True:
                due, data = pending.get()
                if not data:
                    break
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.listener.close()


def timed_together(cmds):
    """Seconds until every one of the commands, started at once, is done."""
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd) for cmd in cmds]
    if any(p.wait() for p in procs):
        sys.exit(f"bench: failed: {cmds}")
    return time.perf_counter() - t


def null_device(work):
    """/dev/null, or, where that is not a character device (in some containers it is a plain file,
    and what is written to it is kept in memory), a null device of our own made with mknod."""
    if stat.S_ISCHR(os.stat("/dev/null").st_mode):
        return "/dev/null"
    path = work / "null"
    if not path.exists():
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return str(path)


FIRST_TENSOR = "import sys\nfrom safetensors import safe_open\nwith safe_open(sys.argv[1], 'numpy') as f: f.get_tensor(sys.argv[2])\n"


def fig_remote(w, work, layers, runs, res, rtts=(0.0, 0.040)):
    """(12) The safetensors model of figure 9 served by nginx on 127.0.0.1: time from `wfs mount
    URL` to a small tensor's bytes vs `curl` of the whole file + safe_open(...).get_tensor, and a
    cold sequential read of the 256 MiB tensor vs `curl -r` of the same range; directly and with
    40 ms of round-trip latency added by `DelayProxy`."""
    missing = [tool for tool in ("nginx", "curl") if not shutil.which(tool)]
    if missing:
        log(f"  skipped: {' and '.join(missing)} not installed (apt-get install {' '.join(missing)})")
        return
    src = work / "model.safetensors"
    if not src.exists():
        log(f"  writing {src} ...")
        write_safetensors(src, layers)
    with open(src, "rb") as f:
        hlen = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(hlen))
    tensors = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"])
    big_name, big = max(tensors, key=lambda kv: kv[1]["data_offsets"][1] - kv[1]["data_offsets"][0])
    # A tensor of an ordinary layer (figure 9's layers after the large ones), as one reads first.
    small_name = "model." + layers[5][1][0][0].removesuffix(":0").replace("/", ".")
    small = header[small_name]
    raw = lambda name: "tensors/" + name.replace(".", "/") + ".raw"
    size = lambda e: e["data_offsets"][1] - e["data_offsets"][0]
    begin, end = (8 + hlen + o for o in big["data_offsets"])
    # Two of the medium tensors, read at the same time (a loader reading tensors in parallel).
    pair = [name for name, _ in tensors if name.startswith("model.big_dense_") and name.endswith(".kernel")][:2]
    pair_ranges = [tuple(8 + hlen + o for o in header[name]["data_offsets"]) for name in pair]
    pair_bytes = sum(e - b for b, e in pair_ranges)
    www = work / "www"
    www.mkdir(exist_ok=True)
    if not (www / src.name).exists():
        os.link(src, www / src.name)
    warm(src)
    null = null_device(work)
    nginx = Nginx(www, work)
    download = work / "downloaded.safetensors"
    big_dd = ["dd", f"if={w.mnt / raw(big_name)}", f"of={null}", "bs=16M", "status=none"]
    try:
        # Is the proxy itself a bottleneck? curl of the 256 MiB range, direct and relayed.
        relay = DelayProxy(nginx.port, 0)
        range_curl = lambda port: timed(["curl", "-sSf", "-r", f"{begin}-{end - 1}", "-o", null,
                                          f"http://127.0.0.1:{port}/{src.name}"])
        def wfs_dd(port):
            w.mount(f"http://127.0.0.1:{port}/{src.name}")
            t = timed(big_dd)
            w.umount()
            return t
        direct, relayed, wfs_direct, wfs_relayed = [], [], [], []
        for _ in range(runs):
            direct.append(range_curl(nginx.port))
            relayed.append(range_curl(relay.port))
            wfs_direct.append(wfs_dd(nginx.port))
            wfs_relayed.append(wfs_dd(relay.port))
        relay.close()
        for who, through, straight in (("`curl -r`", relayed, direct), ("wfs (`dd`)", wfs_relayed, wfs_direct)):
            r, d = median(through), median(straight)
            res.add(12, f"(limit) {who} of the {human(end - begin)} range through the latency proxy set to 0 ms vs "
                        f"straight from nginx (the proxy's own cost)", mbs(end - begin, r), mbs(end - begin, d),
                    f"{d / r:.0%}", "", None)
        for rtt in rtts:
            proxy = DelayProxy(nginx.port, rtt) if rtt else None
            port = proxy.port if proxy else nginx.port
            url = f"http://127.0.0.1:{port}/{src.name}"
            link = f"{rtt * 1000:.0f} ms RTT (proxy)" if rtt else "127.0.0.1"
            first, fetch_load, fetch, seq, ranged, mount_requests, both, both_curl = [], [], [], [], [], [], [], []
            for _ in range(runs):
                w.mount(url)
                both.append(timed_together([["dd", f"if={w.mnt / raw(name)}", f"of={null}", "bs=16M", "status=none"]
                                            for name in pair]))
                w.umount()
                both_curl.append(timed_together([["curl", "-sSf", "-r", f"{b}-{e - 1}", "-o", null, url]
                                                 for b, e in pair_ranges]))
                before = len(nginx.requests())
                t = time.perf_counter()
                w.mount(url)
                with open(w.mnt / raw(small_name), "rb") as f:
                    while f.read(MiB):
                        pass
                first.append(time.perf_counter() - t)
                mount_requests.append(len(nginx.requests()) - before)
                w.umount()
                t = time.perf_counter()
                subprocess.run(["curl", "-sSf", "-o", str(download), url], check=True)
                fetch.append(time.perf_counter() - t)
                subprocess.run([sys.executable, "-c", FIRST_TENSOR, str(download), small_name], check=True)
                fetch_load.append(time.perf_counter() - t)
                download.unlink()
                seq.append(wfs_dd(port))
                ranged.append(range_curl(port))
            f_, fl, fe, s, rg = map(median, (first, fetch_load, fetch, seq, ranged))
            res.add(12, f"{link}: `wfs mount URL` of a {human(src.stat().st_size)}, {len(tensors)}-tensor safetensors "
                        f"file + read `{small_name}` ({human(size(small))}) from its `.raw` "
                        f"({median(mount_requests):.0f} requests) "
                        f"vs `curl -o` of the file + `safe_open(...).get_tensor` (curl alone {ms(fe)})",
                    ms(f_), ms(fl), f"{fl / f_:.0f}x faster", ">= 50x", fl / f_ >= 50)
            res.add(12, f"{link}: `dd bs=16M` of the {human(end - begin)} tensor's `.raw` (fresh mount) vs `curl -r` "
                        f"of the same byte range to /dev/null", mbs(end - begin, s), mbs(end - begin, rg),
                    f"{rg / s:.0%}", ">= 70%", rg / s >= 0.7)
            bt, bc = median(both), median(both_curl)
            res.add(12, f"{link}: 2 readers at once, `dd` of two {human(pair_bytes // 2)} tensors' `.raw` (fresh mount) vs 2 "
                        f"`curl -r` at once", mbs(pair_bytes, bt), mbs(pair_bytes, bc), f"{bc / bt:.0%}", "", None)
            if not rtt:
                direct_range = rg
            if proxy:
                proxy.close()
        if CAN_DROP:
            # The FUSE side alone: the tensor read again from wfs's block cache, no requests.
            # Last, since dropping the page cache makes everything after it start cold.
            served = []
            for _ in range(runs):
                w.mount(f"http://127.0.0.1:{nginx.port}/{src.name}", "--cache-size", "1G")
                subprocess.run(big_dd, check=True)
                drop_caches()
                served.append(timed(big_dd))
                w.umount()
            sv = median(served)
            res.add(12, "(limit) 127.0.0.1: the same `dd` again, from wfs's block cache (`--cache-size 1G`, kernel page "
                        "cache dropped; FUSE alone, no requests) vs `curl -r` straight from nginx", mbs(end - begin, sv),
                    mbs(end - begin, direct_range), f"{direct_range / sv:.0%}", "", None)
    finally:
        w.umount()
        nginx.stop()
        download.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- GGUF (figure 10)

GGUF_TYPES = ("q4_k", "q8_0")
DECODE_RUN = 64 * 1024  # bytes of float32 wfs decodes together (src/formats/gguf.rs DECODE_UNIT)
DEQUANTIZE = """import sys, time, gguf
r = gguf.GGUFReader(sys.argv[1])
t = next(t for t in r.tensors if t.name == sys.argv[2])
start = time.perf_counter()
gguf.quants.dequantize(t.data, t.tensor_type)
print(time.perf_counter() - start)
"""


def make_gguf(work, values_bytes):
    """A GGUF (written by gguf-py) with one Q4_K and one Q8_0 tensor of `values_bytes` of float32
    each, random quants and finite scales, plus eight small Q4_K tensors."""
    import gguf
    path = work / f"model_{values_bytes // MiB}M.gguf"
    if path.exists():
        return path
    rng = np.random.default_rng(8)
    w = gguf.GGUFWriter(str(path), "llama")
    shapes = [(name, values_bytes // 4) for name in GGUF_TYPES] + [(f"small{i}", 1 << 20) for i in range(8)]
    for name, elems in shapes:
        qtype = gguf.GGMLQuantizationType.Q8_0 if name == "q8_0" else gguf.GGMLQuantizationType.Q4_K
        per, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, (elems // per, size), dtype=np.uint8)
        scales = rng.uniform(0.001, 0.01, (elems // per, 2)).astype(np.float16).view(np.uint8)
        blocks[:, 0:4 if qtype == gguf.GGMLQuantizationType.Q4_K else 2] = scales[:, :4 if qtype == gguf.GGMLQuantizationType.Q4_K else 2]
        w.add_tensor(f"blk.{name}.weight", blocks.reshape(4096, -1), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def fig_gguf(w, work, total, runs, res):
    try:
        import gguf  # noqa: F401
    except ImportError:
        log("  skipped: the gguf package is not installed (pip install gguf)")
        return
    nbytes = min(total, 256 * MiB)
    src = make_gguf(work, nbytes)
    rel = {name: f"tensors/blk/{name}/weight.npy" for name in GGUF_TYPES}
    for name in GGUF_TYPES:
        cold, warm_t, base = [], [], []
        for _ in range(runs):
            for kind, times in (("cold", cold), ("warm", warm_t)):
                if kind == "cold":
                    drop_caches()
                else:
                    warm(src)
                w.mount(src)
                times.append(timed(["cat", str(w.mnt / rel[name])], stdout=subprocess.DEVNULL))
                w.umount()
            warm(src)
            out = subprocess.run([sys.executable, "-c", DEQUANTIZE, str(src), f"blk.{name}.weight"],
                                 check=True, capture_output=True, text=True)
            base.append(float(out.stdout))
        c, h, b = median(cold), median(warm_t), median(base)
        res.add(10, f"`cat` of a {human(nbytes)}-as-float32 {name} tensor's .npy, cold (fresh mount, cache dropped)",
                mbs(nbytes, c), "", "", "", None)
        res.add(10, f"`cat` of the {name} .npy, source in page cache (fresh mount) vs `gguf.quants.dequantize`",
                mbs(nbytes, h), mbs(nbytes, b), f"{b / h:.1f}x faster", ">= 5x", b / h >= 5)
    seq, par = [], []
    for _ in range(runs):
        warm(src)
        w.mount(src)
        seq.append(sum(timed(["cat", str(w.mnt / rel[n])], stdout=subprocess.DEVNULL) for n in GGUF_TYPES))
        w.umount()
        w.mount(src)
        t = time.perf_counter()
        ps = [subprocess.Popen(["cat", str(w.mnt / rel[n])], stdout=subprocess.DEVNULL) for n in GGUF_TYPES]
        for p in ps:
            p.wait()
        par.append(time.perf_counter() - t)
        w.umount()
    s_, p_ = median(seq), median(par)
    res.add(10, "2 concurrent readers (the q4_k and the q8_0 .npy) vs one after the other, source in page cache",
            mbs(2 * nbytes, p_), mbs(2 * nbytes, s_), f"{s_ / p_:.2f}x faster", "> 1x", s_ / p_ > 1)
    # Random 4 KiB reads of the q4_k .npy: decode runs per read against the runs the range touches.
    rng = random.Random(8)
    per_read, per_decodes, touched = [], [], 0.0
    for _ in range(runs):
        w.mount(src)
        path = w.mnt / rel["q4_k"]
        header = path.stat().st_size - nbytes
        # Page-aligned in the file, as the kernel asks for them; the data start `header` bytes in.
        offsets = [rng.randrange(1, (header + nbytes) // 4096) * 4096 for _ in range(300)]
        touched = sum((o - header + 4095) // DECODE_RUN - (o - header) // DECODE_RUN + 1 for o in offsets) / len(offsets)
        fd = os.open(path, os.O_RDONLY)
        d0 = w.decodes()
        t = time.perf_counter()
        for o in offsets:
            os.pread(fd, 4096, o)
        per_read.append((time.perf_counter() - t) / len(offsets))
        per_decodes.append((w.decodes() - d0) / len(offsets))
        os.close(fd)
        w.umount()
    d = median(per_decodes)
    res.add(10, f"random 4 KiB pread of the q4_k .npy: runs decoded per read ({DECODE_RUN // 1024} KiB runs; "
               f"time per read {ms(median(per_read))})", f"{d:.2f}", f"{touched:.2f} runs touched", "",
            "<= runs touched", d <= touched + 1e-9)
    cache = 64 * MiB
    peaks = []
    for _ in range(runs):
        proc = subprocess.Popen([w.exe, "mount", str(src), str(w.mnt), "-f", "--cache-size", str(cache)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(500):
            if os.path.ismount(w.mnt):
                break
            time.sleep(0.01)
        read_all(tensor_files(w.mnt, ".npy") + tensor_files(w.mnt, ".raw"))
        peaks.append(vm_hwm(proc.pid))
        w.umount()
        proc.wait(timeout=30)
    p = median(peaks)
    res.add(10, f"daemon peak RSS (VmHWM), `--cache-size {cache // MiB}M`, every .npy and .raw of the GGUF "
               f"({human(2 * nbytes + 8 * 4 * MiB)} of float32) read by 4 threads", human(p), "", "",
            f"<= {human(cache + 64 * MiB)}", p <= cache + 64 * MiB)


# ----------------------------------------------------------------------------- main

def machine():
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    fs = subprocess.run(["df", "--output=fstype", str(Path(tempfile.gettempdir()))],
                        capture_output=True, text=True).stdout.split()[-1:] or ["?"]
    return f"{os.cpu_count()} CPUs ({cpu}), {human(mem)} RAM, kernel {os.uname().release}, temp dir on {fs[0]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="bytes of tensors per generated model (default 1G)")
    ap.add_argument("--tensors", type=int, default=1000, help="tensors per generated model (default 1000)")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure; the median is reported (default 5)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --size 64M --runs 3")
    ap.add_argument("--wfs", help="wfs binary (default: build and use target/release/wfs)")
    ap.add_argument("--workdir", help="keep generated inputs here and reuse them across runs")
    ap.add_argument("--torch-python", default=shutil.which("python3"),
                    help="a Python with torch, for figure (t) (--only 11): writes the state dict and is its baseline")
    ap.add_argument("--only", help="comma-separated figure numbers to run, 7 for the checkpoint (c), 8 for "
                    "model.safetensors and convert, 9 for safetensors sources (s), 10 for GGUF, "
                    "11 for torch (t; needs --torch-python), 12 for remote sources (nginx + curl), 13 for `wfs diff` "
                    "(default 1-10)")
    ap.add_argument("--out-dir", help="where figure 3 extracts to (default /dev/shm: tmpfs, so that the "
                    "destination disk, not the reader, is not what is measured)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.runs = "64M", 3
    total = parse_size(args.size)
    only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 11))
    check_figure_modules(only)

    out_root = Path(args.out_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()))
    exe = locate_wfs(args.wfs)
    tmp = Path(tempfile.mkdtemp(prefix="wfs-bench-"))
    work = Path(args.workdir).resolve() if args.workdir else tmp
    work.mkdir(parents=True, exist_ok=True)
    w = Wfs(exe, tmp)
    res = Results()
    started = time.perf_counter()
    try:
        if not CAN_DROP:
            log("WARNING: not root: cannot drop the page cache; 'cold' figures are warm")
        if 11 in only:
            log("figure (t): torch state dict")
            fig_torch(w, work, total, args.tensors, args.runs, res, args.torch_python)
        if only & {1, 2, 3, 4, 5, 6, 8}:  # the figures that read the generated .h5 files
            src, layers, n, big, meds = make_inputs(work, total, args.tensors)
            warm(src["plain"])
        else:
            layers = plan(total, args.tensors)
            n = sum(len(w) for _, w in layers)
        if 1 in only:
            log("figure 1: mount to ready"); fig_mount(w, src["plain"], n, args.runs, res)
        if 2 in only:
            log("figure 2: sequential read"); fig_sequential(w, src["plain"], work, big, args.runs, res)
        if 3 in only:
            log("figure 3: extract everything")
            fig_extract(w, src["plain"], out_root, "contiguous", args.runs, res)
            fig_extract(w, src["gzip"], out_root, "gzip", args.runs, res)
        if 4 in only:
            log("figure 4: random 4 KiB reads in a gzip-chunked tensor")
            fig_random(w, [("gzip, row chunks", src["gzip"]), ("gzip, h5py auto chunks", src["auto"])],
                       big, args.runs, res)
        if 5 in only:
            log("figure 5: peak RSS"); fig_rss(w, src["gzip"], args.runs, res)
        if 6 in only:
            log("figure 6: concurrent readers")
            fig_concurrent(w, src["plain"], "contiguous", meds, args.runs, res)
            fig_concurrent(w, src["gzip"], "gzip", meds, args.runs, res)
        if 7 in only:
            log("figure (c): 10,000-variable checkpoint"); fig_checkpoint(w, work, total, args.runs, res)
        if 8 in only:
            log("figure 8: model.safetensors and wfs convert"); fig_safetensors(w, src["plain"], out_root, args.runs, res)
        if 9 in only:
            log("figure (s): safetensors"); fig_safetensors_source(w, work, layers, n, args.runs, res)
        if 10 in only:
            log("figure 10: GGUF dequantization"); fig_gguf(w, work, total, args.runs, res)
        if 12 in only:
            log("figure 12: remote (nginx on 127.0.0.1)"); fig_remote(w, work, layers, args.runs, res)
        if 13 in only:
            log("figure 13: wfs diff"); fig_diff(w, work, layers, args.runs, res)
    finally:
        w.umount()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wfs benchmark: {' '.join(sys.argv[1:]) or '(defaults)'}; inputs {human(total)} x {n} tensors; "
          f"median of {args.runs} runs; {time.perf_counter() - started:.0f} s")
    print(f"machine: {machine()}{'' if CAN_DROP else '; page cache NOT dropped (not root)'}")
    print()
    print(res.table())


if __name__ == "__main__":
    main()
