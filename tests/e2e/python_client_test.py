#!/usr/bin/env python3
"""End to end through generated Python stubs (Debian's python3-grpcio and
grpc_python_plugin), as a client team in another language would use the API.

Usage: python_client_test.py QUERY_BINARY SNAPSHOT_TOOL PROTO_DIR
"""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_lib import Server  # noqa: E402


def main() -> int:
    query_bin, snap_tool, proto_dir = sys.argv[1:4]
    work = tempfile.mkdtemp(prefix="imagesearch_py_")
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # Stubs imported from here until exit.
    gen = os.path.join(work, "gen")
    os.makedirs(gen)
    subprocess.run(
        ["protoc", f"--proto_path={proto_dir}", f"--python_out={gen}", f"--grpc_out={gen}",
         "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
         "imagesearch/v1/imagesearch.proto"], check=True)
    # The health messages: generated under another name, since the package
    # path grpc/health/... would shadow the grpc runtime module.
    subprocess.run(["protoc", f"--proto_path={proto_dir}", f"--python_out={gen}",
                    "grpc/health/v1/health.proto"], check=True)
    sys.path.insert(0, gen)
    import grpc  # noqa: E402
    from imagesearch.v1 import imagesearch_pb2 as pb  # noqa: E402
    from imagesearch.v1 import imagesearch_pb2_grpc as pb_grpc  # noqa: E402
    import importlib.util  # noqa: E402
    spec = importlib.util.spec_from_file_location(
        "health_pb2", os.path.join(gen, "grpc", "health", "v1", "health_pb2.py"))
    health_pb2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health_pb2)

    root = os.path.join(work, "root")
    npy = os.path.join(work, "v.npy")
    subprocess.run([snap_tool, "synth", f"--out={npy}", "--count=1500", "--dim=48", "--seed=4"],
                   check=True, stdout=subprocess.DEVNULL)
    ids = os.path.join(work, "ids.jsonl")
    with open(ids, "w") as f:
        for i in range(1500):
            f.write(json.dumps({"id": f"item-{i}", "uri": f"s3://bucket/{i}.jpg",
                                "attributes": {"shard": i % 3}}) + "\n")
    subprocess.run([snap_tool, "build", f"--root={root}", f"--vectors={npy}", f"--ids={ids}",
                    "--metric=l2", "--ef_construction=64", "--threads=1"],
                   check=True, stdout=subprocess.DEVNULL)
    server = Server(query_bin, [f"--snapshot_root={root}"], os.path.join(work, "query.log"))
    try:
        channel = grpc.insecure_channel(server.grpc_address)
        grpc.channel_ready_future(channel).result(timeout=10)
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)
        stub = pb_grpc.ImageSearchStub(channel)
        for _ in range(100):
            st = check(health_pb2.HealthCheckRequest(service="imagesearch.v1.ImageSearch"))
            if st.status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.1)
        assert st.status == health_pb2.HealthCheckResponse.SERVING, st

        info = stub.GetInfo(pb.GetInfoRequest())
        assert info.vector_count == 1500 and info.dim == 48, info
        assert info.metric == pb.METRIC_L2, info

        resp = stub.Search(pb.SearchRequest(id="item-7", top_k=4, include_self=True))
        assert resp.hits[0].id == "item-7", resp
        assert resp.hits[0].uri == "s3://bucket/7.jpg", resp
        assert json.loads(resp.hits[0].attributes_json) == {"shard": 1}, resp
        assert resp.hits[0].distance == 0.0 and len(resp.hits) == 4, resp
        assert all(a.distance <= b.distance for a, b in zip(resp.hits, resp.hits[1:])), resp

        try:
            stub.Search(pb.SearchRequest(id="missing"))
            raise AssertionError("unknown id succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
            assert e.details() == "id 'missing' is not in snapshot v1", e.details()
        try:
            stub.Search(pb.SearchRequest(vector=pb.Vector(values=[0.0] * 48), top_k=1001))
            raise AssertionError("top_k 1001 succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        print("python client e2e: 1 passed, 0 failed")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
