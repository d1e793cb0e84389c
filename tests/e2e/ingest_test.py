#!/usr/bin/env python3
"""The ingest service (`imagesearch-indexer serve`) end to end, with a real
query replica following the same root, over gRPC and HTTP on loopback:

  1. a vector collection on an empty root: Upsert (wait) answers with the
     version holding the rows, and the replica returns them; a batch with a
     vector of the wrong dimension rejects that item alone, with the reason;
     UpsertStream answers each batch in order, several per publish, and
     ends with the status of a request that fails as a whole; a batch whose
     publish fails (a full disk) is answered with the error and the stream
     goes on;
  2. Delete: the id is gone from the replica's answers;
  3. a second ingest service on the same root is refused (the root's lock);
  4. many small publishes: the service merges segments in the background
     and Status reports it;
  5. SIGKILL at random moments while a client upserts: after every restart,
     every acknowledged id is searchable and the served version verifies;
  6. images with the default model: an upserted image finds itself and its
     thumbnail is served; a corrupt image is rejected alone;
  7. Delete by filter, on a collection with a schema: the rows of one album
     go, the rest stay; a filter with no condition or an unknown field is
     refused with its reason.

Usage: ingest_test.py BUILD_DIR SOURCE_DIR DEFAULT_MODEL
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_lib  # noqa: E402
import grpc_stubs  # noqa: E402
from e2e_lib import Server, check, post_json, run  # noqa: E402
import grpc  # noqa: E402

BUILD, SRC, DEFAULT = sys.argv[1:4]
T = e2e_lib.tree(BUILD, SRC)
pb, pb_grpc = grpc_stubs.load(T.proto)
H = e2e_lib.health_pb2(os.path.join(SRC, "proto"))
DIM = 16


def vec(i):
    """A deterministic, well spread vector for row i."""
    rnd = random.Random(i)
    return [rnd.uniform(-1, 1) for _ in range(DIM)]


def ingest(root, log, *flags):
    return Server(T.indexer, ["serve", f"--root={root}", "--port=0", *flags], log,
                  wait=("grpc",), pick_ports=False)


def stub(server):
    return pb_grpc.IngestStub(grpc.insecure_channel(server.grpc_address))


def upsert_vectors(ingest_stub, ids, wait=True, timeout=30):
    req = pb.UpsertRequest(wait=wait)
    for i in ids:
        req.items.add(id=f"v{i}", vector=pb.Vector(values=vec(i)))
    return ingest_stub.Upsert(req, timeout=timeout)


def wait_merged(svc, ingest_stub, max_segments):
    """Waits (60 s at most) for a background merge that leaves at most max_segments
    segments and none running; returns the ingest service's Status then."""
    def merged():
        st = ingest_stub.Status(pb.IngestStatusRequest(), timeout=10)
        return st.merges_done >= 1 and st.segments <= max_segments and st.merges_running == 0
    svc.wait_until(f"background merges down to {max_segments} segments", merged, 60)
    return ingest_stub.Status(pb.IngestStatusRequest(), timeout=10)


def top_id(replica, values):
    status, body = post_json(replica.http_port, {"vector": {"values": values}, "top_k": 1},
                             timeout=10)
    if status != 200 or not body.get("hits"):
        return None, 0
    return body["hits"][0]["id"], int(body["snapshot_version"])


def wait_found(replica, i, version):
    """Until the replica answers row i's vector with v<i>, from `version` or later."""
    def found():
        got, v = top_id(replica, vec(i))
        return got == f"v{i}" and v >= version
    replica.wait_until(f"v{i} searchable", found, 30)


