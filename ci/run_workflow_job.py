#!/usr/bin/env python3
"""Runs one job of a GitHub Actions workflow here, in a podman container, the
way GitHub's runner runs a job that has `container:`.

  * The container: the job's image (debian:12 is localhost/debian:12, made by
    ci/podman_base.sh, since no registry is reachable here), created with the
    job's container `options` exactly as the workflow writes them, with
    `tail -f /dev/null` as its first process, HOME=/github/home, CI=true,
    GITHUB_ACTIONS=true, and the workspace /__w/NAME/NAME as its working
    directory, RUNNER_TEMP=/__w/_temp.
  * Each step in order. A `run:` step runs through `podman exec` as
    `bash --noprofile --norc -e -o pipefail SCRIPT` (the runner's `shell:
    bash`), with the workflow's, the job's and the step's `env` (later ones
    win); GITHUB_ENV and GITHUB_PATH are honoured between steps. A `uses:`
    step has a local stand-in:
      actions/checkout         copies this working tree (tracked and untracked,
                               not ignored files, uncommitted changes included)
                               into the workspace, as a git repository of one
                               commit
      actions/cache            the cached `path` is a bind mount of a host
                               folder given with --cache PATH=HOST_DIR
      actions/upload-artifact  checks that `path` was made, and reports its size
    Any other action, a step with `if:`, another shell, or `${{ }}` in a run
    script, an env value or the container settings fails the check: there is
    no faithful stand-in for them here.
  * The job's timeout-minutes bounds the whole run.

Where it differs on purpose: the container shares the host's network
(--network=host; GitHub's runner uses a bridge network with the internet) and,
with --host-file NAME=PATH, the host's trust for it: PATH (a CA bundle the host
sets NAME to, e.g. NODE_EXTRA_CA_CERTS behind a TLS-inspecting proxy) is
mounted read-only and NAME names it in every step; and --env NAME=VALUE
overrides are applied after every `env` of the workflow (for a shorter run). The step scripts, the workspace and the build are under
a temporary folder, removed afterwards unless --keep.

  ci/run_workflow_job.py WORKFLOW JOB [--env NAME=VALUE]... [--cache PATH=HOST_DIR]...
                         [--host-file NAME=PATH]... [--image NAME=LOCAL_IMAGE]... [--keep]
Needs root (rootful podman), podman with runc, and python3-yaml.
"""
import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
EXPR = re.compile(r"\$\{\{")
CHECKOUT, CACHE, UPLOAD = "actions/checkout@", "actions/cache@", "actions/upload-artifact@"


class Unsupported(Exception):
    pass


def no_expressions(where, value):
    if isinstance(value, str) and EXPR.search(value):
        raise Unsupported(f"{where} uses an expression (${{{{ }}}}), which only GitHub evaluates: {value!r}")


def env_map(where, env):
    out = {}
    for k, v in (env or {}).items():
        v = str(v).lower() if isinstance(v, bool) else str(v)
        no_expressions(f"{where} env {k}", v)
        out[str(k)] = v
    return out


def log(msg):
    print(f"== [run_workflow_job] {msg}", flush=True)


