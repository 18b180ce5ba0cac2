-- debate: multi-agent debate with a judge (a researcher's prototype).
--
-- The method: two experts argue a motion, one for and one against, through an
-- opening statement, rebuttal exchanges and a closing statement; each speech
-- sees the transcript so far. A judge reads the transcript, scores both sides
-- and names the winner. The rest of the panel is the audience: it votes on
-- the motion before and after the debate, and the swing (change in the share
-- voting for) measures how persuasive the debate was. Based on the
-- "multi-agent debate" line of work, where models improve answers by arguing.
--
-- Roles: params.affirmative / negative / judge (expert ids), else the judge is
-- the expert whose role mentions judge or chair (else the third expert), and
-- the first two remaining experts debate. With one expert it argues both
-- sides and judges; with two the first one also judges. Everyone not
-- debating or judging is the audience; with no audience, the debaters and
-- the judge vote.
--
-- Params
--   motion       the motion ("" = the question)
--   exchanges    rebuttal exchanges between opening and closing (0..5)
--   max_words    length guidance per speech
--
-- Events
--   round.started   {round, stage = "opening"|"rebuttal"|"closing"}
--   debate.speech   {round, stage, side, speaker}
--   debate.vote     {when = "before"|"after", for, against, n}
--   debate.judged   {judge, affirmative, negative, winner}
--
-- Result (ctx:done)
--   summary, recommendation, consensus (audience's final vote), dissent,
--   positions, rounds, winner, scores {affirmative, negative}, swing {before,
--   after, change}, roles {affirmative, negative, judge, audience},
--   transcript {round, stage, side, speaker, text}, excluded
local SIDES = { "for", "against" }

local M = {
  name = "debate",
  description = "Two experts debate a motion through opening, rebuttals and closing; a judge decides; the audience votes before and after",
  consensus = "majority",
  start = "pre_vote",
  nodes = {},
  params = {
    motion = { type = "string", default = "", description = "The motion (empty: the question)" },
    exchanges = { type = "integer", default = 1, min = 0, max = 5, description = "Rebuttal exchanges" },
    max_words = { type = "integer", default = 200, min = 30, max = 1000, description = "Length guidance per speech" },
    affirmative = { type = "string", default = "", description = "Expert id arguing for" },
    negative = { type = "string", default = "", description = "Expert id arguing against" },
    judge = { type = "string", default = "", description = "Expert id of the judge" },
  },
}

local function finite(x)
  return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

local function by_id(ctx, id)
  for _, e in ipairs(ctx.experts) do
    if id ~= "" and e.id == id then
      return e
    end
  end
  return nil
end

local function roles(ctx)
  local taken = {}
  local function free(e)
    return e and not taken[e.id]
  end
  local judge = by_id(ctx, ctx.params.judge)
  if not judge then
    for _, e in ipairs(ctx.experts) do
      local role = type(e.role) == "string" and e.role:lower() or ""
      if not judge and (role:find("judge") or role:find("chair")) then
        judge = e
      end
    end
  end
  judge = judge or ctx.experts[3] or ctx.experts[1]
  if #ctx.experts >= 3 then
    taken[judge.id] = true
  end
  local aff = by_id(ctx, ctx.params.affirmative)
  local neg = by_id(ctx, ctx.params.negative)
  for _, e in ipairs(ctx.experts) do
    if free(e) and e ~= neg and not aff then
      aff = e
    end
  end
  taken[aff.id] = true
  for _, e in ipairs(ctx.experts) do
    if free(e) and not neg then
      neg = e
    end
  end
  neg = neg or aff -- a lone expert argues both sides
  taken[neg.id] = true
  taken[judge.id] = true
  local audience = json.array()
  for _, e in ipairs(ctx.experts) do
    if not taken[e.id] then
      audience[#audience + 1] = e.id
    end
  end
  return { affirmative = aff.id, negative = neg.id, judge = judge.id, audience = audience }
end

local function motion(ctx)
  return ctx.params.motion ~= "" and ctx.params.motion or ctx.question
end

local function transcript_text(ctx)
  local lines = {}
  for _, s in ipairs(ctx.state.transcript) do
    lines[#lines + 1] = string.format("[%s, %s] %s", s.stage, s.side, s.text)
  end
  return #lines > 0 and table.concat(lines, "\n\n") or "(no speeches yet)"
end

local function voters(ctx)
  local r = ctx.state.roles
  if #r.audience > 0 then
    return r.audience
  end
  local out, seen = {}, {}
  for _, id in ipairs({ r.affirmative, r.negative, r.judge }) do
    if not seen[id] then
      seen[id] = true
      out[#out + 1] = id
    end
  end
  return out
end

-- Polls the voters; returns ballots and records failures.
local function poll(ctx, when, prompt)
  local ids = voters(ctx)
  local results = ctx:ask_all(ids, prompt, { round = ctx.state.round, schema = {
    type = "object", required = { "position", "confidence", "reason" },
    properties = { position = { type = "string", enum = SIDES }, confidence = { type = "number", minimum = 0, maximum = 1 },
                   reason = { type = "string", maxLength = 400 } } } })
  local ballots, n_for = {}, 0
  for k, r in ipairs(results) do
    local e = by_id(ctx, ids[k])
    local d = not r.error and type(r.data) == "table" and r.data or nil
    if d and (d.position == "for" or d.position == "against") and finite(d.confidence) then
      ballots[#ballots + 1] = { expert = e.id, name = e.name, position = d.position, confidence = d.confidence,
                                weight = e.weight or 1, reason = type(d.reason) == "string" and d.reason or "" }
      n_for = n_for + (d.position == "for" and 1 or 0)
    else
      ctx.state.excluded[#ctx.state.excluded + 1] = { expert = e.id, name = e.name, stage = when .. " vote",
                                                       error = r.error or "vote failed validation" }
    end
  end
  ctx:emit("debate.vote", { when = when, ["for"] = n_for, against = #ballots - n_for, n = #ballots })
  return ballots, #ballots > 0 and n_for / #ballots or nil
end

function M.nodes.pre_vote(ctx)
  if #ctx.experts == 0 then
    error("debate needs at least one expert", 0) -- fails the panel with this message
  end
  ctx.state.roles, ctx.state.transcript, ctx.state.excluded, ctx.state.round = roles(ctx), json.array(), json.array(), 1
  local _, share = poll(ctx, "before", string.format("Motion: %s\nBefore hearing any argument: are you for or against the motion?", motion(ctx)))
  ctx.state.before = share
  return "speak"
end

-- One stage of speeches: both sides speak concurrently, each seeing the transcript so far.
function M.nodes.speak(ctx)
  local st = ctx.state
  local stage = st.round == 1 and "opening" or (st.round <= ctx.params.exchanges + 1 and "rebuttal" or "closing")
  ctx:emit("round.started", { round = st.round, stage = stage })
  local speakers = { st.roles.affirmative, st.roles.negative }
  local sides = { "for", "against" }
  local so_far = transcript_text(ctx)
  local results = {}
  if speakers[1] == speakers[2] then -- one expert: argue the sides in turn
    for i = 1, 2 do
      results[i] = ctx:ask(speakers[i], string.format("Motion: %s\nDebate so far:\n%s\n\nGive the %s speech %s the motion in at most %d words.",
        motion(ctx), so_far, stage, sides[i] == "for" and "for" or "against", ctx.params.max_words), { round = st.round })
    end
  else
    results = ctx:ask_all(speakers, function(e)
      local id = type(e) == "table" and e.id or e
      local side = id == st.roles.affirmative and "for" or "against"
      return string.format("Motion: %s\nYou argue %s the motion.\nDebate so far:\n%s\n\nGive your %s speech in at most %d words%s.",
        motion(ctx), side, so_far, stage, ctx.params.max_words, stage == "rebuttal" and ", answering the other side's last points" or "")
    end, { round = st.round })
  end
  for i, r in ipairs(results) do
    local text = not r.error and type(r.text) == "string" and r.text ~= "" and r.text or nil
    if text then
      st.transcript[#st.transcript + 1] = { round = st.round, stage = stage, side = sides[i], speaker = speakers[i], text = text }
    else
      st.excluded[#st.excluded + 1] = { expert = speakers[i], stage = stage, error = r.error or "empty speech" }
    end
    ctx:emit("debate.speech", { round = st.round, stage = stage, side = sides[i], speaker = speakers[i], missing = not text })
  end
  if stage == "closing" then
    return "judge"
  end
  st.round = st.round + 1
  return "speak"
end

function M.nodes.judge(ctx)
  local st = ctx.state
  local r = ctx:ask(st.roles.judge, string.format("You judge a debate on the motion: %s\n\nTranscript:\n%s\n\nScore each side from 0 to 10 on argument and rebuttal, name the winner and give your reason.",
    motion(ctx), transcript_text(ctx)), { round = st.round, schema = {
      type = "object", required = { "affirmative", "negative", "winner", "reason" },
      properties = { affirmative = { type = "number", minimum = 0, maximum = 10 },
                     negative = { type = "number", minimum = 0, maximum = 10 },
                     winner = { type = "string", enum = { "for", "against", "draw" } },
                     reason = { type = "string", maxLength = 800 } } } })
  local d = not r.error and type(r.data) == "table" and r.data or nil
  if d and finite(d.affirmative) and finite(d.negative) then
    -- The winner follows the scores; a judge contradicting its own scores is overruled.
    local winner = d.affirmative > d.negative and "for" or (d.negative > d.affirmative and "against" or "draw")
    st.judgement = { affirmative = d.affirmative, negative = d.negative, winner = winner,
                     reason = type(d.reason) == "string" and d.reason or "" }
  else
    st.excluded[#st.excluded + 1] = { expert = st.roles.judge, stage = "judge", error = r.error or "judgement failed validation" }
    st.judgement = { winner = "undecided", reason = "the judge gave no valid judgement" }
  end
  ctx:emit("debate.judged", { judge = st.roles.judge, affirmative = st.judgement.affirmative,
                              negative = st.judgement.negative, winner = st.judgement.winner })
  return "post_vote"
end

function M.nodes.post_vote(ctx)
  local ballots, share = poll(ctx, "after", string.format("Motion: %s\n\nYou heard this debate:\n%s\n\nNow: are you for or against the motion?",
    motion(ctx), transcript_text(ctx)))
  ctx.state.after, ctx.state.ballots = share, ballots
  return "finish"
end

function M.nodes.finish(ctx)
  local st = ctx.state
  local c = ctx:consensus(nil, st.ballots, { options = SIDES })
  local swing = { before = st.before, after = st.after }
  if st.before and st.after then
    swing.change = st.after - st.before
  end
  local positions, voted = {}, {}
  for _, b in ipairs(st.ballots) do
    voted[b.expert] = b
  end
  for _, e in ipairs(ctx.experts) do
    local b = voted[e.id]
    local role = (e.id == st.roles.affirmative and "affirmative") or (e.id == st.roles.negative and "negative")
      or (e.id == st.roles.judge and "judge") or "audience"
    if b then
      positions[#positions + 1] = { expert = e.id, name = e.name, role = role, position = b.position,
                                    confidence = b.confidence, reason = b.reason }
    elseif role ~= "audience" and #st.roles.audience > 0 then
      positions[#positions + 1] = { expert = e.id, name = e.name, role = role,
                                    position = role == "affirmative" and "for" or (role == "negative" and "against" or st.judgement.winner) }
    else
      positions[#positions + 1] = { expert = e.id, name = e.name, role = role, excluded = true, error = "no valid vote" }
    end
  end
  local j = st.judgement
  local summary = string.format("Debate over %d round(s): the judge gives it to %s%s. Audience for the motion: %s before, %s after.",
    st.round, j.winner == "for" and "the affirmative" or (j.winner == "against" and "the negative" or j.winner),
    j.affirmative and string.format(" (%.1f to %.1f)", j.affirmative, j.negative) or "",
    st.before and string.format("%.0f%%", 100 * st.before) or "n/a", st.after and string.format("%.0f%%", 100 * st.after) or "n/a")
  local recommendation = c.position and string.format("The panel is %s the motion (agreement %.0f%%).", c.position, 100 * c.level)
    or "No recommendation: no valid final votes."
  return ctx:done({
    summary = summary,
    recommendation = recommendation,
    consensus = c,
    dissent = c.dissent,
    positions = positions,
    rounds = st.round,
    winner = j.winner,
    scores = { affirmative = j.affirmative, negative = j.negative },
    swing = swing,
    roles = st.roles,
    transcript = st.transcript,
    excluded = st.excluded,
  })
end

return M
