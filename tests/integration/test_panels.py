#!/usr/bin/env python3
"""Panel API and live streaming (issue 7) over HTTP, on SQLite and (under pg_virtualenv, see
test_panels_pg.sh) on PostgreSQL with Redis as the cache."""
import json
import os
import signal
import subprocess
import threading
import time

from harness import (SSEClient, Server, backends, expect_error, key_create, run, tenant_create,
                     wait_status)

Q = "Should we file for accelerated approval on the phase 2 data?"
FINAL = ("completed", "failed", "cancelled")


def same_json(a, b):
    """Equal JSON values, numbers compared to 12 significant digits (encoders differ in the
    digits they print)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))
    return a == b


class World:
    def __init__(self, pg, env=None, cache=None):
        env = dict(env or {})
        if pg is not None:
            pg.reset()
        self.pg = pg
        self.s = Server(store=pg.app_url if pg else None, env=env, cache=cache)
        self.admin = Server(store=pg.owner_url) if pg else self.s
        self.a_id, self.a = tenant_create(self.admin, "alpha-health")
        self.b_id, self.b = tenant_create(self.admin, "beta-pharma")
        self.s.start()

    def restart(self, sig=signal.SIGTERM):
        self.s.stop(sig)
        self.s.start()

    def create(self, key=None, **body):
        body.setdefault("question", Q)
        body.setdefault("strategy", "council")
        r = self.s.request("POST", "/v1/panels", body, key=key or self.a)
        assert r.status == 201, r.body
        return r.json()

    def run_to_end(self, panel, key=None):
        key = key or self.a
        r = self.s.request("POST", "/v1/panels/%s/execute" % panel["id"], key=key)
        assert r.status == 202, r.body
        return wait_status(self.s, key, panel["id"], FINAL)

    def close(self):
        self.s.close()
        if self.admin is not self.s:
            self.admin.close()


def for_each_backend(env=None):
    def deco(fn):
        def wrapper():
            for name, pg in BACKENDS:
                cache = REDIS_URL if pg is not None else None
                w = World(pg, env=env, cache=cache)
                try:
                    fn(w)
                except AssertionError as e:
                    raise AssertionError("[%s] %s\n--- server log ---\n%s" % (name, e, w.s.logs()[-4000:])) from e
                finally:
                    w.close()
        wrapper.__name__ = fn.__name__
        return wrapper
    return deco


@for_each_backend()
def test_create_get_list(w):
    p = w.create(title="Filing strategy", params={})
    for f in ("id", "question", "strategy", "strategy_version", "params", "experts", "status",
              "result", "created_at", "updated_at"):
        assert f in p, f
    assert p["status"] == "created" and p["result"] is None
    assert len(p["strategy_version"]) == 64
    got = w.s.request("GET", "/v1/panels/" + p["id"], key=w.a).json()
    assert got["id"] == p["id"] and got["title"] == "Filing strategy"
    ids = []
    for _ in range(3):
        time.sleep(0.005)  # creation times have millisecond resolution
        ids.append(w.create()["id"])
    page = w.s.request("GET", "/v1/panels?limit=2", key=w.a).json()
    assert [x["id"] for x in page["data"]] == ids[::-1][:2], "newest first"
    rest = w.s.request("GET", "/v1/panels?limit=2&cursor=" + page["next_cursor"], key=w.a).json()
    assert [x["id"] for x in rest["data"]] == [ids[0], p["id"]]
    created = w.s.request("GET", "/v1/panels?status=created", key=w.a).json()["data"]
    assert len(created) == 4
    assert w.s.request("GET", "/v1/panels?status=running", key=w.a).json()["data"] == []
    expect_error(w.s.request("GET", "/v1/panels?status=bogus", key=w.a), 400)


@for_each_backend()
def test_create_validation(w):
    s, a = w.s, w.a
    expect_error(s.request("POST", "/v1/panels", raw=b"{nope", key=a,
                           headers={"Content-Type": "application/json"}), 400, "invalid_json")
    # a body declared as something else than JSON is refused, whatever it holds
    good = json.dumps({"question": Q, "strategy": "council"}).encode()
    expect_error(s.request("POST", "/v1/panels", raw=good, key=a,
                           headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    assert s.request("POST", "/v1/panels", raw=good, key=a,
                     headers={"Content-Type": "Application/JSON; charset=utf-8"}).status == 201
    expect_error(s.request("POST", "/v1/panels", {"question": Q}, key=a), 400, "missing_field")
    expect_error(s.request("POST", "/v1/panels", {"question": 5, "strategy": "council"}, key=a), 400)
    expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "council", "x": 1}, key=a),
                 400, "unknown_field")
    expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "council", "params": []}, key=a), 400)
    expect_error(s.request("POST", "/v1/panels", {"question": "q" * 9000, "strategy": "council"}, key=a), 400)
    expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "no_such"}, key=a), 422,
                 "unknown_strategy")
    # the code follows what is missing, whatever the name says
    expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "consensus-free"},
                           key=a), 422, "unknown_strategy")
    # counts are plain digits: no sign, no space, nothing strtol would also take
    for q in ("limit=%2B5", "limit=%205", "limit=5%20", "limit=0x5", "limit=1&limit=2"):
        expect_error(s.request("GET", "/v1/panels?" + q, key=a), 400, "invalid_parameter")
    expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "council",
                                                  "consensus": "no_such"}, key=a), 422,
                 "unknown_consensus")
    body = expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "delphi",
                                                         "params": {"max_rounds": "many"}}, key=a), 422)
    expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "council",
                                                  "params": {"no_such_param": 1}}, key=a), 422)
    expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "council",
                                                  "experts": ["00000000-0000-4000-8000-000000000000"]}, key=a),
                 422, "unknown_expert")
    expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "council",
                                                  "experts": [{"name": "x"}]}, key=a), 400)
    expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "council"}), 401)
    expect_error(s.request("POST", "/v1/panels", raw=b"x" * (2 << 20), key=a,
                           headers={"Content-Type": "application/json"}), 413)


@for_each_backend()
def test_experts_by_id_and_inline(w):
    e = w.s.request("POST", "/v1/experts", {"name": "Dr. Reg", "role": "Regulator"}, key=w.a).json()
    p = w.create(experts=[e["id"], {"name": "Ivy", "role": "Payer", "persona": "Cost-focused."}])
    names = [x["name"] for x in p["experts"]]
    assert names == ["Dr. Reg", "Ivy"], names
    # Another tenant's expert id is not usable.
    expect_error(w.s.request("POST", "/v1/panels", {"question": Q, "strategy": "council",
                                                    "experts": [e["id"]]}, key=w.b), 422)
    # The same expert twice would answer twice under one id.
    expect_error(w.s.request("POST", "/v1/panels", {"question": Q, "strategy": "council",
                                                    "experts": [e["id"], e["id"]]}, key=w.a),
                 400, "invalid_field")
    # A NUL in any string would cut it short where the engine reads it as C text.
    js = {"Content-Type": "application/json"}
    expect_error(w.s.request("POST", "/v1/panels", raw=b'{"question":"Approve?\\u0000 no",'
                             b'"strategy":"council"}', key=w.a, headers=js), 400, "invalid_json")
    expect_error(w.s.request("POST", "/v1/experts", raw=b'{"name":"A\\u0000B"}', key=w.a,
                             headers=js), 400, "invalid_json")
    r = w.s.request("POST", "/v1/experts", raw=b'{"name":"A\\\\u0000B","role":"R"}', key=w.a,
                    headers=js)
    assert r.status == 201 and r.json()["name"] == "A\\u0000B", r.body  # a backslash, then text


@for_each_backend()
def test_idempotency(w):
    body = {"question": Q, "strategy": "council"}
    h = {"Idempotency-Key": "req-42"}
    r1 = w.s.request("POST", "/v1/panels", body, key=w.a, headers=h)
    r2 = w.s.request("POST", "/v1/panels", body, key=w.a, headers=h)
    assert r1.status == 201 and r2.status in (200, 201), r2.body
    assert r1.json()["id"] == r2.json()["id"]
    expect_error(w.s.request("POST", "/v1/panels", dict(body, title="other"), key=w.a, headers=h), 409)
    # a key is printable ASCII (a structured-field string), not any bytes
    for bad in ("caf\u00e9", "a\tb", "k" * 300):
        expect_error(w.s.request("POST", "/v1/panels", body, key=w.a,
                                 headers={"Idempotency-Key": bad}), 400, "invalid_header")
    # The same key from another tenant is another panel.
    r3 = w.s.request("POST", "/v1/panels", body, key=w.b, headers=h)
    assert r3.status == 201 and r3.json()["id"] != r1.json()["id"]


@for_each_backend()
def test_isolation(w):
    p = w.create()
    for method, path in (("GET", ""), ("POST", "/execute"), ("POST", "/cancel"),
                         ("POST", "/stream-token"), ("GET", "/events")):
        expect_error(w.s.request(method, "/v1/panels/" + p["id"] + path, key=w.b), 404)
    expect_error(w.s.request("POST", "/v1/panels/%s/input" % p["id"], {"text": "x"}, key=w.b), 404)
    assert w.s.request("GET", "/v1/panels", key=w.b).json()["data"] == []
    assert w.s.request("GET", "/v1/panels/" + p["id"], key=w.a).json()["status"] == "created"
    expect_error(w.s.request("GET", "/v1/panels/" + p["id"], key=w.b, headers={"X-Tenant-ID": w.a_id}), 403)


@for_each_backend()
def test_execute_and_stream(w):
    p = w.create()
    r = w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a)
    assert r.status == 202, r.body
    expect_error(w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a), 409)
    c = SSEClient(w.s, "/v1/panels/%s/events" % p["id"], key=w.a)
    assert c.status == 200
    assert c.headers["Content-Type"].startswith("text/event-stream")
    assert c.headers["Cache-Control"] == "no-cache" and c.headers["X-Accel-Buffering"] == "no"
    frames = list(c.frames())
    c.close()
    assert c.retry is not None
    durable = [f for f in frames if f[0] is not None]
    seqs = [f[0] for f in durable]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert durable[-1][1] == "panel.completed", durable[-1]
    result = durable[-1][2]["result"]
    for f in ("summary", "recommendation", "consensus"):
        assert f in result, result.keys()
    assert all(f[1] == "expert.delta" for f in frames if f[0] is None)
    types = {f[1] for f in durable}
    assert {"panel.status", "expert.message", "consensus"} <= types, types
    done = w.s.request("GET", "/v1/panels/" + p["id"], key=w.a).json()
    assert done["status"] == "completed", done
    assert same_json(done["result"], result), (done["result"], result)
    expect_error(w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a), 409)
    # The JSON form returns the same stored sequence.
    j = w.s.request("GET", "/v1/panels/%s/events" % p["id"], key=w.a,
                    headers={"Accept": "application/json"}).json()
    assert [e["seq"] for e in j["data"]] == seqs
    # Resume after event k: exactly k+1.. , with Last-Event-ID and with ?after=.
    k = len(seqs) // 2
    for hdrs, q in (({"Last-Event-ID": str(k)}, ""), ({}, "?after=%d" % k)):
        c2 = SSEClient(w.s, "/v1/panels/%s/events%s" % (p["id"], q), key=w.a, headers=hdrs)
        again = [f[0] for f in c2.frames() if f[0] is not None]
        c2.close()
        assert again == seqs[k:], (k, again)
    for bad in ("abc", "-1", "+3", "99999999999999999999"):
        expect_error(w.s.request("GET", "/v1/panels/%s/events" % p["id"], key=w.a,
                                 headers={"Last-Event-ID": bad}), 400)
    # Reconnecting after the final event: 204, so an EventSource stops coming back.
    c3 = SSEClient(w.s, "/v1/panels/%s/events" % p["id"], key=w.a,
                   headers={"Last-Event-ID": str(seqs[-1])})
    assert c3.status == 204, c3.status
    c3.close()


@for_each_backend(env={"ASKPANEL_SIM_LATENCY_MS": "150"})
def test_live_stream_two_clients_and_reconnect(w):
    p = w.create()
    results = {}

    def listen(name, headers=None):
        c = SSEClient(w.s, "/v1/panels/%s/events" % p["id"], key=w.a, headers=headers)
        results[name] = [(f[0], f[1]) for f in c.frames() if f[0] is not None]
        c.close()

    threads = [threading.Thread(target=listen, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    time.sleep(0.2)
    w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a)
    # A third client drops after its third event and comes back with Last-Event-ID.
    c = SSEClient(w.s, "/v1/panels/%s/events" % p["id"], key=w.a)
    first = []
    for f in c.frames():
        if f[0] is not None:
            first.append((f[0], f[1]))
        if len(first) == 3:
            break
    c.close()
    c = SSEClient(w.s, "/v1/panels/%s/events" % p["id"], key=w.a, headers={"Last-Event-ID": "3"})
    second = [(f[0], f[1]) for f in c.frames() if f[0] is not None]
    c.close()
    for t in threads:
        t.join(60)
    assert results["one"] == results["two"], "two clients saw different sequences"
    assert first + second == results["one"], "reconnect lost or repeated events"
    assert results["one"][-1][1] == "panel.completed"


@for_each_backend()
def test_stream_token_for_browsers(w):
    p = w.create()
    tok = w.s.request("POST", "/v1/panels/%s/stream-token" % p["id"], key=w.a)
    assert tok.status == 201, tok.body
    url = tok.json()["url"]
    assert url.startswith("/v1/panels/%s/events?token=" % p["id"])
    w.run_to_end(p)
    c = SSEClient(w.s, url)  # no Authorization header, like EventSource
    assert c.status == 200
    frames = [f for f in c.frames() if f[0] is not None]
    c.close()
    assert frames[-1][1] == "panel.completed"
    # The token opens that panel only, and a forged one nothing.
    other = w.create()
    bad = url.replace(p["id"], other["id"], 1)
    expect_error(w.s.request("GET", bad.split("?")[0] + "?" + url.split("?")[1]), 401)
    expect_error(w.s.request("GET", "/v1/panels/%s/events?token=1.2.3" % p["id"]), 401)
    # A stream token is not an API key.
    token = tok.json()["token"]
    expect_error(w.s.request("GET", "/v1/panels/" + p["id"], key=token), 401)


@for_each_backend()
def test_revoking_a_key_ends_its_tokens_and_streams(w):
    """A stream token stands for the key that asked for it: revoking the key (here as the
    operator does, from another process) refuses its tokens at once and ends the streams open
    with the key or its tokens within the re-check interval; another key's stream goes on."""
    kid, key = key_create(w.admin, "alpha-health", "member")
    _, keep = key_create(w.admin, "alpha-health", "member")
    p = w.create(key=key, strategy="hybrid")  # waits for input: its streams stay open
    assert w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=key).status == 202
    wait_status(w.s, key, p["id"], ("awaiting_input",))
    url = w.s.request("POST", "/v1/panels/%s/stream-token" % p["id"], key=key).json()["url"]
    kept_url = w.s.request("POST", "/v1/panels/%s/stream-token" % p["id"], key=keep).json()["url"]
    page = {"Accept": "application/json"}
    assert w.s.request("GET", url, headers=page).status == 200
    # Less than a heartbeat's interval: a stream that does not end fails the read.
    revoked = [SSEClient(w.s, url, timeout=12),
               SSEClient(w.s, "/v1/panels/%s/events" % p["id"], key=key, timeout=12)]
    kept = SSEClient(w.s, kept_url, timeout=30)
    assert [c.status for c in revoked + [kept]] == [200] * 3
    t0 = time.time()
    w.admin.cli("key", "revoke", kid)
    expect_error(w.s.request("GET", url, headers=page), 401, "unauthenticated")
    expect_error(w.s.request("GET", url), 401, "unauthenticated")
    for c in revoked:
        frames = [f for f in c.frames() if f[1] is not None]  # until the stream ends
        c.close()
        assert frames and frames[-1][1] == "stream.revoked", frames[-3:]
        assert frames[-1][0] is None and frames[-1][2]["code"] == "key_revoked", frames[-1]
    assert time.time() - t0 < 10, time.time() - t0
    # The other key's token and stream still work: the stream delivers what comes next.
    assert w.s.request("GET", kept_url, headers=page).status == 200
    r = w.s.request("POST", "/v1/panels/%s/input" % p["id"],
                    {"input": {"text": "Go", "position": "approve", "confidence": 0.8}}, key=keep)
    assert r.status == 202, r.body
    for f in kept.frames():
        assert f[1] != "stream.revoked", f
        if f[1] == "input.received":
            break
    else:
        raise AssertionError("the other key's stream ended")
    kept.close()


