-- The tutorial's strategy, tested the way the tutorial describes.
local fakectx = dofile("tests/spec/support/fakectx.lua")
local PATH = "examples/tutorial/premortem.lua"

describe("premortem (tutorial)", function()
  it("completes with the result contract", function()
    local r = fakectx.run({ path = PATH, experts = fakectx.roster(4) })
    assert.are.equal("completed", r.status)
    local res = r.result
    assert.is_string(res.summary)
    assert.is_string(res.recommendation)
    assert.are.equal("borda", res.consensus.algorithm)
    assert.are.equal(2, res.rounds)
    assert.are.equal(3, #res.safeguards)
    assert.are.equal(1, #r:events_of("premortem.ranked"))
  end)

  it("puts the cause everyone ranks first on top", function()
    local experts = fakectx.roster(3)
    local r = fakectx.run({ path = PATH, experts = experts, answer = function(e, prompt, opts)
      if opts.schema and opts.schema.properties.ranking then
        local ids = opts.schema.properties.ranking.items.enum
        local ranking = { "C2" }
        for _, id in ipairs(ids) do
          if id ~= "C2" then
            ranking[#ranking + 1] = id
          end
        end
        return { ranking = ranking }
      end
    end })
    assert.are.equal("C2", r.result.consensus.position)
    assert.are.equal(1, r.result.consensus.level)
    assert.are.equal("C2", r.result.safeguards[1].id)
  end)

  it("survives an expert whose answers fail", function()
    local experts = fakectx.roster(3)
    experts[2].fail = "timeout"
    local r = fakectx.run({ path = PATH, experts = experts })
    assert.are.equal("completed", r.status)
    assert.is_true(r.result.positions[2].excluded)
  end)
end)
