local fakectx = dofile("tests/spec/support/fakectx.lua")

describe("hybrid", function()
  it("waits for the human after the first round, then before the decision", function()
    local r = fakectx.run({ strategy = "hybrid", experts = fakectx.roster(3) })
    assert.are.equal("awaiting_input", r.status)
    assert.are.equal("review", r.pending.kind)
    assert.matches("Options:", r.pending.prompt)
    assert.are.equal(1, #r:events_of("round.started"))
    r:resume({ position = "do not proceed", confidence = 0.9, text = "Too early." })
    assert.are.equal("awaiting_input", r.status)
    assert.are.equal("decision", r.pending.kind)
    assert.are.equal(2, #r:events_of("round.started"))
    r:resume({ position = "do not proceed" })
    assert.are.equal("completed", r.status)
    assert.are.equal(2, #r:events_of("input.received"))
  end)

  it("counts the human as a participant", function()
    local r = fakectx.run({ strategy = "hybrid", experts = fakectx.roster(3),
                            inputs = { { position = "proceed" }, { position = "proceed", confidence = 1 } } })
    local res = r.result
    assert.are.equal(4, res.consensus.details.n)
    local last = res.positions[#res.positions]
    assert.are.equal("human", last.expert)
    assert.is_true(last.human)
    assert.are.equal("proceed", last.position)
    assert.is_true(res.human.counted)
    assert.are.equal(2, #r:events_of("human.counted"))
  end)

  it("shows the human's view to the experts in the second round", function()
    local r = fakectx.run({ strategy = "hybrid", experts = fakectx.roster(2),
                            inputs = { { position = "proceed", text = "The market window closes in May." }, { skip = true } } })
    local second = {}
    for _, c in ipairs(r.calls) do
      if c.opts.round == 2 then
        second[#second + 1] = c.prompt
      end
    end
    assert.are.equal(2, #second)
    assert.matches("Human participant: proceed", second[1])
    assert.matches("market window", second[1])
  end)

  it("matches free text to the longest option it names", function()
    local r = fakectx.run({ strategy = "hybrid", experts = fakectx.roster(2),
                            inputs = { "skip", "I'd say Proceed with conditions, if the budget holds" } })
    assert.are.equal("proceed with conditions", r.result.human.position)
  end)

  it("lets the moderator classify free text that names no option", function()
    local r = fakectx.run({ strategy = "hybrid", experts = fakectx.roster(2),
                            inputs = { { text = "Honestly I am torn." }, { text = "Let's wait for the trial readout." } } })
    local counted = r:events_of("human.counted")
    assert.are.equal(2, #counted)
    assert.is_true(counted[2].data.interpreted)
  end)

  it("leaves out a human who declines, and says so", function()
    local r = fakectx.run({ strategy = "hybrid", experts = fakectx.roster(3), inputs = { { skip = true }, { skip = true } } })
    assert.are.equal("completed", r.status)
    assert.is_false(r.result.human.counted)
    assert.are.equal(3, r.result.consensus.details.n)
    assert.matches("could not be counted", r.result.summary)
    assert.are.equal(2, #r:events_of("human.skipped"))
  end)

  it("can skip both checkpoints", function()
    local r = fakectx.run({ strategy = "hybrid", params = { ask_after_first_round = false, ask_before_decision = false } })
    assert.are.equal("completed", r.status)
    assert.are.equal(0, #r:events_of("input.requested"))
  end)

  it("weights the human ballot", function()
    local experts = fakectx.roster(2)
    for _, e in ipairs(experts) do
      e.sim = { position = "proceed", confidence = 0.5 }
    end
    local r = fakectx.run({ strategy = "hybrid", experts = experts, params = { human_weight = 5 },
                            inputs = { { skip = true }, { position = "do not proceed", confidence = 1 } } })
    -- weighted: proceed 0.5 + 0.5 = 1; human 1 x 5 = 5 -> the human carries it, level 5/6
    assert.are.equal("do not proceed", r.result.consensus.position)
    assert.is_true(math.abs(r.result.consensus.level - 5 / 6) < 1e-9)
    assert.matches("Recommended: do not proceed", r.result.recommendation)
  end)
end)