@for_each_backend()
def test_hybrid_waits_for_input(w):
    p = w.create(strategy="hybrid")
    expect_error(w.s.request("POST", "/v1/panels/%s/input" % p["id"], {"text": "early"}, key=w.a), 409)
    w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a)
    answered = 0
    deadline = time.time() + 60
    while time.time() < deadline:
        cur = wait_status(w.s, w.a, p["id"], ("awaiting_input",) + FINAL)
        if cur["status"] in FINAL:
            break
        expect_error(w.s.request("POST", "/v1/panels/%s/input" % p["id"], {"input": 3}, key=w.a), 400)
        r = w.s.request("POST", "/v1/panels/%s/input" % p["id"],
                        {"input": {"text": "Go, with a confirmatory trial", "position": "approve",
                                   "confidence": 0.8}}, key=w.a)
        assert r.status == 202, r.body
        answered += 1
        time.sleep(0.05)
    assert answered >= 1
    assert cur["status"] == "completed", cur
    events = w.s.request("GET", "/v1/panels/%s/events" % p["id"], key=w.a,
                         headers={"Accept": "application/json"}).json()["data"]
    types = [e["type"] for e in events]
    assert types.count("input.requested") == answered and types.count("input.received") == answered
    statuses = [e["data"]["status"] for e in events if e["type"] == "panel.status"]
    assert "awaiting_input" in statuses


