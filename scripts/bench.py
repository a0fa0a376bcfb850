"""The helper of scripts/bench: builds the corpus, runs every workload against
its reference on the same data, and writes the table, results.json and
results.png.

    bench.py corpus --mode quick|full --cache DIR --out FILE
    bench.py run --mode quick|full --corpus FILE --results DIR ...

scripts/bench starts and stops the servers; this file only talks to them.
Every figure is measured in this run; nothing is estimated or carried over.
"""

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

# Bumped whenever the corpus recipe changes, so a cached corpus is rebuilt.
CORPUS_VERSION = 1

MODES = {
    # sys_mib: installed packages of this machine, one store path each, no
    # package larger than sys_cap_kib; update_mib: Debian packages downloaded
    # in two successive versions (v1 holds the older, v2 the newer).
    "quick": dict(sys_mib=95, sys_cap_kib=2500, update_mib=40, seconds=5, substitutions=3),
    "full": dict(sys_mib=560, sys_cap_kib=120000, update_mib=300, seconds=10, substitutions=5),
}

# Packages with more than one version in bookworm, bookworm-updates and
# bookworm-security, smallest first; taken in this order until update_mib.
# libc6 is left out: it is the base of every part, so updating it would
# rebuild everything (that is what the "rebuild" step does on its own).
UPDATE_CANDIDATES = [
    "libexpat1", "libkrb5-3", "libgssapi-krb5-2", "libcurl4", "libxml2",
    "libpq5", "libgnutls30", "libglib2.0-0", "libssl3", "sudo", "tzdata",
    "libsystemd0", "libpython3.11", "libpython3.11-stdlib", "systemd",
    "libperl5.36", "postgresql-client-15", "git", "libnode108",
    "postgresql-15", "samba-libs", "libsmbclient", "libreoffice-core",
    "qemu-system-x86", "thunderbird", "chromium",
]

# Release binary sizes to stay under, in MB (10^6 bytes): the reference
# column of their rows. atticadm has no goal of its own; it is reported.
BINARY_SIZE_GOALS_MB = {"atticd": 30, "attic": 20, "atticadm": None}

STORE_NAME = re.compile(r"[^A-Za-z0-9+._?=-]")


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE, **kw).stdout


# ---------------------------------------------------------------- corpus


def store_name(s):
    return STORE_NAME.sub("_", s)


def apt_versions(pkg):
    out = run(["apt-cache", "madison", pkg])
    versions = []
    for line in out.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 3 and fields[0] == pkg and "Packages" in fields[2]:
            if fields[1] not in versions:
                versions.append(fields[1])
    # madison lists newest first; keep that order.
    return versions


def apt_installed_size_kib(pkg, version):
    out = run(["apt-cache", "show", f"{pkg}={version}"])
    m = re.search(r"^Installed-Size: (\d+)", out, re.M)
    return int(m.group(1)) if m else 0


