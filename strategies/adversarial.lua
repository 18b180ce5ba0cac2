-- adversarial: red team attacks, blue team defends, a judge scores.
--
-- The method (red teaming): the red team lists the ways the proposal could
-- fail, each with likelihood and impact; the blue team answers each open risk
-- with a mitigation and the residual risk after it; an impartial judge scores
-- both sides and gives a verdict. Rounds repeat so the red team can attack
-- the mitigations, until the red team raises nothing new or the round limit.
-- The lasting output is the risk register. Finally every expert, red and blue
-- alike, votes on the verdict so the consensus shows how far the panel shares
-- the judge's view.
--
-- Teams: roles mentioning red/critic/sceptic/skeptic join red, those
-- mentioning blue/advocate/sponsor join blue, the rest alternate to balance
-- the teams. The judge is params.judge, else a role mentioning judge/chair,
-- else the last expert; with fewer than three experts the judge also sits on
-- a team and with one expert it plays every part (result.teams says so).
--
-- Params
--   proposal   the proposal under attack ("" = the question itself)
--   rounds     attack/defence rounds (1..5)
--   max_risks  risks each red expert may raise per round
--   judge      expert id of the judge
--
-- Events
--   round.started       {round, stage = "attack"}
--   risk.raised         {id, risk, likelihood, impact, raised_by, round}
--   risk.mitigated      {id, mitigation, by, round}
--   adversarial.judged  {round, red_score, blue_score, verdict, judge}
--   risk.registered     {id, risk, likelihood, impact, mitigation, raised_by, status}  (final register)
--
-- Result (ctx:done)
--   summary, recommendation, consensus, dissent, positions, rounds,
--   risk_register {id, risk, likelihood, impact, mitigation, raised_by, round,
--   status, residual_likelihood, residual_impact}, scores {round, red_score,
--   blue_score, verdict, judge}, verdict, teams {red, blue, judge}, excluded
local LEVELS = { "low", "medium", "high" }
local VERDICTS = { "adopt", "adopt with mitigations", "reject" }

local M = {
  name = "adversarial",
  description = "Red team attacks a proposal, blue team defends, a judge scores; outputs a risk register",
  consensus = "weighted",
  start = "attack",
  nodes = {},
  params = {
    proposal = { type = "string", default = "", description = "The proposal under attack (empty: the question)" },
    rounds = { type = "integer", default = 2, min = 1, max = 5, description = "Attack/defence rounds" },
    max_risks = { type = "integer", default = 3, min = 1, max = 10, description = "Risks per red expert per round" },
    judge = { type = "string", default = "", description = "Expert id of the judge" },
  },
}