def stored_events(w, panel_id):
    events, after = [], 0
    while True:
        page = w.s.request("GET", "/v1/panels/%s/events?after=%d" % (panel_id, after), key=w.a,
                           headers={"Accept": "application/json"}).json()
        events += page["data"]
        if not page.get("has_more") or not page["data"]:
            return events
        after = page["data"][-1]["seq"]


@for_each_backend()
def test_input_names_its_request(w):
    """An answer that names its request (request_seq, the seq of its input.requested) is taken
    only while that request is the pending one: an answer to a request already answered, late
    or racing another client, gets 409 and changes nothing instead of answering a question its
    client never saw. A malformed request_seq is a 400."""
    p = w.create(strategy="hybrid")
    url = "/v1/panels/%s/input" % p["id"]
    answer = {"input": {"text": "Go, with a confirmatory trial", "position": "approve",
                        "confidence": 0.8}}
    expect_error(w.s.request("POST", url, dict(answer, request_seq=1), key=w.a), 409,
                 "stale_input_request")
    w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a)
    accepted = []
    deadline = time.time() + 60
    while time.time() < deadline:
        cur = wait_status(w.s, w.a, p["id"], ("awaiting_input",) + FINAL)
        if cur["status"] in FINAL:
            break
        before = stored_events(w, p["id"])
        assert before[-1]["type"] == "input.requested", before[-1]
        seq = before[-1]["seq"]
        for bad in ("%d" % seq, seq + 0.5, 0, -1, True, None, [seq], {"seq": seq}, 2 ** 53):
            body = expect_error(w.s.request("POST", url, dict(answer, request_seq=bad), key=w.a),
                                400, "invalid_field")
            assert "request_seq" in body["error"]["message"], body
        for stale in [seq - 1, seq + 1] + accepted:
            body = expect_error(w.s.request("POST", url, dict(answer, request_seq=stale), key=w.a),
                                409, "stale_input_request")
            assert "latest request is %d" % seq in body["error"]["message"], body
        # refused answers leave the panel waiting for the same request, with the same events
        assert w.s.request("GET", "/v1/panels/" + p["id"], key=w.a).json()["status"] == "awaiting_input"
        assert stored_events(w, p["id"]) == before
        r = w.s.request("POST", url, dict(answer, request_seq=seq), key=w.a)
        assert r.status == 202, r.body
        accepted.append(seq)
        # the same answer again (a double submit): that request is answered already
        expect_error(w.s.request("POST", url, dict(answer, request_seq=seq), key=w.a), 409,
                     "stale_input_request")
    assert accepted
    assert cur["status"] == "completed", cur
    events = stored_events(w, p["id"])
    assert [e["seq"] for e in events if e["type"] == "input.requested"] == accepted
    assert sum(e["type"] == "input.received" for e in events) == len(accepted)


