local fakectx = dofile("tests/spec/support/fakectx.lua")

local function run(o)
  o.strategy = "delphi"
  local r = fakectx.run(o)
  assert(r.status == "completed", tostring(r.error))
  return r
end

describe("delphi", function()
  it("converges: more than one round, IQR shrinking round to round", function()
    local r = run({ experts = fakectx.roster(7), question = "What share of eligible patients will use the product by year 3 (%)?" })
    local h = r.result.history
    assert.is_true(#h > 1, "delphi stopped after one round")
    assert.are.equal(#h, r.result.rounds)
    for i = 2, #h do
      assert(h[i].iqr < h[i - 1].iqr, string.format("IQR did not shrink in round %d: %.4f -> %.4f", i, h[i - 1].iqr, h[i].iqr))
    end
    assert.are.equal(#h - 1, #r:events_of("delphi.feedback"))
    assert.are.equal(1, #r:events_of("delphi.stopped"))
    assert.are.equal(r.result.statistics.details.median, r.result.estimate)
  end)

  it("feeds back median, IQR and reasons anonymously", function()
    local experts = fakectx.roster(5)
    local r = run({ experts = experts })
    local later = {}
    for _, c in ipairs(r.calls) do
      if c.prompt:find("Group median:", 1, true) then
        later[#later + 1] = c
      end
    end
    assert.is_true(#later >= #experts)
    for _, c in ipairs(later) do
      assert.matches("Interquartile range:", c.prompt)
      assert.matches("Previous estimate:", c.prompt)
      for _, e in ipairs(experts) do
        assert.is_nil(c.prompt:find(e.name, 1, true), "feedback names " .. e.name)
      end
    end
    for _, e in ipairs(r:events_of("delphi.feedback")) do
      assert.is_number(e.data.median)
      assert.is_number(e.data.iqr)
      assert.is_table(e.data.reasons)
    end
  end)

  it("refuses a scale whose high is not above its low before any round", function()
    local r = fakectx.run({ strategy = "delphi", params = { low = 100, high = 0 } })
    assert.are.equal("failed", r.status)
    assert.matches("param 'high' %(0%) must be greater than param 'low' %(100%)", r.error)
    assert.are.equal(0, #r.calls)
  end)

  it("stops at the round limit", function()
    local r = run({ params = { rounds = 2, iqr_stop = 0 } })
    assert.are.equal(2, r.result.rounds)
    assert.are.equal("round_limit", r.result.stop_reason)
  end)

  it("stops once the IQR is under the threshold, after min_rounds", function()
    local r = run({ params = { iqr_stop = 1, min_rounds = 1 } })
    assert.are.equal(1, r.result.rounds)
    assert.are.equal("converged", r.result.stop_reason)
  end)

  it("stops when the statistics stop changing", function()
    -- Identical experts: IQR 0 from the start; with iqr_stop 0 only stability can stop it.
    local experts = fakectx.roster(3)
    for _, e in ipairs(experts) do
      e.sim = { estimate = 30, confidence = 0.9, reason = "same" }
    end
    local r = run({ experts = experts, params = { iqr_stop = 0 } })
    assert.are.equal(2, r.result.rounds)
    assert.are.equal("stable", r.result.stop_reason)
    assert.are.equal(30, r.result.estimate)
    assert.are.equal(1, r.result.consensus.level)
  end)

  it("rejects estimates outside the scale as invalid", function()
    local experts = fakectx.roster(4)
    experts[2].sim = { estimate = 1e6, confidence = 0.5, reason = "off the chart" }
    local r = run({ experts = experts, params = { rounds = 2 } })
    assert.are.equal(3, r.result.statistics.details.n)
    assert.are.equal("e2", r.result.excluded[1].expert)
  end)

  it("keeps an estimate whose confidence is missing or out of range", function()
    -- JSON cannot carry NaN; a missing or absurd confidence is what reaches a strategy.
    local r = run({ experts = fakectx.roster(3), answer = function(e)
      return { estimate = e.id == "e1" and 10 or 20, confidence = e.id == "e2" and 7 or nil, reason = "x" }
    end, params = { rounds = 1, min_rounds = 1 } })
    assert.are.equal(1, r.result.positions[2].confidence)
    assert.are.equal(3, r.result.statistics.details.n)
  end)

  it("uses the panel's algorithm for consensus when it is not delphi", function()
    local r = run({ consensus_algorithm = "majority", params = { rounds = 2 } })
    assert.are.equal("majority", r.result.consensus.algorithm)
    assert.are.equal("delphi", r.result.statistics.algorithm)
  end)
end)
