#!/usr/bin/env python3
"""Probes grpc.health.v1 Check (one channel) and, with --http, GET /ping (a new
connection each, as a load balancer's health check does) every --every_ms for
--seconds, and prints each one's latency p50/p99/max and answers; run beside
imagesearch-loadgen (tools/bench/results/LOG.md, "Health under load").

Usage: health_probe.py GRPC_HOST:PORT PROTO_DIR [--http=PORT] [--seconds=30] [--every_ms=50]
"""
import argparse
import http.client
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests", "e2e"))
import e2e_lib  # noqa: E402
import grpc  # noqa: E402


def ping(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/ping")
        r = c.getresponse()
        r.read()
        return f"HTTP {r.status}"
    except OSError as e:
        return type(e).__name__
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("proto_dir")
    ap.add_argument("--http", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--every_ms", type=float, default=50)
    a = ap.parse_args()
    h = e2e_lib.health_pb2(a.proto_dir)
    check = grpc.insecure_channel(a.target).unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=h.HealthCheckRequest.SerializeToString,
        response_deserializer=h.HealthCheckResponse.FromString)

    def grpc_health():
        try:
            return h.HealthCheckResponse.ServingStatus.Name(
                check(h.HealthCheckRequest(service=""), timeout=10).status)
        except grpc.RpcError as e:
            return e.code().name

    probes = {"grpc health": grpc_health}
    if a.http:
        probes["http /ping"] = lambda: ping(a.http)
    seen = {name: ([], {}) for name in probes}
    end, due = time.monotonic() + a.seconds, time.monotonic()
    while time.monotonic() < end:
        for name, probe in probes.items():
            start = time.monotonic()
            what = probe()
            latencies, answers = seen[name]
            latencies.append(time.monotonic() - start)
            answers[what] = answers.get(what, 0) + 1
        due += a.every_ms / 1e3
        time.sleep(max(0.0, due - time.monotonic()))
    for name, (latencies, answers) in seen.items():
        latencies.sort()
        pick = lambda p: 1e3 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]  # noqa: E731
        print(f"{name} (python probe): {len(latencies)} probes ms p50 {pick(0.5):.2f} "
              f"p99 {pick(0.99):.2f} max {1e3 * latencies[-1]:.2f} answers {answers}")


if __name__ == "__main__":
    main()
