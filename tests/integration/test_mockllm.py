#!/usr/bin/env python3
"""mockllm: wire formats, determinism, schemas, faults, stats, disconnects and concurrency."""
import asyncio
import http.client
import json
import socket
import sys
import time

from harness import check, start_mockllm as start, summary


def request(port, path, body=None, headers=None, method="POST", timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body) if body is not None else None
    c.request(method, path, body=data, headers=headers or {})
    r = c.getresponse()
    raw = r.read()
    c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), raw


def sse_events(raw):
    events = []
    for block in raw.decode().split("\n\n"):
        ev, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            events.append((ev, "\n".join(data)))
    return events


def openai_text(raw):
    text, usage, done, finish = "", None, False, None
    for _, data in sse_events(raw):
        if data == "[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        for ch in chunk["choices"]:
            text += ch["delta"].get("content") or ""
            finish = ch.get("finish_reason") or finish
        if chunk.get("usage"):
            usage = chunk["usage"]
    return text, usage, done, finish



def wait_idle(port):
    """Waits until earlier tests' connections are gone, so counters start clean."""
    deadline = time.time() + 3
    while time.time() < deadline:
        if json.loads(request(port, "/stats", method="GET")[2])["in_flight"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("mockllm never became idle")


def chat(system, user, **extra):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]
    body = {"model": "gpt-mock", "messages": msgs}
    body.update(extra)
    return body


def main():
    proc, port = start("--latency-ms", "10", "--token-ms", "1", "--tokens", "20", "--seed", "7")
    try:
        run_all(port)
    finally:
        proc.terminate()
        proc.wait(5)
    return summary()


