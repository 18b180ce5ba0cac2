-- Specs for the debate prototype. Run from the repo root:
--   busted examples/debate/spec     (also run by tests/spec/examples_spec.lua)
local fakectx = dofile("tests/spec/support/fakectx.lua")
local PATH = "examples/debate/debate.lua"

local function run(o)
  o.path = PATH
  local r = fakectx.run(o)
  assert(r.status == "completed", tostring(r.error))
  return r
end

describe("debate prototype", function()
  it("loads as a valid strategy", function()
    assert.is_true(fakectx.check_strategy(fakectx.load(PATH), "debate"))
  end)

  it("assigns debaters, a judge and an audience", function()
    local r = run({ experts = fakectx.roster(5) })
    local roles = r.result.roles
    assert.are.equal("e1", roles.judge) -- role "chair"
    assert.are.equal("e2", roles.affirmative)
    assert.are.equal("e3", roles.negative)
    assert.are.same({ "e4", "e5" }, roles.audience)
  end)

  it("runs opening, rebuttals and closing with both sides each round", function()
    local r = run({ experts = fakectx.roster(5), params = { exchanges = 2 } })
    local stages = {}
    for _, e in ipairs(r:events_of("round.started")) do
      stages[#stages + 1] = e.data.stage
    end
    assert.are.same({ "opening", "rebuttal", "rebuttal", "closing" }, stages)
    assert.are.equal(8, #r.result.transcript)
    assert.are.equal(4, r.result.rounds)
  end)

  it("lets a later speech see the transcript so far", function()
    local r = run({ experts = fakectx.roster(4) })
    local closing
    for _, c in ipairs(r.calls) do
      if c.prompt:find("closing speech", 1, true) then
        closing = c.prompt
      end
    end
    assert.matches("%[opening, for%]", closing)
    assert.matches("%[rebuttal, against%]", closing)
  end)

  it("takes the winner from the judge's scores", function()
    local experts = fakectx.roster(4)
    experts[1].sim = { affirmative = 8, negative = 5, winner = "against", reason = "r" }
    local r = run({ experts = experts })
    assert.are.equal("for", r.result.winner) -- the scores overrule a contradictory winner field
    assert.are.same({ affirmative = 8, negative = 5 }, r.result.scores)
  end)

  it("measures the swing of the audience", function()
    local experts = fakectx.roster(5)
    local r = run({ experts = experts, answer = function(e, prompt, opts)
      if opts.schema and opts.schema.properties.position then
        local after = prompt:find("You heard this debate", 1, true) ~= nil
        return { position = (after or e.id == "e4") and "for" or "against", confidence = 0.7, reason = "r" }
      end
    end })
    assert.are.equal(0.5, r.result.swing.before)
    assert.are.equal(1, r.result.swing.after)
    assert.are.equal(0.5, r.result.swing.change)
    assert.are.equal("for", r.result.consensus.position)
  end)

  it("works with one expert arguing both sides", function()
    local r = run({ experts = fakectx.roster(1) })
    assert.are.equal("e1", r.result.roles.affirmative)
    assert.are.equal("e1", r.result.roles.negative)
    assert.are.equal(2 * r.result.rounds, #r.result.transcript)
  end)

  it("fails clearly without experts", function()
    local r = fakectx.run({ path = PATH, experts = {} })
    assert.are.equal("failed", r.status)
    assert.matches("needs at least one expert", r.error)
  end)

  it("survives a judge that fails", function()
    local experts = fakectx.roster(3)
    local r = run({ experts = experts, fail = function(e, prompt)
      if prompt:find("You judge", 1, true) then
        return "judge offline"
      end
    end })
    assert.are.equal("undecided", r.result.winner)
    assert.are.equal("judge", r.result.excluded[1].stage)
  end)
end)
