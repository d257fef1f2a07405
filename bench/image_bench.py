"""Image transfer benchmarks, each a ratio against a baseline measured in the same run.

1. Import of a ~100 MB layer tar (many small files and a few big ones) into the layer
   store, against ``tar -x`` of the same file (goal: speed >= 0.7x tar's).
2. Pull of an image with that layer from a local registry (Debian's docker-registry on
   127.0.0.1) into an empty root, against ``skopeo copy docker://... oci:DIR`` of the
   same image (goal: speed >= 0.7x skopeo's).

Ratios are baseline time / chanbox time (1.0 = as fast, higher = faster).  Run as root:
``.venv/bin/python bench/image_bench.py [--runs N]``.  Everything it makes lives in one
``cbx-bench-*`` directory, removed at the end; the registry it starts is stopped.

Every timed run writes into a filesystem of its own, made for it: an ext4 (mkfs
defaults, journal on) on a loop device whose backing file sits in a tmpfs.  On a
long-lived disk filesystem, file creation slows down for a while after many files
were deleted (ext4 without a journal scans recently deleted inodes), which made the
same tool's time swing 10x between runs; a fresh filesystem per run measures each
tool's own work, with the kernel's ext4 costs but not the disk's latency.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import fsutil  # noqa: E402
from engine.images import ImageStore  # noqa: E402


def make_layer(path: str, base: str) -> int:
    """A layer tar of ~100 MB: 12000 files of 1-6 kB in 120 dirs, plus 6 files of 8 MB."""
    src = os.path.join(base, "layer-src")
    rnd = os.urandom(1 << 20)
    for d in range(120):
        os.makedirs(f"{src}/usr/share/d{d}")
        for i in range(100):
            n = 1000 + (d * 100 + i) * 37 % 5000
            off = (d * 7919 + i * 104729) % ((1 << 20) - n)
            with open(f"{src}/usr/share/d{d}/f{i}.txt", "wb") as f:
                f.write(rnd[off:off + n])
    os.makedirs(f"{src}/opt/big")
    for i in range(6):
        with open(f"{src}/opt/big/blob{i}", "wb") as f:
            f.write(os.urandom(8 << 20) if i % 2 else (b"compressible text line\n" * 400_000)[: 8 << 20])
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name in sorted(os.listdir(src)):
            t.add(os.path.join(src, name), name)
    # src stays until the end: removing 12000 files now would slow the runs' open()s
    return os.path.getsize(path)


_fs_count = itertools.count()


@contextlib.contextmanager
def fresh_fs(base: str):  # type: ignore[no-untyped-def]
    """A new, empty ext4 (on a loop device backed by a tmpfs file) mounted under ``base``."""
    n = next(_fs_count)
    mem, mnt = os.path.join(base, f"mem-{n}"), os.path.join(base, f"fs-{n}")
    os.mkdir(mem)
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", f"cbx-bench-{n}", mem], check=True)
    try:
        img = os.path.join(mem, "ext4.img")
        with open(img, "wb") as f:
            f.truncate(900 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
        subprocess.run(["mount", "-o", "loop", img, mnt], check=True)  # the loop device goes with it
        try:
            subprocess.run(["sync"], check=True)
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        subprocess.run(["umount", mem], check=True)
        os.rmdir(mnt)
        os.rmdir(mem)


def interleaved(base: str, sides: dict, runs: int) -> dict[str, float]:  # type: ignore[type-arg]
    """Median time of each side, run by run in turn, each run in a fresh filesystem."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(runs):
        for name, fn in sides.items():
            with fresh_fs(base) as dest:
                t = time.perf_counter()
                fn(dest)
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_import(base: str, tar_path: str, runs: int) -> tuple[float, float]:
    """Median times of ``tar -x`` and of a layer import."""

    def tar_x(dest: str) -> None:
        subprocess.run(["tar", "-xf", tar_path, "-C", dest], check=True)

    def ours(dest: str) -> None:
        store = ImageStore(dest)
        with open(tar_path, "rb") as f:
            store.layers.add_from_tar(f)

    t = interleaved(base, {"tar": tar_x, "ours": ours}, runs)
    return t["tar"], t["ours"]


def bench_pull(base: str, tar_path: str, runs: int) -> tuple[float, float]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from engine.distribution import pull, push
    from tests.engine.test_registry import Registry

    reg = Registry()
    try:
        src = ImageStore(os.path.join(base, "src"))
        with open(tar_path, "rb") as f:
            img = src.import_stream(f, f"{reg.host}/bench/big:v1")
        ref = img.tags[0]
        push(src, ref, insecure=True)

        def skopeo(dest: str) -> None:
            subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
                            f"oci:{dest}/oci:v1"], check=True)

        def ours(dest: str) -> None:
            pull(ImageStore(dest), ref, insecure=True)

        t = interleaved(base, {"skopeo": skopeo, "ours": ours}, runs)
        return t["skopeo"], t["ours"]
    finally:
        reg.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=("import", "pull"), help="run one benchmark only")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="cbx-bench-")
    try:
        tar_path = os.path.join(base, "layer.tar")
        size = make_layer(tar_path, base)
        print(f"layer: {size / 1e6:.0f} MB, 12006 files")
        if args.only in (None, "import"):
            t_tar, t_ours = bench_import(base, tar_path, args.runs)
            print(f"import:  tar -x {t_tar:.3f} s   chanbox {t_ours:.3f} s   speed ratio {t_tar / t_ours:.2f}x "
                  f"(goal >= 0.7x)")
        if args.only in (None, "pull"):
            t_sk, t_pull = bench_pull(base, tar_path, args.runs)
            print(f"pull:    skopeo copy {t_sk:.3f} s   chanbox pull {t_pull:.3f} s   speed ratio "
                  f"{t_sk / t_pull:.2f}x (goal >= 0.7x)")
    finally:
        fsutil.remove_tree(base)


if __name__ == "__main__":
    main()