local function teams(ctx)
  local judge
  for _, e in ipairs(ctx.experts) do
    if not judge and ctx.params.judge ~= "" and e.id == ctx.params.judge then
      judge = e
    end
  end
  for _, e in ipairs(ctx.experts) do
    if not judge and panel.role_has(e, { "judge" }) then
      judge = e
    end
  end
  if not judge and #ctx.experts >= 3 then
    for _, e in ipairs(ctx.experts) do
      if not judge and panel.role_has(e, { "chair" }) then
        judge = e
      end
    end
  end
  judge = judge or ctx.experts[#ctx.experts]
  local pool = {}
  for _, e in ipairs(ctx.experts) do
    if e.id ~= judge.id or #ctx.experts < 3 then
      pool[#pool + 1] = e
    end
  end
  local red, blue, rest = {}, {}, {}
  for _, e in ipairs(pool) do
    if panel.role_has(e, { "red", "critic", "sceptic", "skeptic" }) then
      red[#red + 1] = e.id
    elseif panel.role_has(e, { "blue", "advocate", "sponsor" }) then
      blue[#blue + 1] = e.id
    else
      rest[#rest + 1] = e.id
    end
  end
  for _, id in ipairs(rest) do
    if #red <= #blue then
      red[#red + 1] = id
    else
      blue[#blue + 1] = id
    end
  end
  if #red == 0 and #blue > 1 then
    red[1] = table.remove(blue)
  elseif #blue == 0 and #red > 1 then
    blue[1] = table.remove(red)
  elseif #blue == 0 then
    blue[1] = red[1] -- a single expert argues both sides
  elseif #red == 0 then
    red[1] = blue[1]
  end
  return { red = red, blue = blue, judge = judge.id }
end

local STOP = panel.word_list("a an and are as at be by for from in into is it of on or the their this to with")

local function same_risk(a, b)
  return panel.similarity(a, b, STOP) >= 0.6
end

local function proposal(ctx)
  return ctx.params.proposal ~= "" and ctx.params.proposal or ctx.question
end

local function register_text(ctx, only_open)
  local lines = {}
  for _, r in ipairs(ctx.state.register) do
    if not only_open or r.status == "open" then
      lines[#lines + 1] = string.format("%s [%s likelihood, %s impact, %s]: %s%s", r.id, r.likelihood, r.impact, r.status,
        r.risk, r.mitigation and (" — mitigation: " .. r.mitigation) or "")
    end
  end
  return #lines > 0 and table.concat(lines, "\n") or "(none yet)"
end

-- Adds the red expert's valid, not yet known risks to the register; returns how many.
local function register_risks(ctx, list, by, round)
  local st, added = ctx.state, 0
  for i = 1, math.min(#list, ctx.params.max_risks) do
    local x = list[i]
    if type(x) == "table" and type(x.risk) == "string" and x.risk:find("%S") and panel.contains(LEVELS, x.likelihood)
      and panel.contains(LEVELS, x.impact) then
      local dup = false
      for _, old in ipairs(st.register) do
        dup = dup or same_risk(old.risk, x.risk)
      end
      if not dup then
        local entry = { id = "R" .. (#st.register + 1), risk = x.risk, likelihood = x.likelihood, impact = x.impact,
                        raised_by = by, round = round, status = "open",
                        argument = type(x.argument) == "string" and x.argument or "" }
        st.register[#st.register + 1] = entry
        added = added + 1
        ctx:emit("risk.raised", { id = entry.id, risk = entry.risk, likelihood = entry.likelihood,
                                  impact = entry.impact, raised_by = by, round = round })
      end
    end
  end
  return added
end

-- Records the blue expert's mitigations of open risks (the first answer to a risk wins).
local function apply_mitigations(ctx, list, by)
  local st = ctx.state
  for _, m in ipairs(list) do
    if type(m) == "table" and type(m.mitigation) == "string" and m.mitigation:find("%S") then
      for _, entry in ipairs(st.register) do
        if entry.id == m.risk_id and entry.status == "open" then
          entry.status, entry.mitigation, entry.mitigated_by = "mitigated", m.mitigation, by
          entry.residual_likelihood = panel.contains(LEVELS, m.residual_likelihood) and m.residual_likelihood or entry.likelihood
          entry.residual_impact = panel.contains(LEVELS, m.residual_impact) and m.residual_impact or entry.impact
          ctx:emit("risk.mitigated", { id = entry.id, mitigation = m.mitigation, by = by, round = st.round })
        end
      end
    end
  end
end

function M.nodes.attack(ctx)
  local st = ctx.state
  if not st.teams then
    st.register, st.scores, st.excluded, st.round = json.array(), json.array(), json.array(), 0
    if #ctx.experts == 0 then -- nobody to argue: an empty register and no verdict
      st.teams, st.round = { red = json.array(), blue = json.array() }, 1
      return "vote"
    end
    st.teams = teams(ctx)
  end
  local round = st.round + 1
  st.round = round
  ctx:emit("round.started", { round = round, stage = "attack" })
  local schema = { type = "object", required = { "risks" }, properties = {
    risks = { type = "array", minItems = 1, maxItems = ctx.params.max_risks, items = {
      type = "object", required = { "risk", "likelihood", "impact", "argument" },
      properties = { risk = { type = "string", maxLength = 300 }, likelihood = { type = "string", enum = LEVELS },
                     impact = { type = "string", enum = LEVELS }, argument = { type = "string", maxLength = 600 } } } } } }
  local results = ctx:ask_all(st.teams.red, string.format("You are on the red team. Proposal: %s\n\nRisks already on the register:\n%s\n\nAttack the proposal (and any weak mitigation): list up to %d new ways it could fail, each with likelihood, impact and your argument.",
    proposal(ctx), register_text(ctx, false), ctx.params.max_risks), { round = round, schema = schema })
  local new = 0
  for k, r in ipairs(results) do
    local by = st.teams.red[k]
    local list = not r.error and type(r.data) == "table" and type(r.data.risks) == "table" and r.data.risks or nil
    if list then
      new = new + register_risks(ctx, list, by, round)
    else
      st.excluded[#st.excluded + 1] = { expert = by, round = round, stage = "attack", error = r.error or "answer failed validation" }
    end
  end
  st.new_risks = new
  return "defend"
end

function M.nodes.defend(ctx)
  local st = ctx.state
  local open = {}
  for _, r in ipairs(st.register) do
    if r.status == "open" then
      open[#open + 1] = r.id
    end
  end
  if #open == 0 then
    return "judge"
  end
  local schema = { type = "object", required = { "mitigations" }, properties = {
    mitigations = { type = "array", minItems = 1, maxItems = #open, items = {
      type = "object", required = { "risk_id", "mitigation", "residual_likelihood", "residual_impact" },
      properties = { risk_id = { type = "string", enum = open }, mitigation = { type = "string", maxLength = 600 },
                     residual_likelihood = { type = "string", enum = LEVELS },
                     residual_impact = { type = "string", enum = LEVELS } } } } } }
  local results = ctx:ask_all(st.teams.blue, string.format("You are on the blue team defending the proposal: %s\n\nOpen risks:\n%s\n\nFor each risk you can answer, propose a concrete mitigation and the residual likelihood and impact after it.",
    proposal(ctx), register_text(ctx, true)), { round = st.round, schema = schema })
  for k, r in ipairs(results) do
    local by = st.teams.blue[k]
    local list = not r.error and type(r.data) == "table" and type(r.data.mitigations) == "table" and r.data.mitigations or nil
    if list then
      apply_mitigations(ctx, list, by)
    else
      st.excluded[#st.excluded + 1] = { expert = by, round = st.round, stage = "defend", error = r.error or "answer failed validation" }
    end
  end
  return "judge"
end

function M.nodes.judge(ctx)
  local st = ctx.state
  local schema = { type = "object", required = { "red_score", "blue_score", "verdict", "confidence", "reason" }, properties = {
    red_score = { type = "number", minimum = 0, maximum = 10 }, blue_score = { type = "number", minimum = 0, maximum = 10 },
    verdict = { type = "string", enum = VERDICTS }, confidence = { type = "number", minimum = 0, maximum = 1 },
    reason = { type = "string", maxLength = 800 } } }
  local r = ctx:ask(st.teams.judge, string.format("You judge a red-team exercise on the proposal: %s\n\nRisk register after round %d:\n%s\n\nScore the red team's attack and the blue team's defence from 0 to 10 and give your verdict with your reason.\nOptions: %s",
    proposal(ctx), st.round, register_text(ctx, false), table.concat(VERDICTS, " | ")), { round = st.round, schema = schema })
  local d = not r.error and type(r.data) == "table" and r.data or nil
  local score = { round = st.round, judge = st.teams.judge }
  if d and panel.finite(d.red_score) and panel.finite(d.blue_score) and panel.contains(VERDICTS, d.verdict) then
    score.red_score, score.blue_score, score.verdict = d.red_score, d.blue_score, d.verdict
    score.reason = type(d.reason) == "string" and d.reason or ""
  else
    score.error = r.error or "judgement failed validation"
    st.excluded[#st.excluded + 1] = { expert = st.teams.judge, round = st.round, stage = "judge", error = score.error }
  end
  st.scores[#st.scores + 1] = score
  ctx:emit("adversarial.judged", { round = st.round, red_score = score.red_score, blue_score = score.blue_score,
                                   verdict = score.verdict, judge = st.teams.judge })
  if st.round >= ctx.params.rounds or st.new_risks == 0 then
    return "vote"
  end
  return "attack"
end

function M.nodes.vote(ctx)
  local st = ctx.state
  local results = ctx:ask_all(ctx.experts, string.format("Proposal: %s\n\nFinal risk register:\n%s\n\nWhatever side you argued, give your own verdict, your confidence and your reason.\nOptions: %s",
    proposal(ctx), register_text(ctx, false), table.concat(VERDICTS, " | ")),
    { round = st.round, schema = panel.ballot_schema(VERDICTS) })
  local ballots, positions = {}, {}
  for k, r in ipairs(results) do
    local e = ctx.experts[k]
    local b = panel.ballot_of(r, e, VERDICTS)
    if b then
      ballots[#ballots + 1] = b
      positions[#positions + 1] = panel.position_of(e, b)
    else
      local why = r.error or "answer failed validation"
      st.excluded[#st.excluded + 1] = { expert = e.id, name = e.name, round = st.round, stage = "vote", error = why }
      positions[#positions + 1] = panel.excluded_position(e, why)
    end
  end
  st.consensus = ctx:consensus(nil, ballots, { options = VERDICTS })
  st.positions = positions
  return "finish"
end

local RANK = { low = 1, medium = 2, high = 3 }

function M.nodes.finish(ctx)
  local st = ctx.state
  local register = json.array()
  for i, r in ipairs(st.register) do
    register[i] = { id = r.id, risk = r.risk, likelihood = r.likelihood, impact = r.impact,
                    mitigation = r.mitigation or "none proposed", raised_by = r.raised_by, round = r.round,
                    status = r.status, residual_likelihood = r.residual_likelihood, residual_impact = r.residual_impact,
                    mitigated_by = r.mitigated_by }
    ctx:emit("risk.registered", { id = r.id, risk = r.risk, likelihood = r.likelihood, impact = r.impact,
                                  mitigation = register[i].mitigation, raised_by = r.raised_by, status = r.status })
  end
  local verdict
  for _, s in ipairs(st.scores) do
    verdict = s.verdict or verdict
  end
  local c = st.consensus
  verdict = verdict or c.position
  local worst = {}
  for _, r in ipairs(register) do
    worst[#worst + 1] = r
  end
  table.sort(worst, function(a, b)
    local sa = RANK[a.residual_likelihood or a.likelihood] * RANK[a.residual_impact or a.impact]
    local sb = RANK[b.residual_likelihood or b.likelihood] * RANK[b.residual_impact or b.impact]
    if sa ~= sb then
      return sa > sb
    end
    return tonumber(a.id:sub(2)) < tonumber(b.id:sub(2))
  end)
  local open = 0
  for _, r in ipairs(register) do
    if r.status == "open" then
      open = open + 1
    end
  end
  local summary = string.format("%d round(s): red raised %d risk(s), blue mitigated %d, %d remain open. Judge's verdict: %s. Panel vote: %s (agreement %.0f%%).",
    st.round, #register, #register - open, open, tostring(verdict), tostring(c.position), 100 * c.level)
  if #st.excluded > 0 then
    summary = summary .. string.format(" %d contribution(s) excluded as failed or invalid.", #st.excluded)
  end
  local recommendation = verdict and ("Verdict: " .. verdict) or "No verdict: neither judge nor panel gave a valid answer."
  if worst[1] then
    recommendation = recommendation .. ". Highest residual risk: " .. worst[1].risk .. " (mitigation: " .. worst[1].mitigation .. ")"
  end
  return ctx:done({
    summary = summary,
    recommendation = recommendation,
    consensus = c,
    dissent = c.dissent,
    positions = st.positions,
    rounds = st.round,
    risk_register = register,
    scores = st.scores,
    verdict = verdict,
    teams = st.teams,
    excluded = st.excluded,
  })
end

return M
