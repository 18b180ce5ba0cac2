-- socratic: a moderator probes the panel's assumptions over rounds.
--
-- The method: experts state a position and the assumptions it rests on. Each
-- round the moderator picks an assumption nobody has examined yet and asks a
-- probing follow-up question about it (what would have to be true, what if
-- it is false). Every expert answers the question and may revise their
-- position, surfacing any new assumptions their answer relies on. The
-- dialogue ends when a round surfaces no new assumption (or none is left to
-- probe), or at the round limit. Assumptions are de-duplicated by word
-- overlap so a re-worded assumption does not count as new.
--
-- Params
--   rounds      probing rounds after the opening statements (1..8); the
--               opening is round 1, probes are rounds 2, 3, ...
--   options     positions the experts take (2..8)
--   moderator   expert id ("" = role mentions moderator/chair, else first)
--   similarity  Jaccard threshold at which two assumptions are the same
--
-- Events
--   round.started        {round, stage = "opening"|"probe"}
--   assumption.surfaced  {id, text, raised_by, round}
--   assumption.probed    {id, assumption, question, round, moderator}
--   position.revised     {expert, round, from, to}
--   socratic.stopped     {round, reason = "no_new_assumptions"|"nothing_to_probe"|"round_limit"}
--
-- Result (ctx:done)
--   summary, recommendation, consensus, dissent, positions, rounds,
--   assumptions {id, text, raised_by, round, probed_in, question},
--   revisions {expert, round, from, to}, stop_reason, excluded
local M = {
  name = "socratic",
  description = "A moderator probes assumptions with follow-up questions; experts answer and revise until no new assumption surfaces",
  consensus = "weighted",
  start = "opening",
  nodes = {},
  params = {
    rounds = { type = "integer", default = 4, min = 1, max = 8, description = "Probing rounds after the opening" },
    options = { type = "array", default = { "proceed", "proceed with conditions", "do not proceed" }, min_items = 2,
                max_items = 8, description = "Positions the experts take" },
    moderator = { type = "string", default = "", description = "Expert id of the moderator" },
    similarity = { type = "number", default = 0.6, min = 0, max = 1, description = "Jaccard threshold for the same assumption" },
  },
}

local STOP = panel.word_list("a an and are as at be by for from in into is it of on or our the their this to we will with that")

-- Opening answers must name at least one assumption (every position rests on
-- some); later answers may add none, which is what ends the dialogue.
local function answer_schema(options, min_assumptions)
  return {
    type = "object",
    required = { "position", "confidence", "reason", "assumptions" },
    properties = {
      position = { type = "string", enum = options },
      confidence = { type = "number", minimum = 0, maximum = 1 },
      reason = { type = "string", maxLength = 800 },
      assumptions = { type = "array", items = { type = "string", maxLength = 200 }, minItems = min_assumptions,
                       maxItems = 3 },
    },
  }
end

-- The ballot and the assumptions of an answer, or nil and why it cannot count.
local function ballot_of(result, expert, options)
  local b, why = panel.ballot_of(result, expert, options)
  if not b then
    return nil, why
  end
  return b, type(result.data.assumptions) == "table" and result.data.assumptions or {}
end

