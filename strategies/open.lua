-- open: brainstorming — diverge, de-duplicate and cluster, vote, develop.
--
-- The method: every expert first proposes ideas independently (divergence,
-- no criticism). Near-duplicate ideas are merged into clusters by word
-- overlap (Jaccard similarity of their content words), so the vote is over
-- distinct ideas and an idea several experts had counts once, credited to all
-- of them. Every expert then approves the ideas they would pursue (approval
-- voting). The top ideas are developed into short plans, each by an expert
-- who proposed it (else round-robin).
--
-- Params
--   ideas_per_expert  ideas each expert proposes (1..10)
--   similarity        Jaccard threshold at which two ideas are one (0..1)
--   max_ideas         clusters kept for the vote (largest first)
--   votes             approvals each expert may give
--   top               ideas developed after the vote
--
-- Events
--   round.started   {round, stage = "diverge"|"vote"|"develop"}
--   ideas.proposed  {count, experts}
--   ideas.clustered {clusters = {{id, idea, size, proposed_by}}}
--   idea.developed  {id, idea, developer, plan}
--
-- Result (ctx:done)
--   summary, recommendation, consensus (approval over idea ids by default),
--   dissent, positions {expert, name, position (first approved idea),
--   approvals}, rounds, ideas {id, idea, size, proposed_by, approvals},
--   developed {id, idea, developer, plan, first_steps, risks}, excluded
local M = {
  name = "open",
  description = "Brainstorming: divergent ideas, de-duplication and clustering, an approval vote, the top ideas developed",
  consensus = "approval",
  start = "diverge",
  nodes = {},
  params = {
    ideas_per_expert = { type = "integer", default = 3, min = 1, max = 10, description = "Ideas each expert proposes" },
    similarity = { type = "number", default = 0.5, min = 0, max = 1, description = "Jaccard threshold for merging ideas" },
    max_ideas = { type = "integer", default = 15, min = 2, max = 50, description = "Idea clusters kept for the vote" },
    votes = { type = "integer", default = 3, min = 1, max = 10, description = "Approvals per expert" },
    top = { type = "integer", default = 3, min = 1, max = 10, description = "Ideas developed after the vote" },
  },
}

local STOP = panel.word_list("a an and are as at be by for from in into is it of on or our the their this to we with")

local function clean_idea(s)
  if type(s) ~= "string" then
    return nil
  end
  s = s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if s == "" then
    return nil
  end
  if #s > 300 then
    s = s:sub(1, (utf8.offset(s, 300) or 300) - 1)
  end
  return s
end

