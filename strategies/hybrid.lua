-- hybrid: AI experts deliberate, a human weighs in at defined points.
--
-- The method: the experts give first positions; the human sees them and is
-- asked where they stand (checkpoint 1). The experts then deliberate a second
-- round seeing the others' positions, the human's included, as a peer's.
-- Before the decision the human sees the revised positions and gives a final
-- position (checkpoint 2). The human's final input is a ballot like any
-- expert's (with params.human_weight), so the consensus is over the whole
-- panel, human included.
--
-- Human input (from ctx:await_input) may be a table
-- { position = "...", confidence = 0..1, text = "..." } or a bare string. A
-- position matching an option (case-insensitive) is used; otherwise free text
-- is classified into an option by the moderator expert. Input with no usable
-- position ({ skip = true }, empty text, unclassifiable) leaves the human out
-- of the ballot; the result says so.
--
-- Params
--   options               positions (2..8)
--   ask_after_first_round checkpoint 1 on/off
--   ask_before_decision   checkpoint 2 on/off
--   human_name            how the human is shown to the experts
--   human_weight          weight of the human's ballot (0..10)
--   human_confidence      confidence used when the human gives none
--
-- Events
--   round.started   {round, stage = "first"|"second"}
--   human.counted   {stage, position, confidence, interpreted}
--   human.skipped   {stage, reason}
--
-- Result (ctx:done)
--   summary, recommendation, consensus, dissent, positions (human last, with
--   human = true), rounds, human {input, position, confidence, counted},
--   first_round (consensus of round 1), excluded
local M = {
  name = "hybrid",
  description = "AI experts deliberate; a human weighs in after the first round and before the decision and votes as a participant",
  consensus = "weighted",
  start = "first_round",
  nodes = {},
  params = {
    options = { type = "array", default = { "proceed", "proceed with conditions", "do not proceed" }, min_items = 2,
                max_items = 8, description = "Positions" },
    ask_after_first_round = { type = "boolean", default = true, description = "Ask the human after the first round" },
    ask_before_decision = { type = "boolean", default = true, description = "Ask the human before the final decision" },
    human_name = { type = "string", default = "Human participant", description = "How the human is shown to the experts" },
    human_weight = { type = "number", default = 1, min = 0, max = 10, description = "Weight of the human's ballot" },
    human_confidence = { type = "number", default = 0.8, min = 0, max = 1, description = "Confidence when the human gives none" },
  },
}

local HUMAN_ID = "human"