def copy_working_tree(src, dst):
    """The files actions/checkout would give for this tree, as one commit."""
    files = subprocess.run(["git", "-C", src, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], check=True, capture_output=True).stdout
    names = [n for n in files.decode().split("\0") if n and os.path.lexists(os.path.join(src, n))]
    os.makedirs(dst, exist_ok=True)
    pack = subprocess.Popen(["tar", "-C", src, "--null", "-T", "-", "-cf", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    unpack = subprocess.Popen(["tar", "-C", dst, "-xf", "-"], stdin=pack.stdout)
    pack.stdout.close()
    pack.stdin.write("\0".join(names).encode())
    pack.stdin.close()
    if pack.wait() != 0 or unpack.wait() != 0:
        raise AssertionError(f"copying {src} into {dst} failed")
    git = ["git", "-C", dst, "-c", "user.name=run_workflow_job", "-c", "user.email=ci@localhost"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "working tree"], check=True)
    return len(names)


def read_env_file(path):
    """KEY=VALUE and KEY<<DELIMITER lines, as GITHUB_ENV holds them."""
    out, lines = {}, open(path).read().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delim = line.split("<<", 1)
            value = []
            i += 1
            while i < len(lines) and lines[i] != delim:
                value.append(lines[i])
                i += 1
            out[key] = "\n".join(value)
        elif "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
        i += 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workflow")
    ap.add_argument("job")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--cache", action="append", default=[], metavar="PATH=HOST_DIR")
    ap.add_argument("--host-file", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--image", action="append", default=["debian:12=localhost/debian:12"],
                    metavar="NAME=LOCAL_IMAGE")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    src = subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True, capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.abspath(args.workflow))).stdout.strip()
    name = os.path.basename(src.rstrip("/")) or "repo"
    with open(args.workflow) as f:
        wf = yaml.safe_load(f)
    job = (wf.get("jobs") or {}).get(args.job)
    if job is None:
        raise Unsupported(f"{args.workflow} has no job {args.job!r}")
    container = job.get("container")
    if isinstance(container, str):
        container = {"image": container}
    if not container:
        raise Unsupported(f"job {args.job} has no container: it runs on the runner's VM, not here")
    for key in ("image", "options"):
        no_expressions(f"container {key}", container.get(key))
    if set(container) - {"image", "options", "env"}:
        raise Unsupported(f"container settings {sorted(set(container) - {'image', 'options', 'env'})}")
    images = dict(i.split("=", 1) for i in args.image)
    if container["image"] not in images:
        raise Unsupported(f"no local image for {container['image']} (--image)")
    image = images[container["image"]]
    options = shlex.split(container.get("options") or "")
    shell = ((wf.get("defaults") or {}).get("run") or {}).get("shell")
    shell = ((job.get("defaults") or {}).get("run") or {}).get("shell", shell)
    base_env = {**env_map("workflow", wf.get("env")), **env_map("container", container.get("env")),
                **env_map("job", job.get("env"))}
    overrides = dict(e.split("=", 1) for e in args.env)
    host_files = dict(h.split("=", 1) for h in args.host_file)
    caches = dict(c.split("=", 1) for c in args.cache)
    deadline = time.monotonic() + 60 * float(job.get("timeout-minutes", 360))

    tmp = tempfile.mkdtemp(prefix="imagesearch-job-", dir="/var/tmp")
    work = os.path.join(tmp, "w")
    ws_host = os.path.join(work, name, name)
    ws = f"/__w/{name}/{name}"
    temp_host = os.path.join(work, "_temp")
    for d in (ws_host, temp_host, os.path.join(tmp, "home")):
        os.makedirs(d)
    mounts = ["-v", f"{work}:/__w", "-v", f"{os.path.join(tmp, 'home')}:/github/home"]
    for var, path in host_files.items():
        mounts += ["-v", f"{os.path.abspath(path)}:/run/host/{var}:ro"]
        overrides[var] = f"/run/host/{var}"
    for step in job.get("steps", []):
        if str(step.get("uses", "")).startswith(CACHE):
            path = (step.get("with") or {}).get("path", "")
            if path not in caches:
                raise Unsupported(f"actions/cache of {path!r}: give its host folder with --cache {path}=DIR")
            if os.path.isabs(path) or "~" in path:
                raise Unsupported(f"actions/cache path {path!r}: only paths in the workspace are mirrored")
            os.makedirs(caches[path], exist_ok=True)
            mounts += ["-v", f"{os.path.abspath(caches[path])}:{ws}/{path}"]
    cname = f"imagesearch-job-{args.job}-{os.getpid()}"
    start = time.monotonic()
    rc = 1
    try:
        create = PODMAN + ["run", "-d", "--name", cname, "--network=host", "--workdir", ws,
                           "-e", "HOME=/github/home", "-e", "CI=true", "-e", "GITHUB_ACTIONS=true",
                           "-e", f"GITHUB_WORKSPACE={ws}", "-e", "RUNNER_TEMP=/__w/_temp",
                           *mounts, *options, "--entrypoint", "tail", image, "-f", "/dev/null"]
        log(f"job {args.job}: {image} with options {' '.join(options) or '(none)'}")
        subprocess.run(create, check=True, stdout=subprocess.DEVNULL)
        extra_env, extra_path = {}, []
        for i, step in enumerate(job.get("steps", []), 1):
            label = step.get("name") or step.get("uses") or step.get("run", "").splitlines()[0]
            if "if" in step:
                raise Unsupported(f"step {label!r} has `if:`")
            uses = step.get("uses")
            t0 = time.monotonic()
            if uses:
                if uses.startswith(CHECKOUT):
                    n = copy_working_tree(src, ws_host)
                    log(f"step {i} {uses}: copied {n} files of {src} into {ws}")
                elif uses.startswith(CACHE):
                    path = step["with"]["path"]
                    log(f"step {i} {uses}: {ws}/{path} is {caches[path]} (mounted)")
                elif uses.startswith(UPLOAD):
                    path = (step.get("with") or {}).get("path", "")
                    no_expressions("upload-artifact path", path)
                    host = os.path.join(ws_host, path)
                    if not os.path.isfile(host):
                        raise AssertionError(f"step {i} {uses}: {path} was not made")
                    log(f"step {i} {uses}: {path} is there ({os.path.getsize(host) / 2**20:.1f} MiB)")
                else:
                    raise Unsupported(f"step {i} uses {uses}, which has no stand-in here")
                continue
            step_shell = step.get("shell", shell)
            if step_shell != "bash":
                raise Unsupported(f"step {label!r} runs with shell {step_shell!r}, not bash")
            no_expressions(f"step {label!r}", step["run"])
            env = {**base_env, **env_map(f"step {label!r}", step.get("env")), **extra_env, **overrides}
            for f in ("env", "path", "output"):
                open(os.path.join(temp_host, f"{f}-{i}"), "w").close()
            env.update({"GITHUB_ENV": f"/__w/_temp/env-{i}", "GITHUB_PATH": f"/__w/_temp/path-{i}",
                        "GITHUB_OUTPUT": f"/__w/_temp/output-{i}"})
            if extra_path:
                env["PATH"] = ":".join(extra_path) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            with open(os.path.join(temp_host, f"step-{i}.sh"), "w") as f:
                f.write(step["run"])
            workdir = os.path.join(ws, step.get("working-directory", ""))
            cmd = PODMAN + ["exec", "-w", workdir]
            for k, v in env.items():
                cmd += ["-e", f"{k}={v}"]
            cmd += [cname, "bash", "--noprofile", "--norc", "-e", "-o", "pipefail", f"/__w/_temp/step-{i}.sh"]
            log(f"step {i} {label!r} (env overrides: {' '.join(f'{k}={v}' for k, v in overrides.items()) or 'none'})")
            left = deadline - time.monotonic()
            try:
                r = subprocess.run(cmd, timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the job ran past its timeout-minutes ({job.get('timeout-minutes')})")
            log(f"step {i} {label!r}: exit {r.returncode} after {time.monotonic() - t0:.0f} s")
            if r.returncode != 0:
                raise AssertionError(f"step {i} {label!r} failed (exit {r.returncode})")
            extra_env.update(read_env_file(os.path.join(temp_host, f"env-{i}")))
            extra_path = [p for p in open(os.path.join(temp_host, f"path-{i}")).read().splitlines() if p] + extra_path
        rc = 0
        log(f"job {args.job}: all steps passed in {time.monotonic() - start:.0f} s")
    except (Unsupported, AssertionError) as e:
        log(f"job {args.job}: FAILED after {time.monotonic() - start:.0f} s: {e}")
    finally:
        subprocess.run(PODMAN + ["rm", "-f", "-t", "0", cname], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    # Stopped from outside: still remove the container and the folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except Unsupported as e:
        log(f"cannot run this job here: {e}")
        sys.exit(1)
