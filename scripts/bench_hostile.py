"""The hostile section of scripts/bench (`scripts/bench --hostile`): what a
client sending crafted input costs atticd, against what a normal client
costs, measured in one run on this machine.

    bench_hostile.py --bin DIR --atticd-pid PID --atticd-url URL --results DIR

- token: server CPU per request deciding a closure-heavy attenuated token,
  against a normal token; /_health and a narinfo read while 8 hostile
  requests are always in flight, against the same reads beside 8 requests
  with a normal token, and with a well-formed token refused (403);
- xz: peak RSS while 3 xz NARs declaring a 1.5 GiB dictionary are uploaded
  at once; server CPU per bzip2 bomb (a few KB that decode to 2 GiB);
- logs: peak RSS while 8 build logs of 64 MiB are uploaded at once;
- connections: /_health p99 from another address while 1,000 idle
  sockets are open from one.

RSS is sampled from /proc every 5 ms while a case runs, so each case's
peak is its own. Nothing here is a pass/fail threshold of the test suite.
"""

import argparse
import bz2
import hashlib
import http.client
import json
import lzma
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import cpu_seconds, log  # noqa: E402

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def nix32(digest):
    bits = len(digest) * 8
    out = []
    for n in range((bits - 1) // 5, -1, -1):
        b = n * 5
        i, j = divmod(b, 8)
        c = digest[i] >> j
        if i + 1 < len(digest):
            c |= digest[i + 1] << (8 - j)
        out.append(NIX32[c & 0x1F])
    return "".join(out)


def nar_of_file(contents):
    """The NAR of one regular file."""
    def s(b):
        return len(b).to_bytes(8, "little") + b + b"\0" * (-len(b) % 8)
    return b"".join([s(b"nix-archive-1"), s(b"("), s(b"type"), s(b"regular"),
                     s(b"contents"), s(contents), s(b")")])


def xz_with_dictionary(data, dict_code):
    """`data` as xz, compressed with a small dictionary, whose block header
    then declares dictionary code `dict_code` (37: 1.5 GiB), with the
    header's CRC fixed: what a crafted upload looks like to a decoder."""
    buf = bytearray(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                  filters=[{"id": lzma.FILTER_LZMA2, "preset": 0,
                                            "dict_size": 1 << 20}]))
    start = 12  # after the stream header
    size = (buf[start] + 1) * 4
    flags = buf[start + 1]
    pos = start + 2

    def vli(pos):
        while buf[pos] & 0x80:
            pos += 1
        return pos + 1
    if flags & 0x40:
        pos = vli(pos)
    if flags & 0x80:
        pos = vli(pos)
    assert buf[pos] == 0x21 and buf[pos + 1] == 1, "an LZMA2 filter with one property byte"
    buf[pos + 2] = dict_code
    crc = zlib.crc32(bytes(buf[start:start + size - 4]))
    buf[start + size - 4:start + size] = crc.to_bytes(4, "little")
    return bytes(buf)


