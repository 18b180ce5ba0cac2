-- structured: a moderated agenda.
--
-- The method: the moderator walks the panel through an agenda (for a
-- regulatory strategy: context, evidence, risks, recommendation). Section by
-- section every expert gives their view, then the moderator synthesises the
-- section before the panel moves on, so later sections build on earlier
-- conclusions. After the last section every expert casts a ballot on the
-- options and the moderator writes the overall synthesis.
--
-- Params
--   sections   agenda, in order (1..12 items)
--   options    positions for the final ballot (2..8 items)
--   moderator  expert id of the moderator; "" = the expert whose role mentions
--              chair/moderator, else the first expert. If the moderator fails,
--              the next expert takes over (noted in the result).
--   max_words  length guidance for each contribution
--
-- Events
--   round.started        {round, stage = "section"|"vote", section}
--   section.synthesised  {index, section, moderator, text, contributors, missing}
--
-- Result (ctx:done)
--   summary, recommendation, consensus, dissent, positions, rounds,
--   sections = { {section, synthesis, moderator} }, excluded = { {expert, name, error} },
--   moderator (who wrote the final synthesis)
local M = {
  name = "structured",
  description = "Moderated agenda: experts address each section in order, the moderator synthesises each section and the whole",
  consensus = "majority",
  start = "section",
  nodes = {},
  params = {
    sections = { type = "array", default = { "context", "evidence", "risks", "recommendation" }, min_items = 1,
                 max_items = 12, description = "Agenda sections, in order" },
    options = { type = "array", default = { "proceed", "proceed with conditions", "do not proceed" }, min_items = 2,
                max_items = 8, description = "Positions offered in the final ballot" },
    moderator = { type = "string", default = "", description = "Expert id of the moderator (empty: chair role or first expert)" },
    max_words = { type = "integer", default = 150, min = 20, max = 1000, description = "Length guidance per contribution" },
  },
}

-- Moderator first, then everyone else in roster order (the fallbacks).
local function moderators(ctx)
  local first = panel.moderator(ctx.experts, ctx.params.moderator)
  local list = { first }
  for _, e in ipairs(ctx.experts) do
    if e ~= first then
      list[#list + 1] = e
    end
  end
  return list
end

-- Asks the moderator, falling back down the list; returns result, expert.
local function ask_moderator(ctx, prompt, opts)
  local last
  for _, e in ipairs(moderators(ctx)) do
    local r = ctx:ask(e, prompt, opts)
    if not r.error and (not opts.schema or type(r.data) == "table") then
      return r, e
    end
    ctx:log("warn", "moderator " .. e.id .. " failed: " .. tostring(r.error or "invalid answer"))
    last = r
  end
  return last, nil
end

local function agenda_so_far(ctx)
  local lines = {}
  for _, s in ipairs(ctx.state.sections or {}) do
    lines[#lines + 1] = "## " .. s.section .. "\n" .. s.synthesis
  end
  return #lines > 0 and ("Conclusions so far:\n" .. table.concat(lines, "\n\n") .. "\n\n") or ""
end

function M.nodes.section(ctx)
  local i = ctx.state.index or 1
  local section = ctx.params.sections[i]
  ctx:emit("round.started", { round = i, stage = "section", section = section })
  local prompt = string.format("Question: %s\n\n%sAgenda item %d of %d: %s.\nGive your view on this item only, in at most %d words.",
    ctx.question, agenda_so_far(ctx), i, #ctx.params.sections, section, ctx.params.max_words)
  local results = ctx:ask_all(ctx.experts, prompt, { round = i })
  local views, contributors, missing = {}, json.array(), json.array()
  for k, r in ipairs(results) do
    local e = ctx.experts[k]
    if r.error or type(r.text) ~= "string" or r.text == "" then
      missing[#missing + 1] = e.id
    else
      contributors[#contributors + 1] = e.id
      views[#views + 1] = "- " .. (e.role or "expert") .. ": " .. r.text
    end
  end
  local synthesis, by = "No expert contributed to this item.", nil
  if #views > 0 then
    local r, mod = ask_moderator(ctx, string.format(
      "You moderate a panel on: %s\n\nAgenda item: %s\nContributions:\n%s\n\nSynthesise this item in a short paragraph: agreements, disagreements, open points.",
      ctx.question, section, table.concat(views, "\n")), { round = i })
    if mod then
      synthesis, by = r.text, mod.id
    else
      synthesis = table.concat(views, "\n") -- nobody could moderate: keep the raw views
    end
  end
  ctx:emit("section.synthesised", { index = i, section = section, moderator = by, text = synthesis,
                                    contributors = contributors, missing = missing })
  ctx.state.sections = ctx.state.sections or json.array()
  ctx.state.sections[i] = { section = section, synthesis = synthesis, moderator = by }
  ctx.state.index = i + 1
  return i < #ctx.params.sections and "section" or "vote"
end

function M.nodes.vote(ctx)
  local round = #ctx.params.sections + 1
  ctx:emit("round.started", { round = round, stage = "vote" })
  local options = ctx.params.options
  local prompt = string.format("Question: %s\n\n%sCast your ballot.\nOptions: %s",
    ctx.question, agenda_so_far(ctx), table.concat(options, " | "))
  local results = ctx:ask_all(ctx.experts, prompt, { round = round, schema = panel.ballot_schema(options) })
  local excluded = json.array()
  local ballots, positions = panel.collect_ballots(results, ctx.experts, options, excluded)
  ctx.state.consensus = ctx:consensus(nil, ballots, { options = options })
  ctx.state.positions, ctx.state.excluded, ctx.state.rounds = positions, excluded, round
  return "finish"
end

function M.nodes.finish(ctx)
  local c = ctx.state.consensus
  local r, mod = ask_moderator(ctx, string.format(
    "You moderate a panel on: %s\n\n%sThe ballot gave '%s' with agreement %.0f%%.\nWrite the overall synthesis: a summary and a one-paragraph recommendation.",
    ctx.question, agenda_so_far(ctx), tostring(c.position), 100 * c.level),
    { round = ctx.state.rounds, schema = { type = "object", required = { "summary", "recommendation" },
      properties = { summary = { type = "string" }, recommendation = { type = "string" } } } })
  local summary, recommendation
  if mod and type(r.data.summary) == "string" and type(r.data.recommendation) == "string" then
    summary, recommendation = r.data.summary, r.data.recommendation
  else
    summary = string.format("%d agenda items discussed; the panel favours '%s' (agreement %.0f%%).",
      #ctx.params.sections, tostring(c.position), 100 * c.level)
    recommendation = c.position and ("Recommended: " .. c.position) or "No recommendation: no valid ballots."
  end
  if #ctx.state.excluded > 0 then
    summary = summary .. string.format(" (%d expert(s) excluded: no valid ballot.)", #ctx.state.excluded)
  end
  return ctx:done({
    summary = summary,
    recommendation = recommendation,
    consensus = c,
    dissent = c.dissent,
    positions = ctx.state.positions,
    rounds = ctx.state.rounds,
    sections = ctx.state.sections,
    excluded = ctx.state.excluded,
    moderator = mod and mod.id or nil,
  })
end

return M
