#!/usr/bin/env python3
"""Foundation acceptance: start, health, errors, limits, shutdown, CLI and config errors."""
import json
import os
import signal
import subprocess
import tempfile
import time

from harness import BIN, SOURCE_DIR, Server, expect_error, run


def with_server(fn):
    def wrapper():
        s = Server().start()
        try:
            fn(s)
        finally:
            s.close()
    wrapper.__name__ = fn.__name__
    return wrapper


def test_health_within_two_seconds():
    s = Server()
    try:
        t0 = time.time()
        s.start()
        assert time.time() - t0 < 2.0, "health took %.2fs" % (time.time() - t0)
        r = s.request("GET", "/health")
        assert r.status == 200
        assert r.json()["status"] == "ok"
        assert r.header("Content-Type") == "application/json"
        assert r.header("X-Request-ID")
    finally:
        s.close()


@with_server
def test_ready_when_store_answers(s):
    r = s.request("GET", "/ready")
    assert r.status == 200, r.body
    assert r.json()["store"] == "sqlite"


@with_server
def test_unknown_path_404_envelope(s):
    expect_error(s.request("GET", "/no/such/thing"), 404, "not_found")


@with_server
def test_wrong_method_405(s):
    r = s.request("DELETE", "/health")
    expect_error(r, 405, "method_not_allowed")
    assert r.header("Allow") == "GET"


@with_server
def test_body_over_limit_413(s):
    r = s.request("POST", "/health", raw=b"x" * (2 * 1024 * 1024),
                  headers={"Content-Type": "application/json"})
    expect_error(r, 413, "payload_too_large")


@with_server
def test_request_id_echoed(s):
    r = s.request("GET", "/health", headers={"X-Request-ID": "abc-123"})
    assert r.header("X-Request-ID") == "abc-123"


def test_sigterm_exits_zero_quickly():
    s = Server().start()
    try:
        t0 = time.time()
        rc = s.stop(signal.SIGTERM, timeout=5)
        assert rc == 0, "exit status %d" % rc
        assert time.time() - t0 < 5
        assert '"msg":"stopped"' in s.logs()
    finally:
        s.close()


def test_sigint_exits_zero():
    s = Server().start()
    try:
        assert s.stop(signal.SIGINT, timeout=5) == 0
    finally:
        s.close()


def test_logs_are_json_lines():
    s = Server().start()
    try:
        s.request("GET", "/health")
        s.stop()
        lines = [l for l in s.logs().splitlines() if l.strip()]
        assert lines, "no log lines"
        for line in lines:
            obj = json.loads(line)
            assert {"time", "level", "msg"} <= set(obj), obj
    finally:
        s.close()


def cli(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([BIN] + list(args), cwd=SOURCE_DIR, capture_output=True, text=True,
                          timeout=30, env=e)


def test_missing_config_file():
    p = cli("serve", "--config", "/no/such/file")
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "/no/such/file" in lines[0], p.stderr


def test_config_unknown_key():
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write('{"listen": "127.0.0.1:0", "colour": "blue"}')
    try:
        p = cli("serve", "--config", f.name)
        assert p.returncode != 0
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "colour" in lines[0] and f.name in lines[0], p.stderr
    finally:
        os.unlink(f.name)


def test_env_value_checked():
    p = cli("serve", env={"ASKPANEL_HTTP_MAX_BODY_BYTES": "-5"})
    assert p.returncode != 0
    assert "ASKPANEL_HTTP_MAX_BODY_BYTES" in p.stderr, p.stderr


def test_unknown_command_and_flag_exit_2():
    p = cli("frobnicate")
    assert p.returncode == 2 and "usage" in p.stderr
    p = cli("serve", "--frob")
    assert p.returncode == 2 and "--frob" in p.stderr
    p = cli()
    assert p.returncode == 2


def test_openapi_served_and_checker_bites():
    s = Server().start()
    try:
        r = s.request("GET", "/openapi.json")
        assert r.status == 200 and r.json()["openapi"] == "3.1.0"
        m = s.request("GET", "/metrics")
        assert m.status == 200 and b'askpanel_http_requests_total{code="2xx"}' in m.body
        assert b'askpanel_writer_batches_total ' in m.body and b'askpanel_panels_active 0' in m.body
    finally:
        s.close()
    import openapi_check
    bad = [("GET", "/health", 200, b'{"version":"x"}'),            # missing required status
           ("GET", "/health", 418, b'{}'),                           # undocumented status
           ("GET", "/v1/experts", 200, b'{"data":[{"id":1}],"next_cursor":null}')]
    for method, path, status, body in bad:
        try:
            openapi_check.check(method, path, status, "application/json", body)
        except openapi_check.Mismatch:
            continue
        raise AssertionError("checker accepted %s %s %d %s" % (method, path, status, body))


def test_version_and_help():
    for args in (["version"], ["--version"]):
        p = cli(*args)
        assert p.returncode == 0 and p.stdout.startswith("askpanel "), p.stdout
    p = cli("help")
    assert p.returncode == 0 and "serve" in p.stdout


if __name__ == "__main__":
    run([test_health_within_two_seconds, test_ready_when_store_answers,
         test_unknown_path_404_envelope, test_wrong_method_405, test_body_over_limit_413,
         test_request_id_echoed, test_sigterm_exits_zero_quickly, test_sigint_exits_zero,
         test_logs_are_json_lines, test_missing_config_file, test_config_unknown_key,
         test_env_value_checked, test_unknown_command_and_flag_exit_2,
         test_openapi_served_and_checker_bites, test_version_and_help])
