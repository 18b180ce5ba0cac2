local fakectx = dofile("tests/spec/support/fakectx.lua")

local function run(o)
  o.strategy = "socratic"
  local r = fakectx.run(o)
  assert(r.status == "completed", tostring(r.error))
  return r
end

describe("socratic", function()
  it("probes one new assumption per round up to the round limit", function()
    local r = run({ experts = fakectx.roster(4), params = { rounds = 2, similarity = 1 } })
    local probes = r:events_of("assumption.probed")
    assert.is_true(#probes >= 1 and #probes <= 2)
    assert.are.equal(#probes + 1, r.result.rounds)
    for _, p in ipairs(probes) do
      assert.is_string(p.data.question)
    end
  end)

  it("ends when a round surfaces no new assumption", function()
    local experts = fakectx.roster(3)
    for _, e in ipairs(experts) do
      e.sim = { assumptions = { "Demand will keep growing" } }
    end
    local r = run({ experts = experts, params = { rounds = 6 } })
    assert.are.equal("no_new_assumptions", r.result.stop_reason)
    assert.are.equal(2, r.result.rounds)
    assert.are.equal(1, #r.result.assumptions)
    assert.are.equal(2, r.result.assumptions[1].probed_in)
  end)

  it("treats a re-worded assumption as known", function()
    local experts = fakectx.roster(2)
    experts[1].sim = { assumptions = { "Demand will keep growing" } }
    experts[2].sim = { assumptions = { "demand will keep on growing" } }
    local r = run({ experts = experts })
    assert.are.equal(1, #r.result.assumptions)
  end)

  it("ends at once when nothing is assumed", function()
    local experts = fakectx.roster(2)
    for _, e in ipairs(experts) do
      e.sim = { assumptions = {} }
    end
    local r = run({ experts = experts })
    assert.are.equal("nothing_to_probe", r.result.stop_reason)
    assert.are.equal(1, r.result.rounds)
  end)

  it("records revised positions", function()
    local r = run({ experts = fakectx.roster(2), answer = function(e, prompt, opts)
      if not opts.schema or not opts.schema.properties.assumptions then
        return nil
      end
      local probed = prompt:find("probes", 1, true) ~= nil
      return { position = probed and "do not proceed" or "proceed", confidence = 0.6, reason = "r",
               assumptions = { probed and ("second thought " .. e.id) or ("first thought " .. e.id) } }
    end })
    assert.is_true(#r.result.revisions >= 2)
    assert.are.equal("proceed", r.result.revisions[1].from)
    assert.are.equal("do not proceed", r.result.revisions[1].to)
    assert.are.equal(#r.result.revisions, #r:events_of("position.revised"))
  end)

  it("asks a default question when the moderator fails", function()
    local r = run({ experts = fakectx.roster(3), params = { rounds = 1 }, fail = function(_, prompt)
      if prompt:find("You moderate", 1, true) then
        return "moderator down"
      end
    end })
    assert.matches("^What if this assumption is false", r:events_of("assumption.probed")[1].data.question)
  end)
end)
