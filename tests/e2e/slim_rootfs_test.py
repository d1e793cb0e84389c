#!/usr/bin/env python3
"""deploy/containers/slim_rootfs.py on this machine's real libraries.

  slim_rootfs_test.py SLIM_ROOTFS_PY IMAGESEARCH_QUERY TORCH_PLUGIN

1. The closure of imagesearch-query and the LibTorch plugin, with the
   Containerfile's stubs: LibTorch and OpenBLAS (behind libblas.so.3) are in
   it, GDAL, Qt and the real FFmpeg are not, each stub is small, the root
   has its own ld.so.cache, and (as root, in a chroot: nothing from the
   host's folders can fill a gap) imagesearch-query --help runs in it.
2. The stubs stand in for the real libraries: with only them on
   LD_LIBRARY_PATH, libtorch_cpu.so (linked -z now) loads and maps the stubs,
   so every symbol and symbol version it binds is there.
3. Calling a stub's function aborts with the message that names it.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_lib import check  # noqa: E402

CONTAINERFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                             "containers", "Containerfile")


def stub_libs():
    """The STUB_LIBS default of the Containerfile: the list the images use."""
    text = open(CONTAINERFILE).read()
    m = re.search(r'ARG STUB_LIBS="([^"]*)"', text)
    assert m, "no ARG STUB_LIBS in the Containerfile"
    return m.group(1).replace("\\\n", " ").split()


def main():
    slim, query, plugin = sys.argv[1:4]
    stubs = stub_libs()
    check(len(stubs) == 8, f"the Containerfile stubs {len(stubs)} libraries: {' '.join(stubs)}")
    work = tempfile.mkdtemp(prefix="slim_rootfs_test.")
    try:
        root = os.path.join(work, "root")
        args = [sys.executable, slim, root, query, plugin]
        for s in stubs:
            args += ["--stub", s]
        run = subprocess.run(args, capture_output=True, text=True)
        check(run.returncode == 0, f"slim_rootfs.py exits 0 ({run.stderr.strip()[-300:]})")
        listing = run.stdout.splitlines()
        files = {line.split()[1]: int(line.split()[0]) for line in listing[:-1]}
        lib = "/usr/lib/x86_64-linux-gnu/"
        check(files.get(lib + "libtorch_cpu.so.1.13", 0) > 50_000_000, "libtorch_cpu.so is in the closure")
        check(any(p.endswith("/libopenblas.so.0") for p in files), "OpenBLAS (behind libblas.so.3) is in it")
        check(not any(re.search(r"/lib(gdal|Qt5|x264|codec2)", p) for p in files),
              "no GDAL, Qt, x264 or codec2 in it")
        for s in stubs:
            size = files.get(lib + s)
            check(size is not None and size < 200_000, f"{s} is a stub of {size} bytes")
        check(os.path.isfile(os.path.join(root, "etc/ld.so.cache")), "the root has its own ld.so.cache")
        check(os.readlink(os.path.join(root, "lib64")) == "usr/lib64", "merged /usr: lib64 -> usr/lib64")
        if os.geteuid() == 0:
            r = subprocess.run(["chroot", root, query, "--help"], capture_output=True, text=True)
            check(r.stdout.startswith("imagesearch-query: ") or r.stderr.startswith("imagesearch-query: "),
                  f"imagesearch-query --help runs in a chroot of the root ({r.stderr[:200]})")
        else:
            print("skip: the chroot run needs root (chroot(2)); the closure checks above ran")

        # 2. The stubs alone, ahead of the real libraries.
        only_stubs = os.path.join(work, "stubs")
        os.mkdir(only_stubs)
        for s in stubs:
            shutil.copy(os.path.join(root, lib.lstrip("/"), s), only_stubs)
        code = ("import ctypes\n"
                "ctypes.CDLL('libtorch_cpu.so.1.13')\n"
                "print(''.join(l for l in open('/proc/self/maps') if '" + only_stubs + "' in l))\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=dict(os.environ, LD_LIBRARY_PATH=only_stubs))
        check(r.returncode == 0, f"libtorch_cpu.so loads with the stubs ({r.stderr.strip()[-300:]})")
        mapped = {os.path.basename(l.split()[-1]) for l in r.stdout.splitlines() if l.strip()}
        check(mapped == set(stubs), f"and maps all {len(stubs)} stubs ({len(mapped)} mapped)")

        # 3. A call into a stub.
        avutil = os.path.join(only_stubs, "libavutil.so.57")
        r = subprocess.run([sys.executable, "-c",
                            f"import ctypes; ctypes.CDLL('{avutil}').av_version_info()"],
                           capture_output=True, text=True)
        check(r.returncode == -signal.SIGABRT, f"av_version_info() in the stub aborts (status {r.returncode})")
        check("imagesearch: libavutil.so.57 is left out of this image (av_version_info called)" in r.stderr,
              "with a message naming the library and the function")
        v = subprocess.run(["readelf", "-V", avutil], capture_output=True, text=True).stdout
        check("LIBAVUTIL_57" in v, "the stub defines the real library's symbol version LIBAVUTIL_57")
    finally:
        shutil.rmtree(work)
    print("slim rootfs: passed")


if __name__ == "__main__":
    main()