def run_all(port):
    ada = "You are Dr. Ada Park, regulatory affairs lead."
    bob = "You are Bob Stone, chief financial officer."

    def openai_stream():
        st, h, raw = request(port, "/v1/chat/completions",
                             chat(ada, "Should we file now?", stream=True,
                                  stream_options={"include_usage": True}))
        assert st == 200 and h["content-type"] == "text/event-stream", (st, h)
        text, usage, done, finish = openai_text(raw)
        assert done and finish == "stop", (done, finish)
        assert "Dr. Ada Park" in text, text
        assert len(text.split()) == 20, text
        assert usage["completion_tokens"] == 20 and usage["prompt_tokens"] > 0, usage
        # without include_usage there is no usage chunk
        st, h, raw = request(port, "/v1/chat/completions",
                             chat(ada, "Should we file now?", stream=True))
        t2, usage, done, _ = openai_text(raw)
        assert usage is None and done and t2 == text
    check("openai streaming, usage chunk, [DONE]", openai_stream)

    def determinism():
        a = request(port, "/v1/chat/completions", chat(ada, "Q1"))[2]
        b = request(port, "/v1/chat/completions", chat(ada, "Q1"))[2]
        c = request(port, "/v1/chat/completions", chat(bob, "Q1"))[2]
        ta = json.loads(a)["choices"][0]["message"]["content"]
        tb = json.loads(b)["choices"][0]["message"]["content"]
        tc = json.loads(c)["choices"][0]["message"]["content"]
        assert ta == tb and ta != tc, (ta, tc)
        assert "Bob Stone" in tc
    check("deterministic, persona-aware content", determinism)

    def anthropic():
        body = {"model": "claude-mock", "max_tokens": 7, "system": bob, "stream": True,
                "messages": [{"role": "user", "content": "Budget?"}]}
        st, h, raw = request(port, "/v1/messages", body)
        assert st == 200
        evs = sse_events(raw)
        names = [e for e, _ in evs]
        assert names[:3] == ["message_start", "content_block_start", "ping"], names
        assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"], names
        text = "".join(json.loads(d)["delta"]["text"] for e, d in evs
                       if e == "content_block_delta")
        md = json.loads(evs[-2][1])
        assert md["delta"]["stop_reason"] == "max_tokens" and md["usage"]["output_tokens"] == 7
        assert len(text.split()) == 7, text
        body["stream"] = False
        st, h, raw = request(port, "/v1/messages", body)
        msg = json.loads(raw)
        assert msg["content"][0]["text"] == text and msg["usage"]["output_tokens"] == 7
    check("anthropic streaming events and non-streaming message", anthropic)

    schema = {"type": "object", "required": ["estimate", "confidence", "position", "ranking"],
              "properties": {
                  "estimate": {"type": "number", "minimum": 0, "maximum": 1000},
                  "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                  "position": {"type": "string"},
                  "ranking": {"type": "array", "items": {"type": "string",
                                                         "enum": ["a", "b", "c", "d"]}},
                  "vote": {"type": "string", "enum": ["yes", "no", "abstain"]},
                  "n": {"type": "integer", "minimum": 1, "maximum": 5},
                  "flag": {"type": "boolean"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    def valid(v):
        assert set(schema["required"]) <= set(v), v
        assert 0 <= v["estimate"] <= 1000 and 0 <= v["confidence"] <= 1
        assert sorted(v["ranking"]) == ["a", "b", "c", "d"], v["ranking"]
        if "vote" in v:
            assert v["vote"] in ("yes", "no", "abstain")
        if "n" in v:
            assert isinstance(v["n"], int) and 1 <= v["n"] <= 5
        if "flag" in v:
            assert isinstance(v["flag"], bool)

    def schema_native():
        for persona in (ada, bob, "You are Cy, a nurse.", "You are Di, an engineer."):
            raw = request(port, "/v1/chat/completions",
                          chat(persona, "Estimate the cost", response_format=rf, stream=True))[2]
            valid(json.loads(openai_text(raw)[0]))
    check("response_format json_schema answers validate", schema_native)

    def schema_instructed():
        sys_prompt = bob + "\n\nAnswer with JSON.\nJSON Schema:" + json.dumps(schema)
        body = {"model": "claude-mock", "max_tokens": 4000, "system": sys_prompt,
                "messages": [{"role": "user", "content": "Estimate"}]}
        valid(json.loads(json.loads(request(port, "/v1/messages", body)[2])["content"][0]["text"]))
    check("schema given by instruction (marker) answers validate", schema_instructed)

    def feedback():
        gaps_before, gaps_after = [], []
        for i in range(8):
            persona = "You are Expert %d, a specialist in area %d." % (i, i * 7)

            def est(user):
                raw = request(port, "/v1/chat/completions", chat(persona, user, response_format=rf))[2]
                return json.loads(json.loads(raw)["choices"][0]["message"]["content"])
            gaps_before.append(abs(est("Round estimate")["estimate"] - 900))
            gaps_after.append(abs(est("Round estimate\nGroup median: 900")["estimate"] - 900))
        # a 50-80 % pull toward the median at least halves the mean gap
        assert sum(gaps_after) < 0.6 * sum(gaps_before), (gaps_before, gaps_after)
        raw = request(port, "/v1/chat/completions",
                      chat(ada, "Pick one.\nOptions: approve | reject | defer", response_format=rf))[2]
        v = json.loads(json.loads(raw)["choices"][0]["message"]["content"])
        assert v["position"] in ("approve", "reject", "defer"), v["position"]
    check("Group median pulls estimates; Options feed position", feedback)

    def faults():
        b = chat(ada, "hi", stream=True)
        for fault, status, retry in (("429", 429, True), ("500", 500, False), ("529", 529, True),
                                     ("401", 401, False), ("spend_limit", 429, False)):
            st, h, raw = request(port, "/v1/chat/completions", b, {"X-Mock-Fault": fault})
            assert st == status, (fault, st)
            assert ("retry-after" in h) == retry, (fault, h)
            err = json.loads(raw)["error"]
            if fault == "spend_limit":
                assert err["code"] == "insufficient_quota"
        st, h, raw = request(port, "/v1/messages", {"model": "c", "max_tokens": 5, "messages": [
            {"role": "user", "content": "x"}]}, {"X-Mock-Fault": "529", "X-Mock-Retry-After": "0"})
        assert st == 529 and h["retry-after"] == "0" and json.loads(raw)["error"]["type"] == "overloaded_error"
        try:
            request(port, "/v1/chat/completions", b, {"X-Mock-Fault": "reset"})
            raise AssertionError("reset answered")
        except (ConnectionError, http.client.HTTPException, OSError):
            pass
        try:
            st, h, raw = request(port, "/v1/chat/completions", b, {"X-Mock-Fault": "truncate"})
            assert b"[DONE]" not in raw
        except http.client.IncompleteRead:
            pass
        st, h, raw = request(port, "/v1/chat/completions", b, {"X-Mock-Fault": "malformed"})
        bad = 0
        for _, data in sse_events(raw):
            try:
                json.loads(data) if data != "[DONE]" else None
            except ValueError:
                bad += 1
        assert bad == 1, bad
        t0 = time.time()
        try:
            request(port, "/v1/chat/completions", b, {"X-Mock-Fault": "stall"}, timeout=0.5)
            raise AssertionError("stall answered")
        except (socket.timeout, TimeoutError):
            assert time.time() - t0 < 2
    check("faults by header", faults)

    def stats_and_disconnect():
        wait_idle(port)
        request(port, "/reset")
        request(port, "/v1/chat/completions", chat(ada, "a"))
        request(port, "/v1/messages", {"model": "c", "max_tokens": 3, "messages": [
            {"role": "user", "content": "x"}]})
        request(port, "/v1/chat/completions", chat(ada, "a"), {"X-Mock-Fault": "500"})
        s = json.loads(request(port, "/stats", method="GET")[2])
        assert s["requests_total"] == 3 and s["by_endpoint"]["chat_completions"] == 2, s
        assert s["by_fault"]["500"] == 1 and s["disconnects"] == 0, s
        # a client that goes away while its answer is still pending is counted
        sock = socket.create_connection(("127.0.0.1", port))
        body = json.dumps(chat(ada, "slow", stream=True)).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Mock-Latency-Ms: 5000\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.1)
        assert json.loads(request(port, "/stats", method="GET")[2])["in_flight"] == 1
        sock.close()
        deadline = time.time() + 2
        while time.time() < deadline:
            s = json.loads(request(port, "/stats", method="GET")[2])
            if s["disconnects"] == 1 and s["in_flight"] == 0:
                break
            time.sleep(0.05)
        assert s["disconnects"] == 1 and s["in_flight"] == 0, s
    check("stats, reset, disconnects", stats_and_disconnect)

    def api_key_and_rate():
        p, kport = start("--api-key", "sk-good", "--latency-ms", "0", "--token-ms", "0",
                         "--fault-rate", "0.2", "--seed", "3")
        try:
            st = request(kport, "/v1/chat/completions", chat(ada, "x"),
                         {"Authorization": "Bearer sk-bad", "X-Mock-Fault": "none"})[0]
            assert st == 401, st
            st = request(kport, "/v1/messages", {"model": "c", "max_tokens": 3, "messages": [
                {"role": "user", "content": "x"}]}, {"x-api-key": "sk-good", "X-Mock-Fault": "none"})[0]
            assert st == 200, st
            faulted = 0
            for i in range(300):
                try:
                    st, _, raw = request(kport, "/v1/chat/completions", chat(ada, "q%d" % i),
                                         {"Authorization": "Bearer sk-good"})
                    if st != 200 or b"broken" in raw:
                        faulted += 1
                except (ConnectionError, http.client.HTTPException, OSError):
                    faulted += 1
            s = json.loads(request(kport, "/stats", method="GET")[2])
            # the one 401 above came from the wrong key, not from the fault rate
            injected = sum(v for k, v in s["by_fault"].items() if k not in ("none", "401"))
            assert 30 <= injected <= 90, s  # 20 % of 300, loosely
            assert faulted == injected, (faulted, injected)  # every injected fault is visible
        finally:
            p.terminate()
            p.wait(5)
    check("api key and fault rate", api_key_and_rate)

    def concurrency():
        p, cport = start("--latency-ms", "200", "--token-ms", "10", "--tokens", "20")
        try:
            n = 1000
            t0 = time.time()
            results = asyncio.run(many_streams(cport, n))
            wall = time.time() - t0
            assert all(r == 20 for r in results), [r for r in results if r != 20][:5]
            # 200 ms to the first token + 19 x 10 ms, with room for a loaded 2-core CI box
            assert wall < 6.0, wall
            print("      %d concurrent streams in %.2f s" % (n, wall))
        finally:
            p.terminate()
            p.wait(5)
    check("1000 concurrent streams", concurrency)


async def one_stream(port, body):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    return raw.count(b'"content":"') - 1  # minus the role chunk


async def many_streams(port, n):
    body = json.dumps(chat("You are X.", "go", stream=True)).encode()
    return await asyncio.gather(*(one_stream(port, body) for _ in range(n)))


if __name__ == "__main__":
    sys.exit(main())
