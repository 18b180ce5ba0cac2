-- The contract every built-in strategy keeps, checked on the same edge cases:
-- loads in the sandbox, completes with the required result fields, survives
-- failing and invalid experts, one expert, unicode, and is deterministic.
local fakectx = dofile("tests/spec/support/fakectx.lua")
local json = fakectx.json

local STRATEGIES = {
  structured = "section.synthesised",
  open = "ideas.clustered",
  socratic = "assumption.probed",
  adversarial = "risk.registered",
  delphi = "delphi.feedback",
  hybrid = "human.counted",
  council = "council.review",
}

local HOST_EVENTS = { ["panel.status"] = true, ["panel.completed"] = true, ["panel.failed"] = true,
                      ["expert.message"] = true, consensus = true, ["input.requested"] = true, ["input.received"] = true }

local function inputs()
  return { { position = "proceed with conditions", confidence = 0.7, text = "Only with a phased rollout." },
           { position = "proceed with conditions", text = "Agreed, phased." } }
end

local function run(name, o)
  o = o or {}
  o.strategy = name
  o.inputs = o.inputs or inputs()
  local r = fakectx.run(o)
  assert(r.status == "completed", name .. " did not complete: " .. tostring(r.status) .. " " .. tostring(r.error))
  return r
end

local function finite(x)
  return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

local function check_result(name, r, experts)
  local res = r.result
  assert.is_table(res, name .. ": no result")
  assert.is_string(res.summary)
  assert.is_true(#res.summary > 0)
  assert.is_string(res.recommendation)
  assert.is_true(#res.recommendation > 0)
  assert.is_table(res.consensus)
  assert.is_string(res.consensus.algorithm)
  assert.is_true(finite(res.consensus.level) and res.consensus.level >= 0 and res.consensus.level <= 1)
  assert.is_table(res.dissent)
  assert.is_table(res.positions)
  assert.are.equal("integer", math.type(res.rounds))
  assert.is_true(res.rounds >= 1)
  local seen = {}
  for _, p in ipairs(res.positions) do
    assert.is_string(p.expert)
    seen[p.expert] = true
  end
  for _, e in ipairs(experts) do
    assert(seen[e.id], name .. ": no position entry for " .. e.id)
  end
  json.encode(res)
end

for name, method_event in pairs(STRATEGIES) do
  describe("strategy " .. name, function()
    it("loads in the sandbox with documented, valid params", function()
      local mod = fakectx.load(fakectx.strategy_path(name))
      assert.is_true(fakectx.check_strategy(mod, name))
      local src = io.open(fakectx.strategy_path(name)):read("a")
      assert.matches("^%-%- " .. name .. ":", src) -- the header comment names the method
      assert.matches("Events", src)
      assert.matches("Result", src)
    end)

    it("completes with the result contract and its events", function()
      local experts = fakectx.roster(5)
      local r = run(name, { experts = experts })
      check_result(name, r, experts)
      assert.is_true(#r:events_of("round.started") >= 1)
      assert.is_true(#r:events_of(method_event) >= 1, name .. " emitted no " .. method_event)
      assert.is_true(#r:events_of("consensus") >= 1)
      for _, e in ipairs(r:events_of("round.started")) do
        assert.are.equal("integer", math.type(e.data.round))
      end
      for _, e in ipairs(r.events) do
        assert(HOST_EVENTS[e.type] or e.type:match("^[a-z][a-z0-9_]*%.[a-z0-9_.]+$"), "odd event " .. e.type)
      end
    end)

    it("encodes empty lists as JSON arrays", function()
      local experts = fakectx.roster(3)
      for _, e in ipairs(experts) do -- everyone agrees, so nothing to dissent from
        e.sim = { position = name == "adversarial" and "adopt" or "proceed", estimate = 50 }
      end
      local res = run(name, { experts = experts, inputs = { { position = "proceed" }, { position = "proceed" } } }).result
      assert.are.equal("[]", json.encode(res.dissent))
      assert.are.equal("[]", json.encode(res.consensus.dissent))
      assert.are.equal("[]", json.encode(res.excluded))
    end)

    it("runs with a single expert", function()
      local experts = fakectx.roster(1)
      check_result(name, run(name, { experts = experts }), experts)
    end)

    it("runs with seven experts", function()
      local experts = fakectx.roster(7)
      check_result(name, run(name, { experts = experts }), experts)
    end)

    for _, mode in ipairs({ "provider timeout", "invalid", "garbage" }) do
      it("excludes an expert whose answer fails (" .. mode .. ")", function()
        local experts = fakectx.roster(4)
        experts[3].fail = mode
        local r = run(name, { experts = experts })
        check_result(name, r, experts)
        local p
        for _, x in ipairs(r.result.positions) do
          if x.expert == "e3" then
            p = x
          end
        end
        assert.is_true(p.excluded)
        assert.is_table(r.result.excluded)
        local noted = false
        for _, x in ipairs(r.result.excluded) do
          noted = noted or x.expert == "e3"
        end
        assert.is_true(noted, "e3 not listed in result.excluded")
        for _, b in ipairs(r.result.consensus.dissent) do
          assert.are_not.equal("e3", b.expert)
        end
      end)
    end

    it("finishes cleanly when every expert fails", function()
      local experts = fakectx.roster(3)
      for _, e in ipairs(experts) do
        e.fail = "provider down"
      end
      local r = run(name, { experts = experts, inputs = { { skip = true }, { skip = true } } })
      check_result(name, r, experts)
      assert.are.equal(0, r.result.consensus.level)
    end)

    it("finishes with an empty roster", function()
      local r = run(name, { experts = {}, inputs = { { skip = true }, { skip = true } } })
      check_result(name, r, {})
      assert.are.equal(0, r.result.consensus.level)
    end)

    it("handles a unicode question and roster", function()
      local experts = fakectx.roster(3)
      experts[1].name, experts[1].role = "Ōkubo Tarō", "議長 chair"
      local r = run(name, { experts = experts, question = "Faut-il lancer « Ωmega » au Japon ? 🚀 承認しますか" })
      check_result(name, r, experts)
      assert.matches("Ωmega", r.calls[1].prompt)
    end)

    it("is deterministic", function()
      local a = run(name, { experts = fakectx.roster(4) })
      local b = run(name, { experts = fakectx.roster(4) })
      assert.are.equal(json.encode(a.result), json.encode(b.result))
    end)

    it("rejects unknown params by name", function()
      local r = fakectx.run({ strategy = name, params = { bogus = 1 } })
      assert.are.equal("failed", r.status)
      assert.matches("bogus", r.error)
    end)

    it("honours a panel's consensus override, whatever the algorithm", function()
      for _, algorithm in ipairs({ "majority", "weighted", "borda", "approval", "delphi", "kendall", "opinion_pool",
                                   "entropy" }) do
        local r = run(name, { experts = fakectx.roster(4), consensus_algorithm = algorithm })
        check_result(name, r, fakectx.roster(4))
        assert.are.equal(algorithm, r.result.consensus.algorithm)
      end
    end)
  end)
end
