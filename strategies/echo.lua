-- echo: the smallest useful strategy — every expert answers the question once, in
-- parallel, with a position and a confidence; a consensus algorithm counts them.
--
-- Params
--   rounds   how many times the experts are asked (each round sees the previous majority)
--
-- Events
--   round.started {round}
--
-- Result (ctx:done)
--   summary, recommendation, consensus, dissent, positions {expert, name, position,
--   confidence}, rounds
local M = {
  name = "echo",
  description = "Every expert answers once in parallel; the majority position wins",
  consensus = "majority",
  start = "ask",
  params = {
    rounds = { type = "integer", default = 1, min = 1, max = 5, description = "Rounds of asking" },
  },
  nodes = {},
}

local SCHEMA = {
  type = "object",
  required = { "position", "confidence", "reason" },
  properties = {
    position = { type = "string", enum = { "yes", "no", "depends" } },
    confidence = { type = "number", minimum = 0, maximum = 1 },
    reason = { type = "string" },
  },
}

local function prompt_for(ctx, expert)
  local p = ctx.question .. "\nAnswer as " .. expert.role .. "."
  if ctx.state.previous then
    p = p .. "\nThe previous majority was: " .. ctx.state.previous
  end
  return p
end

local function ballots_of(ctx, answers)
  local ballots = {}
  for i, a in ipairs(answers) do
    if a.data then
      local e = ctx.experts[i]
      ballots[#ballots + 1] = {
        expert = e.id, name = e.name, weight = e.weight or 1,
        position = a.data.position, confidence = a.data.confidence, reason = a.data.reason,
      }
    end
  end
  return ballots
end

M.nodes.ask = function(ctx)
  local round = (ctx.state.round or 0) + 1
  ctx.state.round = round
  ctx:emit("round.started", { round = round })
  local answers = ctx:ask_all(ctx.experts, function(e) return prompt_for(ctx, e) end,
    { schema = SCHEMA, round = round })
  ctx.state.ballots = ballots_of(ctx, answers)
  return "count"
end

M.nodes.count = function(ctx)
  local result = ctx:consensus(nil, ctx.state.ballots, {})
  ctx.state.previous = result.position
  if ctx.state.round < ctx.params.rounds then
    return "ask"
  end
  return "finish"
end

M.nodes.finish = function(ctx)
  local result = ctx:consensus(nil, ctx.state.ballots, {})
  local positions = {}
  for _, b in ipairs(ctx.state.ballots) do
    positions[#positions + 1] = { expert = b.expert, name = b.name, position = b.position,
      confidence = b.confidence }
  end
  return ctx:done({
    summary = ("%d experts answered; the majority says %s"):format(#positions,
      tostring(result.position)),
    recommendation = tostring(result.position),
    consensus = result,
    dissent = result.dissent or {},
    positions = positions,
    rounds = ctx.state.round,
  })
end

return M
