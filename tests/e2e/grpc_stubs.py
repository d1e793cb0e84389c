"""Generates and imports the Python stubs for imagesearch.v1 (protoc +
Debian's grpc_python_plugin), as a client team in another language would."""
import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile


def load(proto_dir):
    gen = tempfile.mkdtemp(prefix="imagesearch_stubs_")
    atexit.register(shutil.rmtree, gen, ignore_errors=True)  # Imported from until exit.
    subprocess.run(
        ["protoc", f"--proto_path={proto_dir}", f"--python_out={gen}", f"--grpc_out={gen}",
         "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
         "imagesearch/v1/imagesearch.proto"], check=True)
    sys.path.insert(0, gen)
    pb = importlib.import_module("imagesearch.v1.imagesearch_pb2")
    pb_grpc = importlib.import_module("imagesearch.v1.imagesearch_pb2_grpc")
    return pb, pb_grpc
