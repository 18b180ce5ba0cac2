local fakectx = dofile("tests/spec/support/fakectx.lua")

local function run(o)
  o.strategy = "council"
  local r = fakectx.run(o)
  assert(r.status == "completed", tostring(r.error))
  return r
end

local function chair_fails(ids)
  local set = {}
  for _, id in ipairs(ids) do
    set[id] = true
  end
  return function(expert, prompt)
    if set[expert.id] and prompt:find("You chair", 1, true) then
      return "chair model unavailable"
    end
  end
end

describe("council", function()
  it("runs opinions, anonymised review and synthesis in three rounds", function()
    local r = run({ experts = fakectx.roster(5) })
    assert.are.equal(3, r.result.rounds)
    assert.are.equal(3, #r:events_of("round.started"))
    assert.are.equal("e1", r.result.chair) -- role "chair"
    assert.is_false(r.result.degraded)
    assert.is_nil(r.result.degraded_reason)
    local review = r.result.peer_review
    assert.are.equal(5, #review.order)
    assert.are.equal("borda", review.borda.algorithm)
    assert.are.equal("kendall", review.kendall.algorithm)
  end)

  it("shows answers only under labels, and never lets a reviewer rank itself", function()
    local experts = fakectx.roster(4)
    local r = run({ experts = experts })
    local labels = r:events_of("council.revealed")[1].data.labels
    local own = {}
    for l, id in pairs(labels) do
      own[id] = l
    end
    for _, c in ipairs(r.calls) do
      if c.prompt:find("anonymised", 1, true) then
        for _, e in ipairs(experts) do
          assert.is_nil(c.prompt:find(e.name, 1, true), "review prompt names " .. e.name)
        end
      end
    end
    for _, b in ipairs(r:events_of("consensus")) do
      if b.data.algorithm == "borda" then
        for _, d in ipairs(b.data.result.dissent) do
          assert.are_not.equal(own[d.expert], d.position)
        end
      end
    end
    -- Self-ranking is removed: every reviewer's ballot ranks the other three.
    assert.are.equal(4, r.result.peer_review.borda.details.n)
    assert.are.equal(4, r.result.peer_review.borda.details.m)
  end)

  it("falls back to the fallback chair and says the result is degraded", function()
    local r = run({ experts = fakectx.roster(4), fail = chair_fails({ "e1" }), params = { fallback_chair = "e3" } })
    assert.are.equal("e3", r.result.chair)
    assert.is_true(r.result.degraded)
    assert.matches("fallback e3 chaired", r.result.degraded_reason)
    assert.are.equal(1, #r:events_of("council.chair_fallback"))
  end)

  it("refuses a chair or fallback chair who is not on the panel before any round", function()
    for _, param in ipairs({ "chair", "fallback_chair" }) do
      local r = fakectx.run({ strategy = "council", experts = fakectx.roster(4), params = { [param] = "someone-else" } })
      assert.are.equal("failed", r.status)
      assert.matches("param '" .. param .. "' names 'someone%-else', who is not an expert of this panel", r.error)
      assert.are.equal(0, #r.calls)
    end
  end)

  it("picks the best peer-ranked other expert as the default fallback", function()
    local r = run({ experts = fakectx.roster(4), fail = chair_fails({ "e1" }) })
    local best = r.result.peer_review.order[1] ~= "e1" and r.result.peer_review.order[1] or r.result.peer_review.order[2]
    assert.are.equal(best, r.result.chair)
  end)

  it("lets the top-ranked answer stand in when chair and fallback fail", function()
    local r = run({ experts = fakectx.roster(4), fail = chair_fails({ "e1", "e2" }), params = { fallback_chair = "e2" } })
    assert.is_nil(r.result.chair)
    assert.is_true(r.result.degraded)
    assert.matches("both failed", r.result.degraded_reason)
    assert.matches("top peer%-ranked answer", r.result.summary)
  end)

  it("skips review with a single valid opinion and says so", function()
    local experts = fakectx.roster(3)
    experts[2].fail, experts[3].fail = "timeout", "invalid"
    local r = run({ experts = experts })
    assert.are.equal(0, #r:events_of("council.review"))
    assert.is_true(r.result.degraded)
    assert.matches("peer review skipped", r.result.degraded_reason)
    assert.matches("only 1 of 3", r.result.degraded_reason)
  end)

  it("orders by Kendall mean rank when asked", function()
    local r = run({ experts = fakectx.roster(5), params = { aggregation = "kendall" } })
    local by_label = r:events_of("council.revealed")[1].data.labels
    assert.are.equal(by_label[r.result.peer_review.kendall.details.order[1]], r.result.peer_review.order[1])
  end)

  it("reaches full agreement when everyone holds one position", function()
    local experts = fakectx.roster(4)
    for _, e in ipairs(experts) do
      e.sim = { position = "proceed" }
    end
    local r = run({ experts = experts })
    assert.are.equal("proceed", r.result.consensus.position)
    assert.are.equal(1, r.result.consensus.level)
    assert.are.same({}, r.result.dissent)
  end)

  it("reports a perfect split with dissent", function()
    local experts = fakectx.roster(2)
    experts[1].sim = { position = "proceed", confidence = 0.6 }
    experts[2].sim = { position = "do not proceed", confidence = 0.6 }
    local r = run({ experts = experts })
    assert.are.equal(0.5, r.result.consensus.level)
    assert.are.equal(1, #r.result.dissent)
    -- majority tie: equal counts and confidences -> smaller name
    assert.are.equal("do not proceed", r.result.consensus.position)
  end)
end)
