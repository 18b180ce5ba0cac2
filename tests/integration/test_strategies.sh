#!/bin/sh
# Every built-in strategy end to end through the engine with the simulated provider:
# `askpanel run --strategy NAME --json` must complete with the result contract (summary,
# recommendation, consensus, dissent, positions, rounds); hybrid completes with answers on
# stdin and stops in awaiting_input without them.
set -eu

SRC=${ASKPANEL_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${ASKPANEL_BIN:-$SRC/build/askpanel}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM
cd "$SRC"

QUESTION="Should we launch our new diabetes app in Germany before France?"
FAILED=0

# check FILE MODE: MODE is "completed" or "awaiting_input".
check() {
    python3 - "$1" "$2" <<'PY'
import json, math, sys

path, want = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
try:
    doc = json.loads(text)
    events = doc if isinstance(doc, list) else doc.get("events", [doc])
except ValueError:
    events = [json.loads(l) for l in text.splitlines() if l.strip().startswith("{")]

def etype(e):
    return e.get("type") or e.get("event")

def edata(e):
    return e.get("data", e)

types = [etype(e) for e in events]
statuses = [edata(e).get("status") for e in events if etype(e) == "panel.status"]
problems = []
if want == "awaiting_input":
    if "panel.completed" in types:
        problems.append("completed although no input was given")
    if "input.requested" not in types:
        problems.append("no input.requested event")
    if "awaiting_input" not in statuses:
        problems.append("status never became awaiting_input (statuses: %s)" % statuses)
else:
    done = [e for e in events if etype(e) == "panel.completed"]
    if len(done) != 1:
        failed = [edata(e) for e in events if etype(e) == "panel.failed"]
        problems.append("no panel.completed event (failed: %s)" % failed)
    else:
        r = edata(done[0]).get("result") or {}
        for k, t in (("summary", str), ("recommendation", str), ("consensus", dict),
                     ("dissent", list), ("positions", list), ("rounds", int)):
            if not isinstance(r.get(k), t) or isinstance(r.get(k), bool):
                problems.append("result.%s missing or not %s: %r" % (k, t.__name__, r.get(k)))
        c = r.get("consensus") or {}
        lvl = c.get("level")
        if not isinstance(c.get("algorithm"), str):
            problems.append("consensus.algorithm missing")
        if not isinstance(lvl, (int, float)) or not math.isfinite(lvl) or not 0 <= lvl <= 1:
            problems.append("consensus.level not in [0,1]: %r" % lvl)
        if isinstance(r.get("summary"), str) and not r["summary"]:
            problems.append("empty summary")
        if isinstance(r.get("rounds"), int) and r["rounds"] < 1:
            problems.append("rounds < 1")
        if "round.started" not in types:
            problems.append("no round.started event")
        if "consensus" not in types:
            problems.append("no consensus event")
for p in problems:
    print("  " + p)
sys.exit(1 if problems else 0)
PY
}

run() { # run NAME OUT [extra args...]; stdin is passed through
    name=$1
    out=$2
    shift 2
    "$BIN" run --strategy "$name" --question "$QUESTION" --json --store "sqlite:$TMP/$name.db" "$@" >"$out" 2>"$out.err"
}

for s in structured open socratic adversarial delphi council; do
    if run "$s" "$TMP/$s.json" </dev/null && check "$TMP/$s.json" completed; then
        echo "ok - $s completes"
    else
        echo "not ok - $s"
        sed 's/^/  stderr: /' "$TMP/$s.json.err" | head -20
        FAILED=1
    fi
done

# delphi converges with the engine's simulated experts: more than one round, IQR shrinking
if python3 - "$TMP/delphi.json" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
result = [e["data"]["result"] for e in events if e["type"] == "panel.completed"][0]
h = result["history"]
assert len(h) > 1, "delphi stopped after %d round(s)" % len(h)
for a, b in zip(h, h[1:]):
    assert b["iqr"] < a["iqr"], "IQR did not shrink: %r" % h
PY
then
    echo "ok - delphi converges"
else
    echo "not ok - delphi converges"
    FAILED=1
fi

# hybrid with the human's two answers on stdin (one JSON object per line)
printf '%s\n' '{"position":"proceed with conditions","confidence":0.8,"text":"Only with a phased rollout."}' \
    '{"position":"proceed with conditions","text":"Agreed."}' >"$TMP/answers"
if run hybrid "$TMP/hybrid.json" <"$TMP/answers" && check "$TMP/hybrid.json" completed &&
    [ "$(grep -c '"type":"human.counted"' "$TMP/hybrid.json")" -eq 2 ]; then
    echo "ok - hybrid completes with answers on stdin"
else
    echo "not ok - hybrid with answers"
    sed 's/^/  stderr: /' "$TMP/hybrid.json.err" | head -20
    FAILED=1
fi

# hybrid without answers waits for the human (the exit status may say so; the events must)
"$BIN" run --strategy hybrid --question "$QUESTION" --json --store "sqlite:$TMP/hybrid.db" \
    </dev/null >"$TMP/hybrid_wait.json" 2>"$TMP/hybrid_wait.json.err" || true
if check "$TMP/hybrid_wait.json" awaiting_input; then
    echo "ok - hybrid waits in awaiting_input without answers"
else
    echo "not ok - hybrid without answers"
    sed 's/^/  stderr: /' "$TMP/hybrid_wait.json.err" | head -20
    FAILED=1
fi

# ... and resumes with `askpanel resume` once answers arrive on stdin
ID=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("{"):
        print(json.loads(l)["panel_id"]); break' "$TMP/hybrid_wait.json")
if printf '%s\n' 'proceed with conditions, phased' 'do not proceed' |
    "$BIN" resume "$ID" --json --store "sqlite:$TMP/hybrid.db" >"$TMP/resumed.json" 2>"$TMP/resumed.json.err" &&
    check "$TMP/resumed.json" completed; then
    echo "ok - the waiting hybrid panel completes after resume"
else
    echo "not ok - hybrid resume"
    sed 's/^/  stderr: /' "$TMP/resumed.json.err" | head -20
    FAILED=1
fi

# examples run from their files
for f in examples/debate/debate.lua examples/tenant-override/strategies/delphi.lua examples/tutorial/premortem.lua; do
    out="$TMP/$(echo "$f" | tr '/' '_').json"
    if "$BIN" run --strategy "$f" --question "$QUESTION" --json --store "sqlite:$TMP/examples.db" \
        </dev/null >"$out" 2>"$out.err" && check "$out" completed; then
        echo "ok - $f completes"
    else
        echo "not ok - $f"
        sed 's/^/  stderr: /' "$out.err" | head -20
        FAILED=1
    fi
done

# every script passes `askpanel check` (contract, and a dry run for consensus algorithms)
CHECKED=ok
for f in strategies/*.lua strategies/consensus/*.lua examples/debate/debate.lua \
    examples/tenant-override/strategies/delphi.lua examples/tutorial/premortem.lua; do
    if ! "$BIN" check "$f" >"$TMP/check.out" 2>&1; then
        echo "not ok - askpanel check $f"
        sed 's/^/  /' "$TMP/check.out" | head -10
        CHECKED=failed
        FAILED=1
    fi
done
[ "$CHECKED" = ok ] && echo "ok - askpanel check on every script"

# a panel-chosen consensus algorithm reaches the result
if run structured "$TMP/override.json" --consensus entropy </dev/null && check "$TMP/override.json" completed &&
    grep -q '"algorithm": *"entropy"' "$TMP/override.json"; then
    echo "ok - consensus override"
else
    echo "not ok - consensus override"
    sed 's/^/  stderr: /' "$TMP/override.json.err" | head -20
    FAILED=1
fi

exit $FAILED
