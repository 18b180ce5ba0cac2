-- weighted: plurality where each ballot counts confidence x expert weight.
--
-- Reads ballot.position (non-empty string), ballot.confidence (finite, clamped
-- to [0,1]) and ballot.weight (finite and >= 0, capped at 1e9;
-- missing means 1). A ballot
-- without a usable position or confidence, or with a negative or non-finite
-- weight, is ignored (details.ignored). Positions are normalised as in
-- majority (trimmed, whitespace collapsed, ASCII lower-cased).
--
-- opts.options (optional array of strings): only these positions count.
--
-- level    winning score / total score (0 when every score is 0).
-- position the position with the highest score.
-- dissent  counted ballots for any other position.
-- Tie-break: highest score, then most ballots, then the smaller normalised
-- position in byte order.
-- Returns the ballot's normalised position and its score, or nil when the
-- ballot cannot be counted.
local function score_of(b, allowed)
  if type(b) ~= "table" then
    return nil
  end
  local shown, key = panel.normalise(b.position)
  if not key or (allowed and not allowed[key]) or not panel.finite(b.confidence) then
    return nil
  end
  local w = b.weight
  if w == nil then
    w = 1
  end
  if not panel.finite(w) or w < 0 then
    return nil
  end
  -- A cap keeps the total finite whatever the roster says.
  return shown, key, math.max(0, math.min(1, b.confidence)) * math.min(w, 1e9)
end

return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local allowed = panel.option_set(opts.options)
  local groups, order, ignored, total = {}, {}, 0, 0
  for _, b in ipairs(ballots) do
    local shown, key, s = score_of(b, allowed)
    if key then
      local g = groups[key]
      if not g then
        g = { key = key, position = shown, score = 0, count = 0 }
        groups[key] = g
        order[#order + 1] = g
      end
      g.score = g.score + s
      g.count = g.count + 1
      total = total + s
    else
      ignored = ignored + 1
    end
  end
  local scores = {}
  for _, g in ipairs(order) do
    scores[g.position] = g.score
  end
  if #order == 0 then
    return { algorithm = "weighted", level = 0, position = nil, dissent = json.array(),
             details = { n = 0, ignored = ignored, scores = scores, total = 0 } }
  end
  table.sort(order, function(a, b)
    if a.score ~= b.score then
      return a.score > b.score
    end
    if a.count ~= b.count then
      return a.count > b.count
    end
    return a.key < b.key
  end)
  local winner, tie = order[1], {}
  for _, g in ipairs(order) do
    if g.score == winner.score then
      tie[#tie + 1] = g.position
    end
  end
  local dissent = panel.dissent(ballots, winner.key, score_of, allowed)
  local level = total > 0 and winner.score / total or 0
  return {
    algorithm = "weighted",
    level = math.max(0, math.min(1, level)),
    position = winner.position,
    dissent = dissent,
    details = { n = #ballots - ignored, ignored = ignored, scores = scores, total = total,
                tie = #tie > 1 and tie or json.array() },
  }
end