def stream_step(work, s, replica):
    """UpsertStream: 20 batches sent without waiting for answers; each answered
    in order once published, several per publish; a later batch's item wins
    over an earlier one's of the same id; a wrong-dimension item is rejected
    alone. Then a stream whose request fails as a whole (the pending-row
    limit) ends with that status after answering the requests before it."""
    reqs = []
    for b in range(20):
        req = pb.UpsertRequest()
        for k in range(5):
            req.items.add(id=f"s{5 * b + k}", vector=pb.Vector(values=vec(1000 + 5 * b + k)))
        reqs.append(req)
    reqs[12].items.add(id="s7", vector=pb.Vector(values=vec(5000)))  # s7 again: this one wins
    reqs[15].items.add(id="bad", vector=pb.Vector(values=[1.0]))
    answers = [a.upsert for a in s.UpsertStream(
        (pb.UpsertStreamRequest(upsert=r) for r in reqs), timeout=60)]
    check(len(answers) == 20 and
          all([r.id for r in a.results] == [it.id for it in q.items]
              for a, q in zip(answers, reqs)), answers)
    check(answers[15].rejected == 1 and answers[15].results[5].code == 3 and
          "vector has 1 values" in answers[15].results[5].error and
          sum(a.accepted for a in answers) == 101, answers[15])
    versions = [a.version for a in answers]
    check(versions[0] > 0 and versions == sorted(versions) and len(set(versions)) < 20, versions)
    replica.wait_until("s99 searchable", lambda: top_id(replica, vec(1099)) ==
                       ("s99", versions[-1]) or top_id(replica, vec(1099))[1] > versions[-1], 30)
    check(top_id(replica, vec(1099))[0] == "s99", "s99 not found")
    got, _ = top_id(replica, vec(5000))
    check(got == "s7", f"s7's later vector finds {got}")

    # A failing request ends the stream: the first (not waiting) is answered,
    # the second would pass the pending-row limit.
    limited = ingest(os.path.join(work, "lroot"), os.path.join(work, "limited.log"), f"--dim={DIM}",
                     "--publish_interval_ms=60000", "--max_pending_rows=10")
    first, second = pb.UpsertRequest(wait=False), pb.UpsertRequest(wait=False)
    for i in range(6):
        first.items.add(id=f"a{i}", vector=pb.Vector(values=vec(i)))
        second.items.add(id=f"b{i}", vector=pb.Vector(values=vec(i)))
    got = []
    try:
        for a in stub(limited).UpsertStream(
                (pb.UpsertStreamRequest(upsert=r) for r in (first, second)), timeout=30):
            got.append(a.upsert)
        check(False, f"the stream ended without an error: {got}")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the limit is 10" in e.details()
              and len(got) == 1 and got[0].accepted == 6 and got[0].version == 0,
              (e.code(), e.details(), got))
    limited.stop()
    print(f"1b. UpsertStream: 20 batches answered in order by {len(set(versions))} publishes "
          f"(v{versions[0]}..v{versions[-1]}); the later s7 wins; a bad item rejected alone; "
          "a request over the pending limit ends the stream after answering the one before it")


def stream_disk_full(work):
    """UpsertStream while the disk fills (a small tmpfs; needs CAP_SYS_ADMIN,
    as e2e_faults): a batch whose publish fails is answered with the error on
    each item, the stream goes on, and once the disk grows the next batches
    are published and acknowledged on the same stream."""
    mnt = os.path.join(work, "small_disk")
    os.makedirs(mnt)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
                           capture_output=True, text=True)
    check(mount.returncode == 0, "cannot mount a tmpfs: this case needs CAP_SYS_ADMIN (root; in a "
          f"container, --cap-add=SYS_ADMIN): {mount.stderr.strip()}")
    svc = None
    try:
        svc = ingest(os.path.join(mnt, "root"), os.path.join(work, "disk.log"), f"--dim={DIM}",
                     "--publish_interval_ms=50", "--merge=false", "--m=8", "--ef_construction=40")
        answers, answered = [], threading.Event()
        grown = threading.Event()

        def batches():  # One batch at a time: the next once the last is answered.
            for b in range(400):
                req = pb.UpsertRequest()
                for k in range(100):
                    req.items.add(id=f"d{b}-{k}", vector=pb.Vector(values=vec(9000 + 100 * b + k)))
                answered.clear()
                yield pb.UpsertStreamRequest(upsert=req)
                check(answered.wait(60), f"batch {b}: no answer within 60 s")
                if grown.is_set() and answers[-1].accepted == 100 and len(answers) > failed_at[0] + 1:
                    return
        failed_at = [None]
        for a in stub(svc).UpsertStream(batches(), timeout=120):
            answers.append(a.upsert)
            if failed_at[0] is None and a.upsert.rejected:
                failed_at[0] = len(answers) - 1
                subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
                grown.set()
            answered.set()
        check(failed_at[0] is not None, f"the 1 MB disk never filled: {len(answers)} batches")
        bad = answers[failed_at[0]]
        check(bad.accepted == 0 and bad.rejected == 100 and bad.version == 0 and
              all(r.code != 0 and "No space left on device" in r.error for r in bad.results),
              bad.results[0])
        after = answers[failed_at[0] + 1:]
        check(after and all(a.accepted == 100 and a.version > answers[failed_at[0] - 1].version
                            for a in after), after)
        print(f"1c. UpsertStream on a disk that fills: batch {failed_at[0]} answered with "
              f"'{bad.results[0].error[:70]}' on each item, the stream went on, and after the disk "
              f"grew batch {failed_at[0] + 1} was published as v{after[0].version}")
        svc.stop()
        svc = None
    finally:
        if svc is not None:
            svc.kill()
        subprocess.run(["umount", mnt])