class Server:
    def __init__(self, url, pid):
        m = re.match(r"http://([^:/]+):(\d+)", url)
        self.host, self.port = m.group(1), int(m.group(2))
        self.pid = pid

    def request(self, method, path, token=None, body=None, source=None, headers=None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=300,
                                       source_address=(source, 0) if source else None)
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def latency_ms(self, path, n, token=None, source=None):
        """Latencies of n sequential GETs on a kept-alive connection."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=60,
                                       source_address=(source, 0) if source else None)
        h = {"Authorization": f"Bearer {token}"} if token else {}
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            c.request("GET", path, headers=h)
            r = c.getresponse()
            r.read()
            out.append((time.perf_counter() - t0) * 1000)
            if r.status != 200:
                raise RuntimeError(f"GET {path}: {r.status}")
        c.close()
        return out

    def rss_kib(self):
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{self.pid}/status").read_text(), re.M)
        return int(m.group(1))


def p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class PeakRss:
    """Samples the server's RSS while the `with` block runs."""

    def __init__(self, server):
        self.server, self.peak, self.stop = server, 0, threading.Event()

    def __enter__(self):
        self.baseline = self.server.rss_kib()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.server.rss_kib())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def concurrently(n, fn):
    results = [None] * n

    def run(i):
        try:
            results[i] = fn(i)
        except Exception as e:  # reported, not raised: the case goes on
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class Hostile:
    def __init__(self, a):
        self.a = a
        self.server = Server(a.atticd_url, a.atticd_pid)
        self.results = {}
        self.rows = []
        self.token = subprocess.run(
            [f"{a.bin}/atticadm", "make-token", "--sub", "bench", "--validity", "1h",
             "--pull", "*", "--push", "*", "--create-cache", "*"],
            check=True, text=True, stdout=subprocess.PIPE).stdout.strip()
        status, body = self.server.request(
            "POST", "/_api/v1/cache-config/hostile", self.token,
            json.dumps(dict(keypair="Generate", is_public=False, store_dir="/nix/store",
                            priority=41, upstream_cache_key_names=[])),
            headers={"Content-Type": "application/json"})
        if status not in (200, 201, 204):
            raise RuntimeError(f"creating the cache: {status} {body[:200]}")
        self.narinfo_path = self.push_small_path()

    def push_small_path(self):
        """One path through Nix's own upload protocol, for a normal pull."""
        nar = nar_of_file(b"hello from the hostile bench\n")
        name = nix32(hashlib.sha256(nar).digest())
        status, _ = self.server.request("PUT", f"/hostile/nar/{name}.nar", self.token, nar)
        assert status in (200, 204), status
        store_hash = "0" * 31 + "1"
        narinfo = (f"StorePath: /nix/store/{store_hash}-hostile-bench\nURL: nar/{name}.nar\n"
                   f"Compression: none\nNarHash: sha256:{nix32(hashlib.sha256(nar).digest())}\n"
                   f"NarSize: {len(nar)}\nReferences: \n")
        status, body = self.server.request("PUT", f"/hostile/{store_hash}.narinfo", self.token,
                                           narinfo.encode())
        assert status in (200, 204), (status, body)
        return f"/hostile/{store_hash}.narinfo"

    def row(self, workload, ours, ref, unit, goal=None, fmt="{:.2f}"):
        self.rows.append(dict(workload=workload, ours=ours, reference=ref, unit=unit,
                              ratio=(ours / ref) if ref else None, goal=goal, fmt=fmt))

    # ---------------------------------------------------------- tokens

    def tokens(self):
        hostile = subprocess.run([f"{self.a.bin}/hostile-token", self.token], check=True,
                                 text=True, stdout=subprocess.PIPE).stdout.strip()
        # Enough that the kernel's 10 ms CPU ticks do not hide the difference.
        n = 3000

        def cpu_ms_per_request(token):
            before = cpu_seconds(self.server.pid)
            c = http.client.HTTPConnection(self.server.host, self.server.port, timeout=120)
            for _ in range(n):
                c.request("GET", "/_api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
                c.getresponse().read()
            c.close()
            return (cpu_seconds(self.server.pid) - before) * 1000 / n
        normal = cpu_ms_per_request(self.token)
        crafted = cpu_ms_per_request(hostile)
        self.results["token_cpu_ms"] = dict(normal=normal, hostile=crafted, requests=n)
        self.row("token decision, hostile vs normal: server CPU per request", crafted, normal,
                 "ms", goal="≤ 2 ms")

        # Eight clients always in flight saturate two cores whatever they
        # send: the reference is eight with a normal token, not an idle server.
        under = {}
        # A well-formed token for another cache: refused like the hostile
        # one (the error path logs and answers more than a success does).
        refused = subprocess.run(
            [f"{self.a.bin}/atticadm", "attenuate-token", self.token, "--cache", "elsewhere"],
            check=True, text=True, stdout=subprocess.PIPE).stdout.strip()
        # Hostile first, so a machine warming up or slowing down over the
        # run does not favour it.
        for label, token in [("hostile", hostile), ("normal", self.token),
                             ("refused", refused)]:
            stop = threading.Event()

            def flood(_):
                c = http.client.HTTPConnection(self.server.host, self.server.port, timeout=120)
                while not stop.is_set():
                    c.request("GET", "/hostile/nix-cache-info",
                              headers={"Authorization": f"Bearer {token}"})
                    c.getresponse().read()
            flooders = [threading.Thread(target=flood, args=(i,), daemon=True)
                        for i in range(8)]
            for t in flooders:
                t.start()
            time.sleep(0.5)
            health = self.server.latency_ms("/_health", 300)
            pull = self.server.latency_ms(self.narinfo_path, 300, self.token)
            stop.set()
            for t in flooders:
                t.join()
            under[label] = dict(health_p99_ms=p(health, 0.99), narinfo_p50_ms=statistics.median(pull))
        self.results["under_8_in_flight"] = under
        for reference in ["normal", "refused"]:
            self.row(f"/_health p99, 8 hostile tokens in flight vs 8 {reference}",
                     under["hostile"]["health_p99_ms"], under[reference]["health_p99_ms"], "ms",
                     goal="≈ 1×")
            self.row(f"narinfo p50, 8 hostile tokens in flight vs 8 {reference}",
                     under["hostile"]["narinfo_p50_ms"], under[reference]["narinfo_p50_ms"],
                     "ms", goal="≈ 1×")

    # ---------------------------------------------------------- decoding

    def decompression(self):
        log("crafting an xz NAR declaring a 1.5 GiB dictionary (2 GiB of output)")
        zeros = nar_of_file(b"\0" * (2 << 30))
        body = xz_with_dictionary(zeros, 37)
        name = nix32(hashlib.sha256(body).digest())
        with PeakRss(self.server) as rss:
            statuses = concurrently(3, lambda _: self.server.request(
                "PUT", f"/hostile/nar/{name}.nar.xz", self.token, body)[0])
        self.results["xz_bomb"] = dict(body_bytes=len(body), statuses=[str(s) for s in statuses],
                                       baseline_rss_kib=rss.baseline, peak_rss_kib=rss.peak)
        self.row("RSS, 3 concurrent xz-bomb uploads (1.5 GiB dictionary)",
                 rss.peak / 1024, None, "MiB", goal="< 300 MiB", fmt="{:.0f}")

        log("crafting a bzip2 NAR of 2 GiB of zeros")
        body = bz2.compress(zeros, 9)
        del zeros
        name = nix32(hashlib.sha256(body).digest())
        before = cpu_seconds(self.server.pid)
        status, _ = self.server.request("PUT", f"/hostile/nar/{name}.nar.bz2", self.token, body)
        cpu = cpu_seconds(self.server.pid) - before
        self.results["bzip2_bomb"] = dict(body_bytes=len(body), status=status, server_cpu_s=cpu)
        self.row(f"server CPU, one bzip2 bomb ({len(body)} B to 2 GiB), status {status}",
                 cpu * 1000, None, "ms", fmt="{:.0f}")

    # ---------------------------------------------------------- logs

    def logs(self):
        line = b"building step: cc -O2 -c src/file.c -o file.o\n"
        piece = (line * ((1 << 20) // len(line) + 1))[:1 << 20]

        def upload(i):
            c = http.client.HTTPConnection(self.server.host, self.server.port, timeout=300)
            drv = f"{'0' * 31}{i}-log{i}.drv"
            c.putrequest("PUT", f"/hostile/log/{drv}")
            c.putheader("Authorization", f"Bearer {self.token}")
            c.putheader("Content-Length", str(64 << 20))
            c.endheaders()
            for _ in range(64):
                c.send(piece)
            r = c.getresponse()
            r.read()
            c.close()
            return r.status
        with PeakRss(self.server) as rss:
            statuses = concurrently(8, upload)
        self.results["logs"] = dict(statuses=[str(s) for s in statuses],
                                    baseline_rss_kib=rss.baseline, peak_rss_kib=rss.peak)
        self.row("RSS, 8 concurrent 64 MiB log uploads", rss.peak / 1024, None, "MiB",
                 goal="< 300 MiB", fmt="{:.0f}")

    # ---------------------------------------------------------- connections

    def connections(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
        idle_health = self.server.latency_ms("/_health", 300, source="127.0.0.2")
        sockets, refused = [], 0
        for _ in range(1000):
            try:
                s = socket.create_connection((self.server.host, self.server.port), timeout=5,
                                             source_address=("127.0.0.1", 0))
                sockets.append(s)
            except OSError:
                refused += 1
        time.sleep(0.5)
        busy_health = self.server.latency_ms("/_health", 300, source="127.0.0.2")
        for s in sockets:
            s.close()
        self.results["idle_sockets"] = dict(
            opened=len(sockets), refused_at_connect=refused,
            health_p99_ms=dict(idle=p(idle_health, 0.99), busy=p(busy_health, 0.99)))
        self.row("/_health p99 from 127.0.0.2, 1,000 idle sockets from 127.0.0.1",
                 p(busy_health, 0.99), p(idle_health, 0.99), "ms", goal="< 50 ms")

    def all(self):
        for name in ["tokens", "connections", "logs", "decompression"]:
            log(f"hostile: {name}")
            getattr(self, name)()
        self.report()

    def report(self):
        header = ["hostile workload", "ours", "reference", "ratio", "goal"]
        table = []
        for r in self.rows:
            def fmt(v):
                return "-" if v is None else r["fmt"].format(v) + " " + r["unit"]
            table.append([r["workload"], fmt(r["ours"]), fmt(r["reference"]),
                          "-" if r["ratio"] is None else f"{r['ratio']:.2f}×", r["goal"] or "-"])
        widths = [max(len(x[i]) for x in table + [header]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths)))
                 for row in [header] + table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        text = "\n".join(lines) + "\nreference: the same measurement with a normal client, " \
                                  "or an idle server\n"
        out = Path(self.a.results)
        out.mkdir(parents=True, exist_ok=True)
        (out / "hostile.txt").write_text(text)
        (out / "hostile.json").write_text(json.dumps(
            dict(date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), table=[
                {k: v for k, v in r.items() if k != "fmt"} for r in self.rows],
                measurements=self.results), indent=1, default=str))
        print(text)


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--bin", required=True)
    a.add_argument("--atticd-pid", type=int, required=True)
    a.add_argument("--atticd-url", required=True)
    a.add_argument("--results", required=True)
    Hostile(a.parse_args()).all()


if __name__ == "__main__":
    main()
