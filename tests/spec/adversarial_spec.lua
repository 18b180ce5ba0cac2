local fakectx = dofile("tests/spec/support/fakectx.lua")

local function run(o)
  o.strategy = "adversarial"
  local r = fakectx.run(o)
  assert(r.status == "completed", tostring(r.error))
  return r
end

describe("adversarial", function()
  it("splits red and blue teams and an impartial judge", function()
    local r = run({ experts = fakectx.roster(6) })
    local t = r.result.teams
    assert.are.equal("e1", t.judge) -- the chair judges
    local seen = { [t.judge] = "judge" }
    for _, side in ipairs({ "red", "blue" }) do
      assert.is_true(#t[side] >= 1)
      for _, id in ipairs(t[side]) do
        assert.is_nil(seen[id], id .. " is on two sides")
        seen[id] = side
      end
    end
    assert.are.equal("red", seen.e5) -- role "red team"
    assert.are.equal("blue", seen.e6) -- role "patient advocate"
  end)

  it("produces a risk register with the required fields", function()
    local r = run({ experts = fakectx.roster(5) })
    local reg = r.result.risk_register
    assert.is_true(#reg >= 1)
    local red = {}
    for _, id in ipairs(r.result.teams.red) do
      red[id] = true
    end
    for _, entry in ipairs(reg) do
      assert.is_string(entry.risk)
      assert.truthy(({ low = 1, medium = 1, high = 1 })[entry.likelihood])
      assert.truthy(({ low = 1, medium = 1, high = 1 })[entry.impact])
      assert.is_string(entry.mitigation)
      assert.is_true(red[entry.raised_by])
    end
    assert.are.equal(#reg, #r:events_of("risk.registered"))
    assert.is_true(#r:events_of("risk.mitigated") >= 1)
    assert.are.equal(r.result.rounds, #r.result.scores)
  end)

  it("stops early when the red team raises nothing new", function()
    local experts = fakectx.roster(3)
    for _, e in ipairs(experts) do
      e.sim = { risks = { { risk = "Supply chain failure", likelihood = "medium", impact = "high", argument = "single source" } } }
    end
    local r = run({ experts = experts, params = { rounds = 4 } })
    assert.are.equal(2, r.result.rounds)
    assert.are.equal(1, #r.result.risk_register)
  end)

  it("lets one expert play every part", function()
    local r = run({ experts = fakectx.roster(1) })
    assert.are.same({ "e1" }, r.result.teams.red)
    assert.are.same({ "e1" }, r.result.teams.blue)
    assert.are.equal("e1", r.result.teams.judge)
  end)

  it("falls back to the panel vote when the judge fails", function()
    local r = run({ experts = fakectx.roster(4), fail = function(expert, prompt)
      if prompt:find("You judge", 1, true) then
        return "judge timed out"
      end
    end })
    assert.are.equal(r.result.consensus.position, r.result.verdict)
    assert.is_string(r.result.scores[1].error)
  end)

  it("attacks the given proposal text", function()
    local r = run({ experts = fakectx.roster(3), params = { proposal = "Open a second factory in Ōsaka" } })
    assert.matches("Ōsaka", r.calls[1].prompt)
  end)
end)
