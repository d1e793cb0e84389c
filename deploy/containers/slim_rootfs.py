#!/usr/bin/env python3
"""Assembles a minimal root file system: ELF files plus the shared libraries they load.

Runs inside a Debian build stage that has every runtime package installed
(the Containerfile's `runtime` stage plus gcc and python3):

  slim_rootfs.py OUT [--stub SONAME]... [--data PATH]... ELF...

- Each ELF (program, plugin, dlopen'ed module) is copied to OUT at the same
  path, and its DT_NEEDED libraries are followed to the closure. A soname is
  resolved the way the dynamic loader resolves it here: the file's
  DT_RUNPATH, then ld.so.cache (`ldconfig -p`), then the default folders; so
  libblas.so.3 is whatever the alternatives system points at. Each library
  is written under its soname path, symlinks dereferenced.
- The program interpreter (PT_INTERP, /lib64/ld-linux-x86-64.so.2) is copied.
- A --stub SONAME is not copied and its dependencies are not followed.
  Instead, a small library with the same soname and symbol versions is built
  (gcc), defining every strong function and object the real one exports,
  except those a kept library defines too (a stub never interposes on real
  code). Loading and symbol binding succeed; calling any of its functions prints
  "<soname> is left out of this image (<symbol> called)" and aborts. It is for
  libraries that a kept library links (so the loader needs them) but whose
  code the workload never runs.
- --data PATH copies a plain file or directory (not followed for libraries).
- OUT/etc/ld.so.conf lists the library folders, and `ldconfig -r OUT` writes
  OUT/etc/ld.so.cache, so the loader finds them as it does on Debian.
- The root is merged-/usr, like Debian 12's: bin, lib, lib64 and sbin are
  symlinks into usr.

Prints one line per file (bytes, path, and who needs it), largest first, and
the totals to stdout; exits non-zero on a library it cannot resolve or a
--stub nothing needs.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

MERGED = ("bin", "lib", "lib64", "sbin")
DEFAULT_FOLDERS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def ld_cache() -> dict:
    """soname -> path, x86-64 entries of ld.so.cache, first one wins (as ld.so)."""
    cache = {}
    for line in run("ldconfig", "-p").splitlines():
        m = re.match(r"\s+(\S+) \(([^)]*)\) => (\S+)$", line)
        if m and "x86-64" in m.group(2):
            cache.setdefault(m.group(1), m.group(3))
    return cache


def dynamic(path: str):
    """(DT_NEEDED sonames, DT_RUNPATH folders with $ORIGIN expanded) of PATH."""
    text = run("readelf", "-dW", path)
    runpath = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r\w*path: \[([^\]]*)\]", text)
    origin = os.path.dirname(os.path.realpath(path))
    folders = [d.replace("$ORIGIN", origin) for d in runpath.group(1).split(":")] if runpath else []
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", text), folders


def resolve(soname: str, runpath: list, cache: dict):
    """The file the loader opens for SONAME: RUNPATH, then ld.so.cache, then the default folders."""
    for folder in runpath:
        if os.path.isfile(os.path.join(folder, soname)):
            return os.path.join(folder, soname)
    if soname in cache:
        return cache[soname]
    for folder in DEFAULT_FOLDERS:
        if os.path.isfile(os.path.join(folder, soname)):
            return os.path.join(folder, soname)
    return None


def interpreter(path: str):
    m = re.search(r"Requesting program interpreter: ([^\]]+)\]", run("readelf", "-lW", path))
    return m.group(1) if m else None


def in_root(out: str, path: str) -> str:
    """Where PATH goes under OUT, with /lib, /lib64, /bin, /sbin folded into /usr."""
    parts = os.path.normpath(path).lstrip("/").split("/")
    if parts[0] in MERGED:
        parts.insert(0, "usr")
    return os.path.join(out, *parts)


def place(out: str, src: str, dest: str, mode=None) -> str:
    """Copies the file SRC points at to DEST's place in OUT; returns that path."""
    target = in_root(out, dest)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(os.path.realpath(src), target)
    os.chmod(target, mode if mode is not None else os.stat(os.path.realpath(src)).st_mode & 0o755)
    return target


