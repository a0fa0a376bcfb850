"""The helper of scripts/bench-scale: a cache of many paths (a million by
default) on SQLite or PostgreSQL, and what serving and pushing cost there.

The fill is direct SQL in the server's own schema: one real path is pushed
through atticd, and its object row is copied once per synthetic path (a
fresh store path hash and name, no references, no signatures), all sharing
the real path's NAR. So every filled path is served: its narinfo is signed
on the fly and its NAR downloads. The column list is read from the
database, so the fill follows migrations.

Measured, each against nginx serving the same narinfo files where there is
one: narinfo requests (wrk) over a small hot set and over 100,000 distinct
paths, `get-missing-paths` with 100,000 hashes (present, unknown and
duplicated), and `attic push` of a 10,000-path closure whose first 9,900
paths the cache holds already.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import WRK_SCRIPT, http_get, log, wrk  # noqa: E402

NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"


def random_hash(rng):
    return "".join(rng.choice(NIX_BASE32) for _ in range(32))


class Server:
    """atticd in a home of its own, on SQLite or on a fresh PostgreSQL database."""

    def __init__(self, bin_dir, atticd, work, postgres):
        self.bin_dir, self.work, self.postgres = bin_dir, work, postgres
        self.env = dict(os.environ, HOME=str(work / "home"), XDG_CONFIG_HOME=str(work / "config"),
                        XDG_DATA_HOME=str(work / "data"), XDG_STATE_HOME=str(work / "state"),
                        XDG_CACHE_HOME=str(work / "cache"))
        (work / "home").mkdir(parents=True)
        self.atticd = atticd
        self.proc = None
        self.db_name = None
        # A first start writes the configuration; PostgreSQL is then set in it.
        self.start()
        if postgres:
            self.stop()
            self.db_name = f"attic_scale_{os.getpid()}"
            self.psql_admin(f"CREATE DATABASE {self.db_name}")
            self.db_url = f"{postgres.rstrip('/')}/{self.db_name}"
            config = work / "config" / "attic" / "server.toml"
            text = config.read_text()
            config.write_text(f'[database]\nurl = "{self.db_url}"\n\n' + text
                              if "[database]" not in text else
                              text.replace("[database]", f'[database]\nurl = "{self.db_url}"', 1))
            self.start()

    def psql_admin(self, sql):
        subprocess.run(["psql", "-q", f"{self.postgres.rstrip('/')}/postgres", "-c", sql], check=True)

    def start(self):
        out = open(self.work / "atticd.out", "w")
        self.proc = subprocess.Popen([self.atticd, "--listen", "127.0.0.1:0"], env=self.env,
                                     stdout=out, stderr=open(self.work / "atticd.err", "a"))
        for _ in range(300):
            text = (self.work / "atticd.out").read_text()
            for line in text.splitlines():
                if line.startswith("atticd listening on http://"):
                    hostport = line.split("http://", 1)[1].rstrip("/")
                    host, port = hostport.rsplit(":", 1)
                    self.host, self.port = host, int(port)
                    self.url = f"http://{hostport}"
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"atticd did not start: {(self.work / 'atticd.err').read_text()[-2000:]}")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def tool(self, name, *args):
        return subprocess.run([str(self.bin_dir / name), *args], env=self.env, check=True,
                              text=True, stdout=subprocess.PIPE).stdout

    def sqlite_path(self):
        return self.work / "data" / "attic" / "server.db"

    def drop(self):
        self.stop()
        if self.db_name:
            self.psql_admin(f"DROP DATABASE IF EXISTS {self.db_name}")


def psql(url, sql, stdin=None):
    """Runs `sql` (given on psql's stdin unless `stdin` is data for COPY)."""
    command = ["psql", "-q", "-At", "-v", "ON_ERROR_STOP=1", url]
    if stdin is not None:
        command += ["-c", sql]
    return subprocess.run(command, input=sql if stdin is None else stdin, check=True, text=True,
                          stdout=subprocess.PIPE).stdout


def fill(server, cache_id, template_id, rows):
    """Copies object `template_id` once per (hash, store path) of `rows`,
    each with a NAR row of its own (a copy of the template's under another
    hash), as real paths have: a million paths sharing one NAR would give
    the planners statistics no real cache has (SQLite, analyzed, then
    scans the cache for the paths holding a NAR)."""
    t0 = time.perf_counter()
    columns = ("SELECT column_name FROM information_schema.columns "
               "WHERE table_name = '{}' ORDER BY ordinal_position")
    if server.postgres:
        run = lambda sql, stdin=None: psql(server.db_url, sql, stdin)  # noqa: E731
        object_cols = run(columns.format("object")).split()
        nar_cols = run(columns.format("nar")).split()
        hash_of = "'sha256:' || encode(convert_to(f.h, 'UTF8'), 'hex')"
        run("CREATE TABLE scale_fill (h text, p text)")
        run("COPY scale_fill FROM STDIN", stdin="".join(f"{h}\t{p}\n" for h, p in rows))
    else:
        db = sqlite3.connect(server.sqlite_path(), timeout=60)
        run = lambda sql: db.execute(sql)  # noqa: E731
        object_cols = [r[1] for r in db.execute("PRAGMA table_info(object)")]
        nar_cols = [r[1] for r in db.execute("PRAGMA table_info(nar)")]
        hash_of = "'sha256:' || lower(hex(f.h))"
        db.execute("CREATE TEMP TABLE scale_fill (h TEXT, p TEXT)")
        db.executemany("INSERT INTO scale_fill VALUES (?, ?)", rows)

    def copy(table, cols, source_id, replaced):
        picked = [(c, replaced.get(c, f't."{c}"')) for c in cols]
        keep = [(c, e) for c, e in picked if e is not None]
        return (f"INSERT INTO {table} ({', '.join(chr(34) + c + chr(34) for c, _ in keep)}) "
                f"SELECT {', '.join(e for _, e in keep)} FROM scale_fill f, {table} t "
                f"WHERE t.id = {source_id}")

    nar_of_template = f"(SELECT nar_id FROM object WHERE id = {template_id})"
    # The schema's triggers add a usage row per filled path; a cache grown
    # by uploads keeps them folded into a few (the server folds them every
    # so many uploads), so the fill folds them too.
    if server.postgres:
        has_usage = run("SELECT to_regclass('cache_usage') IS NOT NULL").strip() == "t"
    else:
        has_usage = db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'cache_usage'").fetchone() is not None
    fold = [
        "CREATE TABLE scale_usage AS SELECT cache_id, SUM(bytes) AS bytes "
        "FROM cache_usage GROUP BY cache_id",
        "DELETE FROM cache_usage",
        "INSERT INTO cache_usage (cache_id, bytes) SELECT cache_id, bytes FROM scale_usage",
        "DROP TABLE scale_usage",
    ] if has_usage else []
    statements = [
        copy("nar", nar_cols, nar_of_template, {"id": None, "nar_hash": hash_of}),
        copy("object", object_cols, template_id, {
            "id": None, "store_path_hash": "f.h", "store_path": "f.p", "references": "'[]'",
            "sigs": "'[]'", "nix_upload_file": "NULL", "cache_id": str(cache_id),
            "nar_id": f"(SELECT n.id FROM nar n WHERE n.nar_hash = {hash_of})"}),
        "DROP TABLE scale_fill",
        *fold,
        "ANALYZE",
    ]
    if server.postgres:
        run(";\n".join(statements))
        if has_usage:
            # What autovacuum does to the folded rows in time: a first read
            # should not pay for skipping a million dead index entries.
            run("VACUUM cache_usage")
    else:
        with db:
            for statement in statements[:-1]:
                run(statement)
        run(statements[-1])
        db.close()
    return time.perf_counter() - t0


def template_object(server, cache_id):
    sql = f"SELECT id FROM object WHERE cache_id = {cache_id} ORDER BY id LIMIT 1"
    if server.postgres:
        return int(psql(server.db_url, sql).strip())
    db = sqlite3.connect(server.sqlite_path(), timeout=60)
    (oid,) = db.execute(sql).fetchone()
    db.close()
    return oid


def cache_id_of(server, name):
    sql = f"SELECT id FROM cache WHERE name = '{name}'"
    if server.postgres:
        return int(psql(server.db_url, sql).strip())
    db = sqlite3.connect(server.sqlite_path(), timeout=60)
    (cid,) = db.execute(sql).fetchone()
    db.close()
    return cid


def nix_paths(count, tag):
    """`count` store paths with no references (builtins.toFile), and one
    more referencing them all: its closure is count + 1 paths."""
    expr = (f'let leaves = builtins.genList (i: builtins.toFile "scale-{tag}-${{toString i}}" '
            f'"leaf ${{toString i}} {tag}") {count}; '
            f'in builtins.toFile "scale-{tag}-top" (builtins.concatStringsSep "\\n" leaves)')
    top = subprocess.run(["nix", "eval", "--raw", "--impure", "--expr", expr], check=True,
                         text=True, stdout=subprocess.PIPE).stdout.strip()
    leaves = (Path(top).read_text()).splitlines()
    return top, leaves


def query_plans(server, cache_id, hashes, out):
    """The plans of the statements behind narinfo and get-missing-paths on
    the filled database (written to plans-<db>.txt), and the database-side
    time of get-missing-paths as the server asks (one list per 2,000 hashes
    on PostgreSQL, 25,000 on SQLite) against IN lists of 500 (before)."""
    unique = sorted(set(hashes))
    one = unique[0]
    narinfo = ("SELECT object.id FROM object LEFT JOIN nar ON object.nar_id = nar.id "
               f"WHERE object.cache_id = {cache_id} AND object.store_path_hash = '{one}' "
               "AND nar.state = 'valid' LIMIT 1")
    base = ("SELECT object.store_path_hash FROM object INNER JOIN nar ON object.nar_id = nar.id "
            f"WHERE object.cache_id = {cache_id} AND nar.state = 'valid' AND ")
    per = 2_000 if server.postgres else 25_000
    batches = [unique[i:i + per] for i in range(0, len(unique), per)]
    old = [base + "object.store_path_hash IN (" + ", ".join(f"'{h}'" for h in unique[i:i + 500]) + ")"
           for i in range(0, len(unique), 500)]
    timings = {}
    if server.postgres:
        new = [base + f"object.store_path_hash = ANY(string_to_array('{','.join(b)}', ','))"
               for b in batches]
        plans = psql(server.db_url, f"EXPLAIN ANALYZE {narinfo}")
        plans += psql(server.db_url, f"EXPLAIN ANALYZE {new[0]}")
        for name, statements in (("before_in_lists_of_500", old), (f"now_one_list_per_{per}", new)):
            script = out / f"missing-{name}.sql"
            script.write_text(";\n".join(statements) + ";\n")
            t0 = time.perf_counter()
            subprocess.run(["psql", "-q", "-o", "/dev/null", "-v", "ON_ERROR_STOP=1", server.db_url,
                            "-f", str(script)], check=True)
            timings[name] = time.perf_counter() - t0
            script.unlink()
    else:
        new = [base + "object.store_path_hash IN (SELECT value FROM json_each(?))" for _ in batches]
        db = sqlite3.connect(server.sqlite_path(), timeout=60)
        plans = "\n".join(str(r) for r in db.execute(f"EXPLAIN QUERY PLAN {narinfo}"))
        plans += "\n" + "\n".join(str(r) for r in db.execute(f"EXPLAIN QUERY PLAN {new[0]}",
                                                              [json.dumps(batches[0])]))
        t0 = time.perf_counter()
        for statement in old:
            db.execute(statement).fetchall()
        timings["before_in_lists_of_500"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for statement, batch in zip(new, batches):
            db.execute(statement, [json.dumps(batch)]).fetchall()
        timings[f"now_one_list_per_{per}"] = time.perf_counter() - t0
        db.close()
    plans = "\n".join(line if len(line) < 300 else line[:200] + " ..." for line in plans.splitlines())
    (out / f"plans-{'postgres' if server.postgres else 'sqlite'}.txt").write_text(plans)
    log(f"plans:\n{plans}")
    log("database time of get-missing-paths' statements: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in timings.items()))
    return timings


def post_missing(server, token, hashes):
    body = json.dumps({"cache": "scale", "store_path_hashes": hashes})
    c = http.client.HTTPConnection(server.host, server.port, timeout=300)
    t0 = time.perf_counter()
    c.request("POST", "/_api/v1/get-missing-paths", body=body,
              headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    elapsed = time.perf_counter() - t0
    c.close()
    if r.status != 200:
        raise RuntimeError(f"get-missing-paths answered {r.status}: {data[:500]!r}")
    return elapsed, json.loads(data)["missing_paths"]


def start_nginx(work, root):
    conf_dir = work / "nginx"
    conf_dir.mkdir()
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    (conf_dir / "nginx.conf").write_text(f"""
daemon off;
worker_processes auto;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 65; keepalive_requests 1000000;
    client_body_temp_path {conf_dir}/body; proxy_temp_path {conf_dir}/proxy;
    fastcgi_temp_path {conf_dir}/fastcgi; uwsgi_temp_path {conf_dir}/uwsgi;
    scgi_temp_path {conf_dir}/scgi;
    types {{ text/x-nix-narinfo narinfo; }}
    default_type application/octet-stream;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    proc = subprocess.Popen(["/usr/sbin/nginx", "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf")],
                            stderr=open(conf_dir / "stderr", "w"))
    for _ in range(50):
        try:
            http_get("127.0.0.1", port, "/")
            break
        except OSError:
            time.sleep(0.1)
    return proc, port


def narinfo_rows(server, work, out, hot, cold, seconds, conns):
    """wrk over the hot set (vs nginx serving the same bodies) and over the
    cold set (atticd alone: 100,000 distinct paths, past what it holds in
    memory)."""
    script = work / "narinfo.lua"
    script.write_text(WRK_SCRIPT)
    root = work / "nginx-root"
    root.mkdir()
    for h in hot:
        status, body = http_get(server.host, server.port, f"/scale/{h}.narinfo")
        if status != 200:
            raise RuntimeError(f"atticd answered {status} for {h}.narinfo")
        (root / f"{h}.narinfo").write_bytes(body)
    nginx, nginx_port = start_nginx(work, root)
    lists = {}
    for name, paths in (("atticd", [f"/scale/{h}.narinfo" for h in hot]),
                        ("nginx", [f"/{h}.narinfo" for h in hot]),
                        ("atticd-cold", [f"/scale/{h}.narinfo" for h in cold])):
        f = work / f"narinfo-{name}.txt"
        f.write_text("\n".join(paths) + "\n")
        lists[name] = f
    results = {}
    try:
        for c in conns:
            threads = min(c, 2)
            for name, base in (("atticd", server.url), ("nginx", f"http://127.0.0.1:{nginx_port}"),
                               ("atticd-cold", server.url)):
                r = wrk(base, lists[name], script, c, threads, seconds, out / f"wrk-{name}-{c}c.log")
                results[f"{name}_{c}c"] = r
                log(f"narinfo {name} {c} conn: {r['rps']:.0f} req/s, p99 {r['p99_us'] / 1000:.2f} ms, "
                    f"errors {r['status_errors'] + r['socket_errors']}")
            a, n = results[f"atticd_{c}c"], results[f"nginx_{c}c"]
            log(f"narinfo hot {c} conn: atticd/nginx = {a['rps'] / n['rps']:.2f}x")
    finally:
        nginx.terminate()
        nginx.wait(10)
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--db", choices=["sqlite", "postgres"], required=True)
    p.add_argument("--postgres", default=os.environ.get("ATTIC_TEST_POSTGRES",
                                                        "postgres://attic@127.0.0.1:54999"))
    p.add_argument("--paths", type=int, default=1_000_000)
    p.add_argument("--atticd", required=True)
    p.add_argument("--bin", required=True, help="directory of attic and atticadm")
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--only", default="narinfo,missing,push",
                   help="comma-separated: narinfo, missing, push")
    a = p.parse_args()
    only = set(a.only.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="attic-scale-"))
    os.chmod(work, 0o755)  # nginx workers run as another user
    rng = random.Random(23)
    results = dict(db=a.db, paths=a.paths)
    server = Server(Path(a.bin), a.atticd, work, a.postgres if a.db == "postgres" else None)
    try:
        token = server.tool("atticadm", "make-token", "--sub", "scale", "--validity", "1h",
                            "--pull", "*", "--push", "*", "--create-cache", "*").strip()
        attic_env = server.env
        subprocess.run([str(server.bin_dir / "attic"), "login", "scale", server.url, token],
                       env=attic_env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([str(server.bin_dir / "attic"), "cache", "create", "--public", "scale:scale"],
                       env=attic_env, check=True, stdout=subprocess.DEVNULL)
        # The template: one real path, pushed.
        seed = subprocess.run(["nix", "eval", "--raw", "--impure", "--expr",
                               f'builtins.toFile "scale-seed" "{os.getpid()}"'],
                              check=True, text=True, stdout=subprocess.PIPE).stdout.strip()
        subprocess.run([str(server.bin_dir / "attic"), "push", "scale:scale", seed], env=attic_env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache_id = cache_id_of(server, "scale")
        template = template_object(server, cache_id)
        # The closure to push, 9,900 of its 10,000 leaves filled beforehand.
        top, leaves = ([], []) if "push" not in only else nix_paths(10_000, f"{a.db}{os.getpid()}")
        present = [(Path(p).name[:32], p) for p in leaves[:9_900]]
        synthetic = []
        seen = {h for h, _ in present}
        while len(synthetic) < a.paths - len(present):
            h = random_hash(rng)
            if h not in seen:
                seen.add(h)
                synthetic.append((h, f"/nix/store/{h}-scale-{len(synthetic)}"))
        log(f"filling {a.paths} paths into {a.db}")
        results["fill_seconds"] = fill(server, cache_id, template, present + synthetic)
        log(f"filled in {results['fill_seconds']:.1f} s")
        filled = [h for h, _ in synthetic]
        if "narinfo" in only:
            hot = rng.sample(filled, 1000)
            cold = rng.sample(filled, min(100_000, len(filled)))
            results["narinfo"] = narinfo_rows(server, work, out, hot, cold, a.seconds, (1, 64))
        if "missing" in only:
            known = rng.sample(filled, min(50_000, len(filled) // 2))
            unknown = [random_hash(rng) for _ in range(40_000)]
            unknown = [h for h in unknown if h not in seen]
            hashes = known + unknown
            hashes += rng.sample(hashes, 100_000 - len(hashes))  # duplicates
            rng.shuffle(hashes)
            times = []
            for _ in range(3):
                elapsed, missing = post_missing(server, token, hashes)
                times.append(elapsed)
            expected = [h for h in hashes if h not in seen]
            if sorted(missing) != sorted(expected):
                raise RuntimeError(f"get-missing-paths: {len(missing)} missing, expected {len(expected)}")
            results["get_missing_paths_100k_seconds"] = times
            results["get_missing_paths_database_seconds"] = query_plans(server, cache_id, hashes, out)
            log(f"get-missing-paths, 100,000 hashes: {', '.join(f'{t:.3f}' for t in times)} s")
        if "push" in only:
            t0 = time.perf_counter()
            subprocess.run([str(server.bin_dir / "attic"), "push", "scale:scale", top], env=attic_env,
                           check=True, stdout=open(out / "push.log", "w"), stderr=subprocess.STDOUT)
            results["push_10k_closure_9900_present_seconds"] = time.perf_counter() - t0
            log(f"push of a 10,001-path closure, 9,900 present: "
                f"{results['push_10k_closure_9900_present_seconds']:.2f} s")
        (out / f"scale-{a.db}.json").write_text(json.dumps(results, indent=2))
    finally:
        server.drop()
        # The server's log (requests and their latency) outlives the run.
        shutil.copy(work / "atticd.err", out / f"atticd-{a.db}.err")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