def download_deb(debs, pkg, version):
    """The .deb of pkg=version, downloaded once into the cache."""
    d = debs / store_name(pkg) / store_name(version)
    found = list(d.glob("*.deb"))
    if found:
        return found[0]
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o777)  # apt drops to _apt to download
    subprocess.run(["apt-get", "download", "-q", f"{pkg}={version}"], cwd=d, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return next(d.glob("*.deb"))


def apt_update():
    log("apt-get update")
    subprocess.run(["apt-get", "update", "-q"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def choose_updates(cfg, debs):
    """[(pkg, old, new, old_deb, new_deb)] within the mode's budget: the two
    newest versions of each candidate that has two."""
    if not apt_versions("libc6"):
        apt_update()  # no package lists yet
    chosen, total, updated = [], 0, False
    for pkg in UPDATE_CANDIDATES:
        if total >= cfg["update_mib"] * 1024:
            break
        for _ in range(2):  # a second try after apt-get update
            versions = apt_versions(pkg)
            if len(versions) < 2:
                break
            new, old = versions[0], versions[1]
            try:
                old_deb = download_deb(debs, pkg, old)
                new_deb = download_deb(debs, pkg, new)
            except (subprocess.CalledProcessError, StopIteration):
                if updated:  # lists are fresh: these versions are gone
                    log(f"skipping {pkg}: cannot download {old} and {new}")
                    break
                apt_update()  # stale lists name versions the mirror dropped
                updated = True
                continue
            chosen.append((pkg, old, new, old_deb, new_deb))
            total += apt_installed_size_kib(pkg, new)
            break
    return chosen


def installed_packages():
    out = run(["dpkg-query", "-W", "-f=${Package}\t${Installed-Size}\t${db:Status-Abbrev}\n"])
    pkgs = {}
    for line in out.splitlines():
        name, size, status = (line.split("\t") + ["", ""])[:3]
        if status.startswith("ii") and size.isdigit():
            pkgs[name.split(":")[0]] = int(size)
    return pkgs


def stage_installed(pkg, dest):
    """Copies the files dpkg lists for pkg under dest, keeping their layout."""
    dest.mkdir(parents=True)
    out = subprocess.run(["dpkg", "-L", pkg], text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL).stdout
    for line in out.splitlines():
        if not line.startswith("/") or line == "/.":
            continue
        src = Path(line)
        target = dest / line.lstrip("/")
        try:
            if src.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.is_symlink():
                    os.symlink(os.readlink(src), target)
            elif src.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif src.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
                os.chmod(target, 0o755 if os.access(src, os.X_OK) else 0o644)
        except OSError:
            continue


def choose_system(cfg, exclude):
    """Installed packages of this machine, in a fixed pseudo-random order."""
    pkgs = installed_packages()
    eligible = [p for p, size in pkgs.items()
                if 20 <= size <= cfg["sys_cap_kib"] and p not in exclude and p != "libc6"
                and not p.startswith(("google-cloud", "kubectl"))]
    eligible.sort(key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    chosen, total = [], pkgs.get("libc6", 0)
    for p in eligible:
        if total >= cfg["sys_mib"] * 1024:
            break
        chosen.append(p)
        total += pkgs[p]
    return chosen


BUILD_PART = r"""
/bin/cp -R "$src" "$out"
/bin/chmod -R u+w "$out"
# Embed store paths where a Nix build would: /usr/share becomes the path's
# own output, /usr/lib and /usr/bin its dependencies, the ELF interpreter
# the base. A rebuild of the base changes every one of them, at equal length.
set -- $deps
d1=${1:-$out}; d2=${2:-$d1}; d3=${3:-$d1}
export d1 d2 d3
/usr/bin/find "$out" -type f -exec /usr/bin/perl -0777 -pi -e 's{/usr/share/}{$ENV{out}/share/}g; s{/usr/lib/}{$ENV{d2}/lib/}g; s{/usr/bin/}{$ENV{d3}/bin/}g; s{/lib64/ld-linux-x86-64\.so\.2}{$ENV{d1}/lib/ld-linux-x86-64.so.2}g' {} +
/bin/mkdir -p "$out/nix-support"
echo "$deps" > "$out/nix-support/propagated-build-inputs"
"""

BUILD_PROFILE = r"""
/bin/mkdir "$out"
for p in $parts; do /bin/ln -s "$p" "$out/${p#/nix/store/*-}"; done
"""


def corpus_nix(base, system, updates):
    """The Nix expression of the three trees: v1, v2 and the mass rebuild.
    Every part depends on the base (libc6) and on up to two earlier parts;
    v2 swaps the updated packages for their newer versions; the rebuild is v2
    with the base built differently, so every path in it changes."""
    def mk(name, src, deps, extra=""):
        return f'mk {{ name = "{name}"; src = "{src}"; deps = [ {" ".join(deps)} ];{extra} }}'

    lines = ["let",
             '  mk = { name, src, deps, variant ? "" }: derivation {',
             "    inherit name deps variant;",
             "    system = builtins.currentSystem;",
             "    src = builtins.storePath src;",
             '    builder = "/bin/sh";',
             '    args = [ "-e" ./build-part.sh ];',
             "  };",
             "  tree = { label, variant, updated }: let",
             f"    base = {mk(base[0], base[1], [], ' inherit variant;')};"]
    names = ["base"]
    for i, (name, src) in enumerate(system):
        deps = ["base"] + sorted({f"s{j}" for j in (i // 2, i // 3) if j < i})
        lines.append(f"    s{i} = {mk(name, src, deps)};")
        names.append(f"s{i}")
    for k, (old_name, old_src, new_name, new_src) in enumerate(updates):
        deps = ["base"] + ([f"s{(k * 5) % len(system)}"] if system else [])
        lines.append(f"    u{k} = if updated then {mk(new_name, new_src, deps)}"
                     f" else {mk(old_name, old_src, deps)};")
        names.append(f"u{k}")
    lines += ["  in derivation {",
              '    name = "system-${label}";',
              "    system = builtins.currentSystem;",
              '    builder = "/bin/sh";',
              '    args = [ "-e" ./build-profile.sh ];',
              f'    parts = [ {" ".join(names)} ];',
              "  };",
              "in {",
              '  v1 = tree { label = "v1"; variant = ""; updated = false; };',
              '  v2 = tree { label = "v2"; variant = ""; updated = true; };',
              '  rebuild = tree { label = "rebuild"; variant = "mass-rebuild"; updated = true; };',
              "}"]
    return "\n".join(lines) + "\n"


def nix_add(dirs):
    if not dirs:
        return []
    out = run(["nix-store", "--add"] + [str(d) for d in dirs]).split()
    assert len(out) == len(dirs), out
    return out


def valid(paths):
    return subprocess.run(["nix-store", "--check-validity"] + paths,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def build_corpus(mode, cache, out):
    cfg = MODES[mode]
    mdir = cache / mode
    record = mdir / "corpus.json"
    if record.exists():
        corpus = json.loads(record.read_text())
        tops = [corpus.get(k, "") for k in ("v1", "v2", "rebuild")]
        recipe = {k: cfg[k] for k in ("sys_mib", "sys_cap_kib", "update_mib")}
        if (corpus.get("version") == CORPUS_VERSION and corpus.get("recipe") == recipe
                and all(tops) and valid(tops)):
            log(f"corpus ({mode}) reused from {record}")
            out.write_text(json.dumps(corpus, indent=1))
            return
    log(f"building the {mode} corpus under {mdir}")
    stage = mdir / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)

    updates = choose_updates(cfg, cache / "debs")
    update_dirs = []
    for pkg, old, new, old_deb, new_deb in updates:
        for version, deb in ((old, old_deb), (new, new_deb)):
            d = stage / store_name(f"{pkg}-{version}")
            d.mkdir()
            subprocess.run(["dpkg-deb", "-x", str(deb), str(d)], check=True)
            update_dirs.append(d)
    log(f"{len(updates)} Debian packages in two versions: "
        + ", ".join(f"{p} {o} -> {n}" for p, o, n, _, _ in updates))

    system = choose_system(cfg, {u[0] for u in updates})
    system_dirs = []
    base_dir = stage / store_name("libc6-" + run(["dpkg-query", "-W", "-f=${Version}", "libc6"]))
    stage_installed("libc6", base_dir)
    for pkg in system:
        version = run(["dpkg-query", "-W", "-f=${Version}", pkg]).strip()
        d = stage / store_name(f"{pkg}-{version}")
        stage_installed(pkg, d)
        system_dirs.append(d)
    log(f"{len(system)} installed packages, plus libc6 as the base of every part")

    added = nix_add([base_dir] + system_dirs + update_dirs)
    base = (base_dir.name, added[0])
    sys_parts = list(zip([d.name for d in system_dirs], added[1:1 + len(system_dirs)]))
    upd = added[1 + len(system_dirs):]
    upd_parts = [(update_dirs[2 * k].name, upd[2 * k], update_dirs[2 * k + 1].name, upd[2 * k + 1])
                 for k in range(len(updates))]
    shutil.rmtree(stage)

    (mdir / "build-part.sh").write_text(BUILD_PART)
    (mdir / "build-profile.sh").write_text(BUILD_PROFILE)
    (mdir / "corpus.nix").write_text(corpus_nix(base, sys_parts, upd_parts))
    corpus = {"version": CORPUS_VERSION, "mode": mode,
              "recipe": {k: cfg[k] for k in ("sys_mib", "sys_cap_kib", "update_mib")},
              "updates": [{"package": p, "old": o, "new": n} for p, o, n, _, _ in updates],
              "system_packages": len(system)}
    for label in ("v1", "v2", "rebuild"):
        log(f"nix-build {label}")
        with open(mdir / f"nix-build-{label}.log", "w") as err:
            path = run(["nix-build", str(mdir / "corpus.nix"), "-A", label,
                        "-o", str(mdir / f"root-{label}"), "--option", "max-jobs", "2"],
                       stderr=err).strip()
        corpus[label] = path
    record.write_text(json.dumps(corpus, indent=1))
    out.write_text(json.dumps(corpus, indent=1))


# ------------------------------------------------------------- measuring


def cpu_seconds(pid):
    """utime + stime of a running process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid):
    m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1))


def timed(cmd, log_file, env=None):
    """Runs cmd to completion: (wall s, user+sys s, peak RSS KiB) of it and
    the children it waited for, from wait4."""
    os.sync()  # no writeback left over from the previous step
    with open(log_file, "w") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}); see {log_file}:\n"
                           + Path(log_file).read_text()[-2000:])
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def machine_cpu_seconds():
    """user + nice + system time of every core since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]]
    return sum(fields) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(root_pid):
    """CPU time of a running process and its children (nginx's workers)."""
    total = cpu_seconds(root_pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == root_pid:
                    total += cpu_seconds(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return total


def our_cpu_seconds(atticd_pid, nginx_pid):
    """CPU time of this process, the children it waited for (attic, nix,
    wrk), atticd and nginx."""
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system
            + cpu_seconds(atticd_pid) + process_tree_cpu_seconds(nginx_pid))


def du_bytes(path):
    """Apparent size of every file under path, and the disk blocks they use."""
    apparent = disk = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            apparent += st.st_size
            disk += st.st_blocks * 512
    return apparent, disk


def closure(paths):
    out = run(["nix", "path-info", "--json", "-r"] + paths)
    return {p["path"]: p for p in json.loads(out)}


def read_all(paths):
    """Reads every file of the store paths once, so neither side pays for a
    cold page cache."""
    for p in paths:
        for root, _, files in os.walk(p):
            for name in files:
                fp = os.path.join(root, name)
                if not os.path.islink(fp):
                    with open(fp, "rb") as f:
                        while f.read(1 << 20):
                            pass


def http_get(host, port, path):
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def parse_narinfo(text):
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def fetch_loop(host, port, items, connections, seconds):
    """GETs items [(url path, counted bytes, expected body length)] on
    `connections` kept-alive connections for `seconds`, each connection
    cycling through the list from its own offset; counts only complete
    responses with the expected length. Returns (counted bytes, responses,
    errors, elapsed s)."""
    deadline = time.perf_counter() + seconds
    totals = []
    lock = threading.Lock()

    def worker(offset):
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        counted = responses = errors = 0
        conn = http.client.HTTPConnection(host, port, timeout=60)
        i = offset
        while time.perf_counter() < deadline:
            path, nar_bytes, length = items[i % len(items)]
            i += 1
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                got = 0
                while True:
                    n = r.readinto(view)
                    if not n:
                        break
                    got += n
                if r.status == 200 and (length is None or got == length):
                    counted += nar_bytes
                    responses += 1
                else:
                    errors += 1
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.close()
        with lock:
            totals.append((counted, responses, errors, time.perf_counter()))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k * len(items) // connections,))
               for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(t[3] for t in totals)
    return (sum(t[0] for t in totals), sum(t[1] for t in totals),
            sum(t[2] for t in totals), end - t0)


WRK_SCRIPT = r"""
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
n = 0  -- a global, so that setup() can give each thread its own offset
local started = 0
function setup(thread)
  thread:set("n", started * 7919)
  started = started + 1
end
function request()
  n = n % #paths + 1
  return wrk.format("GET", paths[n])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d,'
    .. ' "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk(url_base, paths_file, script, connections, threads, seconds, log_file):
    env = dict(os.environ, BENCH_PATHS=str(paths_file))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                          "--latency", "-s", str(script), url_base],
                         env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    Path(log_file).write_text(out.stdout)
    m = re.search(r"^BENCH (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed; see {log_file}:\n{out.stdout[-2000:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


# ------------------------------------------------------------- workloads


class Bench:
    def __init__(self, a):
        self.a = a
        self.cfg = MODES[a.mode]
        self.corpus = json.loads(Path(a.corpus).read_text())
        self.work = Path(a.work)
        self.logs = Path(a.results) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.attic = str(Path(a.bin) / "attic")
        self.atticd_pid = a.atticd_pid
        m = re.match(r"http://([^:/]+):(\d+)", a.atticd_url)
        self.atticd = (m.group(1), int(m.group(2)))
        self.nginx = ("127.0.0.1", a.nginx_port)
        self.filecache = Path(a.filecache)
        self.storage = Path(a.storage)
        self.results = {}
        self.rows = []
        self.v1 = closure([self.corpus["v1"]])

    def file_url(self):
        return f"file://{self.filecache}?compression=zstd"

    def row(self, workload, ours, ref, unit, *, target=None, better="higher", fmt="{:.1f}"):
        ratio = ours / ref if ref else None
        met = None
        if target is not None and ratio is not None:
            met = ratio >= target if better == "higher" else ratio <= target
        self.rows.append(dict(workload=workload, ours=ours, reference=ref, unit=unit,
                              ratio=ratio, target=target, better=better, met=met, fmt=fmt))

    def push(self, cache, top, label):
        before = cpu_seconds(self.atticd_pid)
        wall, cpu, rss = timed([self.attic, "push", cache, top], self.logs / f"push-{label}.log")
        server_cpu = cpu_seconds(self.atticd_pid) - before
        return dict(wall_s=wall, client_cpu_s=cpu, server_cpu_s=server_cpu, client_peak_rss_kib=rss)

    def nix_copy_to_file(self, top, label):
        wall, cpu, rss = timed(["nix", "copy", "--to", self.file_url(), top],
                               self.logs / f"nix-copy-{label}.log")
        return dict(wall_s=wall, cpu_s=cpu, peak_rss_kib=rss)

    # 1. Ingest
    def ingest(self):
        log("workload 1: ingest (attic push vs nix copy --to file://)")
        top = self.corpus["v1"]
        nar = sum(p["narSize"] for p in self.v1.values())
        read_all(self.v1)
        ours = self.push("bench", top, "v1")
        ref = self.nix_copy_to_file(top, "v1")
        stored_first = du_bytes(self.storage)
        second = self.push("second", top, "v1-second-cache")
        stored = du_bytes(self.storage)
        ref_stored = du_bytes(self.filecache)
        mbps = nar / ours["wall_s"] / 1e6
        ref_mbps = nar / ref["wall_s"] / 1e6
        second_mbps = nar / second["wall_s"] / 1e6
        cpu_gb = (ours["client_cpu_s"] + ours["server_cpu_s"]) / (nar / 1e9)
        ref_cpu_gb = ref["cpu_s"] / (nar / 1e9)
        self.results["ingest"] = dict(
            paths=len(self.v1), nar_bytes=nar, attic_push=ours, nix_copy=ref,
            attic_push_second_cache=second, mbps=mbps, reference_mbps=ref_mbps,
            second_cache_mbps=second_mbps, cpu_s_per_gb=cpu_gb, reference_cpu_s_per_gb=ref_cpu_gb,
            stored_bytes=stored[0], stored_disk_bytes=stored[1],
            server_db_bytes=du_bytes(self.storage.parent)[0] - stored[0],
            second_cache_added_bytes=stored[0] - stored_first[0],
            reference_stored_bytes=ref_stored[0], reference_stored_disk_bytes=ref_stored[1])
        self.row(f"ingest v1, new data ({len(self.v1)} paths, {nar / 1e6:.0f} MB NAR)",
                 mbps, ref_mbps, "MB/s", target=1.2)
        self.row("ingest CPU, client + server", cpu_gb, ref_cpu_gb, "s/GB", better="lower")
        self.row("ingest, bytes stored", stored[0] / 1e6, ref_stored[0] / 1e6, "MB", better="lower")
        self.row("ingest v1 again, to a 2nd cache (vs nix copy, new)", second_mbps, ref_mbps, "MB/s",
                 target=5.0)
        self.row("attic / nix copy peak RSS (push v1)",
                 ours["client_peak_rss_kib"] / 1024, ref["peak_rss_kib"] / 1024, "MiB",
                 better="lower")

    # 2. Substitution
    def substitution(self):
        log("workload 2: substitution into an empty store (atticd vs nginx)")
        top = self.corpus["v1"]
        sources = {"atticd": f"http://{self.atticd[0]}:{self.atticd[1]}/bench",
                   "nginx": f"http://{self.nginx[0]}:{self.nginx[1]}"}
        times = {k: [] for k in sources}
        for rep in range(self.cfg["substitutions"]):
            order = list(sources) if rep % 2 == 0 else list(reversed(sources))
            for name in order:
                root = Path(self.a.scratch) / f"subst-{name}-{rep}"
                env = dict(os.environ, XDG_CACHE_HOME=str(self.work / f"nix-cache-{name}-{rep}"))
                wall, _, _ = timed(["nix", "copy", "--no-check-sigs", "--from", sources[name],
                                    "--to", f"local?root={root}", top],
                                   self.logs / f"substitute-{name}-{rep}.log", env=env)
                got = sum(1 for e in os.listdir(root / "nix/store") if not e.startswith("."))
                if got < len(self.v1):
                    raise RuntimeError(f"substitution from {name} copied {got} of {len(self.v1)} paths")
                times[name].append(wall)
                shutil.rmtree(root)
                shutil.rmtree(self.work / f"nix-cache-{name}-{rep}", ignore_errors=True)
        ours, ref = min(times["atticd"]), min(times["nginx"])
        self.results["substitution"] = dict(wall_s=times["atticd"], reference_wall_s=times["nginx"],
                                            best_s=ours, reference_best_s=ref)
        self.row(f"substitution v1, wall (best of {self.cfg['substitutions']})", ours, ref, "s",
                 target=1.2, better="lower", fmt="{:.2f}")

    def substitute_once(self, source, label):
        """Wall seconds of real Nix substituting v1 from `source` into an
        empty store."""
        top = self.corpus["v1"]
        root = Path(self.a.scratch) / f"subst-{label}"
        env = dict(os.environ, XDG_CACHE_HOME=str(self.work / f"nix-cache-{label}"))
        wall, _, _ = timed(["nix", "copy", "--no-check-sigs", "--from", source,
                            "--to", f"local?root={root}", top],
                           self.logs / f"substitute-{label}.log", env=env)
        got = sum(1 for e in os.listdir(root / "nix/store") if not e.startswith("."))
        if got < len(self.v1):
            raise RuntimeError(f"substitution from {label} copied {got} of {len(self.v1)} paths")
        shutil.rmtree(root)
        shutil.rmtree(self.work / f"nix-cache-{label}", ignore_errors=True)
        return wall

    # 2b. Pull-through
    def pull_through(self):
        log("workload 2b: pull-through (first and second client through atticd vs nginx)")
        top = self.corpus["v1"]
        # The file:// cache of workload 1, signed by a key of its own: the
        # upstream a cache pulls through from.
        key = self.work / "upstream.key"
        key.write_text(run(["nix", "key", "generate-secret", "--key-name", "bench-upstream-1"]))
        public = run(["nix", "key", "convert-secret-to-public"], input=key.read_text()).strip()
        run(["nix", "store", "sign", "--store", f"file://{self.filecache}", "--key-file",
             str(key), "--recursive", top])
        nginx = f"http://{self.nginx[0]}:{self.nginx[1]}"
        run([self.attic, "cache", "create", "--public", "pulled"])
        run([self.attic, "cache", "configure", "pulled", "--upstream", nginx,
             "--upstream-key", public])
        through = f"http://{self.atticd[0]}:{self.atticd[1]}/pulled"
        first = self.substitute_once(through, "pull-through-first")
        second = self.substitute_once(through, "pull-through-second")
        direct = self.substitute_once(nginx, "pull-through-nginx")
        self.results["pull_through"] = dict(first_s=first, second_s=second, nginx_s=direct)
        # The store holds v1's NARs already (workload 1): the first client
        # is sent each NAR as it is fetched and verified (not re-stored).
        self.row("pull-through v1, first client (NARs fetched, verified)", first, direct, "s",
                 target=1.2, better="lower", fmt="{:.2f}")
        self.row("pull-through v1, second client", second, direct, "s",
                 target=1.2, better="lower", fmt="{:.2f}")

    # 3. narinfo
    def narinfo(self):
        log("workload 3: narinfo requests (wrk, atticd vs nginx)")
        hashes = [Path(p).name[:32] for p in self.v1]
        script = self.work / "narinfo.lua"
        script.write_text(WRK_SCRIPT)
        lists = {"atticd": [f"/bench/{h}.narinfo" for h in hashes],
                 "nginx": [f"/{h}.narinfo" for h in hashes]}
        hosts = {"atticd": self.atticd, "nginx": self.nginx}
        self.narinfos = {}
        for name, paths in lists.items():
            f = self.work / f"narinfo-{name}.txt"
            f.write_text("\n".join(paths) + "\n")
            infos = []
            for path in paths:  # every URL answers, and warms both servers
                status, body = http_get(*hosts[name], path)
                if status != 200:
                    raise RuntimeError(f"{name} answered {status} for {path}")
                infos.append(parse_narinfo(body.decode()))
            self.narinfos[name] = infos
        s = self.cfg["seconds"]
        res = {}
        for conns, threads in ((1, 1), (64, 2)):
            for name in ("atticd", "nginx"):
                host, port = hosts[name]
                res[(name, conns)] = wrk(f"http://{host}:{port}", self.work / f"narinfo-{name}.txt",
                                         script, conns, threads, s,
                                         self.logs / f"wrk-narinfo-{name}-{conns}c.log")
        self.results["narinfo"] = {f"{n}_{c}c": r for (n, c), r in res.items()}
        for conns, label in ((1, "1 conn"), (64, "64 conns")):
            a, n = res[("atticd", conns)], res[("nginx", conns)]
            errors = a["status_errors"] + a["socket_errors"] + n["status_errors"] + n["socket_errors"]
            note = f" [{errors} errors]" if errors else ""
            self.row(f"narinfo, {label}{note}", a["rps"], n["rps"], "req/s", target=1.0, fmt="{:.0f}")
            self.row(f"narinfo, {label}, p99", a["p99_us"] / 1000, n["p99_us"] / 1000, "ms",
                     better="lower", fmt="{:.2f}")

    # 4. NAR
    def nar(self):
        log("workload 4: NAR downloads (atticd vs nginx, zstd)")
        items = {}
        for name, prefix in (("atticd", "/bench/"), ("nginx", "/")):
            lst = []
            for info in self.narinfos[name]:
                size = int(info["FileSize"]) if "FileSize" in info else None
                lst.append((prefix + info["URL"], int(info["NarSize"]), size))
            items[name] = lst
        hosts = {"atticd": self.atticd, "nginx": self.nginx}
        for name in hosts:  # every URL answers in full; one warm pass each
            for path, nar_bytes, size in items[name]:
                status, body = http_get(*hosts[name], path)
                if status != 200 or (size is not None and len(body) != size):
                    raise RuntimeError(f"{name}: {path} answered {status}, {len(body)} bytes")
        res = {}
        for conns in (1, 16):
            for name in ("atticd", "nginx"):
                counted, responses, errors, elapsed = fetch_loop(
                    *hosts[name], items[name], conns, self.cfg["seconds"])
                res[(name, conns)] = dict(nar_bytes=counted, responses=responses, errors=errors,
                                          seconds=elapsed, mbps=counted / elapsed / 1e6)
        self.results["nar"] = {f"{n}_{c}c": r for (n, c), r in res.items()}
        for conns in (1, 16):
            a, n = res[("atticd", conns)], res[("nginx", conns)]
            errors = a["errors"] + n["errors"]
            note = f" [{errors} errors]" if errors else ""
            label = "1 conn" if conns == 1 else f"{conns} conns"
            self.row(f"NAR .nar.zst, {label} (MB/s of NAR){note}", a["mbps"], n["mbps"], "MB/s",
                     target=1.0)

    def memory(self):
        kib = peak_rss_kib(self.atticd_pid)
        self.results["atticd_peak_rss_kib_workloads_1_to_4"] = kib
        self.row("atticd peak RSS, workloads 1-4", kib / 1024, None, "MiB", better="lower")

    def binary_sizes(self):
        """The release binaries as shipped (the workspace's
        [profile.release]), against the goals of issue 24. Measured on a
        stripped copy, so a build that kept its symbols for a profiler
        (CARGO_PROFILE_RELEASE_STRIP=none) reports the shipped size too."""
        sizes = {}
        for name, goal_mb in BINARY_SIZE_GOALS_MB.items():
            stripped = Path(self.a.work) / f"{name}.stripped"
            run(["strip", "-o", str(stripped), str(Path(self.a.bin) / name)])
            size = stripped.stat().st_size
            stripped.unlink()
            sizes[name] = size
            if goal_mb is None:
                self.row(f"{name} binary size", size / 1e6, None, "MB", better="lower")
            else:
                self.row(f"{name} binary size (goal < {goal_mb} MB)", size / 1e6, goal_mb, "MB",
                         target=1.0, better="lower")
        self.results["binary_size_bytes"] = sizes
        self.results["release_build"] = dict(seconds=self.a.release_build_seconds,
                                             from_scratch=self.a.release_build_fresh == "true")

    # 5. Dedup
    def dedup(self):
        log("workload 5: dedup across v1, v2 and the mass rebuild")
        seen = dict(self.v1)
        steps = [dict(step="v1", nar_bytes_total=sum(p["narSize"] for p in seen.values()),
                      stored_bytes=self.results["ingest"]["stored_bytes"],
                      reference_stored_bytes=self.results["ingest"]["reference_stored_bytes"])]
        for label in ("v2", "rebuild"):
            top = self.corpus[label]
            paths = closure([top])
            new = {k: v for k, v in paths.items() if k not in seen}
            seen.update(paths)
            read_all(new)
            new_nar = sum(p["narSize"] for p in new.values())
            ours = self.push("bench", top, label)
            ref = self.nix_copy_to_file(top, label)
            steps.append(dict(step=label, new_paths=len(new), new_nar_bytes=new_nar,
                              nar_bytes_total=sum(p["narSize"] for p in seen.values()),
                              stored_bytes=du_bytes(self.storage)[0],
                              reference_stored_bytes=du_bytes(self.filecache)[0],
                              attic_push=ours, nix_copy=ref,
                              mbps=new_nar / ours["wall_s"] / 1e6,
                              reference_mbps=new_nar / ref["wall_s"] / 1e6))
        self.results["dedup"] = steps
        for s in steps:
            self.row(f"stored after {s['step']} (NAR total {s['nar_bytes_total'] / 1e6:.0f} MB)",
                     s["stored_bytes"] / 1e6, s["reference_stored_bytes"] / 1e6, "MB",
                     better="lower")
        for s in steps[1:]:
            self.row(f"ingest {s['step']}, new paths only ({s['new_nar_bytes'] / 1e6:.0f} MB NAR)",
                     s["mbps"], s["reference_mbps"], "MB/s")

    # 6. Import from Attic
    def import_attic(self):
        log("workload 6: atticadm import-attic of v1 from an Attic store (vs nix copy --to file://)")
        nar = sum(p["narSize"] for p in self.v1.values())
        fixture_env = dict(os.environ, TMPDIR=str(self.work))
        fixture_env.pop("ATTIC_TEST_BACKEND", None)
        config = subprocess.run([str(Path(self.a.bin) / "attic-store"), *sorted(self.v1)],
                                env=fixture_env, check=True, capture_output=True,
                                text=True).stdout.strip()
        # A server of its own, so that every imported byte is stored anew.
        home = self.work / "import-home"
        env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
                   XDG_DATA_HOME=str(home / "data"), XDG_STATE_HOME=str(home / "state"),
                   XDG_CACHE_HOME=str(home / "cache"))
        home.mkdir()
        out = home / "atticd.out"
        with open(out, "w") as f, open(self.logs / "import-atticd.err", "w") as err:
            atticd = subprocess.Popen([str(Path(self.a.bin) / "atticd"), "--listen", "127.0.0.1:0"],
                                      stdout=f, stderr=err, env=env)
        try:
            for _ in range(100):
                if "listening on" in out.read_text():
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("the import's atticd did not start")
            wall, cpu, _ = timed([str(Path(self.a.bin) / "atticadm"), "import-attic",
                                  "--attic-config", config], self.logs / "import-attic.log", env=env)
        finally:
            atticd.terminate()
            atticd.wait()
        mbps = nar / wall / 1e6
        ref_mbps = self.results["ingest"]["reference_mbps"]
        self.results["import_attic"] = dict(
            paths=len(self.v1), nar_bytes=nar, wall_s=wall, cpu_s=cpu, mbps=mbps,
            mib_per_s=nar / wall / (1 << 20), reference_mbps=ref_mbps)
        self.row(f"import from Attic, v1 ({nar / 1e6:.0f} MB NAR; goal 100 MiB/s = 105 MB/s)",
                 mbps, ref_mbps, "MB/s")

    def other_work_cores(self, seconds):
        """Cores' worth of CPU time used over a short sample by everything on
        the machine but us (this process, its children, atticd, nginx)."""
        m0, o0 = machine_cpu_seconds(), our_cpu_seconds(self.atticd_pid, self.a.nginx_pid)
        time.sleep(seconds)
        m1, o1 = machine_cpu_seconds(), our_cpu_seconds(self.atticd_pid, self.a.nginx_pid)
        return max((m1 - m0) - (o1 - o0), 0) / seconds

    def all(self):
        """Runs every workload; one that fails is reported in the table and
        the others still run."""
        self.busy_before = self.other_work_cores(1.0)
        if self.busy_before > 0.25:
            log(f"warning: {self.busy_before:.2f} cores busy with other work before the run: "
                "the figures will be skewed")
        t0 = time.perf_counter()
        machine0, ours0 = machine_cpu_seconds(), our_cpu_seconds(self.atticd_pid, self.a.nginx_pid)
        failed = []
        wanted = needed_workloads(self.a.only)
        for name, workload in (("ingest", self.ingest), ("substitution", self.substitution),
                               ("pull-through", self.pull_through), ("narinfo", self.narinfo), ("NAR", self.nar),
                               ("memory", self.memory), ("dedup", self.dedup),
                               ("import", self.import_attic),
                               ("binary sizes", self.binary_sizes)):
            if wanted is not None and name not in wanted:
                continue
            try:
                workload()
            except Exception as e:  # noqa: BLE001 - reported, and the run exits non-zero
                log(f"{name} FAILED: {e}")
                failed.append(name)
                self.results.setdefault("failures", {})[name] = str(e)
                self.rows.append(dict(workload=f"{name}: FAILED (see results.json)", ours=None,
                                      reference=None, unit="", ratio=None, target=None,
                                      better="higher", met=False, fmt="{}"))
        try:
            self.results["atticd_peak_rss_kib_all"] = peak_rss_kib(self.atticd_pid)
        except OSError:
            failed.append("atticd exited")
        self.results["workload_seconds"] = time.perf_counter() - t0
        try:
            other = (machine_cpu_seconds() - machine0
                     - (our_cpu_seconds(self.atticd_pid, self.a.nginx_pid) - ours0))
        except OSError:
            other = None
        self.other_cores = None if other is None else max(other, 0) / self.results["workload_seconds"]
        self.results["other_work_cores_during_run"] = self.other_cores
        self.report()
        return not failed

    def report(self):
        out = Path(self.a.results)
        header = ["workload", "ours", "reference", "ratio", "target", "met"]
        table = []
        for r in self.rows:
            def fmt(v):
                return "-" if v is None else (r["fmt"].format(v) + " " + r["unit"])
            target = "-" if r["target"] is None else \
                ("≥ " if r["better"] == "higher" else "≤ ") + f"{r['target']:.1f}×"
            met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
            table.append([r["workload"], fmt(r["ours"]), fmt(r["reference"]),
                          "-" if r["ratio"] is None else f"{r['ratio']:.2f}×", target, met])
        widths = [max(len(x[i]) for x in table + [header]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                           enumerate(zip(row, widths))) for row in [header] + table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        refs = ("reference: nix copy --to file://?compression=zstd (ingest, stored), "
                "nginx serving that file:// cache (substitution, pull-through, narinfo, NAR)")
        build = build_and_machine()
        text = "\n".join(lines) + "\n" + refs + "\n"
        text += (f"commit {build['commit']}; {build['cpu_model']}, {build['cores']} cores\n")
        if self.busy_before > 0.25:
            text += (f"warning: {self.busy_before:.2f} cores were busy with other work just "
                     "before the run; these figures are skewed\n")
        if self.other_cores is not None:
            text += (f"other work on this machine during the run: {self.other_cores:.2f} cores "
                     f"on average{' (too much: these figures are skewed)' if self.other_cores > 0.2 else ''}\n")
        (out / "table.txt").write_text(text)
        print(text)
        meta = dict(mode=self.a.mode, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    corpus=self.corpus, **build,
                    other_work_cores_before=self.busy_before,
                    nix=run(["nix", "--version"]).strip(),
                    nginx=subprocess.run(["nginx", "-v"], text=True,
                                         stderr=subprocess.PIPE).stderr.strip(),
                    wrk=subprocess.run(["wrk", "-v"], text=True, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT).stdout.splitlines()[0])
        rows = [{k: v for k, v in r.items() if k != "fmt"} for r in self.rows]
        (out / "results.json").write_text(json.dumps(
            dict(meta=meta, table=rows, measurements=self.results), indent=1, default=str))
        plot(rows, out / "results.png", meta)


def build_and_machine():
    """The commit measured (with `-dirty` for uncommitted changes), the
    CPU model and the core count."""
    repo = Path(__file__).resolve().parent.parent
    git = lambda *args: subprocess.run(["git", "-C", str(repo), *args], text=True,
                                       capture_output=True).stdout.strip()
    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(commit=commit, cpu_model=model, cores=os.cpu_count())


def plot(rows, path, meta):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing: no results.png")
        return
    targeted = [r for r in rows if r["target"] is not None and r["ratio"] is not None]
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(targeted) + 1.6))
    names = [r["workload"] for r in targeted][::-1]
    ratios = [r["ratio"] for r in targeted][::-1]
    colours = ["tab:green" if r["met"] else "tab:red" for r in targeted][::-1]
    ys = range(len(targeted))
    ax.barh(ys, ratios, color=colours, height=0.6)
    for y, r in zip(ys, targeted[::-1]):
        ax.plot([r["target"]] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
        sign = "≥" if r["better"] == "higher" else "≤"
        ax.text(max(r["ratio"], r["target"]) * 1.02, y,
                f"{r['ratio']:.2f}× (target {sign} {r['target']:.1f}×)", va="center", fontsize=8)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("ours / reference (black bar: target)")
    ax.set_xlim(0, max(ratios + [r["target"] for r in targeted]) * 1.45)
    ax.set_title(f"attic benchmarks, {meta['mode']} mode, {meta['date']}\n"
                 f"commit {meta['commit']}; {meta['cpu_model']}, {meta['cores']} cores",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# What each workload needs run before it: the corpus pushed (ingest) and
# nix copy's file:// cache beside it, or the narinfos workload 3 read.
WORKLOAD_NEEDS = {"substitution": ["ingest"], "pull-through": ["ingest"], "narinfo": ["ingest"],
                  "NAR": ["ingest", "narinfo"], "memory": ["ingest"], "dedup": ["ingest"],
                  "import": ["ingest"], "binary sizes": [], "ingest": []}


def needed_workloads(only):
    """The workloads to run for `--only ROW[,ROW]` (names as in the table,
    any case, `-` for a space) with what they need; None for all."""
    if not only:
        return None
    by_key = {name.lower().replace(" ", "-"): name for name in WORKLOAD_NEEDS}
    wanted = set()
    for row in only.split(","):
        name = by_key.get(row.strip().lower().replace(" ", "-"))
        if name is None:
            raise SystemExit(f"--only: no workload {row!r}; there are {', '.join(sorted(by_key))}")
        wanted.add(name)
        wanted.update(WORKLOAD_NEEDS[name])
    return wanted


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--mode", choices=MODES, required=True)
    c.add_argument("--cache", required=True)
    c.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--mode", choices=MODES, required=True)
    r.add_argument("--corpus", required=True)
    r.add_argument("--results", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--bin", required=True)
    r.add_argument("--atticd-pid", type=int, required=True)
    r.add_argument("--atticd-url", required=True)
    r.add_argument("--storage", required=True)
    r.add_argument("--nginx-port", type=int, required=True)
    r.add_argument("--nginx-pid", type=int, required=True)
    r.add_argument("--filecache", required=True)
    r.add_argument("--scratch", required=True, help="where substituted stores go")
    r.add_argument("--only", help="ROW[,ROW]: these workloads and what they need")
    r.add_argument("--release-build-seconds", type=int, help="how long cargo build --release took")
    r.add_argument("--release-build-fresh", choices=["true", "false"],
                   help="whether that build started with no target/release")
    a = p.parse_args()
    if a.cmd == "corpus":
        build_corpus(a.mode, Path(a.cache), Path(a.out))
    elif not Bench(a).all():
        sys.exit(1)


if __name__ == "__main__":
    main()
