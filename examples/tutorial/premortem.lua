-- premortem: imagine the plan has failed, then explain why.
--
-- The method (Gary Klein's pre-mortem): each expert assumes the plan was
-- carried out and failed badly, and writes the most likely reasons. The
-- panel then votes on which failure causes are most plausible, and the
-- moderator proposes a safeguard against each of the top causes.
--
-- Params
--   causes   failure causes each expert writes (1..5)
--   top      causes that get a safeguard (1..5)
--
-- Events
--   round.started     {round, stage = "imagine"|"vote"}
--   premortem.causes  {count}
--   premortem.ranked  {order}
--
-- Result (ctx:done)
--   summary, recommendation, consensus (Borda over causes), dissent,
--   positions, rounds, causes {id, text, by}, safeguards {id, cause, safeguard}
local M = {
  name = "premortem",
  description = "Imagine the plan failed; rank the likeliest causes; propose safeguards",
  consensus = "borda",
  start = "imagine",
  nodes = {},
  params = {
    causes = { type = "integer", default = 2, min = 1, max = 5, description = "Failure causes per expert" },
    top = { type = "integer", default = 3, min = 1, max = 5, description = "Causes that get a safeguard" },
  },
}

-- Round 1: every expert writes failure causes, concurrently.
function M.nodes.imagine(ctx)
  ctx:emit("round.started", { round = 1, stage = "imagine" })
  local results = ctx:ask_all(ctx.experts,
    "It is two years from now. This plan was carried out and failed badly: " .. ctx.question ..
    "\nWrite the most likely reasons it failed, one sentence each.",
    { round = 1, schema = { type = "object", required = { "causes" }, properties = {
      causes = { type = "array", items = { type = "string", maxLength = 200 },
                 minItems = 1, maxItems = ctx.params.causes } } } })
  local causes, failed = json.array(), json.array()
  for i, r in ipairs(results) do
    local list = not r.error and type(r.data) == "table" and type(r.data.causes) == "table" and r.data.causes or {}
    for _, text in ipairs(list) do
      if type(text) == "string" and text:find("%S") and #causes < 26 then
        causes[#causes + 1] = { id = "C" .. (#causes + 1), text = text, by = ctx.experts[i].id }
      end
    end
    if #list == 0 then
      failed[#failed + 1] = { expert = ctx.experts[i].id, error = r.error or "no valid causes" }
    end
  end
  ctx.state.causes, ctx.state.excluded = causes, failed
  ctx:emit("premortem.causes", { count = #causes })
  return #causes > 0 and "vote" or "finish"
end

-- Round 2: every expert ranks all causes, most plausible first.
function M.nodes.vote(ctx)
  ctx:emit("round.started", { round = 2, stage = "vote" })
  local ids, lines = {}, {}
  for i, c in ipairs(ctx.state.causes) do
    ids[i], lines[i] = c.id, c.id .. ": " .. c.text
  end
  local results = ctx:ask_all(ctx.experts,
    "Plan: " .. ctx.question .. "\nPossible causes of failure:\n" .. table.concat(lines, "\n") ..
    "\nRank them from most to least plausible.",
    { round = 2, schema = { type = "object", required = { "ranking" }, properties = {
      ranking = { type = "array", items = { type = "string", enum = ids }, minItems = #ids, maxItems = #ids } } } })
  local ballots, positions = {}, {}
  for i, r in ipairs(results) do
    local e = ctx.experts[i]
    if not r.error and type(r.data) == "table" and type(r.data.ranking) == "table" and #r.data.ranking > 0 then
      ballots[#ballots + 1] = { expert = e.id, name = e.name, ranking = r.data.ranking, position = r.data.ranking[1] }
      positions[#positions + 1] = { expert = e.id, name = e.name, position = r.data.ranking[1] }
    else
      positions[#positions + 1] = { expert = e.id, name = e.name, excluded = true, error = r.error or "invalid ranking" }
    end
  end
  local c = ctx:consensus(nil, ballots, { options = ids })
  ctx.state.consensus, ctx.state.positions = c, positions
  ctx.state.order = c.details.order or {}
  ctx:emit("premortem.ranked", { order = ctx.state.order })
  return "finish"
end

local function cause(ctx, id)
  for _, c in ipairs(ctx.state.causes) do
    if c.id == id then
      return c
    end
  end
end

-- Safeguards for the top causes, then the result.
function M.nodes.finish(ctx)
  local st, safeguards = ctx.state, json.array()
  local moderator = ctx.experts[1]
  for i = 1, math.min(ctx.params.top, #(st.order or {})) do
    local c = cause(ctx, st.order[i])
    local r = ctx:ask(moderator, "Plan: " .. ctx.question .. "\nLikely cause of failure: " .. c.text ..
      "\nPropose one concrete safeguard.", { round = 2 })
    safeguards[#safeguards + 1] = { id = c.id, cause = c.text, safeguard = r.error and "(none: moderator failed)" or r.text }
  end
  local consensus = st.consensus or ctx:consensus(nil, {}, {})
  local positions = st.positions or {}
  if #positions == 0 then
    for _, e in ipairs(ctx.experts) do
      positions[#positions + 1] = { expert = e.id, name = e.name, excluded = true, error = "no valid causes" }
    end
  end
  local top = safeguards[1] and safeguards[1].cause or "none"
  return ctx:done({
    summary = string.format("%d failure cause(s) imagined; the most plausible: %s", #st.causes, top),
    recommendation = #safeguards > 0 and ("Safeguard first against: " .. top) or "No causes to guard against.",
    consensus = consensus,
    dissent = consensus.dissent,
    positions = positions,
    rounds = st.consensus and 2 or 1,
    causes = st.causes,
    safeguards = safeguards,
    excluded = st.excluded,
  })
end

return M