-- Greedy clustering against each cluster's first idea; order of first appearance.
local function cluster(ideas, threshold)
  local clusters = {}
  for _, idea in ipairs(ideas) do
    local set, n = panel.words(idea.text, STOP)
    local home
    for _, c in ipairs(clusters) do
      if not home and panel.jaccard(set, n, c.words, c.nwords) >= threshold then
        home = c
      end
    end
    if not home then
      home = { idea = idea.text, words = set, nwords = n, size = 0, proposed_by = {}, seen = {} }
      clusters[#clusters + 1] = home
    end
    home.size = home.size + 1
    if not home.seen[idea.by] then
      home.seen[idea.by] = true
      home.proposed_by[#home.proposed_by + 1] = idea.by
    end
  end
  return clusters
end

function M.nodes.diverge(ctx)
  ctx:emit("round.started", { round = 1, stage = "diverge" })
  local k = ctx.params.ideas_per_expert
  local schema = { type = "object", required = { "ideas" }, properties = {
    ideas = { type = "array", items = { type = "string", maxLength = 300 }, minItems = 1, maxItems = k } } }
  local prompt = string.format("Brainstorm on: %s\nPropose %d distinct, concrete ideas, one short sentence each. Do not judge them yet.",
    ctx.question, k)
  local results = ctx:ask_all(ctx.experts, prompt, { round = 1, schema = schema })
  local ideas, excluded, contributors = {}, json.array(), 0
  for i, r in ipairs(results) do
    local e, got = ctx.experts[i], 0
    local list = not r.error and type(r.data) == "table" and type(r.data.ideas) == "table" and r.data.ideas or {}
    for j = 1, math.min(#list, k) do
      local text = clean_idea(list[j])
      if text then
        ideas[#ideas + 1] = { text = text, by = e.id }
        got = got + 1
      end
    end
    if got == 0 then
      excluded[#excluded + 1] = { expert = e.id, name = e.name, error = r.error or "no valid ideas" }
    else
      contributors = contributors + 1
    end
  end
  ctx:emit("ideas.proposed", { count = #ideas, experts = contributors })
  local clusters = cluster(ideas, ctx.params.similarity)
  -- Keep the most shared ideas when there are too many; ties keep first-seen order.
  for i, c in ipairs(clusters) do
    c.first = i
  end
  table.sort(clusters, function(a, b)
    if a.size ~= b.size then
      return a.size > b.size
    end
    return a.first < b.first
  end)
  local kept = json.array()
  for i = 1, math.min(#clusters, ctx.params.max_ideas) do
    local c = clusters[i]
    kept[i] = { id = "I" .. i, idea = c.idea, size = c.size, proposed_by = c.proposed_by }
  end
  ctx.state.ideas, ctx.state.excluded = kept, excluded
  ctx:emit("ideas.clustered", { clusters = kept })
  return #kept > 0 and "vote" or "finish"
end

function M.nodes.vote(ctx)
  ctx:emit("round.started", { round = 2, stage = "vote" })
  local ids, lines = {}, {}
  for i, idea in ipairs(ctx.state.ideas) do
    ids[i] = idea.id
    lines[i] = idea.id .. ": " .. idea.idea
  end
  local votes = math.min(ctx.params.votes, #ids)
  local schema = { type = "object", required = { "approvals", "reason" }, properties = {
    approvals = { type = "array", items = { type = "string", enum = ids }, minItems = 1, maxItems = votes },
    reason = { type = "string", maxLength = 400 } } }
  local prompt = string.format("Question: %s\nThe panel proposed these ideas:\n%s\n\nApprove up to %d ideas you would pursue, best first.",
    ctx.question, table.concat(lines, "\n"), votes)
  local results = ctx:ask_all(ctx.experts, prompt, { round = 2, schema = schema })
  local known = {}
  for _, id in ipairs(ids) do
    known[id] = true
  end
  local ballots, positions = {}, {}
  for i, r in ipairs(results) do
    local e = ctx.experts[i]
    local approvals, seen = {}, {}
    if not r.error and type(r.data) == "table" and type(r.data.approvals) == "table" then
      for _, id in ipairs(r.data.approvals) do
        if known[id] and not seen[id] and #approvals < votes then
          seen[id] = true
          approvals[#approvals + 1] = id
        end
      end
    end
    if #approvals > 0 then
      local reason = type(r.data.reason) == "string" and r.data.reason or ""
      ballots[#ballots + 1] = { expert = e.id, name = e.name, approvals = approvals, ranking = approvals,
                                position = approvals[1], confidence = 1, weight = e.weight or 1, reason = reason }
      positions[#positions + 1] = { expert = e.id, name = e.name, position = approvals[1], approvals = approvals, reason = reason }
    else
      table.insert(ctx.state.excluded, { expert = e.id, name = e.name, error = r.error or "vote failed validation" })
      positions[#positions + 1] = panel.excluded_position(e, r.error or "no valid vote")
    end
  end
  local tally = ctx:consensus("approval", ballots, { options = ids })
  for _, idea in ipairs(ctx.state.ideas) do
    idea.approvals = tally.details.approvals[idea.id] or 0
  end
  ctx.state.order = tally.details.order
  ctx.state.consensus = ctx.consensus_algorithm == "approval" and tally or ctx:consensus(nil, ballots, { options = ids })
  ctx.state.positions = positions
  return "develop"
end

local function idea_by_id(ctx, id)
  for _, idea in ipairs(ctx.state.ideas) do
    if idea.id == id then
      return idea
    end
  end
  return nil
end

-- Each top idea goes to a proposer who is still answering, else round-robin;
-- returns batches in which no expert appears twice (one ask_all each).
local function assignments(ctx, top)
  local failed = {}
  for _, x in ipairs(ctx.state.excluded) do
    failed[x.expert] = true
  end
  local batches, rr = {}, 0
  for _, id in ipairs(top) do
    local idea, dev = idea_by_id(ctx, id), nil
    for _, p in ipairs(idea.proposed_by) do
      if not dev and not failed[p] then
        dev = p
      end
    end
    if not dev then
      rr = rr % #ctx.experts + 1
      dev = ctx.experts[rr].id
    end
    local placed = false
    for _, b in ipairs(batches) do
      if not placed and not b.used[dev] then
        b.used[dev] = true
        b.items[#b.items + 1] = { id = id, expert = dev }
        placed = true
      end
    end
    if not placed then
      batches[#batches + 1] = { used = { [dev] = true }, items = { { id = id, expert = dev } } }
    end
  end
  return batches
end

function M.nodes.develop(ctx)
  ctx:emit("round.started", { round = 3, stage = "develop" })
  local top = {}
  for i = 1, math.min(ctx.params.top, #ctx.state.order) do
    local idea = idea_by_id(ctx, ctx.state.order[i])
    if idea.approvals > 0 then
      top[#top + 1] = idea.id
    end
  end
  local schema = { type = "object", required = { "plan", "first_steps", "risks" }, properties = {
    plan = { type = "string", maxLength = 1500 },
    first_steps = { type = "array", items = { type = "string", maxLength = 200 }, minItems = 1, maxItems = 3 },
    risks = { type = "array", items = { type = "string", maxLength = 200 }, minItems = 1, maxItems = 3 } } }
  local developed = json.array()
  for _, batch in ipairs(assignments(ctx, top)) do
    local experts, task = {}, {}
    for i, item in ipairs(batch.items) do
      experts[i] = item.expert
      task[item.expert] = idea_by_id(ctx, item.id)
    end
    local results = ctx:ask_all(experts, function(e)
      local id = type(e) == "table" and e.id or e
      return string.format("Question: %s\nThe panel chose to pursue this idea: %s\nDevelop it: a short plan, up to three first steps, up to three risks.",
        ctx.question, task[id].idea)
    end, { round = 3, schema = schema })
    for i, r in ipairs(results) do
      local idea = task[experts[i]]
      local d = not r.error and type(r.data) == "table" and r.data or nil
      local entry = { id = idea.id, idea = idea.idea, developer = experts[i],
                      plan = d and type(d.plan) == "string" and d.plan or nil,
                      first_steps = d and type(d.first_steps) == "table" and d.first_steps or json.array(),
                      risks = d and type(d.risks) == "table" and d.risks or json.array(),
                      error = not d and (r.error or "answer was not valid JSON") or nil }
      developed[#developed + 1] = entry
      ctx:emit("idea.developed", { id = entry.id, idea = entry.idea, developer = entry.developer, plan = entry.plan })
    end
  end
  table.sort(developed, function(a, b)
    return tonumber(a.id:sub(2)) < tonumber(b.id:sub(2))
  end)
  ctx.state.developed = developed
  return "finish"
end

function M.nodes.finish(ctx)
  local st = ctx.state
  local rounds = st.consensus and 3 or 1
  local consensus = st.consensus or ctx:consensus(nil, {}, {})
  local top_lines = {}
  for _, id in ipairs(st.order or {}) do
    local idea = idea_by_id(ctx, id)
    if #top_lines < ctx.params.top and idea.approvals > 0 then
      top_lines[#top_lines + 1] = string.format("%s (%d approval(s))", idea.idea, idea.approvals)
    end
  end
  local summary = string.format("%d idea cluster(s) from %d expert(s); %d developed.", #st.ideas,
    #ctx.experts - #st.excluded, #(st.developed or {}))
  if #st.excluded > 0 then
    summary = summary .. string.format(" %d contribution(s) excluded as failed or invalid.", #st.excluded)
  end
  local recommendation = #top_lines > 0 and ("Pursue: " .. table.concat(top_lines, "; ")) or "No idea won approval."
  local positions = st.positions
  if not positions then -- no vote was held: nobody proposed a valid idea
    positions = {}
    for _, e in ipairs(ctx.experts) do
      positions[#positions + 1] = panel.excluded_position(e, "no valid ideas")
    end
  end
  return ctx:done({
    summary = summary,
    recommendation = recommendation,
    consensus = consensus,
    dissent = consensus.dissent,
    positions = positions,
    rounds = rounds,
    ideas = st.ideas,
    developed = st.developed or json.array(),
    excluded = st.excluded,
  })
end

return M