def exports(path: str):
    """(type, binding, name, version or None, size) of each symbol PATH defines."""
    for line in run("readelf", "--dyn-syms", "-W", path).splitlines():
        f = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(f) < 8 or not f[0].endswith(":") or f[6] in ("UND", "ABS"):
            continue
        name, _, version = f[7].partition("@")
        size = int(f[2], 0) if f[2].isdigit() or f[2].startswith("0x") else 0
        yield f[3], f[4], name, version.lstrip("@") or None, size


def stub_library(real: str, soname: str, target: str, workdir: str, defined_elsewhere: set) -> int:
    """Builds TARGET: SONAME's strong exports, functions that abort when called.

    Leaves out what DEFINED_ELSEWHERE (names the kept libraries define) has,
    so that a stub never interposes on a real definition; returns how many.
    """
    versions = set()
    funcs, objects, tls = [], [], []
    left_out = 0
    for kind, bind, name, version, size in exports(real):
        # Weak and unique symbols are vague linkage (inline functions,
        # template vtables): every user has its own copy, and a zero-filled
        # or aborting one here could be chosen over a real one elsewhere.
        if bind != "GLOBAL" or kind not in ("FUNC", "IFUNC", "OBJECT", "TLS"):
            continue
        if name in defined_elsewhere:
            left_out += 1
            continue
        if version == soname:
            version = None
        if version:
            versions.add((version, name))
        if kind in ("FUNC", "IFUNC"):
            funcs.append(name)
        elif kind == "OBJECT":
            objects.append((name, size))
        elif kind == "TLS":
            tls.append((name, size))
    asm = ['\t.section .rodata.str1.1,"aMS",@progbits,1',
           f'.Lsoname: .asciz "{soname}"']
    for i, name in enumerate(funcs):
        asm.append(f'.Lname{i}: .asciz "{name}"')
    asm.append("\t.text")
    for i, name in enumerate(funcs):
        asm += [f'\t.globl "{name}"', f'\t.type "{name}", @function', f'"{name}":',
                f"\tleaq .Lname{i}(%rip), %rsi", "\tleaq .Lsoname(%rip), %rdi",
                "\tjmp imagesearch_stub_called", f'\t.size "{name}", .-"{name}"']
    asm.append("\t.data")
    for name, size in objects:
        asm += ["\t.p2align 4", f'\t.globl "{name}"', f'\t.type "{name}", @object',
                f'\t.size "{name}", {size}', f'"{name}":', f"\t.zero {max(size, 1)}"]
    asm.append('\t.section .tbss,"awT",@nobits')
    for name, size in tls:
        asm += ["\t.p2align 4", f'\t.globl "{name}"', f'\t.type "{name}", @tls_object',
                f'\t.size "{name}", {size}', f'"{name}":', f"\t.zero {max(size, 1)}"]
    asm.append('\t.section .note.GNU-stack,"",@progbits')
    helper = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((visibility("hidden"), noreturn))
