#!/usr/bin/env python3
"""The documented limits (README "Limits, overload and faults") against the
real query service over gRPC, each at the limit and one past it, plus the
answers to bytes that are not a protobuf request:

  - message size (--max_message_mb=1): a request just under is read (and its
    bytes refused as no image), one just over is RESOURCE_EXHAUSTED;
  - image pixels (64,000,000): 8000 x 8000 is decoded and searched,
    8000 x 8001 refused before decoding, naming the size;
  - id bytes (4,096): at the limit NOT_FOUND, past it INVALID_ARGUMENT, and a
    20 KB id gets a short INVALID_ARGUMENT (not gRPC's metadata overflow);
  - top_k (1,000), ef (10,000), queries per SearchBatch (256), inputs per
    Embed (64);
  - request bytes that do not parse: INVALID_ARGUMENT naming the message.

Usage: limits_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import io
import os
import shutil
import sys
import tempfile

import grpc
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_lib import Server, check, run  # noqa: E402
import grpc_stubs  # noqa: E402

BUILD, SRC, MODEL = sys.argv[1:4]
INDEXER = os.path.join(BUILD, "services", "indexer", "imagesearch-indexer")
QUERY = os.path.join(BUILD, "services", "query", "imagesearch-query")
IMAGES = os.path.join(SRC, "tests", "data", "images")
MIB = 1 << 20


def png(width, height):
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def error(call, request):
    try:
        call(request, timeout=120)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def main():
    pb, pb_grpc = grpc_stubs.load(os.path.join(SRC, "proto"))
    work = tempfile.mkdtemp(prefix="imagesearch_limits_")
    server = None
    try:
        corpus = os.path.join(work, "corpus")
        os.makedirs(corpus)
        for name in ("rocket.jpg", "coffee.png", "camera.png"):
            shutil.copy(os.path.join(IMAGES, name), corpus)
        root = os.path.join(work, "root")
        run(INDEXER, f"--input={corpus}", f"--root={root}", f"--model={MODEL}", "--progress=none")
        server = Server(QUERY, [f"--snapshot_root={root}", "--max_message_mb=1"],
                        os.path.join(work, "query.log"))
        channel = grpc.insecure_channel(server.grpc_address, options=[
            ("grpc.max_send_message_length", 4 * MIB), ("grpc.max_receive_message_length", 4 * MIB)])
        stub = pb_grpc.ImageSearchStub(channel)
        results = []

        def expect(what, call, request, code, text=""):
            got, details = error(call, request)
            check(got == code and text in details, f"{what}: {got} {details[:300]!r}")
            results.append(f"{what}: {code.name}")
            return details

        # Message size: 1 MiB of request bytes, proto framing included.
        under = pb.SearchRequest(image=b"\x00" * (MIB - 64))
        check(under.ByteSize() <= MIB, under.ByteSize())
        expect("message just under 1 MiB", stub.Search, under, grpc.StatusCode.INVALID_ARGUMENT,
               "image format")
        over = pb.SearchRequest(image=b"\x00" * MIB)
        check(over.ByteSize() > MIB, over.ByteSize())
        expect("message just over 1 MiB", stub.Search, over, grpc.StatusCode.RESOURCE_EXHAUSTED)

        # Image pixels.
        at = png(8000, 8000)
        check(len(at) < MIB, len(at))
        r = stub.Search(pb.SearchRequest(image=at, top_k=2), timeout=120)
        check(len(r.hits) == 2, r)
        results.append("8000 x 8000 image (64,000,000 pixels): OK")
        expect("8000 x 8001 image", stub.Search, pb.SearchRequest(image=png(8000, 8001)),
               grpc.StatusCode.INVALID_ARGUMENT, "8000x8001")

        # Ids.
        expect("4096-byte id", stub.Search, pb.SearchRequest(id="i" * 4096),
               grpc.StatusCode.NOT_FOUND, "(4096 bytes) is not in snapshot v1")
        expect("4097-byte id", stub.Search, pb.SearchRequest(id="i" * 4097),
               grpc.StatusCode.INVALID_ARGUMENT, "(4097 bytes) is over the limit of 4096 bytes")
        details = expect("20 KB id", stub.Search, pb.SearchRequest(id="i" * 20000),
                         grpc.StatusCode.INVALID_ARGUMENT, "is over the limit")
        check(len(details) < 150, details)

        # top_k, ef, batch and embed sizes.
        r = stub.Search(pb.SearchRequest(id="rocket.jpg", top_k=1000, ef=10000), timeout=30)
        check(len(r.hits) == 2, r)  # every other row: fewer rows than top_k
        results.append("top_k 1000, ef 10000: OK")
        expect("top_k 1001", stub.Search, pb.SearchRequest(id="rocket.jpg", top_k=1001),
               grpc.StatusCode.INVALID_ARGUMENT, "the maximum is 1000")
        expect("ef 10001", stub.Search, pb.SearchRequest(id="rocket.jpg", ef=10001),
               grpc.StatusCode.INVALID_ARGUMENT, "the maximum is 10000")
        one = pb.SearchRequest(id="rocket.jpg", top_k=1)
        r = stub.SearchBatch(pb.SearchBatchRequest(requests=[one] * 256), timeout=30)
        check(len(r.responses) == 256, len(r.responses))
        results.append("SearchBatch of 256: OK")
        expect("SearchBatch of 257", stub.SearchBatch, pb.SearchBatchRequest(requests=[one] * 257),
               grpc.StatusCode.INVALID_ARGUMENT, "the maximum is 256 per call")
        small = pb.EmbedInput(image=png(32, 32))
        r = stub.Embed(pb.EmbedRequest(inputs=[small] * 64), timeout=120)
        check(len(r.embeddings) == 64, len(r.embeddings))
        results.append("Embed of 64: OK")
        expect("Embed of 65", stub.Embed, pb.EmbedRequest(inputs=[small] * 65),
               grpc.StatusCode.INVALID_ARGUMENT, "inputs has 65 items; the maximum is 64")

        # Bytes that are not the request message.
        raw = channel.unary_unary("/imagesearch.v1.ImageSearch/Search",
                                  request_serializer=lambda b: b, response_deserializer=lambda b: b)
        expect("garbage request bytes", raw, b"\xff\xff\xff\xff\x0f",
               grpc.StatusCode.INVALID_ARGUMENT,
               "request (5 bytes) does not parse as imagesearch.v1.SearchRequest")
        raw_batch = channel.unary_unary("/imagesearch.v1.ImageSearch/SearchBatch",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        expect("garbage SearchBatch bytes", raw_batch, b"\x0a\x05ab",
               grpc.StatusCode.INVALID_ARGUMENT, "does not parse as imagesearch.v1.SearchBatchRequest")
        # The service is still healthy after all of it.
        check(stub.GetInfo(pb.GetInfoRequest(), timeout=5).snapshot_version == 1, "GetInfo")
        for line in results:
            print(" ", line)
        server.stop()
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"limits: {len(results)} passed, 0 failed")


if __name__ == "__main__":
    main()
