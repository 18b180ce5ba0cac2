-- delphi: the hospital network's stricter Delphi (tenant override).
--
-- Installed for one tenant as config/tenants/<slug>/strategies/delphi.lua
-- (or PUT /v1/strategies/delphi), it replaces the built-in delphi for that
-- tenant only. The method is the same — anonymous estimate rounds with
-- median, IQR and anonymised reasons fed back — with the rules the network's
-- clinical governance board asked for:
--   * at least three rounds (two feedback rounds) before any stop rule;
--   * a quorum of valid estimates every round, else the panel stops and makes
--     no recommendation (quorum_met = false);
--   * every estimate states the strength of its evidence; estimates resting on
--     expert opinion alone are counted but listed for the board;
--   * estimates with confidence below min_confidence are not counted;
--   * tighter convergence: IQR under 2% of the scale;
--   * with the tenant flag clinical_signoff the result requires sign-off.
--
-- Params
--   rounds, min_rounds, iqr_stop, low, high, unit   as in the built-in
--   quorum          valid estimates required each round
--   min_confidence  estimates below this confidence are not counted
--
-- Events
--   round.started   {round, stage = "estimate"}
--   delphi.feedback {round, median, q1, q3, iqr, n, reasons, evidence}
--   delphi.stopped  {round, reason = "converged"|"stable"|"round_limit"|"no_quorum"}
--
-- Result (ctx:done)
--   summary, recommendation, consensus (delphi statistics), dissent,
--   positions, rounds, estimate, interval, history, stop_reason, quorum_met,
--   evidence {level = count}, opinion_only {expert ids}, requires_signoff,
--   excluded
local EVIDENCE = { "systematic review or RCT", "observational data", "expert opinion" }

local M = {
  name = "delphi",
  description = "Stricter Delphi for clinical planning: quorum, evidence levels, three rounds minimum, sign-off",
  consensus = "delphi",
  start = "estimate",
  nodes = {},
  params = {
    rounds = { type = "integer", default = 5, min = 3, max = 10, description = "Round limit" },
    min_rounds = { type = "integer", default = 3, min = 3, max = 10, description = "Rounds before a stop rule applies" },
    iqr_stop = { type = "number", default = 0.02, min = 0, max = 0.05, description = "Stop when IQR/(high-low) is below this" },
    low = { type = "number", default = 0, min = -1e12, max = 1e12, description = "Lowest admissible estimate" },
    high = { type = "number", default = 100, min = -1e12, max = 1e12, description = "Highest admissible estimate" },
    unit = { type = "string", default = "", description = "Unit of the estimate" },
    quorum = { type = "integer", default = 5, min = 1, max = 50, description = "Valid estimates required each round" },
    min_confidence = { type = "number", default = 0.3, min = 0, max = 1, description = "Lowest confidence that counts" },
  },
}

local function finite(x)
  return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

local function fmt(x)
  return string.format("%.4g", x)
end

local function scale(ctx)
  return math.max(ctx.params.high - ctx.params.low, 1e-9)
end

local function schema(ctx)
  return {
    type = "object",
    required = { "estimate", "confidence", "evidence", "reason" },
    properties = {
      estimate = { type = "number", minimum = ctx.params.low, maximum = ctx.params.high },
      confidence = { type = "number", minimum = 0, maximum = 1 },
      evidence = { type = "string", enum = EVIDENCE },
      reason = { type = "string", maxLength = 400 },
    },
  }
end

local function ballot_of(ctx, result, expert)
  if result.error then
    return nil, result.error
  end
  local d = result.data
  if type(d) ~= "table" or not finite(d.estimate) or d.estimate < ctx.params.low or d.estimate > ctx.params.high then
    return nil, "answer failed validation: estimate missing or outside the scale"
  end
  if not finite(d.confidence) or d.confidence < ctx.params.min_confidence then
    return nil, "confidence below the network's minimum"
  end
  local evidence = d.evidence
  local known = false
  for _, e in ipairs(EVIDENCE) do
    known = known or e == evidence
  end
  if not known then
    return nil, "answer failed validation: evidence level missing"
  end
  return { expert = expert.id, name = expert.name, estimate = d.estimate, confidence = math.min(1, d.confidence),
           evidence = evidence, reason = type(d.reason) == "string" and d.reason or "", position = fmt(d.estimate) }
end