-- The option a human's words name: exact match first, else the longest
-- option the text contains ("proceed with conditions" beats "proceed").
local function match_option(text, options)
  local t = panel.trim(text):lower()
  local best
  for _, o in ipairs(options) do
    if t == o:lower() then
      return o
    end
    if t:find(o:lower(), 1, true) and (not best or #o > #best) then
      best = o
    end
  end
  return best
end

-- Turns the human's input into a ballot, or nil and the reason it cannot count.
local function human_ballot(ctx, input, stage)
  local options = ctx.params.options
  if type(input) == "string" then
    input = { text = input }
  end
  if type(input) ~= "table" or input.skip then
    return nil, "the human declined"
  end
  local text = type(input.text) == "string" and input.text or (type(input.reason) == "string" and input.reason or "")
  local position = type(input.position) == "string" and match_option(input.position, options) or nil
  local interpreted = false
  if not position and text ~= "" then
    position = match_option(text, options)
  end
  if not position and text:find("%S") then
    local r = ctx:ask(panel.moderator(ctx.experts), string.format("A human participant on the panel about \"%s\" said:\n\"%s\"\n\nWhich option does this statement support?\nOptions: %s",
      ctx.question, text, table.concat(options, " | ")), { schema = panel.ballot_schema(options) })
    if not r.error and type(r.data) == "table" and panel.contains(options, r.data.position) then
      position, interpreted = r.data.position, true
    end
  end
  if not position then
    return nil, "the human's input names no option"
  end
  local conf = panel.finite(input.confidence) and math.max(0, math.min(1, input.confidence)) or ctx.params.human_confidence
  return panel.as_ballot({ expert = HUMAN_ID, name = ctx.params.human_name, position = position, confidence = conf,
                     weight = ctx.params.human_weight, reason = text, human = true, stage = stage,
                     interpreted = interpreted }, options)
end

local function positions_text(ctx, ballots)
  local lines = {}
  for _, b in ipairs(ballots) do
    local who = b.human and ctx.params.human_name or b.name or b.expert
    lines[#lines + 1] = panel.position_line(who, b)
  end
  return #lines > 0 and table.concat(lines, "\n") or "(no valid positions)"
end

local function round_of(ctx, round, prompt)
  local results = ctx:ask_all(ctx.experts, prompt, { round = round, schema = panel.ballot_schema(ctx.params.options) })
  return (panel.collect_ballots(results, ctx.experts, ctx.params.options, ctx.state.excluded, { round = round }))
end

local function take_input(ctx, stage, prompt)
  local input = ctx:await_input({ kind = stage, prompt = prompt, options = ctx.params.options, schema = {
    type = "object", properties = { position = { type = "string", enum = ctx.params.options },
                                    confidence = { type = "number", minimum = 0, maximum = 1 },
                                    text = { type = "string" } } } })
  local b, why = human_ballot(ctx, input, stage)
  ctx.state.human_inputs[#ctx.state.human_inputs + 1] = { stage = stage, input = input, counted = b ~= nil, reason = why }
  if b then
    ctx.state.human = b
    ctx:emit("human.counted", { stage = stage, position = b.position, confidence = b.confidence, interpreted = b.interpreted })
  else
    ctx:emit("human.skipped", { stage = stage, reason = why })
  end
end

function M.nodes.first_round(ctx)
  ctx.state.excluded, ctx.state.human_inputs = json.array(), json.array()
  ctx:emit("round.started", { round = 1, stage = "first" })
  local ballots = round_of(ctx, 1, string.format("Question: %s\nGive your position, your confidence (0-1) and your reason.\nOptions: %s",
    ctx.question, table.concat(ctx.params.options, " | ")))
  ctx.state.first = ballots
  ctx.state.first_consensus = ctx:consensus(nil, ballots, { options = ctx.params.options })
  return ctx.params.ask_after_first_round and "human_review" or "second_round"
end

function M.nodes.human_review(ctx)
  local c = ctx.state.first_consensus
  take_input(ctx, "review", string.format("The panel's first round on \"%s\":\n%s\n\nLeaning: %s (agreement %.0f%%). Where do you stand, and why?\nOptions: %s",
    ctx.question, positions_text(ctx, ctx.state.first), tostring(c.position), 100 * c.level,
    table.concat(ctx.params.options, " | ")))
  return "second_round"
end

function M.nodes.second_round(ctx)
  ctx:emit("round.started", { round = 2, stage = "second" })
  local peers = {}
  for _, b in ipairs(ctx.state.first) do
    peers[#peers + 1] = b
  end
  if ctx.state.human then
    peers[#peers + 1] = ctx.state.human
  end
  ctx.state.second = round_of(ctx, 2, string.format("Question: %s\n\nThe panel's positions so far (%s is a human participant):\n%s\n\nReconsider in the light of these views and give your position, confidence and reason.\nOptions: %s",
    ctx.question, ctx.params.human_name, positions_text(ctx, peers), table.concat(ctx.params.options, " | ")))
  return ctx.params.ask_before_decision and "human_decision" or "finish"
end

function M.nodes.human_decision(ctx)
  take_input(ctx, "decision", string.format("Before the decision on \"%s\", the experts now hold:\n%s\n\nWhat is your final position?\nOptions: %s",
    ctx.question, positions_text(ctx, ctx.state.second), table.concat(ctx.params.options, " | ")))
  return "finish"
end

function M.nodes.finish(ctx)
  local st = ctx.state
  local by_expert = {}
  for _, b in ipairs(st.second) do
    by_expert[b.expert] = b
  end
  local ballots, positions = panel.final_positions(ctx.experts, by_expert, "no valid answer in round 2")
  local h = st.human
  if h then
    ballots[#ballots + 1] = h
    positions[#positions + 1] = { expert = HUMAN_ID, name = h.name, position = h.position, confidence = h.confidence,
                                  reason = h.reason, human = true }
  end
  local c = ctx:consensus(nil, ballots, { options = ctx.params.options })
  local asked = #st.human_inputs
  local summary = string.format("Two rounds of deliberation with %d expert ballot(s)%s. The panel favours '%s' (agreement %.0f%%).",
    #ballots - (h and 1 or 0), h and (" and the human's ballot (" .. h.position .. ")") or
      (asked > 0 and "; the human's input could not be counted" or ""), tostring(c.position), 100 * c.level)
  if #st.excluded > 0 then
    summary = summary .. string.format(" %d answer(s) excluded as failed or invalid.", #st.excluded)
  end
  local recommendation = c.position and ("Recommended: " .. c.position) or "No recommendation: no valid ballots."
  if h and c.position and h.position ~= c.position then
    recommendation = recommendation .. string.format(" (the human participant prefers '%s')", h.position)
  end
  return ctx:done({
    summary = summary,
    recommendation = recommendation,
    consensus = c,
    dissent = c.dissent,
    positions = positions,
    rounds = 2,
    human = { inputs = st.human_inputs, position = h and h.position or nil, confidence = h and h.confidence or nil,
              counted = h ~= nil },
    first_round = st.first_consensus,
    excluded = st.excluded,
  })
end

return M
