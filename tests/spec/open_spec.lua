local fakectx = dofile("tests/spec/support/fakectx.lua")

local function run(o)
  o.strategy = "open"
  local r = fakectx.run(o)
  assert(r.status == "completed", tostring(r.error))
  return r
end

describe("open", function()
  it("merges near-duplicate ideas and credits every proposer", function()
    local experts = fakectx.roster(3)
    experts[1].sim = { ideas = { "Run a pilot in two regions first", "Hire a market access lead" } }
    experts[2].sim = { ideas = { "run a pilot in two regions, first!", "Price below the standard of care" } }
    experts[3].sim = { ideas = { "Partner with a distributor" } }
    local r = run({ experts = experts, params = { ideas_per_expert = 2 } })
    local ideas = r.result.ideas
    assert.are.equal(4, #ideas)
    assert.are.equal("Run a pilot in two regions first", ideas[1].idea) -- the largest cluster comes first
    assert.are.same({ "e1", "e2" }, ideas[1].proposed_by)
    assert.are.equal(2, ideas[1].size)
  end)

  it("votes by approval and develops the top ideas with their proposers", function()
    local r = run({ experts = fakectx.roster(5), params = { top = 2 } })
    assert.are.equal("approval", r.result.consensus.algorithm)
    assert.are.equal(3, r.result.rounds)
    assert.are.equal(2, #r.result.developed)
    local by_id = {}
    for _, idea in ipairs(r.result.ideas) do
      by_id[idea.id] = idea
    end
    for _, d in ipairs(r.result.developed) do
      local proposers = {}
      for _, p in ipairs(by_id[d.id].proposed_by) do
        proposers[p] = true
      end
      assert.is_true(proposers[d.developer])
      assert.is_string(d.plan)
    end
    assert.matches("^Pursue: ", r.result.recommendation)
  end)

  it("keeps only max_ideas clusters for the vote", function()
    local r = run({ experts = fakectx.roster(7), params = { ideas_per_expert = 5, max_ideas = 4 } })
    assert.are.equal(4, #r.result.ideas)
  end)

  it("clusters unicode ideas word by word", function()
    local experts = fakectx.roster(2)
    experts[1].sim = { ideas = { "Étendre le réseau de distribution" } }
    experts[2].sim = { ideas = { "étendre le réseau de distribution" } }
    local r = run({ experts = experts, params = { ideas_per_expert = 1 } })
    assert.are.equal(1, #r.result.ideas)
  end)
end)
