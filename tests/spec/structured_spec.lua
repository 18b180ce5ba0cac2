local fakectx = dofile("tests/spec/support/fakectx.lua")

local function run(o)
  o.strategy = "structured"
  local r = fakectx.run(o)
  assert(r.status == "completed", tostring(r.error))
  return r
end

describe("structured", function()
  it("walks the agenda in order, then votes", function()
    local r = run({ experts = fakectx.roster(4), params = { sections = { "scope", "evidence", "risks" } } })
    local synth = r:events_of("section.synthesised")
    assert.are.equal(3, #synth)
    for i, name in ipairs({ "scope", "evidence", "risks" }) do
      assert.are.equal(name, synth[i].data.section)
      assert.are.equal(i, synth[i].data.index)
      assert.are.equal("e1", synth[i].data.moderator)
    end
    assert.are.equal(4, r.result.rounds)
    assert.are.equal(3, #r.result.sections)
  end)

  it("carries earlier conclusions into later sections", function()
    local r = run({ experts = fakectx.roster(2), params = { sections = { "scope", "risks" } } })
    local later
    for _, c in ipairs(r.calls) do
      if c.prompt:find("Agenda item 2 of 2", 1, true) then
        later = c.prompt
      end
    end
    assert.matches("Conclusions so far:", later)
    assert.matches("## scope", later)
  end)

  it("hands moderation to the next expert when the moderator fails", function()
    local experts = fakectx.roster(3)
    experts[1].fail = "timeout"
    local r = run({ experts = experts })
    assert.are.equal("e2", r.result.moderator)
    for _, s in ipairs(r.result.sections) do
      assert.are.equal("e2", s.moderator)
    end
    assert.are.same({ "e1" }, r:events_of("section.synthesised")[1].data.missing)
  end)

  it("honours an explicit moderator", function()
    assert.are.equal("e3", run({ experts = fakectx.roster(3), params = { moderator = "e3" } }).result.moderator)
  end)

  it("reports full agreement and a perfect split", function()
    local experts = fakectx.roster(3)
    for _, e in ipairs(experts) do
      e.sim = { position = "proceed with conditions", confidence = 0.8 }
    end
    local r = run({ experts = experts })
    assert.are.equal(1, r.result.consensus.level)
    experts = fakectx.roster(2)
    experts[1].sim = { position = "proceed", confidence = 0.8 }
    experts[2].sim = { position = "do not proceed", confidence = 0.8 }
    r = run({ experts = experts })
    assert.are.equal(0.5, r.result.consensus.level)
    assert.are.equal(2, #r.result.consensus.details.tie)
  end)
end)

describe("single-choice ballots", function()
  it("give every consensus algorithm something to count", function()
    -- 3 of 5 hold the same position in this roster; every algorithm must see it.
    for _, algorithm in ipairs({ "majority", "weighted", "borda", "approval", "kendall", "opinion_pool", "entropy" }) do
      local r = fakectx.run({ strategy = "structured", consensus_algorithm = algorithm })
      local c = r.result.consensus
      assert.are.equal(0, c.details.ignored, algorithm .. " ignored ballots")
      assert.are.equal("do not proceed", c.position, algorithm)
      assert.is_true(c.level > 0, algorithm)
    end
  end)
end)