def vectors(work):
    root = os.path.join(work, "vroot")
    svc = ingest(root, os.path.join(work, "ingest.log"), f"--dim={DIM}",
                 "--publish_interval_ms=200", "--m=8", "--ef_construction=40")
    s = stub(svc)
    # Health as a query replica answers it: the server and its service by name.
    health = e2e_lib.health_check(grpc.insecure_channel(svc.grpc_address), H)
    for name in ("", "imagesearch.v1.Ingest"):
        check(health(name) == H.HealthCheckResponse.SERVING, f"health of {name!r}")
    resp = upsert_vectors(s, range(50))
    check(resp.accepted == 50 and resp.rejected == 0 and resp.version == 1, resp)
    replica = Server(T.query, [f"--snapshot_root={root}"], os.path.join(work, "query.log"))
    for i in (0, 17, 49):
        wait_found(replica, i, 1)
    bad = pb.UpsertRequest()
    bad.items.add(id="v50", vector=pb.Vector(values=vec(50)))
    bad.items.add(id="short", vector=pb.Vector(values=[1.0, 2.0]))
    bad.items.add(id="v51", vector=pb.Vector(values=vec(51)))
    resp = s.Upsert(bad, timeout=30)
    check(resp.accepted == 2 and resp.rejected == 1 and resp.results[1].code == 3 and
          "vector has 2 values; the collection's dimension is 16" in resp.results[1].error, resp)
    wait_found(replica, 51, resp.version)
    print(f"1. upserts published as v1..v{resp.version}; searchable on the replica; "
          "a wrong-dimension item rejected alone")

    stream_step(work, s, replica)

    resp = s.Delete(pb.DeleteRequest(ids=["v17"]), timeout=30)
    check(resp.version > 0, resp)
    replica.wait_until("v17 deleted", lambda: top_id(replica, vec(17))[0] not in ("v17", None), 30)
    status, body = post_json(replica.http_port, {"id": "v17"})
    check(status == 404, body)
    print(f"2. Delete v17: gone from v{resp.version}")

    # The merger thread runs at nice 10 (--background_nice); the publisher and
    # the gRPC threads keep the process's priority.
    nices = []
    for task in os.listdir(f"/proc/{svc.proc.pid}/task"):
        with open(f"/proc/{svc.proc.pid}/task/{task}/stat") as f:
            nices.append(int(f.read().rsplit(")", 1)[1].split()[16]))
    check(nices.count(10) >= 1 and nices.count(0) >= 2, f"thread nice values {sorted(nices)}")

    second = subprocess.run([T.indexer, "serve", f"--root={root}", "--port=0"],
                            capture_output=True, text=True, timeout=60)
    check(second.returncode == 1 and "another ingest service holds" in second.stderr,
          second.stderr)
    print("3. a second ingest service on the root is refused: "
          + second.stderr.strip().splitlines()[-1][-90:])

    for k in range(14):  # 14 more publishes of 3 rows each: more than 10 segments.
        upsert_vectors(s, range(100 + 3 * k, 103 + 3 * k))
    # The default policy keeps the biggest segment and a short ladder of tails beside
    # it: with these few rows, two at most.
    st = wait_merged(svc, s, 3)
    check(st.live_rows == 50 + 2 + 100 - 1 + 42 and st.pending_rows == 0 and not st.last_error, st)
    wait_found(replica, 130, st.current_version)
    print(f"4. 15 small publishes merged in the background: {st.segments} segments, "
          f"{st.live_rows} rows, {st.merges_done} merge(s)")
    svc.stop()
    return root, replica