void imagesearch_stub_called(const char* soname, const char* symbol) {
  const char* parts[] = {"imagesearch: ", soname, " is left out of this image (", symbol,
                         " called); use the Debian-based build\n"};
  for (size_t i = 0; i < sizeof parts / sizeof *parts; ++i) {
    ssize_t ignored = write(2, parts[i], strlen(parts[i]));
    (void)ignored;
  }
  abort();
}
"""
    base = os.path.join(workdir, soname)
    with open(base + ".s", "w") as f:
        f.write("\n".join(asm) + "\n")
    with open(base + ".c", "w") as f:
        f.write(helper)
    args = ["gcc", "-shared", "-fPIC", "-O2", "-nostartfiles", "-Wl,-soname," + soname,
            "-Wl,-z,now", "-Wl,-z,noexecstack", "-o", target, base + ".s", base + ".c"]
    if versions:
        by_version = {}
        for version, name in versions:
            by_version.setdefault(version, []).append(name)
        script = []
        for version in sorted(by_version):
            script.append(version + " {\n  global:\n" +
                          "".join(f'    "{n}";\n' for n in sorted(by_version[version])) +
                          "  local: *;\n};")
        with open(base + ".map", "w") as f:
            f.write("\n".join(script) + "\n")
        args.append("-Wl,--version-script=" + base + ".map")
    subprocess.run(args, check=True)
    subprocess.run(["strip", "--strip-unneeded", target], check=True)
    return left_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("elf", nargs="+")
    parser.add_argument("--stub", action="append", default=[])
    parser.add_argument("--data", action="append", default=[])
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "usr"), exist_ok=True)
    for d in MERGED:
        os.makedirs(os.path.join(out, "usr", d), exist_ok=True)
        if not os.path.lexists(os.path.join(out, d)):
            os.symlink("usr/" + d, os.path.join(out, d))

    cache = ld_cache()
    stubs = set(args.stub)
    placed = set()  # paths in root
    kept = []  # the real ELF files copied
    pending_stubs = []  # (real library, soname, path in root)
    needed_by = {}  # path in root -> names of the files that need it
    folders = set()
    missing = []
    workdir = tempfile.mkdtemp()
    queue = []
    for elf in args.elf:
        placed.add(in_root(out, elf))
        place(out, elf, elf)
        queue.append(elf)
        kept.append(elf)
        interp = interpreter(elf)
        if interp and in_root(out, interp) not in placed:
            placed.add(in_root(out, interp))
            place(out, interp, interp)
            needed_by.setdefault(in_root(out, interp), set()).add("PT_INTERP")
    while queue:
        elf = queue.pop(0)
        sonames, runpath = dynamic(elf)
        for soname in sonames:
            path = resolve(soname, runpath, cache)
            if path is None:
                missing.append(f"{soname} (needed by {elf})")
                continue
            target = in_root(out, path)
            needed_by.setdefault(target, set()).add(os.path.basename(elf))
            folders.add(os.path.dirname(target)[len(out):])
            if target in placed:
                continue
            placed.add(target)
            if soname in stubs:
                pending_stubs.append((path, soname, target))
                stubs.discard(soname)
                needed_by[target].add("STUB")
            else:
                place(out, path, path, 0o644)
                queue.append(path)
                kept.append(path)
    defined = set()
    if pending_stubs:
        for path in kept:
            defined.update(name for _, _, name, _, _ in exports(path))
    for path, soname, target in pending_stubs:
        left_out = stub_library(path, soname, target, workdir, defined)
        if left_out:
            print(f"stub {soname}: {left_out} symbols left to the kept libraries that define them",
                  file=sys.stderr)
    shutil.rmtree(workdir)
    if missing:
        print("cannot resolve:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    if stubs:
        print("--stub for a library nothing needs: " + ", ".join(sorted(stubs)), file=sys.stderr)
        return 1
    for item in args.data:
        target = in_root(out, item)
        if os.path.isdir(item):
            shutil.copytree(item, target, symlinks=False, dirs_exist_ok=True)
        else:
            place(out, item, item)

    os.makedirs(os.path.join(out, "etc"), exist_ok=True)
    with open(os.path.join(out, "etc", "ld.so.conf"), "w") as f:
        f.write("".join(d + "\n" for d in sorted(folders)))
    subprocess.run(["ldconfig", "-r", out], check=True)

    rows = []
    for path in placed:
        why = ", ".join(sorted(needed_by.get(path, ())))
        rows.append((os.path.getsize(path), "/" + os.path.relpath(path, out), why))
    rows.sort(reverse=True)
    for size, rel, why in rows:
        print(f"{size:>11} {rel}" + (f"  <- {why}" if why else ""))
    total = sum(r[0] for r in rows)
    print(f"{total:>11} total: {len(rows)} files ({len(args.stub)} stubs) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
