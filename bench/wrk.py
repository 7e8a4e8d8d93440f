#!/usr/bin/env python3
"""Out-of-process benchmark: every PRODUCT.md §7 ratio in one run, load from wrk.

Usage (from the repository root; builds the release binary if needed):

    python3 bench/wrk.py                   # SQLite, 10 s per measurement
    python3 bench/wrk.py --seconds 5       # shorter
    python3 bench/wrk.py --store mongodb   # against a SecantusDB started here (.venv)
    # A/B on a noisy machine: two binaries, run in turn three times, medians compared
    python3 bench/wrk.py --quick --rounds 3 --binary /tmp/introgy-before --binary target/release/introgy
    # Only the memory rows (a minute): peak RSS after 256 and after 2,000 connections
    python3 bench/wrk.py --only rss
    # Only the login rows (~40 s a round): the bcrypt bound and the flood p99
    python3 bench/wrk.py --only flood --rounds 3

The server runs as its own process (the release binary, bcrypt cost 12, log mail
transport) and wrk (-t2, a separate process) drives it, so the load generator does not
share the server's runtime. It prints, in one run:

- requests/s of GET /health and the ratio of each authenticated read (verify-token,
  users/me, the battery), of recording an interaction (one user, and 32 users), and of a
  history page of 50 to it;
- the bcrypt bound (cores / one cost-12 hash) and login throughput against it;
- other users' p99 (GET /users/me) alone and during a login flood, both as fast as 4
  connections go and paced (16 connections, 2 ms between answer and request), and the
  paced reads beside one idle-priority busy loop per core in another process (no flood):
  what any use of the idle CPUs costs other requests on this machine;
- peak RSS (VmHWM) after 256 and after 2,000 connections (and before them: the peak of
  everything earlier in the run, which VmHWM includes);
- with --store mongodb and a server that exposes them on /metrics, MongoDB round trips
  per request.

Python standard library only; wrk comes from Debian's package (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"


def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat: user, nice, system, idle, iowait,
    irq, softirq, steal, ...), in ticks."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {seconds} s")


class Client:
    """A keep-alive HTTP/1.1 client for the set-up steps."""

    def __init__(self, port: int):
        # Generous: on a loaded machine a cost-12 hash queued behind others takes long.
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180)

    def call(self, method: str, path: str, body=None, token: str | None = None,
             form: bool = False):
        headers = {}
        data = None
        if body is not None:
            if form:
                data = urllib.parse.urlencode(body)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body)
                headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return response.status, payload


class Server:
    def __init__(self, binary: Path, database_url: str, workdir: Path, bcrypt_cost: int = 12,
                 extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ)
        env.update({
            "ENVIRONMENT": "development",
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "DATABASE_URL": database_url,
            "DATA_DIR": str(workdir),
            "EMAIL_TRANSPORT": "log",
            "LOG_FORMAT": "json",
            "RUST_LOG": "warn",
            "NO_COLOR": "1",
            "AUTH_RATE_LIMIT_PER_MINUTE": "100000000",
            "BCRYPT_COST": str(bcrypt_cost),
            "METRICS_TOKEN": METRICS_TOKEN,
        })
        env.update(extra_env or {})
        # The server may raise its own descriptor limit to the hard one; make the hard
        # limit generous for the 2,000-connection step.
        self.proc = subprocess.Popen(
            [str(binary), "serve"], cwd=workdir, env=env, stdout=self.log,
            stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
        wait_port(self.port)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far (from /proc)."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self, field: str = "VmHWM") -> float:
        """Peak (`VmHWM`) or current (`VmRSS`) resident memory, MiB."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def code_for(self, email: str, seconds: float = 20.0) -> str:
        """The newest code the log transport printed for `email`."""
        deadline = time.monotonic() + seconds
        pattern = re.compile(r"(\d{6}) is your \S+ verification code")
        while time.monotonic() < deadline:
            codes = [m.group(1)
                     for line in self.log_path.read_text(errors="replace").splitlines()
                     if email in line
                     for m in [pattern.search(line)] if m]
            if codes:
                return codes[-1]
            time.sleep(0.05)
        raise SystemExit(f"no code was logged for {email} (see {self.log_path})")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def make_users(server: Server, count: int, prefix: str) -> list[dict]:
    """Registers and verifies `count` users in parallel; returns email, id and tokens."""
    users: list[dict] = [None] * count  # type: ignore[list-item]
    errors: list[str] = []

    def one(index: int) -> None:
        try:
            client = Client(server.port)
            email = f"{prefix}-{index}-{os.getpid()}@bench.example.com"
            # A loaded machine may answer 503 while cost-12 hashes queue: retry a while.
            deadline = time.monotonic() + 120
            while True:
                status, body = client.call("POST", "/auth/register",
                                           {"email": email, "password": PASSWORD})
                if status != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if status != 202:
                raise RuntimeError(f"register {status} {body}")
            code = server.code_for(email)
            status, body = client.call("POST", "/auth/verify-otp", {"email": email, "code": code})
            if status != 200:
                raise RuntimeError(f"verify-otp {status} {body}")
            users[index] = {"email": email, "id": body["user"]["id"],
                            "token": body["access_token"]}
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(str(e))

    # Four at a time: enough to overlap hashing, few enough not to time out in its queue.
    for start in range(0, count, 4):
        threads = [threading.Thread(target=one, args=(i,))
                   for i in range(start, min(count, start + 4))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise SystemExit(f"setting up users failed: {errors[0]}")
    return users


WRK_LUA = r"""
local tokens = {%(tokens)s}
local bodies = {%(bodies)s}
local method = "%(method)s"
local path = "%(path)s"
local content_type = "%(content_type)s"
local counter = 0
function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end
local i = 0
function request()
  i = i + 1
  local headers = {}
  local n = #tokens
  if n > 0 then
    headers["Authorization"] = "Bearer " .. tokens[((i + offset * 7) %% n) + 1]
  end
  local body = nil
  local m = #bodies
  if m > 0 then
    body = bodies[((i + offset * 7) %% m) + 1]
    headers["Content-Type"] = content_type
  end
  return wrk.format(method, path, headers, body)
end
%(delay)s"""


def lua_string(s: str) -> str:
    return json.dumps(s)  # JSON string escapes are valid Lua string escapes here


def wrk(port: int, path: str, seconds: float, connections: int, *, method: str = "GET",
        tokens: list[str] | None = None, bodies: list[str] | None = None,
        content_type: str = "application/json", threads: int = 2,
        timeout: str = "10s", pace_ms: int = 0) -> dict:
    """Runs wrk; returns requests/s, p50/p99 (ms) and the non-2xx count. With `pace_ms`,
    each connection waits that long after an answer before its next request (a steady
    load below saturation, instead of as fast as the server answers)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_LUA % {
            "tokens": ",".join(lua_string(t) for t in (tokens or [])),
            "bodies": ",".join(lua_string(b) for b in (bodies or [])),
            "method": method,
            "path": path,
            "content_type": content_type,
            "delay": f"function delay()\n  return {pace_ms}\nend\n" if pace_ms else "",
        })
    try:
        out = subprocess.run(
            ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             "--latency", f"--timeout={timeout}", "-s", script.name,
             f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, check=True, preexec_fn=raise_nofile).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "requests": requests, "p50": pct("50"), "p99": pct("99"),
            "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0,
            "raw": out}


def bcrypt_seconds(server: Server, user: dict) -> float:
    """Median time of a single login (one cost-12 verification) with nothing else running."""
    client = Client(server.port)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        status, body = client.call("POST", "/auth/login",
                                   {"username": user["email"], "password": PASSWORD},
                                   form=True)
        times.append(time.perf_counter() - started)
        if status != 200:
            raise SystemExit(f"login failed: {status} {body}")
    return sorted(times)[len(times) // 2]


def start_mongo(workdir: Path) -> tuple[subprocess.Popen, str]:
    python = ROOT / ".venv" / "bin" / "secantusd-py"
    if not python.exists():
        raise SystemExit("--store mongodb needs .venv with SecantusDB (run scripts/test once)")
    port = free_port()
    proc = subprocess.Popen([str(python), "--port", str(port), "--storage-path", ":memory:"],
                            stdout=open(workdir / "mongo.log", "w"), stderr=subprocess.STDOUT)
    wait_port(port)
    return proc, f"mongodb://127.0.0.1:{port}/introgy_bench"


# A CPU-bound loop at idle priority: the floor of what any use of otherwise idle CPUs
# does to other requests' latency on this machine (no util-linux `chrt` needed).
BUSY_LOOP = ("import os\n"
             "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
             "while True:\n    pass\n")

# Pause of each paced reader between an answer and its next request (ms).
PACE_MS = 2

METRICS_TOKEN = "bench-metrics-token-0123456789abcdef"


def metrics_text(port: int) -> str | None:
    """The server's /metrics exposition, if it serves one on its port."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        response = conn.getresponse()
        if response.status != 200:
            return None
        return response.read().decode()
    except OSError:
        return None


def hash_rescues(port: int) -> float | None:
    """Hashes the server ran again on its rescue thread (None: not exposed)."""
    m = re.search(r"^introgy_password_hash_rescues_total\s+([\d.e+]+)$", metrics_text(port) or "",
                  re.M)
    return float(m.group(1)) if m else None


def mongo_round_trips(port: int) -> dict[str, float] | None:
    """Round trips per request from /metrics, if the server exposes them."""
    text = metrics_text(port)
    if text is None:
        return None
    found = {}
    for line in text.splitlines():
        m = re.match(r'introgy_store_round_trips_per_request\{route="([^"]+)"[^}]*\}\s+([\d.]+)', line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found or None


def run(binary: Path, args: argparse.Namespace) -> dict:
    """One server, every row; returns the measurements (printed by `report`)."""
    workdir = Path(tempfile.mkdtemp(prefix="introgy-wrk-"))
    mongo = None
    if args.store == "mongodb":
        mongo, database_url = start_mongo(workdir)
    else:
        database_url = f"sqlite:{workdir / 'introgy.db'}"
    # --quick and --only rss measure no login: cheap hashes make their set-up fast on a
    # loaded machine (what they measure does not hash).
    cheap = args.quick or args.only == "rss"
    extra_env = dict(pair.split("=", 1) for pair in args.env)
    server = Server(binary, database_url, workdir, bcrypt_cost=4 if cheap else 12,
                    extra_env=extra_env)
    s, c = args.seconds, args.connections
    rows: list[tuple[str, float, str, float]] = []
    found: dict = {"rows": rows}
    try:
        def measure(label, path, **kw):
            cpu, machine = server.cpu_seconds(), cpu_times()
            result = wrk(server.port, path, s, kw.pop("connections", c), **kw)
            # The share of the machine's CPU time the hypervisor gave to others: a virtual
            # machine's neighbours show here, not in the load average.
            spent = [b - a for a, b in zip(machine, cpu_times())]
            result["steal"] = 100 * spent[7] / max(1, sum(spent))
            # The server's CPU time per answered request: steadier than requests/s when
            # other processes share the cores.
            result["cpu_us"] = (1e6 * (server.cpu_seconds() - cpu)
                                / max(1, result["requests"]))
            if result["non2xx"] or result["socket_errors"]:
                print(f"warning: {label}: {result['non2xx']} non-2xx, "
                      f"{result['socket_errors']} socket errors", file=sys.stderr)
            return result

        readers = make_users(server, 4 if cheap else 32, "reader")
        if args.only == "rss":
            found.update(connection_steps(server, [u["token"] for u in readers], measure))
            return found
        login_users = [] if args.quick else make_users(server, 16, "login")
        tokens = [u["token"] for u in readers]
        if args.only == "flood":
            found.update(login_rows(server, tokens, login_users, measure, s))
            return found
        history_user = readers[0]
        setup = Client(server.port)
        for i in range(1000):
            status, body = setup.call("POST", "/social-battery/me/record",
                                      {"type": "depletion" if i % 2 else "recharge",
                                       "energy_impact": 1 + i % 20, "name": f"event {i}"},
                                      token=history_user["token"])
            if status != 201:
                raise SystemExit(f"seeding history failed: {status} {body}")
        record_body = json.dumps({"type": "depletion", "energy_impact": 1, "name": "bench"})

        health = measure("health", "/health")
        rows.append(("GET /health", health["rps"], "", health["cpu_us"]))
        for label, path, toks in [
            ("GET /auth/verify-token", "/auth/verify-token", tokens),
            ("GET /users/me", "/users/me", tokens),
            ("GET /social-battery/me", "/social-battery/me", tokens),
            ("POST .../record, one user", "/social-battery/me/record", tokens[1:2]),
            # Not the history user: the history row reads the same 1,000 events whatever
            # the binary recorded before it.
            (f"POST .../record, {len(tokens) - 1} users", "/social-battery/me/record",
             tokens[1:]),
            ("GET .../activity?limit=50", "/social-battery/me/activity?limit=50",
             [history_user["token"]]),
        ]:
            post = "record" in path
            r = measure(label, path, tokens=toks, method="POST" if post else "GET",
                        bodies=[record_body] if post else None)
            rows.append((label, r["rps"], f"{100 * r['rps'] / health['rps']:.1f}% of /health",
                         r["cpu_us"]))
        if args.quick:
            return found

        found.update(login_rows(server, tokens, login_users, measure, s))
        found.update(connection_steps(server, tokens, measure))
        if args.store == "mongodb":
            found["trips"] = mongo_round_trips(server.port)
        return found
    finally:
        server.stop()
        if mongo:
            mongo.terminate()
            mongo.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def login_rows(server: Server, tokens: list[str], login_users: list[dict], measure,
               s: float) -> dict:
    """Logins against the bcrypt bound, and other users' p99 with and without a flood."""
    hash_s = bcrypt_seconds(server, login_users[0])
    cores = os.cpu_count() or 1
    login_bodies = [urllib.parse.urlencode({"username": u["email"], "password": PASSWORD})
                    for u in login_users]
    login = measure("login", "/auth/login", method="POST", bodies=login_bodies,
                    content_type="application/x-www-form-urlencoded", connections=8)

    # Other users' reads two ways: as fast as 4 connections go (saturating the cores
    # with wrk, so "alone" is already queueing), and paced (16 connections, each waiting
    # PACE_MS between answer and request: a steady load well below saturation).
    alone = measure("users/me alone", "/users/me", tokens=tokens, connections=4)
    paced_alone = measure("users/me paced alone", "/users/me", tokens=tokens,
                          connections=16, pace_ms=PACE_MS)
    flood_result: dict = {}

    def flood():
        flood_result.update(wrk(server.port, "/auth/login", 2 * s + 3, 16, method="POST",
                                bodies=login_bodies,
                                content_type="application/x-www-form-urlencoded"))

    flooder = threading.Thread(target=flood)
    flooder.start()
    time.sleep(1.0)  # let the flood fill the hashing queue first
    during = measure("users/me during flood", "/users/me", tokens=tokens, connections=4)
    paced_during = measure("users/me paced during flood", "/users/me", tokens=tokens,
                           connections=16, pace_ms=PACE_MS)
    flooder.join()
    rescues = hash_rescues(server.port)

    # The control for that ratio: the same paced reads while one busy loop per core runs
    # at idle priority (SCHED_IDLE) in another process, doing nothing with the server.
    # What it costs depends on how many thread wake-ups a request needs (README,
    # "Performance", third pass).
    burners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        paced_burn = measure("users/me paced beside idle busy loops", "/users/me",
                             tokens=tokens, connections=16, pace_ms=PACE_MS)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()

    return {"hash_s": hash_s, "cores": cores, "bound": cores / hash_s, "login": login,
            "alone": alone, "during": during, "paced_alone": paced_alone,
            "paced_during": paced_during, "paced_burn": paced_burn, "flood": flood_result,
            "rescues": rescues}


def connection_steps(server: Server, tokens: list[str], measure) -> dict:
    """Peak RSS before, after 256 and after 2,000 connections reading GET /users/me."""
    before = server.peak_rss_mib()
    measure("256 connections", "/users/me", tokens=tokens, connections=256)
    rss_256 = server.peak_rss_mib()
    measure("2,000 connections", "/users/me", tokens=tokens, connections=2000,
            timeout="30s")
    rss_2000, rss_after = server.peak_rss_mib(), server.peak_rss_mib("VmRSS")
    time.sleep(6)  # the server returns freed memory every 5 s
    return {"rss_before": before, "rss_256": rss_256, "rss_2000": rss_2000,
            "rss_after": rss_after, "rss_later": server.peak_rss_mib("VmRSS")}


def report(binary: Path, found: dict, args: argparse.Namespace) -> None:
    print()
    print(f"{binary}")
    print(f"store: {args.store}; wrk -t2 -c{args.connections}, {args.seconds:g} s per row; "
          f"{os.cpu_count()} cores")
    print(f"{'':34}{'req/s':>10}{'CPU µs/req':>12}")
    for label, rps, note, cpu_us in found["rows"]:
        print(f"{label:34}{rps:10.0f}{cpu_us:12.0f}    {note}")
    if args.quick:
        return
    rss = "" if args.only == "flood" else (
        f"peak RSS: {found['rss_256']:.1f} MiB after 256 connections, "
        f"{found['rss_2000']:.1f} MiB after 2,000 (peak before them "
        f"{found['rss_before']:.1f} MiB; resident at the end {found['rss_after']:.1f} MiB, "
        f"6 s later {found['rss_later']:.1f} MiB)")
    if args.only == "rss":
        print(rss)
        return
    print()
    print(f"one cost-12 login alone: {found['hash_s'] * 1000:.0f} ms; bound with "
          f"{found['cores']} cores: {found['bound']:.1f} logins/s")
    login = found["login"]
    # Cores the server kept busy: below the core count, the hashing threads (nice 10)
    # lost the CPU to other processes, which is the machine, not the server.
    print(f"login, 8 connections, 16 accounts: {login['rps']:.1f} logins/s = "
          f"{100 * login['rps'] / found['bound']:.0f}% of the bound (server busy "
          f"{login['cpu_us'] * login['rps'] / 1e6:.2f} of {found['cores']} cores)")
    alone, during = found["alone"], found["during"]
    print(f"GET /users/me, 4 connections: alone {alone['rps']:.0f} req/s, during a login flood "
          f"{during['rps']:.0f} req/s")
    print(f"GET /users/me p99, 4 connections: alone {alone['p99']:.2f} ms, during a login "
          f"flood {during['p99']:.2f} ms ({during['p99'] / alone['p99']:.1f}x; "
          f"{found['flood'].get('rps', 0):.1f} logins/s in the flood; CPU stolen by the "
          f"hypervisor {alone['steal']:.1f}% / {during['steal']:.1f}%)")
    pa, pd = found["paced_alone"], found["paced_during"]
    print(f"GET /users/me paced (16 connections, {PACE_MS} ms between answer and request): "
          f"{pa['rps']:.0f} req/s, p99 {pa['p99']:.2f} ms alone; {pd['rps']:.0f} req/s, p99 "
          f"{pd['p99']:.2f} ms during the flood ({pd['p99'] / pa['p99']:.1f}x; CPU stolen "
          f"{pa['steal']:.1f}% / {pd['steal']:.1f}%)")
    pb = found["paced_burn"]
    print(f"GET /users/me paced beside {found['cores']} idle-priority busy loops in another "
          f"process (no flood): {pb['rps']:.0f} req/s, p99 {pb['p99']:.2f} ms "
          f"({pb['p99'] / pa['p99']:.1f}x alone: what sharing the CPUs alone costs this "
          f"binary's requests)")
    if found.get("rescues") is not None:
        print(f"hashes run again by the rescue thread: {found['rescues']:.0f}")
    if args.only == "flood":
        return
    print(rss)
    if args.store == "mongodb":
        if found.get("trips"):
            for route, n in sorted(found["trips"].items()):
                print(f"MongoDB round trips per request, {route}: {n:.2f}")
        else:
            print("MongoDB round trips: not exposed by this server's /metrics")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--store", choices=["sqlite", "mongodb"], default="sqlite")
    parser.add_argument("--binary", type=Path, action="append",
                        help="the server binary (default: target/release/introgy); give it "
                             "twice or more to compare binaries, run in turn")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with several binaries: how many times each runs, interleaved "
                             "(A B A B ...), so that a noisy machine hits them alike")
    parser.add_argument("--quick", action="store_true",
                        help="only the throughput rows (4 users, bcrypt cost 4; no login, flood "
                             "or RSS step)")
    parser.add_argument("--only", choices=["rss", "flood"],
                        help="rss: only the peak-memory rows (4 users, bcrypt cost 4); "
                             "flood: only the login rows (the bound, the flood p99)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra environment variable for the server (e.g. "
                             "MALLOC_ARENA_MAX=2); may be repeated")
    parser.add_argument("--no-build", action="store_true", help="use --binary as it is")
    args = parser.parse_args()
    binaries = args.binary or [ROOT / "target" / "release" / "introgy"]

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    if not args.no_build and not args.binary:
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "introgy"],
                       cwd=ROOT, check=True)
    results: dict[Path, list[dict]] = {b: [] for b in binaries}
    for _ in range(max(1, args.rounds)):
        for binary in binaries:
            found = run(binary, args)
            results[binary].append(found)
            report(binary, found, args)
    if len(binaries) > 1 or args.rounds > 1:
        print()
        print("medians over the rounds: req/s (% of the same binary's /health), "
              "server CPU µs per request")
        labels = [row[0] for row in results[binaries[0]][0]["rows"]]
        print(f"{'':34}" + "".join(f"{b.name[-24:]:>28}" for b in binaries))
        for i, label in enumerate(labels):
            cells = []
            for binary in binaries:
                values = sorted(r["rows"][i][1] for r in results[binary])
                health = sorted(r["rows"][0][1] for r in results[binary])
                median, base = values[len(values) // 2], health[len(health) // 2]
                cpu = sorted(r["rows"][i][3] for r in results[binary])[len(values) // 2]
                ratio = f"({100 * median / base:5.1f}%)" if i else " " * 8
                cells.append(f"{median:8.0f} {ratio} {cpu:5.0f}µs")
            print(f"{label:34}" + "".join(f"{cell:>28}" for cell in cells))
        summaries = []
        if not args.quick and args.only != "flood":
            summaries += [(lambda r: r["rss_256"], "peak RSS, 256 connections", "MiB"),
                          (lambda r: r["rss_2000"], "peak RSS, 2,000 connections", "MiB")]
        if not args.quick and args.only != "rss":
            summaries += [(lambda r: 100 * r["login"]["rps"] / r["bound"], "login, % of the bound",
                           "%"),
                          (lambda r: r["during"]["p99"] / r["alone"]["p99"],
                           "users/me p99, flood / alone", "x"),
                          (lambda r: r["paced_during"]["p99"] / r["paced_alone"]["p99"],
                           "paced p99, flood / alone", "x"),
                          (lambda r: r["paced_burn"]["p99"] / r["paced_alone"]["p99"],
                           "paced p99, idle loops / alone", "x")]
        for value, label, unit in summaries:
            cells = []
            for binary in binaries:
                values = sorted(value(r) for r in results[binary])
                cells.append(f"{values[len(values) // 2]:.1f} {unit} "
                             f"[{values[0]:.1f}-{values[-1]:.1f}]")
            print(f"{label:34}" + "".join(f"{cell:>28}" for cell in cells))


if __name__ == "__main__":
    main()