-- Records the new assumptions among `list`; returns how many were new.
local function register(ctx, list, by, round)
  local st, added = ctx.state, 0
  for _, text in ipairs(list) do
    if type(text) == "string" and text:find("%S") then
      local known = false
      for _, a in ipairs(st.assumptions) do
        known = known or panel.similarity(a.text, text, STOP) >= ctx.params.similarity
      end
      if not known then
        local a = { id = "A" .. (#st.assumptions + 1), text = text, raised_by = by, round = round }
        st.assumptions[#st.assumptions + 1] = a
        added = added + 1
        ctx:emit("assumption.surfaced", { id = a.id, text = a.text, raised_by = by, round = round })
      end
    end
  end
  return added
end

-- Asks everyone, records ballots, revisions and assumptions; returns new count.
local function collect(ctx, round, prompt)
  local options, st = ctx.params.options, ctx.state
  local results = ctx:ask_all(ctx.experts, prompt, { round = round, schema = answer_schema(options, round == 1 and 1 or 0) })
  local added = 0
  for k, r in ipairs(results) do
    local e = ctx.experts[k]
    local b, assumptions = ballot_of(r, e, options)
    if b then
      local before = st.ballots[e.id]
      if before and before.position ~= b.position then
        st.revisions[#st.revisions + 1] = { expert = e.id, round = round, from = before.position, to = b.position }
        ctx:emit("position.revised", { expert = e.id, round = round, from = before.position, to = b.position })
      end
      st.ballots[e.id] = b
      added = added + register(ctx, assumptions, e.id, round)
    else
      st.excluded[#st.excluded + 1] = { expert = e.id, name = e.name, round = round, error = assumptions }
    end
  end
  return added
end

local function positions_text(ctx)
  local lines = {}
  for _, e in ipairs(ctx.experts) do
    local b = ctx.state.ballots[e.id]
    if b then
      lines[#lines + 1] = panel.position_line(e.role or e.id, b)
    end
  end
  return table.concat(lines, "\n")
end

function M.nodes.opening(ctx)
  ctx.state.assumptions, ctx.state.ballots = json.array(), {}
  ctx.state.revisions, ctx.state.excluded = json.array(), json.array()
  ctx.state.round = 1
  ctx:emit("round.started", { round = 1, stage = "opening" })
  collect(ctx, 1, string.format("Question: %s\nState your position, your confidence (0-1), your reasoning, and the assumptions your position depends on.\nOptions: %s",
    ctx.question, table.concat(ctx.params.options, " | ")))
  return "probe"
end

local function stop(ctx, round, reason)
  ctx.state.stop_reason = reason
  ctx:emit("socratic.stopped", { round = round, reason = reason })
  return "finish"
end

function M.nodes.probe(ctx)
  local st = ctx.state
  local open = {}
  for _, a in ipairs(st.assumptions) do
    if not a.probed_in then
      open[#open + 1] = a.id
    end
  end
  if #open == 0 then
    return stop(ctx, st.round, "nothing_to_probe")
  end
  local round = st.round + 1
  st.round = round
  ctx:emit("round.started", { round = round, stage = "probe" })
  local listing = {}
  for _, a in ipairs(st.assumptions) do
    if not a.probed_in then
      listing[#listing + 1] = a.id .. ": " .. a.text
    end
  end
  local mod = panel.moderator(ctx.experts, ctx.params.moderator)
  local r = ctx:ask(mod, string.format("You moderate a Socratic dialogue on: %s\nCurrent positions:\n%s\n\nUnexamined assumptions:\n%s\n\nPick the assumption whose failure would most change the answer and ask one probing question about it.",
    ctx.question, positions_text(ctx), table.concat(listing, "\n")), { round = round, schema = {
      type = "object", required = { "assumption", "question" },
      properties = { assumption = { type = "string", enum = open }, question = { type = "string", maxLength = 400 } } } })
  local target, question = open[1], nil
  if not r.error and type(r.data) == "table" and panel.contains(open, r.data.assumption) then
    target = r.data.assumption
  end
  if not r.error and type(r.data) == "table" and type(r.data.question) == "string" and r.data.question ~= "" then
    question = r.data.question
  end
  local a
  for _, x in ipairs(st.assumptions) do
    if x.id == target then
      a = x
    end
  end
  -- A moderator that fails still leaves a useful question: the classic one.
  question = question or ("What if this assumption is false: " .. a.text .. "?")
  a.probed_in, a.question = round, question
  ctx:emit("assumption.probed", { id = a.id, assumption = a.text, question = question, round = round, moderator = mod.id })
  local added = collect(ctx, round, string.format("Question: %s\nThe moderator probes the assumption \"%s\":\n%s\n\nAnswer the probe, then restate your position (revise it if the probe changes your view), your confidence, your reasoning, and any further assumptions your answer relies on.\nOptions: %s",
    ctx.question, a.text, question, table.concat(ctx.params.options, " | ")))
  if added == 0 then
    return stop(ctx, round, "no_new_assumptions")
  end
  if round - 1 >= ctx.params.rounds then
    return stop(ctx, round, "round_limit")
  end
  return "probe"
end

function M.nodes.finish(ctx)
  local st = ctx.state
  local ballots, positions = panel.final_positions(ctx.experts, st.ballots, "no valid answer")
  local c = ctx:consensus(nil, ballots, { options = ctx.params.options })
  local probed = 0
  for _, a in ipairs(st.assumptions) do
    if a.probed_in then
      probed = probed + 1
    end
  end
  local summary = string.format("%d probing round(s) examined %d of %d surfaced assumption(s); %d position change(s). The panel leans '%s' (agreement %.0f%%).",
    st.round - 1, probed, #st.assumptions, #st.revisions, tostring(c.position), 100 * c.level)
  if #st.excluded > 0 then
    summary = summary .. string.format(" %d answer(s) excluded as failed or invalid.", #st.excluded)
  end
  local untested = {}
  for _, a in ipairs(st.assumptions) do
    if not a.probed_in then
      untested[#untested + 1] = a.text
    end
  end
  local recommendation = c.position and ("Recommended: " .. c.position) or "No recommendation: no valid answers."
  if #untested > 0 and c.position then
    local shown = { table.unpack(untested, 1, math.min(3, #untested)) }
    recommendation = recommendation .. ". Still untested: " .. table.concat(shown, "; ")
      .. (#untested > 3 and string.format(" (and %d more)", #untested - 3) or "")
  end
  return ctx:done({
    summary = summary,
    recommendation = recommendation,
    consensus = c,
    dissent = c.dissent,
    positions = positions,
    rounds = st.round,
    assumptions = st.assumptions,
    revisions = st.revisions,
    stop_reason = st.stop_reason,
    excluded = st.excluded,
  })
end

return M
