-- council: first opinions, anonymised peer review, a chair's synthesis.
--
-- The method: every expert answers independently and in parallel (no
-- anchoring). The answers are then shown back anonymised as "Response A",
-- "Response B", ... in an order that does not follow the roster, and each
-- expert ranks them on accuracy and insight. Every reviewer sees the same
-- anonymised set (so one schema serves the concurrent ask_all) and its own
-- answer is removed from its ranking before aggregation: a reviewer never
-- scores itself.
-- The rankings are aggregated (Borda by default; Kendall's W reports how much
-- the reviewers agree). Finally the chair reads the answers, the peer ranking
-- and the vote and writes the synthesis. If the chair fails, a fallback expert
-- chairs; if both fail, the top-ranked answer stands in. Any such shortfall
-- marks the result degraded = true with the reason.
--
-- Params
--   options         positions each opinion must take (2..8)
--   chair           expert id of the chair ("" = role mentions chair, else first;
--                   an id not on the panel fails it before the first round)
--   fallback_chair  expert id of the fallback ("" = best peer-ranked other expert)
--   peer_review     run the anonymised review (false skips it)
--   aggregation     "borda" | "kendall": how the review orders the answers
--   quorum          share of experts that must give a valid opinion, below
--                   which the result is degraded
--
-- Events
--   round.started      {round, stage = "opinions"|"review"|"synthesis"}
--   council.opinions   {valid, excluded}
--   council.review     {order (labels), agreement (Kendall's W), reviewers}
--   council.revealed   {labels = {label = expert id}}
--   council.chair_fallback {chair, fallback, error}
--   council.synthesis  {chair, degraded}
--
-- Result (ctx:done)
--   summary, recommendation, consensus, dissent, positions, rounds, chair,
--   peer_review {order (expert ids, best first), labels, borda, kendall},
--   degraded, degraded_reason, excluded
local M = {
  name = "council",
  description = "Parallel first opinions, anonymised peer ranking, chair synthesis with a fallback chair",
  consensus = "majority",
  start = "opinions",
  nodes = {},
  params = {
    options = { type = "array", default = { "proceed", "proceed with conditions", "do not proceed" }, min_items = 2,
                max_items = 8, description = "Positions each opinion must take" },
    chair = { type = "string", default = "", description = "Expert id of the chair (empty: chair role or first expert)" },
    fallback_chair = { type = "string", default = "", description = "Expert id of the fallback chair (empty: best peer-ranked)" },
    peer_review = { type = "boolean", default = true, description = "Run the anonymised peer review" },
    aggregation = { type = "string", default = "borda", enum = { "borda", "kendall" }, description = "How peer rankings are aggregated" },
    quorum = { type = "number", default = 0.5, min = 0, max = 1, description = "Valid-opinion share below which the result is degraded" },
  },
}

local function label(i)
  local letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  local l = letters:sub((i - 1) % 26 + 1, (i - 1) % 26 + 1)
  return "Response " .. l .. (i > 26 and tostring((i - 1) // 26) or "")
end

local function opinion_schema(options)
  return {
    type = "object",
    required = { "answer", "position", "confidence", "reason" },
    properties = {
      answer = { type = "string", maxLength = 2000 },
      position = { type = "string", enum = options },
      confidence = { type = "number", minimum = 0, maximum = 1 },
      reason = { type = "string", maxLength = 600 },
    },
  }
end

local function opinion_of(result, expert, options)
  local d, why = panel.choice_of(result, options)
  if not d then
    return nil, why
  end
  local text = type(d.answer) == "string" and d.answer ~= "" and d.answer or (type(d.reason) == "string" and d.reason or "")
  return { expert = expert.id, name = expert.name, position = d.position, confidence = d.confidence,
           weight = expert.weight or 1, reason = type(d.reason) == "string" and d.reason or "", answer = text }
end

-- Answers often sign themselves; strip every panellist's name so the label
-- is all a reviewer sees.
local function scrub(ctx, text)
  local names = {}
  for _, e in ipairs(ctx.experts) do
    names[#names + 1] = type(e.name) == "string" and e.name or ""
  end
  return panel.redact(text, names)
end

local function anonymised(ctx)
  local lines = {}
  for _, o in ipairs(ctx.state.opinions) do
    lines[#lines + 1] = string.format("%s (position: %s)\n%s", o.label, o.position, scrub(ctx, o.answer))
  end
  return table.concat(lines, "\n\n")
end

-- A chair named by id must sit on this panel: found out before the first
-- round, not by quietly seating someone else at the end.
local function check_named_chairs(ctx)
  for _, param in ipairs({ "chair", "fallback_chair" }) do
    local id = ctx.params[param]
    if id ~= "" and not panel.expert_by_id(ctx.experts, id) then
      error(string.format("param '%s' names '%s', who is not an expert of this panel", param, id), 0)
    end
  end
end

function M.nodes.opinions(ctx)
  check_named_chairs(ctx)
  ctx:emit("round.started", { round = 1, stage = "opinions" })
  local options = ctx.params.options
  local prompt = string.format("Question: %s\nAnswer it as an independent expert: your answer, the position you take, your confidence (0-1) and your main reason.\nOptions: %s",
    ctx.question, table.concat(options, " | "))
  local results = ctx:ask_all(ctx.experts, prompt, { round = 1, schema = opinion_schema(options) })
  local opinions, excluded = {}, json.array()
  for k, r in ipairs(results) do
    local o, why = opinion_of(r, ctx.experts[k], options)
    if o then
      opinions[#opinions + 1] = o
    else
      excluded[#excluded + 1] = { expert = ctx.experts[k].id, name = ctx.experts[k].name, error = why }
    end
  end
  -- Labels follow a panel-specific shuffle so "Response A" is not always the first expert.
  table.sort(opinions, function(a, b)
    local ha, hb = panel.fnv1a(ctx.panel_id .. a.expert), panel.fnv1a(ctx.panel_id .. b.expert)
    if ha ~= hb then
      return ha < hb
    end
    return a.expert < b.expert
  end)
  for i, o in ipairs(opinions) do
    o.label = label(i)
  end
  ctx.state.opinions, ctx.state.excluded, ctx.state.rounds = opinions, excluded, 1
  ctx:emit("council.opinions", { valid = #opinions, excluded = #excluded })
  if ctx.params.peer_review and #opinions >= 2 then
    return "review"
  end
  return "synthesis"
end

local function ranking_schema(labels)
  return {
    type = "object",
    required = { "ranking", "critique" },
    properties = {
      ranking = { type = "array", items = { type = "string", enum = labels }, minItems = #labels, maxItems = #labels },
      critique = { type = "string", maxLength = 600 },
    },
  }
end

-- The reviewer's ranking with its own label and anything unknown removed.
local function clean_ranking(data, labels, own)
  if type(data) ~= "table" or type(data.ranking) ~= "table" then
    return nil
  end
  local out, seen = {}, {}
  for _, l in ipairs(data.ranking) do
    if type(l) == "string" and l ~= own and panel.contains(labels, l) and not seen[l] then
      seen[l] = true
      out[#out + 1] = l
    end
  end
  return #out > 0 and out or nil
end

function M.nodes.review(ctx)
  ctx:emit("round.started", { round = 2, stage = "review" })
  ctx.state.rounds = 2
  local reviewers, labels, own = {}, {}, {}
  for _, o in ipairs(ctx.state.opinions) do
    reviewers[#reviewers + 1] = panel.expert_by_id(ctx.experts, o.expert)
    labels[#labels + 1] = o.label
    own[o.expert] = o.label
  end
  local prompt = string.format("Question: %s\n\nThe panel's answers, anonymised:\n\n%s\n\nRank all responses from most to least accurate and insightful, and give a one-line critique.",
    ctx.question, anonymised(ctx))
  local results = ctx:ask_all(reviewers, prompt, { round = 2, schema = ranking_schema(labels) })
  local ballots, failed = {}, json.array()
  for k, r in ipairs(results) do
    local e = reviewers[k]
    local ranking = not r.error and clean_ranking(r.data, labels, own[e.id]) or nil
    if ranking then
      ballots[#ballots + 1] = { expert = e.id, name = e.name, ranking = ranking,
                                reason = type(r.data.critique) == "string" and r.data.critique or "" }
    else
      failed[#failed + 1] = { expert = e.id, name = e.name, error = r.error or "review failed validation" }
    end
  end
  local borda = ctx:consensus("borda", ballots, { options = labels })
  local kendall = ctx:consensus("kendall", ballots, { options = labels })
  local order = ctx.params.aggregation == "kendall" and kendall.details.order or borda.details.order
  ctx.state.review = { order = order, borda = borda, kendall = kendall, failed = failed, reviewers = #ballots }
  ctx:emit("council.review", { order = order, agreement = kendall.level, reviewers = #ballots })
  local reveal = {}
  for _, o in ipairs(ctx.state.opinions) do
    reveal[o.label] = o.expert
  end
  ctx:emit("council.revealed", { labels = reveal })
  return "synthesis"
end

-- Chair, then fallback: explicit params first, then the chair role / the
-- best peer-ranked other expert.
local function chairs(ctx)
  local chair = ctx.params.chair ~= "" and panel.expert_by_id(ctx.experts, ctx.params.chair) or nil
  if not chair then
    for _, e in ipairs(ctx.experts) do
      if not chair and panel.role_has(e, { "chair" }) then
        chair = e
      end
    end
  end
  chair = chair or ctx.experts[1]
  local fallback = ctx.params.fallback_chair ~= "" and panel.expert_by_id(ctx.experts, ctx.params.fallback_chair) or nil
  if fallback == chair then
    fallback = nil
  end
  if not fallback then
    local by_label = {}
    for _, o in ipairs(ctx.state.opinions) do
      by_label[o.label] = o.expert
    end
    for _, l in ipairs(ctx.state.review and ctx.state.review.order or {}) do
      if not fallback and by_label[l] ~= chair.id then
        fallback = panel.expert_by_id(ctx.experts, by_label[l])
      end
    end
  end
  if not fallback then
    for _, e in ipairs(ctx.experts) do
      if not fallback and e.id ~= chair.id then
        fallback = e
      end
    end
  end
  return chair, fallback
end

local function synthesis_schema(options)
  return {
    type = "object",
    required = { "summary", "recommendation", "position", "confidence" },
    properties = {
      summary = { type = "string", maxLength = 3000 },
      recommendation = { type = "string", maxLength = 2000 },
      position = { type = "string", enum = options },
      confidence = { type = "number", minimum = 0, maximum = 1 },
    },
  }
end

local function valid_synthesis(r, options)
  local d = r.data
  return not r.error and type(d) == "table" and type(d.summary) == "string" and d.summary ~= ""
    and type(d.recommendation) == "string" and panel.contains(options, d.position)
end

local function ranked_experts(ctx)
  local by_label, out = {}, {}
  for _, o in ipairs(ctx.state.opinions) do
    by_label[o.label] = o
  end
  for _, l in ipairs(ctx.state.review and ctx.state.review.order or {}) do
    out[#out + 1] = by_label[l]
  end
  if #out == 0 then
    out = ctx.state.opinions
  end
  return out
end

-- Why the result is degraded, before the chair speaks: too few opinions.
local function shortfalls(ctx)
  local st, reasons = ctx.state, {}
  if #st.opinions == 0 then
    reasons[#reasons + 1] = "no expert gave a valid opinion"
  elseif #st.opinions < ctx.params.quorum * #ctx.experts then
    reasons[#reasons + 1] = string.format("only %d of %d experts gave a valid opinion", #st.opinions, #ctx.experts)
  end
  if ctx.params.peer_review and #st.opinions < 2 then
    reasons[#reasons + 1] = "peer review skipped: fewer than two valid opinions"
  end
  return reasons
end

-- The chair writes the synthesis; on failure the fallback does. Returns the
-- synthesis and who wrote it (nil, nil when neither could), adding to reasons.
local function chair_synthesis(ctx, prompt, round, reasons)
  local options = ctx.params.options
  local chair, fallback = chairs(ctx)
  local r = ctx:ask(chair, prompt, { round = round, schema = synthesis_schema(options) })
  if valid_synthesis(r, options) then
    return r.data, chair
  end
  local why = r.error or "answer failed validation"
  if not fallback then
    reasons[#reasons + 1] = string.format("chair %s failed (%s) and no fallback is available", chair.id, why)
    return nil, nil
  end
  ctx:emit("council.chair_fallback", { chair = chair.id, fallback = fallback.id, error = why })
  local r2 = ctx:ask(fallback, prompt, { round = round, schema = synthesis_schema(options) })
  if valid_synthesis(r2, options) then
    reasons[#reasons + 1] = string.format("chair %s failed (%s); fallback %s chaired", chair.id, why, fallback.id)
    return r2.data, fallback
  end
  reasons[#reasons + 1] = string.format("chair %s and fallback %s both failed", chair.id, fallback.id)
  return nil, nil
end

local function chair_prompt(ctx, consensus, ranked)
  local order_lines = {}
  for i, o in ipairs(ranked) do
    order_lines[i] = string.format("%d. %s", i, o.label)
  end
  return string.format("You chair a panel on: %s\n\nAnonymised answers:\n\n%s\n\nPeer ranking (best first):\n%s\n\nThe vote favours '%s' (agreement %.0f%%).\nWrite the council's synthesis: a summary that credits strong arguments and names real disagreement, a recommendation, the council's position and your confidence.\nOptions: %s",
    ctx.question, anonymised(ctx), table.concat(order_lines, "\n"), tostring(consensus.position),
    100 * consensus.level, table.concat(ctx.params.options, " | "))
end

local function positions_of(ctx)
  local by_expert, positions = {}, {}
  for _, o in ipairs(ctx.state.opinions) do
    by_expert[o.expert] = o
  end
  for _, e in ipairs(ctx.experts) do
    local o = by_expert[e.id]
    if o then
      local p = panel.position_of(e, o)
      p.label = o.label
      positions[#positions + 1] = p
    else
      positions[#positions + 1] = panel.excluded_position(e, "no valid opinion")
    end
  end
  return positions
end

local function review_of(ctx, ranked)
  local rv = ctx.state.review
  if not rv then
    return nil
  end
  local order_ids = json.array()
  for i, o in ipairs(ranked) do
    order_ids[i] = o.expert
  end
  return { order = order_ids, labels = rv.order, borda = rv.borda, kendall = rv.kendall, failed = rv.failed }
end

function M.nodes.synthesis(ctx)
  local st, options = ctx.state, ctx.params.options
  local round = st.rounds + 1
  ctx:emit("round.started", { round = round, stage = "synthesis" })
  local ballots = {}
  for _, o in ipairs(st.opinions) do
    ballots[#ballots + 1] = panel.as_ballot({ expert = o.expert, name = o.name, position = o.position,
                                        confidence = o.confidence, weight = o.weight, reason = o.reason }, options)
  end
  local consensus = ctx:consensus(nil, ballots, { options = options })
  local ranked = ranked_experts(ctx)
  local reasons = shortfalls(ctx)
  local synth, by
  if #st.opinions > 0 then
    synth, by = chair_synthesis(ctx, chair_prompt(ctx, consensus, ranked), round, reasons)
  end
  local summary, recommendation
  if synth then
    summary, recommendation = synth.summary, synth.recommendation
  elseif ranked[1] then
    summary = "No chair synthesis; the top peer-ranked answer stands in: " .. ranked[1].answer
    recommendation = "Recommended by the top peer-ranked answer: " .. ranked[1].position
  else
    summary = "The council could not deliberate: no valid opinions."
    recommendation = "No recommendation."
  end
  ctx:emit("council.synthesis", { chair = by and by.id or nil, degraded = #reasons > 0 })
  return ctx:done({
    summary = summary,
    recommendation = recommendation,
    consensus = consensus,
    dissent = consensus.dissent,
    positions = positions_of(ctx),
    rounds = round,
    chair = by and by.id or nil,
    council_position = synth and synth.position or consensus.position,
    peer_review = review_of(ctx, ranked),
    degraded = #reasons > 0,
    degraded_reason = #reasons > 0 and table.concat(reasons, "; ") or nil,
    excluded = st.excluded,
  })
end

return M