@for_each_backend(env={"ASKPANEL_SIM_LATENCY_MS": "2000"})
def test_cancel(w):
    p = w.create()
    w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a)
    wait_status(w.s, w.a, p["id"], ("running",))
    t0 = time.time()
    r = w.s.request("POST", "/v1/panels/%s/cancel" % p["id"], key=w.a)
    assert r.status == 200, r.body
    cur = wait_status(w.s, w.a, p["id"], FINAL, timeout=5)
    assert cur["status"] == "cancelled" and time.time() - t0 < 2
    expect_error(w.s.request("POST", "/v1/panels/%s/cancel" % p["id"], key=w.a), 409)
    c = SSEClient(w.s, "/v1/panels/%s/events" % p["id"], key=w.a)
    frames = [f for f in c.frames() if f[0] is not None]
    c.close()
    assert frames[-1][1] == "panel.status" and frames[-1][2]["status"] == "cancelled", frames[-4:]


@for_each_backend(env={"ASKPANEL_SIM_LATENCY_MS": "300"})
def test_stream_on_another_node(w):
    """A stream opened on a node that does not run the panel gets its events all the same, in
    order and each once, and ends with it: it reads what the running node stores. A cancel
    through that node, whose own event it publishes at once, does not skip the events
    before it."""
    other = Server(store=w.s.store, env={"ASKPANEL_SIM_LATENCY_MS": "300"},
                   cache=w.s.cache).start()
    try:
        for cancel in (False, True):
            p = w.create()
            w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a)
            wait_status(w.s, w.a, p["id"], ("running",))
            # no event for 5 s (heartbeats come every 15 s) fails the read: a stream that
            # never gets the running node's events
            c = SSEClient(other, "/v1/panels/%s/events" % p["id"], key=w.a, timeout=5)
            assert c.status == 200, c.status
            if cancel:
                time.sleep(0.4)
                r = other.request("POST", "/v1/panels/%s/cancel" % p["id"], key=w.a)
                assert r.status == 200, r.body
            frames = [f for f in c.frames() if f[0] is not None]
            c.close()
            seqs = [int(f[0]) for f in frames]
            assert seqs == list(range(1, len(seqs) + 1)), seqs
            last = frames[-1]
            if cancel:
                assert last[1] == "panel.status" and last[2]["status"] == "cancelled", frames[-3:]
            else:
                assert last[1] == "panel.completed", frames[-3:]
            stored = w.s.request("GET", "/v1/panels/%s/events" % p["id"], key=w.a,
                                 headers={"Accept": "application/json"}).json()
            assert len(stored["data"]) == len(seqs), (len(stored["data"]), len(seqs))
    finally:
        other.close()