local function prompt_for(ctx, expert)
  local unit = ctx.params.unit ~= "" and (" " .. ctx.params.unit) or ""
  local lines = { string.format("Question: %s\nGive your estimate on a scale from %s to %s%s, your confidence (0-1), the strength of the evidence behind it and your reason.",
    ctx.question, fmt(ctx.params.low), fmt(ctx.params.high), unit) }
  local fb = ctx.state.feedback
  if fb then
    lines[#lines + 1] = string.format("\nRound %d feedback from the anonymous panel (%d estimates):", fb.round, fb.n)
    lines[#lines + 1] = "Group median: " .. fmt(fb.median)
    lines[#lines + 1] = string.format("Interquartile range: %s to %s", fmt(fb.q1), fmt(fb.q3))
    local mine = ctx.state.mine[expert.id]
    if mine then
      lines[#lines + 1] = "Previous estimate: " .. fmt(mine)
    end
    for _, r in ipairs(fb.reasons) do
      lines[#lines + 1] = "- " .. r
    end
  end
  return table.concat(lines, "\n")
end

-- Reasons tagged with their evidence level, names removed, sorted so the
-- order reveals nothing about the roster.
local function reasons_of(ctx, ballots)
  local out = {}
  for _, b in ipairs(ballots) do
    local r = b.reason
    for _, e in ipairs(ctx.experts) do
      if type(e.name) == "string" and #e.name > 1 then
        r = r:gsub(e.name:gsub("%p", "%%%0"), "a panellist")
      end
    end
    out[#out + 1] = string.format("[%s] (estimate %s) %s", b.evidence, fmt(b.estimate), r)
  end
  table.sort(out)
  return out
end

function M.nodes.estimate(ctx)
  local st = ctx.state
  st.mine, st.last = st.mine or {}, st.last or {}
  st.excluded, st.history = st.excluded or json.array(), st.history or json.array()
  local round = (st.round or 0) + 1
  st.round = round
  ctx:emit("round.started", { round = round, stage = "estimate" })
  local results = ctx:ask_all(ctx.experts, function(e)
    return prompt_for(ctx, e)
  end, { round = round, schema = schema(ctx) })
  local ballots = {}
  for k, r in ipairs(results) do
    local e = ctx.experts[k]
    local b, why = ballot_of(ctx, r, e)
    if b then
      ballots[#ballots + 1] = b
      st.mine[e.id], st.last[e.id] = b.estimate, b
    else
      st.excluded[#st.excluded + 1] = { expert = e.id, name = e.name, round = round, error = why }
    end
  end
  st.ballots = ballots
  if #ballots < ctx.params.quorum then
    st.stop_reason = "no_quorum"
    ctx:emit("delphi.stopped", { round = round, reason = "no_quorum" })
    return "finish"
  end
  local stats = ctx:consensus("delphi", ballots, { scale = scale(ctx), previous = st.stats, tolerance = 0.005 })
  st.stats = stats
  local d = stats.details
  st.history[#st.history + 1] = { round = round, median = d.median, q1 = d.q1, q3 = d.q3, iqr = d.iqr, n = d.n }
  local why
  if round >= ctx.params.min_rounds and d.iqr / scale(ctx) < ctx.params.iqr_stop then
    why = "converged"
  elseif round >= ctx.params.min_rounds and d.stable then
    why = "stable"
  elseif round >= ctx.params.rounds then
    why = "round_limit"
  end
  if why then
    st.stop_reason = why
    ctx:emit("delphi.stopped", { round = round, reason = why })
    return "finish"
  end
  local evidence = {}
  for _, b in ipairs(ballots) do
    evidence[b.evidence] = (evidence[b.evidence] or 0) + 1
  end
  st.feedback = { round = round, median = d.median, q1 = d.q1, q3 = d.q3, iqr = d.iqr, n = d.n,
                  reasons = reasons_of(ctx, ballots), evidence = evidence }
  ctx:emit("delphi.feedback", st.feedback)
  return "estimate"
end

function M.nodes.finish(ctx)
  local st = ctx.state
  local quorum_met = st.stop_reason ~= "no_quorum"
  local stats = st.stats or ctx:consensus("delphi", {}, {})
  local evidence, opinion_only, positions = {}, json.array(), {}
  for _, e in ipairs(ctx.experts) do
    local b = st.last[e.id]
    if b and quorum_met then
      evidence[b.evidence] = (evidence[b.evidence] or 0) + 1
      if b.evidence == "expert opinion" then
        opinion_only[#opinion_only + 1] = e.id
      end
      positions[#positions + 1] = { expert = e.id, name = e.name, position = b.position, estimate = b.estimate,
                                    confidence = b.confidence, evidence = b.evidence, reason = b.reason }
    else
      positions[#positions + 1] = { expert = e.id, name = e.name, excluded = true, error = "no counted estimate" }
    end
  end
  local d = stats.details
  local unit = ctx.params.unit ~= "" and (" " .. ctx.params.unit) or ""
  local summary, recommendation
  if quorum_met then
    summary = string.format("After %d rounds (%s) the median estimate is %s%s (IQR %s to %s; %d estimates, %d on expert opinion alone).",
      st.round, st.stop_reason, fmt(d.median), unit, fmt(d.q1), fmt(d.q3), d.n, #opinion_only)
    recommendation = string.format("Plan with %s%s; prepare for up to %s%s.", fmt(d.median), unit, fmt(d.q3), unit)
  else
    summary = string.format("Stopped in round %d: only %d valid estimate(s), the quorum is %d.", st.round,
      #st.ballots, ctx.params.quorum)
    recommendation = "No recommendation: the panel did not reach quorum. Reconvene with more experts."
  end
  local flags = type(ctx.tenant) == "table" and type(ctx.tenant.flags) == "table" and ctx.tenant.flags or {}
  return ctx:done({
    summary = summary,
    recommendation = recommendation,
    consensus = stats,
    dissent = stats.dissent,
    positions = positions,
    rounds = st.round,
    estimate = quorum_met and d.median or nil,
    interval = quorum_met and { q1 = d.q1, q3 = d.q3 } or nil,
    history = st.history,
    stop_reason = st.stop_reason,
    quorum_met = quorum_met,
    evidence = evidence,
    opinion_only = opinion_only,
    requires_signoff = flags.clinical_signoff == true,
    excluded = st.excluded,
  })
end

return M