def kill_loop(work, root, replica):
    acked, next_id, rounds = set(), 1000, 8
    rnd = random.Random(7)
    for r in range(rounds):
        svc = ingest(root, os.path.join(work, f"kill{r}.log"), "--publish_interval_ms=100",
                     "--m=8", "--ef_construction=40")
        s = stub(svc)
        stop = threading.Event()

        def client():
            nonlocal next_id
            while not stop.is_set():
                ids = list(range(next_id, next_id + 4))
                next_id += 4
                try:
                    resp = upsert_vectors(s, ids, timeout=10)
                except grpc.RpcError:
                    return  # Killed: these were not acknowledged.
                if resp.version > 0:
                    acked.update(ids)

        t = threading.Thread(target=client)
        t.start()
        time.sleep(rnd.uniform(0.2, 1.2))
        os.kill(svc.pid, signal.SIGKILL)
        svc.proc.wait()
        stop.set()
        t.join(timeout=30)
    out = run(T.snapshot, "verify", f"--root={root}").stdout
    check(" OK: " in out, out)
    version = int(run(T.snapshot, "current", f"--root={root}").stdout.strip()[1:])
    replica.wait_until(f"replica on v{version}",
                       lambda: top_id(replica, vec(0))[1] == version, 30)
    missing = [i for i in sorted(acked)
               if post_json(replica.http_port, {"id": f"v{i}", "top_k": 1})[0] != 200]
    check(acked and not missing, f"{len(missing)} acknowledged ids lost: {missing[:10]}")
    print(f"5. {rounds} SIGKILLs mid-stream: all {len(acked)} acknowledged ids searchable; "
          f"v{version} verifies")