@for_each_backend()
def test_orphaned_panel_is_taken_over(w):
    """A node that dies mid-panel leaves it running under its lease. Once the lease has run
    out, another live node takes the panel over and finishes it, each event once: it stayed
    running for good, since only a node's start looked for such panels (red team)."""
    env = {"ASKPANEL_SIM_LATENCY_MS": "300", "ASKPANEL_RUNTIME_LEASE_MS": "1500"}
    dying = Server(store=w.s.store, env=env, cache=w.s.cache).start()
    taker = Server(store=w.s.store, env=env, cache=w.s.cache).start()
    try:
        p = w.create(strategy="echo", params={"rounds": 3})
        r = dying.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a)
        assert r.status == 202, r.body
        time.sleep(0.5)
        dying.proc.send_signal(signal.SIGKILL)
        dying.proc.wait()
        got = wait_status(taker, w.a, p["id"], FINAL, timeout=20)
        assert got["status"] == "completed", got
        events = taker.request("GET", "/v1/panels/%s/events" % p["id"], key=w.a,
                               headers={"Accept": "application/json"}).json()["data"]
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        ends = [e for e in events if e["type"] in ("panel.completed", "panel.failed")]
        assert len(ends) == 1, ends
        assert "took over 1 running panel" in taker.logs(), taker.logs()[-2000:]
    finally:
        dying.close()
        taker.close()


OVERRIDE = """
local function answer(ctx)
  local r = ctx:ask(ctx.experts[1], "One line on: " .. ctx.question)
  return ctx:done({ summary = "override: " .. (r.text or ""), recommendation = "n/a",
                    consensus = {}, dissent = {}, positions = {}, rounds = 1 })
end
return { name = "council", description = "tenant override", start = "answer",
         nodes = { answer = answer } }
"""


