#!/usr/bin/python3
"""Keeps a photo folder searchable through the ingest service
(`imagesearch-indexer serve`): upserts every image file under DIR (id = its
path relative to DIR, uri = file://ABSOLUTE_PATH), and with --delete, deletes
the given ids instead. Prints the version that holds the change; query
replicas following the same root answer from it within about a second.

  tools/ingest/ingest_folder.py --target=127.0.0.1:50052 --dir=~/Pictures/new
  tools/ingest/ingest_folder.py --target=127.0.0.1:50052 --delete trip/IMG_0042.jpg

A service started with --tls_cert (and --tls_client_ca) or --auth_token_file
takes --tls_ca (with --tls_cert/--tls_key for mTLS) and --token_file here.

Needs Debian's python3-grpcio, protoc and grpc_python_plugin (protobuf-compiler,
protobuf-compiler-grpc); the stubs are generated from proto/ at start.
"""
import argparse
import importlib
import os
import subprocess
import sys
import tempfile

import grpc

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".heic", ".avif")
PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")


def stubs():
    # Generated into a temporary folder, imported, and the folder removed
    # (the modules stay loaded).
    with tempfile.TemporaryDirectory(prefix="imagesearch_ingest_stubs_") as gen:
        subprocess.run(["protoc", f"--proto_path={PROTO}", f"--python_out={gen}",
                        f"--grpc_out={gen}", "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                        "imagesearch/v1/imagesearch.proto"], check=True)
        sys.path.insert(0, gen)
        try:
            return (importlib.import_module("imagesearch.v1.imagesearch_pb2"),
                    importlib.import_module("imagesearch.v1.imagesearch_pb2_grpc"))
        finally:
            sys.path.remove(gen)


def where(r):
    """The version(s) holding an Upsert's or Delete's change: "v7", or by
    shard on a sharded collection ("shard 0 v7, shard 1 v3")."""
    if r.version or not r.shard_versions:
        return f"v{r.version}"
    return ", ".join(f"shard {s} v{v}" for s, v in sorted(r.shard_versions.items()))


def channel(args):
    if not args.tls_ca:
        if args.tls_cert or args.tls_key:
            sys.exit("--tls_cert and --tls_key need --tls_ca")
        return grpc.insecure_channel(args.target)
    if bool(args.tls_cert) != bool(args.tls_key):
        sys.exit("--tls_cert and --tls_key go together")

    def read(path):
        with open(path, "rb") as f:
            return f.read()
    return grpc.secure_channel(args.target, grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca),
        private_key=read(args.tls_key) if args.tls_key else None,
        certificate_chain=read(args.tls_cert) if args.tls_cert else None))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="127.0.0.1:50052", help="the ingest service, host:port")
    ap.add_argument("--dir", help="upsert every image under this folder")
    ap.add_argument("--delete", nargs="*", default=[], help="ids to delete")
    ap.add_argument("--batch", type=int, default=16, help="images per request of the stream")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds for the whole run (default: none)")
    ap.add_argument("--tls_ca", help="PEM CA certificate(s) the service's certificate chains to "
                    "(TLS; default: plaintext)")
    ap.add_argument("--tls_cert", help="PEM client certificate, for a service that requires one")
    ap.add_argument("--tls_key", help="PEM private key of --tls_cert")
    ap.add_argument("--token_file", help="file holding the service's bearer token")
    args = ap.parse_args()
    if not args.dir and not args.delete:
        ap.error("give --dir or --delete")
    root = os.path.abspath(os.path.expanduser(args.dir)) if args.dir else None
    if root and not os.path.isdir(root):
        ap.error(f"--dir={args.dir}: no such folder")
    metadata = None
    if args.token_file:
        with open(args.token_file) as f:
            metadata = [("authorization", "Bearer " + f.read().strip())]
    pb, pb_grpc = stubs()
    ingest = pb_grpc.IngestStub(channel(args))
    failed = 0
    if args.delete:
        r = ingest.Delete(pb.DeleteRequest(ids=args.delete), timeout=args.timeout,
                          metadata=metadata)
        # Ids not in the collection are no error (the proto's DeleteRequest).
        print(f"deleted {r.accepted} id(s) (ids not in the collection included): "
              f"live in {where(r)}")
    if args.dir:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                       if f.lower().endswith(EXTENSIONS))
        if not files:
            print(f"--dir={args.dir}: no image files ({', '.join(EXTENSIONS)}) under it",
                  file=sys.stderr)
            return 1
        versions = {}  # The newest version holding this run's images, by shard (one root: 0).
        sharded = False

        def batches():  # Read as the stream asks for them, not all at once.
            for i in range(0, len(files), args.batch):
                req = pb.UpsertRequest()
                for path in files[i:i + args.batch]:
                    with open(path, "rb") as f:
                        req.items.add(id=os.path.relpath(path, root), image=f.read(),
                                      uri="file://" + path)
                yield pb.UpsertStreamRequest(upsert=req)
        # One stream: the batches are accepted in order while earlier ones wait
        # for their publish, so the run goes at the encoder's speed.
        for answer in ingest.UpsertStream(batches(), timeout=args.timeout, metadata=metadata):
            r = answer.upsert
            for res in r.results:
                if res.code != 0:
                    failed += 1
                    print(f"rejected {res.id}: {res.error}", file=sys.stderr)
            sharded = sharded or bool(r.shard_versions)
            for shard, v in ({0: r.version} if r.version else r.shard_versions).items():
                versions[shard] = max(versions.get(shard, 0), v)
        if failed == len(files):  # No version holds any of them.
            print(f"upserted 0 of {len(files)} image(s)")
            return 1
        if sharded:  # Named by shard even when one shard got them all.
            version = ", ".join(f"shard {s} v{v}" for s, v in sorted(versions.items()))
        else:
            version = f"v{versions.get(0, 0)}"
        print(f"upserted {len(files) - failed} of {len(files)} image(s): live in {version}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:  # The service's own words, not a traceback.
        sys.exit(f"{e.code().name}: {e.details()}")
