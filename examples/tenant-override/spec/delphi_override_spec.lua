-- Specs for the hospital network's delphi override. Run from the repo root:
--   busted examples/tenant-override/spec     (also run by tests/spec/examples_spec.lua)
local fakectx = dofile("tests/spec/support/fakectx.lua")
local PATH = "examples/tenant-override/strategies/delphi.lua"

local function run(o)
  o.path = PATH
  return fakectx.run(o)
end

describe("hospital delphi override", function()
  it("is a valid override of the built-in delphi", function()
    local mod = fakectx.load(PATH)
    assert.is_true(fakectx.check_strategy(mod, "delphi"))
    local builtin = fakectx.load(fakectx.strategy_path("delphi"))
    assert.are.equal(builtin.name, mod.name)
  end)

  it("holds at least three rounds and converges", function()
    local r = run({ experts = fakectx.roster(7) })
    assert.are.equal("completed", r.status)
    assert.is_true(r.result.rounds >= 3)
    assert.is_true(r.result.quorum_met)
    local h = r.result.history
    for i = 2, #h do
      assert.is_true(h[i].iqr < h[i - 1].iqr)
    end
    assert.is_number(r.result.estimate)
  end)

  it("refuses params looser than governance allows", function()
    assert.matches("param 'min_rounds' out of range", run({ params = { min_rounds = 2 } }).error)
    assert.matches("param 'iqr_stop' out of range", run({ params = { iqr_stop = 0.1 } }).error)
  end)

  it("stops without a recommendation below quorum", function()
    local experts = fakectx.roster(6)
    experts[1].fail, experts[2].fail = "timeout", "invalid"
    local r = run({ experts = experts })
    assert.are.equal("completed", r.status)
    assert.is_false(r.result.quorum_met)
    assert.are.equal("no_quorum", r.result.stop_reason)
    assert.are.equal(1, r.result.rounds)
    assert.matches("did not reach quorum", r.result.recommendation)
    assert.is_nil(r.result.estimate)
  end)

  it("does not count low-confidence estimates", function()
    local experts = fakectx.roster(6)
    experts[6].sim = { confidence = 0.1 }
    local r = run({ experts = experts })
    assert.are.equal(5, r.result.consensus.details.n)
    assert.is_true(r.result.positions[6].excluded)
  end)

  it("lists estimates that rest on expert opinion alone", function()
    local experts = fakectx.roster(5)
    experts[2].sim = { evidence = "expert opinion" }
    for i = 3, 5 do
      experts[i].sim = { evidence = "observational data" }
    end
    experts[1].sim = { evidence = "systematic review or RCT" }
    local r = run({ experts = experts })
    assert.are.same({ "e2" }, r.result.opinion_only)
    assert.are.equal(3, r.result.evidence["observational data"])
  end)

  it("requires sign-off when the tenant says so", function()
    local r = run({ experts = fakectx.roster(5), tenant = { slug = "st-mary", flags = { clinical_signoff = true } } })
    assert.is_true(r.result.requires_signoff)
    r = run({ experts = fakectx.roster(5) })
    assert.is_false(r.result.requires_signoff)
  end)
end)