@for_each_backend()
def test_strategy_override(w):
    builtin = w.s.request("GET", "/v1/strategies/council", key=w.a).json()
    assert builtin["origin"] == "builtin" and "source" in builtin
    lst = w.s.request("GET", "/v1/strategies", key=w.a).json()["data"]
    assert {"council", "delphi", "hybrid"} <= {x["name"] for x in lst}
    r = w.s.request("PUT", "/v1/strategies/council", raw=OVERRIDE.encode(), key=w.a,
                    headers={"Content-Type": "text/x-lua"})
    assert r.status == 200, r.body
    v2 = r.json()["version"]
    assert v2 != builtin["version"] and r.json()["origin"] == "override"
    # the same source as JSON, whatever the case of its media type: the same version
    r = w.s.request("PUT", "/v1/strategies/council", raw=json.dumps({"source": OVERRIDE}).encode(),
                    key=w.a, headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert r.status == 200 and r.json()["version"] == v2, r.body
    pa = w.create()
    pb = w.create(key=w.b)
    assert pa["strategy_version"] == v2
    assert pb["strategy_version"] == builtin["version"], "other tenants keep the built-in"
    done = w.run_to_end(pa)
    assert done["status"] == "completed" and done["result"]["summary"].startswith("override: ")
    versions = w.s.request("GET", "/v1/strategies/council/versions", key=w.a).json()["data"]
    assert versions[0]["version"] == v2 and versions[0]["active"]
    # Broken uploads are refused with the line, and change nothing.
    bad = w.s.request("PUT", "/v1/strategies/council", raw=b"return {\n name = 'council',\n nodes = {\n",
                      key=w.a, headers={"Content-Type": "text/x-lua"})
    body = expect_error(bad, 422, "invalid_script")
    assert body["error"].get("line"), body
    nostart = w.s.request("PUT", "/v1/strategies/council", key=w.a,
                          body={"source": "return { name = 'council', nodes = { a = function() end } }"})
    expect_error(nostart, 422, "invalid_script")
    # The upload's dry run runs on the request thread with small limits: a strategy that spins
    # forever is refused after the dry run's 32 nodes, not a real panel's 500.
    spin = ("return { name = 'council', start = 'a', nodes = { a = function(ctx)\n"
            "  local x = 0 for i = 1, 100000 do x = x + i end return 'a' end } }")
    body = expect_error(w.s.request("PUT", "/v1/strategies/council", key=w.a, body={"source": spin}),
                        422, "invalid_script")
    assert "32 nodes" in body["error"]["message"], body
    assert w.create()["strategy_version"] == v2
    # Members cannot upload; back to the built-in on DELETE.
    _, member = key_create(w.admin, "alpha-health", "member")
    expect_error(w.s.request("PUT", "/v1/strategies/council", raw=OVERRIDE.encode(), key=member,
                             headers={"Content-Type": "text/x-lua"}), 403)
    assert w.s.request("DELETE", "/v1/strategies/council", key=w.a).status == 204
    assert w.create()["strategy_version"] == builtin["version"]
    expect_error(w.s.request("DELETE", "/v1/strategies/council", key=w.a), 404)
    # Consensus algorithms likewise.
    algo = "return function(ballots, opts) return { algorithm = 'mine', level = 1, position = nil, dissent = {}, details = {} } end"
    r = w.s.request("PUT", "/v1/consensus-algorithms/mine", raw=algo.encode(), key=w.a,
                    headers={"Content-Type": "text/x-lua"})
    assert r.status == 200, r.body
    names = [x["name"] for x in w.s.request("GET", "/v1/consensus-algorithms", key=w.a).json()["data"]]
    assert "mine" in names and "majority" in names
    names_b = [x["name"] for x in w.s.request("GET", "/v1/consensus-algorithms", key=w.b).json()["data"]]
    assert "mine" not in names_b
    expect_error(w.s.request("GET", "/v1/consensus-algorithms/mine", key=w.b), 404)
    bad_algo = w.s.request("PUT", "/v1/consensus-algorithms/broken", raw=b"return function() return 1 end",
                           key=w.a, headers={"Content-Type": "text/x-lua"})
    expect_error(bad_algo, 422)


def test_feature_flag_blocks_strategy():
    s = Server()
    try:
        s.cli("seed-demo")
        s.start()
        p = s.cli("key", "create", "--tenant", "northwind-pharma", "--role", "admin", "--json")
        key = json.loads(p.stdout)["api_key"]
        expect_error(s.request("POST", "/v1/panels", {"question": Q, "strategy": "open"}, key=key),
                     403, "strategy_disabled")
        names = [x["name"] for x in s.request("GET", "/v1/strategies", key=key).json()["data"]]
        assert "open" not in names and "structured" in names
        expect_error(s.request("GET", "/v1/strategies/open", key=key), 403)
    finally:
        s.close()


@for_each_backend(env={"ASKPANEL_SIM_LATENCY_MS": "300"})
def test_restart_resumes_without_gaps(w):
    p = w.create(strategy="delphi")
    w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a)
    # Wait until the panel is well under way, then kill the server without warning.
    deadline = time.time() + 30
    while time.time() < deadline:
        ev = w.s.request("GET", "/v1/panels/%s/events" % p["id"], key=w.a,
                         headers={"Accept": "application/json"}).json()["data"]
        if sum(1 for e in ev if e["type"] == "expert.message") >= 5:
            break
        time.sleep(0.05)
    w.restart(signal.SIGKILL)
    done = wait_status(w.s, w.a, p["id"], FINAL, timeout=90)
    assert done["status"] == "completed", done
    events = w.s.request("GET", "/v1/panels/%s/events" % p["id"], key=w.a,
                         headers={"Accept": "application/json"}).json()["data"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "gap or duplicate: %s" % seqs
    assert events[-1]["type"] == "panel.completed"


@for_each_backend()
def test_usage_and_expert_counts(w):
    e = w.s.request("POST", "/v1/experts", {"name": "Dr. Count", "role": "Statistician"}, key=w.a).json()
    assert e.get("usage") is None or e["usage"]["calls"] == 0
    w.run_to_end(w.create(experts=[e["id"]]))
    got = w.s.request("GET", "/v1/experts/" + e["id"], key=w.a).json()
    assert got["usage"]["calls"] > 0 and got["usage"]["completion_tokens"] > 0, got
    listed = [x for x in w.s.request("GET", "/v1/experts", key=w.a).json()["data"] if x["id"] == e["id"]]
    assert listed[0]["usage"]["calls"] == got["usage"]["calls"]
    w.run_to_end(w.create())
    u = w.s.request("GET", "/v1/usage?group_by=expert", key=w.a).json()
    assert u["totals"]["calls"] > 0 and u["totals"]["completion_tokens"] > 0, u
    assert w.s.request("GET", "/v1/usage", key=w.b).json()["totals"]["calls"] == 0
    for g in ("model", "day"):
        assert w.s.request("GET", "/v1/usage?group_by=" + g, key=w.a).status == 200
    expect_error(w.s.request("GET", "/v1/usage?group_by=moon", key=w.a), 400)
    expect_error(w.s.request("GET", "/v1/usage?from=yesterday", key=w.a), 400)
    # a day the month does not have is refused, not rolled over (2026-02-30 is not March 2)
    for bad in ("2026-02-30", "2026-04-31", "2026-2-03", "2026-02-03x", "%2B5", "%205", "-5"):
        expect_error(w.s.request("GET", "/v1/usage?from=" + bad, key=w.a), 400)
    day = w.s.request("GET", "/v1/usage?from=2024-02-29&to=2024-03-01", key=w.a).json()
    assert day["from"] == 1709164800000 and day["to"] == 1709251200000, day


def test_limits_under_races_and_big_pages():
    """The concurrency limit holds for racing executes and above 200 panels; a page of big
    panels ends early with a cursor; a stream token takes the id in any case the API does."""
    from harness import OPERATOR_KEY
    s = Server(env={"ASKPANEL_SIM_LATENCY_MS": "60000",
                    "ASKPANEL_HTTP_MAX_STREAMS_PER_TENANT": "2"}).start()
    try:
        def tenant(slug, limit):
            r = s.request("POST", "/v1/admin/tenants", {"slug": slug, "name": slug,
                          "limits": {"concurrent_panels": limit}}, key=OPERATOR_KEY)
            assert r.status == 201, r.body
            return r.json()["api_key"]

        def create(key, **body):
            body.setdefault("question", Q)
            body.setdefault("strategy", "echo")
            r = s.request("POST", "/v1/panels", body, key=key)
            assert r.status == 201, r.body
            return r.json()["id"]

        # twelve executes released at once on a limit of two: two start
        key = tenant("racer", 2)
        ids = [create(key) for _ in range(12)]
        gate, codes = threading.Barrier(12), []

        def go(pid):
            gate.wait()
            codes.append(s.request("POST", "/v1/panels/%s/execute" % pid, key=key).status)
        threads = [threading.Thread(target=go, args=(pid,)) for pid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [202] * 2 + [429] * 10, codes
        # streams whose clients left free their slots within a retry or two, not at their
        # next heartbeat (15 s)
        running = [pid for pid in ids if s.request("GET", "/v1/panels/" + pid,
                                                   key=key).json()["status"] == "running"]
        for _ in range(2):
            c = SSEClient(s, "/v1/panels/%s/events" % running[0], key=key)
            assert c.status == 200, c.status
            c.close()
        t0, opened = time.time(), None
        while opened is None and time.time() - t0 < 8:
            c = SSEClient(s, "/v1/panels/%s/events" % running[0], key=key)
            if c.status == 200:
                opened = time.time() - t0
            else:
                assert c.status == 429 and c.headers["Retry-After"] == "1", c.status
                time.sleep(1)
            c.close()
        assert opened is not None and opened < 4, opened
        # a limit above a list page (200) is counted, not paged
        key = tenant("wide", 201)
        for _ in range(201):
            assert s.request("POST", "/v1/panels/%s/execute" % create(key), key=key).status == 202
        expect_error(s.request("POST", "/v1/panels/%s/execute" % create(key), key=key), 429,
                     "too_many_panels")
        # sixteen panels of ~100 KB each: the page ends past 1 MiB, the cursor brings the rest
        key = tenant("bulky", 0)
        roster = [{"name": "E%d" % i, "role": "r", "persona": "p" * 4000,
                   "expertise": ["x" * 120] * 32} for i in range(12)]
        big = {create(key, experts=roster, question="q" * 8000) for _ in range(16)}
        first = s.request("GET", "/v1/panels?limit=200", key=key).json()
        assert 1 <= len(first["data"]) < 16 and first["next_cursor"], len(first["data"])
        seen = [p["id"] for p in first["data"]]
        cursor = first["next_cursor"]
        while cursor:
            page = s.request("GET", "/v1/panels?limit=200&cursor=" + cursor, key=key).json()
            seen += [p["id"] for p in page["data"]]
            cursor = page["next_cursor"]
        assert sorted(seen) == sorted(big), (len(seen), len(big))
        # a stream token opens the stream whatever the case of the id in its path
        pid = create(key)
        url = s.request("POST", "/v1/panels/%s/stream-token" % pid, key=key).json()["url"]
        r = s.request("GET", url.replace(pid, pid.upper(), 1),
                      headers={"Accept": "application/json"})
        assert r.status == 200, r.body
    finally:
        s.close()


@for_each_backend(env={"ASKPANEL_SIM_LATENCY_MS": "200"})
def test_stream_after_past_the_end_ends(w):
    """A client that asks to start past the last event still sees its stream end."""
    p = w.create(strategy="echo")
    assert w.s.request("POST", "/v1/panels/%s/execute" % p["id"], key=w.a).status == 202
    t0 = time.time()
    c = SSEClient(w.s, "/v1/panels/%s/events?after=1000000" % p["id"], key=w.a, timeout=30)
    assert c.status == 200, c.status
    frames = [f for f in c.frames() if f[0] is not None]
    c.close()
    assert frames == [] and time.time() - t0 < 20, (frames, time.time() - t0)


def test_tenant_limits():
    s = Server(env={"ASKPANEL_SIM_LATENCY_MS": "1500"}).start()
    try:
        from harness import OPERATOR_KEY
        r = s.request("POST", "/v1/admin/tenants", {"slug": "tiny", "name": "Tiny",
                      "limits": {"requests_per_minute": 8, "concurrent_panels": 1},
                      "flags": {"hybrid_panels": False}}, key=OPERATOR_KEY)
        assert r.status == 201, r.body
        key = r.json()["api_key"]
        expect_error(s.request("POST", "/v1/admin/tenants", {"slug": "tiny", "name": "Again"},
                               key=OPERATOR_KEY), 409)
        # a limit that would not be read as one (and so mean none) is refused
        for limits in ({"requests_per_minute": "3"}, {"requests_per_minute": 0.5},
                       {"requests_per_minute": -1}, {"request_per_minute": 3}):
            expect_error(s.request("POST", "/v1/admin/tenants", {"slug": "lim", "name": "L",
                                   "limits": limits}, key=OPERATOR_KEY), 400, "invalid_field")
        # a default strategy must name one the tenant can run
        expect_error(s.request("POST", "/v1/admin/tenants", {"slug": "ds1", "name": "D",
                               "default_strategy": "no-such-strategy"}, key=OPERATOR_KEY), 422,
                     "unknown_strategy")
        expect_error(s.request("POST", "/v1/admin/tenants", {"slug": "ds2", "name": "D",
                               "default_strategy": "../council"}, key=OPERATOR_KEY), 400,
                     "invalid_field")
        r = s.request("POST", "/v1/admin/tenants", {"slug": "ds3", "name": "D",
                      "default_strategy": "delphi"}, key=OPERATOR_KEY)
        assert r.status == 201, r.body
        t = s.request("GET", "/v1/tenant", key=r.json()["api_key"]).json()
        assert t["default_strategy"] == "delphi", t
        expect_error(s.request("POST", "/v1/admin/tenants", {"slug": "x2", "name": "T"}, key=key), 403)
        p1 = s.request("POST", "/v1/panels", {"question": Q, "strategy": "council"}, key=key).json()
        p2 = s.request("POST", "/v1/panels", {"question": Q, "strategy": "council"}, key=key).json()
        assert s.request("POST", "/v1/panels/%s/execute" % p1["id"], key=key).status == 202
        busy = expect_error(s.request("POST", "/v1/panels/%s/execute" % p2["id"], key=key), 429,
                            "too_many_panels")
        token_url = s.request("POST", "/v1/panels/%s/stream-token" % p1["id"], key=key).json()["url"]
        # 5 requests so far; the bucket holds 8 for a burst.
        statuses = [s.request("GET", "/v1/tenant", key=key).status for _ in range(6)]
        assert statuses == [200] * 3 + [429] * 3, statuses
        r = s.request("GET", "/v1/tenant", key=key)
        expect_error(r, 429, "rate_limited")
        assert 1 <= int(r.header("Retry-After")) <= 8
        # A stream token draws on the same allowance.
        expect_error(s.request("GET", token_url, headers={"Accept": "application/json"}), 429,
                     "rate_limited")
        # A monthly token budget stops new panels once spent.
        r = s.request("POST", "/v1/admin/tenants", {"slug": "frugal", "name": "Frugal",
                      "limits": {"monthly_token_budget": 10}}, key=OPERATOR_KEY)
        fkey = r.json()["api_key"]
        first = s.request("POST", "/v1/panels", {"question": Q, "strategy": "echo"}, key=fkey).json()
        assert s.request("POST", "/v1/panels/%s/execute" % first["id"], key=fkey).status == 202
        wait_status(s, fkey, first["id"], FINAL, timeout=30)
        second = s.request("POST", "/v1/panels", {"question": Q, "strategy": "echo"}, key=fkey).json()
        expect_error(s.request("POST", "/v1/panels/%s/execute" % second["id"], key=fkey), 429,
                     "token_budget_exhausted")
    finally:
        s.close()


def test_cli_resumes_any_tenants_panel():
    """`askpanel resume ID` finds a live panel of any tenant, not only the command line's own:
    the panel of a `serve` that was killed mid-panel resumes from the command line, with each
    event once (it said "no such panel")."""
    env = {"ASKPANEL_SIM_LATENCY_MS": "300"}
    dying = Server(env=env).start()
    try:
        _, key = tenant_create(dying, "epsilon")
        r = dying.request("POST", "/v1/panels",
                          {"question": Q, "strategy": "echo", "params": {"rounds": 3}}, key=key)
        assert r.status == 201, r.body
        pid = r.json()["id"]
        r = dying.request("POST", "/v1/panels/%s/execute" % pid, key=key)
        assert r.status == 202, r.body
        time.sleep(0.5)
        dying.proc.send_signal(signal.SIGKILL)
        dying.proc.wait()
        out = dying.cli("resume", pid, "--json", check=False)
        assert out.returncode == 0, out.stderr
        events = [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
        assert events and all(e["panel_id"] == pid for e in events)
        events = [e for e in events if e["type"] != "expert.delta"]  # ephemeral, seq 0
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        ends = [e["type"] for e in events if e["type"] in ("panel.completed", "panel.failed")]
        assert ends == ["panel.completed"], ends
        out = dying.cli("resume", "00000000-0000-4000-8000-000000000000", check=False)
        assert out.returncode == 1 and "no such panel" in out.stderr, out.stderr
    finally:
        dying.close()


def test_sigterm_while_a_request_is_in_flight_and_a_stream_opens():
    """A stream opened after shutdown began must not be parked (MHD would abort)."""
    import socket
    s = Server().start()
    try:
        _, key = tenant_create(s, "delta")
        p = s.request("POST", "/v1/panels", {"question": Q, "strategy": "council"}, key=key).json()
        ka = socket.create_connection(("127.0.0.1", s.port))
        ka.settimeout(5)
        ka.sendall(("GET /v1/tenant HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                    % key).encode())
        assert b" 200 " in ka.recv(65536)
        slow = socket.create_connection(("127.0.0.1", s.port))  # keeps a request in flight
        slow.sendall(("POST /v1/panels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                      "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{" % key).encode())
        time.sleep(0.3)
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ka.sendall(("GET /v1/panels/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                    % (p["id"], key)).encode())
        try:
            ka.recv(4096)
        except OSError:
            pass
        rc = s.proc.wait(timeout=15)
        assert rc == 0, "exit status %d:\n%s" % (rc, s.logs()[-2000:])
        s.proc = None
        s.log.close()
        slow.close()
        ka.close()
    finally:
        s.close()


def test_sigterm_with_open_streams():
    s = Server().start()
    try:
        _, key = tenant_create(s, "gamma")
        p = s.request("POST", "/v1/panels", {"question": Q, "strategy": "council"}, key=key).json()
        clients = [SSEClient(s, "/v1/panels/%s/events" % p["id"], key=key) for _ in range(3)]
        assert all(c.status == 200 for c in clients)
        t0 = time.time()
        assert s.stop(signal.SIGTERM, timeout=5) == 0
        assert time.time() - t0 < 5
        for c in clients:
            list(c.frames())  # the stream ends instead of hanging
            c.close()
    finally:
        s.close()


REDIS_URL = None
BACKENDS = backends()

if __name__ == "__main__":
    if len(BACKENDS) > 1:
        REDIS_URL = os.environ.get("ASKPANEL_TEST_REDIS_URL")
    tests = [test_create_get_list, test_create_validation, test_experts_by_id_and_inline,
             test_idempotency, test_isolation, test_execute_and_stream,
             test_live_stream_two_clients_and_reconnect, test_stream_token_for_browsers,
             test_revoking_a_key_ends_its_tokens_and_streams,
             test_hybrid_waits_for_input, test_input_names_its_request, test_cancel, test_stream_on_another_node,
             test_orphaned_panel_is_taken_over,
             test_strategy_override,
             test_restart_resumes_without_gaps, test_usage_and_expert_counts,
             test_stream_after_past_the_end_ends]
    if len(BACKENDS) == 1:
        tests += [test_feature_flag_blocks_strategy, test_tenant_limits,
                  test_limits_under_races_and_big_pages,
                  test_sigterm_with_open_streams,
                  test_sigterm_while_a_request_is_in_flight_and_a_stream_opens,
                  test_cli_resumes_any_tenants_panel]
    run(tests)
