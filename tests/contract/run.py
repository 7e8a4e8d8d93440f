"""The API contract, checked from outside against the real binary.

Starts `introgy serve` (SQLite in a temporary folder, the `log` mail transport, JSON
logs), then:

1. validates the served OpenAPI document with an independent validator
   (openapi-spec-validator);
2. signs a user up the way an app does: register, read the code from the server's log
   (the `log` transport prints each mail), verify-otp; the token it gets is real;
3. runs schemathesis with every check against the served document, authenticated with
   real users (tests/contract/hooks.py signs a new one up whenever the fuzzer ended
   the session), bounded in time;
4. generates a Python client from the document (openapi-python-client) and drives
   register -> verify -> login -> record -> history -> lookup with it.

Usage: run.py BINARY [--max-time SECONDS] [--only validate|schemathesis|client]
Exits non-zero on the first failing step; the server's log is printed on failure.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_BIN = os.path.dirname(sys.executable)
PASSWORD = "contract test password 1"
METRICS_TOKEN = "contract-test-metrics-token-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if body is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Server:
    """`introgy serve` on a free port with a fresh SQLite store."""

    def __init__(self, binary):
        self.failed = False
        self.dir = tempfile.mkdtemp(prefix="introgy-contract-")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.dir, "server.log")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [
                binary, "serve",
                "--port", str(self.port),
                "--database-url", "sqlite:" + os.path.join(self.dir, "introgy.db"),
                "--data-dir", self.dir,
                "--bcrypt-cost", "4",
                "--email-transport", "log",
                "--log-format", "json",
                # The fuzzer sends thousands of auth requests from one address; the
                # limit itself is tested in tests/api/rate_limits.rs.
                "--auth-rate-limit-per-minute", "1000000",
                # Every documented route is served, /metrics (bearer METRICS_TOKEN) too.
                "--metrics-token", METRICS_TOKEN,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith(("MONGO", "DATABASE_URL", "SMTP", "SENDGRID", "EMAIL"))},
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if call(self.base, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.fail("the server did not become healthy within 20 s")
            time.sleep(0.05)

    def code_for(self, email):
        """The latest code the `log` transport printed for `email` (polls 10 s)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            code = None
            with open(self.log_path) as log:
                for line in log:
                    try:
                        fields = json.loads(line).get("fields", {})
                    except ValueError:
                        continue
                    if fields.get("to") == email and "subject" in fields:
                        code = fields["subject"].split()[0]
            if code:
                return code
            time.sleep(0.05)
        self.fail(f"no code was mailed to {email}")

    def fail(self, message):
        self.stop()
        # The server's warnings and errors (a full request log would bury them).
        with open(self.log_path) as log:
            lines = [l for l in log if '"level":"WARN"' in l or '"level":"ERROR"' in l]
        sys.stderr.write("".join(l for l in lines if "DEVELOPMENT MAIL" not in l)[-10000:])
        self.failed = True
        sys.exit(f"contract: {message} (the server's whole log: {self.log_path})")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def cleanup(self):
        self.stop()
        if not self.failed:
            shutil.rmtree(self.dir, ignore_errors=True)


def signup(server, email):
    status, body = call(server.base, "POST", "/auth/register", {"email": email, "password": PASSWORD})
    if status != 202:
        server.fail(f"register answered {status}: {body}")
    code = server.code_for(email)
    status, body = call(server.base, "POST", "/auth/verify-otp", {"email": email, "code": code})
    if status != 200:
        server.fail(f"verify-otp answered {status}: {body}")
    return body["access_token"]


def validate(server):
    print("==> openapi-spec-validator on the served document", flush=True)
    with urllib.request.urlopen(server.base + "/openapi.json") as response:
        document = response.read()
    path = os.path.join(server.dir, "openapi.json")
    with open(path, "wb") as f:
        f.write(document)
    result = subprocess.run([os.path.join(VENV_BIN, "openapi-spec-validator"), path])
    if result.returncode != 0:
        server.fail("the served document is not a valid OpenAPI document")


def fuzz(server, max_time):
    print(f"==> schemathesis, all checks, at most {max_time} s", flush=True)
    token = signup(server, "fuzzer@example.com")
    env = dict(
        os.environ,
        SCHEMATHESIS_HOOKS="hooks",
        PYTHONPATH=HERE,
        INTROGY_CONTRACT_BASE=server.base,
        INTROGY_CONTRACT_LOG=server.log_path,
        INTROGY_CONTRACT_PASSWORD=PASSWORD,
        INTROGY_CONTRACT_TOKEN=token,
        INTROGY_CONTRACT_METRICS_TOKEN=METRICS_TOKEN,
    )
    result = subprocess.run(
        [
            os.path.join(VENV_BIN, "schemathesis"),
            "--config-file", os.path.join(HERE, "schemathesis.toml"),
            "run", server.base + "/openapi.json",
            "--checks", "all",
            "--max-time", str(max_time),
            "--workers", "2",
            "--seed", os.environ.get("SCHEMATHESIS_SEED", "1"),
        ],
        env=env,
        cwd=server.dir,
    )
    if result.returncode != 0:
        server.fail("schemathesis found failures (above)")


def generated_client(server):
    print("==> a Python client generated from the document drives the main flow", flush=True)
    out = os.path.join(server.dir, "client")
    result = subprocess.run(
        [
            os.path.join(VENV_BIN, "openapi-python-client"), "generate",
            "--url", server.base + "/openapi.json",
            "--output-path", out,
            "--meta", "none",
            "--config", os.path.join(HERE, "openapi-python-client.yaml"),
            "--fail-on-warning",
        ],
        cwd=server.dir,
    )
    if result.returncode != 0:
        server.fail("openapi-python-client could not generate a client")
    env = dict(os.environ, PYTHONPATH=server.dir, INTROGY_CONTRACT_BASE=server.base,
               INTROGY_CONTRACT_LOG=server.log_path)
    result = subprocess.run([sys.executable, os.path.join(HERE, "client_flow.py")], env=env)
    if result.returncode != 0:
        server.fail("the generated client's flow failed (above)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--max-time", type=int, default=120)
    parser.add_argument("--only", choices=["validate", "schemathesis", "client"])
    args = parser.parse_args()
    server = Server(os.path.abspath(args.binary))
    try:
        if args.only in (None, "validate"):
            validate(server)
        if args.only in (None, "client"):
            generated_client(server)
        if args.only in (None, "schemathesis"):
            fuzz(server, args.max_time)
    finally:
        server.cleanup()
    print("contract: ok")


if __name__ == "__main__":
    main()
