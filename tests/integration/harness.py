"""Test harness: starts a throwaway askpanel server and talks HTTP to it (stdlib only)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import openapi_check

SOURCE_DIR = os.environ.get("ASKPANEL_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BIN = os.environ.get("ASKPANEL_BIN", os.path.join(SOURCE_DIR, "build", "askpanel"))
OPERATOR_KEY = "op_test_" + "k" * 40


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def header(self, name):
        return self.headers.get(name)


class Server:
    """An askpanel process on a free port with its own data directory."""

    def __init__(self, store=None, cache=None, extra_args=(), env=None):
        self.tmp = tempfile.mkdtemp(prefix="askpanel-it-")
        self.port = free_port()
        self.store = store or "sqlite:%s/askpanel.db" % self.tmp
        self.cache = cache
        self.extra_args = list(extra_args)
        self.env = dict(os.environ)
        self.env["ASKPANEL_OPERATOR_KEY"] = OPERATOR_KEY
        self.env.update(env or {})
        self.proc = None
        self.started = False  # set once a start succeeded: restarts keep the port
        self.log_path = os.path.join(self.tmp, "server.log")

    def cli(self, *args, check=True, input=None):
        """Runs an askpanel subcommand against this server's store."""
        cmd = [BIN] + list(args) + ["--store", self.store]
        p = subprocess.run(cmd, cwd=SOURCE_DIR, env=self.env, capture_output=True, text=True,
                           input=input, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError("%s failed (%d): %s" % (cmd, p.returncode, p.stderr))
        return p

    def start(self, wait=True):
        # The free port can be taken between free_port() and the server's bind: a first start
        # that fails on it moves to another port (a restart keeps its port: clients reconnect).
        for attempt in range(5):
            args = [BIN, "serve", "--listen", "127.0.0.1:%d" % self.port, "--store", self.store]
            if self.cache:
                args += ["--cache", self.cache]
            args += self.extra_args
            self.log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(args, cwd=SOURCE_DIR, env=self.env, stdout=self.log,
                                         stderr=subprocess.STDOUT)
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except AssertionError:
                if self.started or "cannot listen" not in self.logs() or attempt == 4:
                    raise
                self.proc.wait()
                self.log.close()
                self.port = free_port()
        return self

    def wait_ready(self, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("server exited early (%d):\n%s" % (self.proc.returncode, self.logs()))
            try:
                if self.request("GET", "/health").status == 200:
                    self.started = True
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError("server did not answer /health within %.0fs:\n%s" % (timeout, self.logs()))

    def logs(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def request(self, method, path, body=None, headers=None, key=None, raw=None, timeout=30):
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            hdrs.setdefault("Content-Type", "application/json")
        if key is not None:
            hdrs["Authorization"] = "Bearer " + key
        req = urllib.request.Request(self.url(path), data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                resp = Response(r.status, r.headers, r.read())
        except urllib.error.HTTPError as e:
            resp = Response(e.code, e.headers, e.read())
        openapi_check.check(method, path, resp.status, resp.header("Content-Type"), resp.body)
        return resp

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError("server did not stop within %.0fs" % timeout)
        finally:
            self.log.close()
        self.proc = None
        return rc

    def close(self):
        try:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def expect_error(resp, status, code=None):
    """Asserts the JSON error envelope with the given status (and code)."""
    assert resp.status == status, "want %d, got %d: %s" % (status, resp.status, resp.body[:300])
    body = resp.json()
    assert "error" in body and isinstance(body["error"], dict), body
    assert isinstance(body["error"].get("code"), str) and body["error"]["code"], body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    assert resp.header("Content-Type").startswith("application/json")
    return body


MOCKLLM = os.environ.get("MOCKLLM_BIN", os.path.join(SOURCE_DIR, "build", "mockllm"))


def start_mockllm(*args):
    """mockllm on a free port with the given options: (process, port)."""
    p = subprocess.Popen([MOCKLLM, "--port", "0", *args], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("listening on "):
        p.kill()
        raise RuntimeError("mockllm did not start: %r" % line)
    return p, int(line.split()[2])


PASSED, FAILED = [], []


def check(name, fn):
    """Runs one named check, reports it and carries on; see summary()."""
    try:
        fn()
        PASSED.append(name)
        print("ok   ", name)
    except Exception as e:  # noqa: BLE001 - report every failure and carry on
        FAILED.append(name)
        print("FAIL ", name, "-", repr(e))


def summary():
    """Prints 'N passed, M failed' for the checks so far; the exit status."""
    print("%d passed, %d failed" % (len(PASSED), len(FAILED)))
    return 1 if FAILED else 0


def run(tests):
    """Runs test functions; prints one line each and 'N passed, M failed' last."""
    passed = failed = 0
    for t in tests:
        start = time.time()
        try:
            t()
            passed += 1
            print("ok   %s (%.2fs)" % (t.__name__, time.time() - start), flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            import traceback
            print("FAIL %s: %s" % (t.__name__, e), flush=True)
            traceback.print_exc()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


def tenant_create(server, slug, name=None):
    """Creates a tenant through the CLI; returns (tenant_id, admin_key)."""
    p = server.cli("tenant", "create", "--slug", slug, "--name", name or slug.title(), "--json")
    out = json.loads(p.stdout)
    return out["tenant_id"], out["api_key"]


def key_create(server, slug, role):
    p = server.cli("key", "create", "--tenant", slug, "--role", role, "--json")
    out = json.loads(p.stdout)
    return out["key_id"], out["api_key"]


class Postgres:
    """URLs of a throwaway PostgreSQL (run the test under pg_virtualenv): the owner (a
    superuser that runs migrations) and a login role that is only a member of askpanel_app."""

    def __init__(self):
        host = os.environ.get("PGHOST", "localhost")
        port = os.environ["PGPORT"]
        db = os.environ.get("PGDATABASE", "postgres")
        user = os.environ.get("PGUSER", "postgres")
        pw = os.environ.get("PGPASSWORD", "")
        self.owner_url = "postgresql://%s:%s@%s:%s/%s" % (user, pw, "localhost", port, db)
        self.app_url = "postgresql://askpanel_it:it_secret@%s:%s/%s" % ("localhost", port, db)
        self.host = host

    def psql(self, sql, url=None):
        return subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-qAt", url or self.owner_url,
                               "-c", sql], capture_output=True, text=True, check=True).stdout

    def setup(self):
        p = subprocess.run([BIN, "migrate", "--store", self.owner_url], cwd=SOURCE_DIR,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        self.psql("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'askpanel_it') "
                  "THEN CREATE ROLE askpanel_it LOGIN PASSWORD 'it_secret' IN ROLE askpanel_app; "
                  "END IF; END $$;")
        return self

    def reset(self):
        """Empties every table between tests (as the owner)."""
        tables = self.psql("SELECT string_agg(quote_ident(tablename), ',') FROM pg_tables "
                           "WHERE schemaname = 'public' AND tablename <> 'schema_migrations'").strip()
        if tables:
            self.psql("TRUNCATE %s CASCADE" % tables)


def backends():
    """The stores to run against: always SQLite; PostgreSQL when under pg_virtualenv."""
    out = [("sqlite", None)]
    if os.environ.get("PGPORT"):
        out.append(("postgres", Postgres().setup()))
    return out


class SSEClient:
    """A minimal EventSource: yields (id, event, data) frames; comments are counted."""

    def __init__(self, server, path, key=None, headers=None, timeout=60):
        import http.client
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        hdrs = {"Accept": "text/event-stream"}
        hdrs.update(headers or {})
        if key is not None:
            hdrs["Authorization"] = "Bearer " + key
        self.conn.request("GET", path, headers=hdrs)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = self.resp.headers
        self.comments = 0
        self.retry = None

    def frames(self):
        ev_id, ev_type, data = None, None, []
        while True:
            line = self.resp.readline()
            if not line:
                return
            line = line.decode("utf-8").rstrip("\r\n")
            if line == "":
                if ev_type is not None or data:
                    yield ev_id, ev_type, json.loads("\n".join(data)) if data else None
                ev_id, ev_type, data = None, None, []
            elif line.startswith(":"):
                self.comments += 1
            elif line.startswith("id: "):
                ev_id = int(line[4:])
            elif line.startswith("event: "):
                ev_type = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line.startswith("retry: "):
                self.retry = int(line[7:])

    def close(self):
        self.conn.close()


def wait_status(server, key, panel_id, statuses, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = server.request("GET", "/v1/panels/" + panel_id, key=key).json()
        if p["status"] in statuses:
            return p
        time.sleep(0.05)
    raise AssertionError("panel %s did not reach %s (now %s)" % (panel_id, statuses, p["status"]))
