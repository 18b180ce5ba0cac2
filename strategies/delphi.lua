-- delphi: anonymous rounds of estimates converging on a group median.
--
-- The method (RAND's Delphi): experts estimate a quantity independently and
-- say how confident they are and why. Each further round shows every expert,
-- anonymously, the group median, the interquartile range and the reasons
-- given, plus their own previous estimate, and asks for a revised estimate.
-- Nobody sees who said what, so no one anchors on seniority. The panel stops
-- when the IQR is small relative to the answer scale, when median and IQR
-- stop changing, or at the round limit.
--
-- Params
--   rounds      round limit (1..10)
--   min_rounds  rounds held before a stop rule may end the panel (at least
--               one feedback round is what makes it a Delphi)
--   iqr_stop    stop when IQR / (high - low) falls below this
--   tolerance   "stopped changing": median and IQR each moved less than this
--               fraction of (high - low) since the last round
--   low, high   the answer scale (estimates are bounded to it)
--   unit        unit of the estimate, shown in prompts ("%", "EUR m", ...)
--   max_reasons anonymised reasons fed back per round
--
-- Events
--   round.started   {round, stage = "estimate"}
--   delphi.feedback {round, median, q1, q3, iqr, n, reasons}   (no names)
--   delphi.stopped  {round, reason = "converged"|"stable"|"round_limit"|"no_estimates"}
--
-- Result (ctx:done)
--   summary, recommendation, consensus (the delphi statistics, or the panel's
--   chosen algorithm over the final ballots when it is not delphi),
--   dissent, positions {expert, name, estimate, confidence, reason}, rounds,
--   estimate (final median), interval {q1, q3}, history {round, median, q1,
--   q3, iqr, n}, stop_reason, statistics (the final delphi result),
--   excluded {expert, name, round, error}
local M = {
  name = "delphi",
  description = "Anonymous estimate rounds with median/IQR feedback, converging on a group median",
  consensus = "delphi",
  start = "estimate",
  nodes = {},
  params = {
    rounds = { type = "integer", default = 4, min = 1, max = 10, description = "Round limit" },
    min_rounds = { type = "integer", default = 2, min = 1, max = 10, description = "Rounds before a stop rule applies" },
    iqr_stop = { type = "number", default = 0.05, min = 0, max = 1, description = "Stop when IQR/(high-low) is below this" },
    tolerance = { type = "number", default = 0.01, min = 0, max = 1, description = "Relative change counted as no change" },
    low = { type = "number", default = 0, min = -1e12, max = 1e12, description = "Lowest admissible estimate" },
    high = { type = "number", default = 100, min = -1e12, max = 1e12, above = "low", description = "Highest admissible estimate" },
    unit = { type = "string", default = "", description = "Unit of the estimate" },
    max_reasons = { type = "integer", default = 6, min = 0, max = 20, description = "Anonymised reasons fed back per round" },
  },
}

local function scale(ctx)
  return math.max(ctx.params.high - ctx.params.low, 1e-9)
end

local function estimate_schema(ctx)
  return {
    type = "object",
    required = { "estimate", "confidence", "reason" },
    properties = {
      estimate = { type = "number", minimum = ctx.params.low, maximum = ctx.params.high },
      confidence = { type = "number", minimum = 0, maximum = 1 },
      reason = { type = "string", maxLength = 400 },
    },
  }
end

local function fmt(x)
  return string.format("%.4g", x)
end

-- A ballot from an answer, or nil and why it was excluded.
local function ballot_of(result, expert, ctx)
  local d, why = panel.answer_data(result)
  if not d then
    return nil, why
  end
  if not panel.finite(d.estimate) or d.estimate < ctx.params.low or d.estimate > ctx.params.high then
    return nil, "answer failed validation: estimate missing or outside the scale"
  end
  local conf = panel.finite(d.confidence) and math.max(0, math.min(1, d.confidence)) or nil
  return { expert = expert.id, name = expert.name, estimate = d.estimate, confidence = conf,
           weight = expert.weight or 1, reason = type(d.reason) == "string" and d.reason or "",
           position = fmt(d.estimate) }
end

-- Reasons without names or roles, in an order that does not follow the roster.
local function anonymised_reasons(ctx, ballots)
  local reasons, names = json.array(), {}
  for _, e in ipairs(ctx.experts) do
    names[#names + 1] = e.name or ""
    names[#names + 1] = e.role or ""
  end
  for _, b in ipairs(ballots) do
    if b.reason ~= "" then
      local r = panel.redact((b.reason:gsub("%s+", " ")), names)
      reasons[#reasons + 1] = string.format("(estimate %s) %s", fmt(b.estimate), r)
    end
  end
  table.sort(reasons)
  while #reasons > ctx.params.max_reasons do
    table.remove(reasons)
  end
  return reasons
end

local function prompt_for(ctx, expert)
  local unit = ctx.params.unit ~= "" and (" " .. ctx.params.unit) or ""
  local head = string.format("Question: %s\nGive your estimate on a scale from %s to %s%s, your confidence (0-1) and your reason.",
    ctx.question, fmt(ctx.params.low), fmt(ctx.params.high), unit)
  local fb = ctx.state.feedback
  if not fb then
    return head
  end
  local mine = ctx.state.last_estimate and ctx.state.last_estimate[expert.id]
  local lines = { head, "", string.format("Round %d feedback from the anonymous panel (%d estimates):", fb.round, fb.n),
    "Group median: " .. fmt(fb.median), string.format("Interquartile range: %s to %s", fmt(fb.q1), fmt(fb.q3)) }
  if mine then
    lines[#lines + 1] = "Previous estimate: " .. fmt(mine)
  end
  if #fb.reasons > 0 then
    lines[#lines + 1] = "Reasons given:"
    for _, r in ipairs(fb.reasons) do
      lines[#lines + 1] = "- " .. r
    end
  end
  lines[#lines + 1] = "Revise your estimate if these arguments persuade you; if you stay outside the interquartile range, say why."
  return table.concat(lines, "\n")
end

local function stop_reason(ctx, stats, round)
  if stats.details.n == 0 then
    return "no_estimates"
  end
  if round >= ctx.params.min_rounds then
    if stats.details.iqr / scale(ctx) < ctx.params.iqr_stop then
      return "converged"
    end
    if stats.details.stable then
      return "stable"
    end
  end
  if round >= ctx.params.rounds then
    return "round_limit"
  end
  return nil
end

function M.nodes.estimate(ctx)
  local round = (ctx.state.round or 0) + 1
  ctx.state.round = round
  ctx:emit("round.started", { round = round, stage = "estimate" })
  local results = ctx:ask_all(ctx.experts, function(e)
    return prompt_for(ctx, e)
  end, { round = round, schema = estimate_schema(ctx) })
  local ballots = {}
  ctx.state.excluded = ctx.state.excluded or json.array()
  ctx.state.last_estimate = ctx.state.last_estimate or {}
  ctx.state.last_ballot = ctx.state.last_ballot or {}
  for k, r in ipairs(results) do
    local e = ctx.experts[k]
    local b, why = ballot_of(r, e, ctx)
    if b then
      ballots[#ballots + 1] = b
      ctx.state.last_estimate[e.id] = b.estimate
      ctx.state.last_ballot[e.id] = b
    else
      table.insert(ctx.state.excluded, { expert = e.id, name = e.name, round = round, error = why })
    end
  end
  local stats = ctx:consensus("delphi", ballots, { scale = scale(ctx), previous = ctx.state.stats,
                                                   tolerance = ctx.params.tolerance })
  ctx.state.stats = stats
  ctx.state.ballots = ballots
  ctx.state.history = ctx.state.history or json.array()
  local d = stats.details
  table.insert(ctx.state.history, { round = round, median = d.median, q1 = d.q1, q3 = d.q3, iqr = d.iqr, n = d.n })
  local why = stop_reason(ctx, stats, round)
  if why then
    ctx.state.stop_reason = why
    ctx:emit("delphi.stopped", { round = round, reason = why })
    return "finish"
  end
  local reasons = anonymised_reasons(ctx, ballots)
  ctx.state.feedback = { round = round, median = d.median, q1 = d.q1, q3 = d.q3, iqr = d.iqr, n = d.n, reasons = reasons }
  ctx:emit("delphi.feedback", ctx.state.feedback)
  return "estimate"
end

function M.nodes.finish(ctx)
  local stats, st = ctx.state.stats, ctx.state
  local consensus = stats
  if ctx.consensus_algorithm ~= "delphi" then
    consensus = ctx:consensus(nil, st.ballots, {})
  end
  local positions = {}
  for _, e in ipairs(ctx.experts) do
    local b = st.last_ballot[e.id]
    if b then
      positions[#positions + 1] = { expert = e.id, name = e.name, position = b.position, estimate = b.estimate,
                                    confidence = b.confidence, reason = b.reason }
    else
      positions[#positions + 1] = panel.excluded_position(e, "no valid estimate")
    end
  end
  local d = stats.details
  local unit = ctx.params.unit ~= "" and (" " .. ctx.params.unit) or ""
  local summary, recommendation
  if d.n > 0 then
    summary = string.format("After %d round(s) (%s) the panel's median estimate is %s%s (IQR %s to %s, %d estimates).",
      st.round, st.stop_reason, fmt(d.median), unit, fmt(d.q1), fmt(d.q3), d.n)
    recommendation = string.format("Plan with %s%s; treat %s to %s%s as the plausible range.",
      fmt(d.median), unit, fmt(d.q1), fmt(d.q3), unit)
  else
    summary = string.format("No valid estimates after %d round(s).", st.round)
    recommendation = "No recommendation: the panel gave no valid estimate."
  end
  if #st.excluded > 0 then
    summary = summary .. string.format(" %d answer(s) were excluded as invalid or failed.", #st.excluded)
  end
  return ctx:done({
    summary = summary,
    recommendation = recommendation,
    consensus = consensus,
    dissent = consensus.dissent,
    positions = positions,
    rounds = st.round,
    estimate = d.median,
    interval = d.n > 0 and { q1 = d.q1, q3 = d.q3 } or nil,
    history = st.history,
    stop_reason = st.stop_reason,
    statistics = stats,
    excluded = st.excluded,
  })
end

return M