def images(work):
    root = os.path.join(work, "iroot")
    svc = ingest(root, os.path.join(work, "ingest_images.log"), f"--model={DEFAULT}",
                 "--publish_interval_ms=200")
    s = stub(svc)
    req = pb.UpsertRequest()
    for name in ("rocket.jpg", "coffee.png", "camera.png"):
        with open(os.path.join(T.images, name), "rb") as f:
            req.items.add(id=name, image=f.read(), uri=f"upload://{name}")
    req.items.add(id="broken.jpg", image=b"\xff\xd8\xff\xe0 not really a jpeg")
    resp = s.Upsert(req, timeout=120)
    check(resp.accepted == 3 and resp.rejected == 1 and resp.version >= 1 and
          resp.results[3].code == 3, resp)
    # The folder tool, as a user keeps a photo folder fresh.
    folder = os.path.join(work, "photos")
    os.makedirs(os.path.join(folder, "trip"))
    for name in ("motorcycle_left.png", "logo.png"):
        shutil.copy(os.path.join(T.images, name), os.path.join(folder, "trip", name))
    tool = os.path.join(SRC, "tools", "ingest", "ingest_folder.py")
    started = time.time() - 1
    out = run("/usr/bin/python3", tool, f"--target={svc.grpc_address}", f"--dir={folder}",
              "--batch=1").stdout  # Two requests on its stream.
    check(out.startswith("upserted 2 of 2 image(s): live in v"), out)
    out = run("/usr/bin/python3", tool, f"--target={svc.grpc_address}", "--delete",
              "rocket.jpg").stdout
    check(out.startswith("deleted 1 id(s) (ids not in the collection included): live in v"), out)
    # A mistyped folder, and one with no images: an error, not "upserted 0 of 0".
    os.makedirs(os.path.join(work, "no_images"))
    for missing, want in ((os.path.join(work, "nope"), "no such folder"),
                          (os.path.join(work, "no_images"), "no image files")):
        out = run("/usr/bin/python3", tool, f"--target={svc.grpc_address}", f"--dir={missing}",
                  ok=False)
        check(out.returncode != 0 and want in out.stderr, f"{out.returncode} {out.stderr}")
    # Every image rejected: no version holds them, so none is named.
    os.makedirs(os.path.join(work, "all_bad"))
    with open(os.path.join(work, "all_bad", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really")
    out = run("/usr/bin/python3", tool, f"--target={svc.grpc_address}",
              f"--dir={os.path.join(work, 'all_bad')}", ok=False)
    check(out.returncode == 1 and out.stdout.strip() == "upserted 0 of 1 image(s)" and
          "rejected broken.png: " in out.stderr, f"{out.returncode} {out.stdout} {out.stderr}")
    # The tool's generated stubs are not left behind.
    check(not [d for d in os.listdir(tempfile.gettempdir())
               if d.startswith("imagesearch_ingest_stubs_")
               and os.stat(os.path.join(tempfile.gettempdir(), d)).st_mtime > started],
          "ingest_folder.py left its stubs folder")
    replica = Server(T.query, [f"--snapshot_root={root}"],
                     os.path.join(work, "query_images.log"))
    status, body = post_json(replica.http_port, {"id": "rocket.jpg"})
    check(status == 404, body)
    with open(os.path.join(T.images, "motorcycle_left.png"), "rb") as f:
        r = urllib.request.Request(replica.http_url + "/invocations?top_k=1", data=f.read(),
                                   headers={"Content-Type": "image/png"})
    hits = json.load(urllib.request.urlopen(r, timeout=60))["hits"]
    check(hits[0]["id"] == "trip/motorcycle_left.png" and hits[0]["uri"].startswith("file://"),
          hits)
    with open(os.path.join(T.images, "coffee.png"), "rb") as f:
        body = f.read()
    r = urllib.request.Request(replica.http_url + "/invocations?top_k=1", data=body,
                               headers={"Content-Type": "image/png"})
    hits = json.load(urllib.request.urlopen(r, timeout=60))["hits"]
    check(hits[0]["id"] == "coffee.png" and hits[0]["uri"] == "upload://coffee.png", hits)
    thumb = urllib.request.urlopen(replica.http_url + "/thumbs/coffee.png", timeout=10).read()
    check(thumb[:2] == b"\xff\xd8", "the thumbnail is not a JPEG")
    print(f"6. images through the default model: found themselves, thumbnails served; "
          f"a corrupt image rejected ({resp.results[3].error[:60]}); "
          "tools/ingest/ingest_folder.py added a folder and deleted an id")
    replica.stop()
    svc.stop()


def filter_deletes(work):
    root = os.path.join(work, "froot")
    # The merge policy's flags as imagesearch-snapshot merge takes them: at most two segments,
    # no fold (checked at the end).
    svc = ingest(root, os.path.join(work, "ingest-filter.log"), f"--dim={DIM}",
                 "--schema=album:keyword,n:integer", "--publish_interval_ms=200", "--m=8",
                 "--ef_construction=40", "--segments_per_tier=2", "--fold_pct=0")
    s = stub(svc)
    req = pb.UpsertRequest(wait=True)
    for i in range(40):
        album = "beach" if i % 4 == 0 else "city"
        req.items.add(id=f"f{i}", vector=pb.Vector(values=vec(i)),
                      attributes_json=json.dumps({"album": album, "n": i}))
    resp = s.Upsert(req, timeout=30)
    check(resp.accepted == 40, resp)
    replica = Server(T.query, [f"--snapshot_root={root}"], os.path.join(work, "query-f.log"))
    replica.wait_until("f4 searchable", lambda: top_id(replica, vec(4))[0] == "f4", 30)

    beach = pb.Filter()
    beach.must.add(field="album", match=pb.FilterValue(keyword="beach"))
    resp = s.Delete(pb.DeleteRequest(ids=["f1"], filter=beach), timeout=30)
    check(resp.matched == 10 and resp.accepted == 11 and resp.version > 0, resp)
    st = s.Status(pb.IngestStatusRequest(), timeout=10)
    check(st.live_rows == 29, st)

    def beach_gone():
        status, body = post_json(replica.http_port, {
            "vector": {"values": vec(8)}, "top_k": 40,
            "filter": {"must": [{"field": "album", "match": {"keyword": "beach"}}]}}, timeout=10)
        return (status == 200 and int(body["snapshot_version"]) >= resp.version
                and not body["hits"])
    replica.wait_until("the beach album deleted", beach_gone, 30)
    status, body = post_json(replica.http_port, {"vector": {"values": vec(5)}, "top_k": 1})
    check(status == 200 and body["hits"][0]["id"] == "f5", body)  # A city row stays.

    for bad, reason in ((pb.Filter(), "has no condition"),
                        (pb.Filter(must=[pb.Condition(field="colour",
                                                      match=pb.FilterValue(keyword="red"))]),
                         "colour")):
        try:
            s.Delete(pb.DeleteRequest(filter=bad), timeout=30)
            check(False, f"filter {bad} was accepted")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in e.details(),
                  f"{e.code()} {e.details()}")
    check(s.Status(pb.IngestStatusRequest(), timeout=10).live_rows == 29, "refusals deleted rows")
    print(f"7. Delete by filter: the 10 rows of album 'beach' (and f1) gone from v{resp.version}, "
          "29 left; an empty filter and an unknown field refused")

    for k in range(5):  # Five more publishes: seven segments under the default policy.
        upsert_vectors(s, range(200 + 2 * k, 202 + 2 * k))
    st = wait_merged(svc, s, 2)
    check(st.live_rows == 29 + 10 and not st.last_error, st)
    print(f"8. --segments_per_tier=2: five more publishes merged down to {st.segments} segments "
          f"({st.merges_done} merge(s))")
    replica.stop()
    svc.stop()


def main():
    work = tempfile.mkdtemp(prefix="imagesearch_ingest_")
    try:
        root, replica = vectors(work)
        stream_disk_full(work)
        kill_loop(work, root, replica)
        replica.stop()
        images(work)
        filter_deletes(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("ingest: PASS")


if __name__ == "__main__":
    main()
