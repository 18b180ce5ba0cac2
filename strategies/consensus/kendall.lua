-- kendall: Kendall's coefficient of concordance (W) over the experts' rankings.
--
-- Reads ballot.ranking, an array best first whose elements are option names
-- or arrays of names that tie, e.g. { "a", { "b", "c" }, "d" }. Items are
-- opts.options when given, else every name that appears. Options a ballot
-- leaves out tie for the remaining places at the bottom. Repeated or unknown
-- names are skipped; a ballot with no usable name is ignored.
--
-- With m rankers and n items, tied items get the mean of the places they
-- share, R_i is the sum of item i's ranks, S = sum (R_i - m(n+1)/2)^2 and
--   W = 12 S / (m^2 (n^3 - n) - m sum_j T_j),   T_j = sum over ranker j's
--   tie groups of (t^3 - t)
-- (the tie-corrected form). W is 1 when all rankings agree and 0 when they
-- cancel out. With fewer than two items W is 1 (nothing to disagree on); when
-- every ranker ties everything the denominator vanishes and W is 0.
--
-- level    W.
-- position the item with the smallest rank sum (the consensus favourite).
-- dissent  rankers who do not place that item at their top.
-- details  w, chi_square = m (n - 1) W (df = n - 1), rank_sums, order, m, n,
--          ignored.
-- Tie-break for order: smaller rank sum, then the smaller name in byte order.
-- Groups of a ranking: arrays of known, not yet seen names, in order.
local function groups_of(ranking, known)
  local groups, seen = {}, {}
  if type(ranking) ~= "table" then
    return groups
  end
  for _, e in ipairs(ranking) do
    local g = {}
    for _, o in ipairs(type(e) == "table" and e or { e }) do
      if type(o) == "string" and known[o] and not seen[o] then
        seen[o] = true
        g[#g + 1] = o
      end
    end
    if #g > 0 then
      groups[#groups + 1] = g
    end
  end
  return groups
end

-- Ranks {item=rank} for one ballot and its tie term sum (t^3 - t).
local function ranks_of(groups, items)
  local ranks, place, ties = {}, 1, 0
  local function assign(g)
    local t = #g
    for _, o in ipairs(g) do
      ranks[o] = place + (t - 1) / 2
    end
    ties = ties + (t * t * t - t)
    place = place + t
  end
  for _, g in ipairs(groups) do
    assign(g)
  end
  local rest = {}
  for _, o in ipairs(items) do
    if not ranks[o] then
      rest[#rest + 1] = o
    end
  end
  if #rest > 0 then
    assign(rest)
  end
  return ranks, ties
end

return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local items, known = panel.option_names(ballots, opts.options, "ranking", true)
  local n = #items
  local sums = {}
  for _, o in ipairs(items) do
    sums[o] = 0
  end
  local m, ignored, tie_total, per = 0, 0, 0, {}
  for i, b in ipairs(ballots) do
    local groups = groups_of(type(b) == "table" and b.ranking or nil, known)
    if #groups == 0 then
      ignored = ignored + 1
    else
      local ranks, ties = ranks_of(groups, items)
      m = m + 1
      tie_total = tie_total + ties
      per[i] = ranks
      for o, r in pairs(ranks) do
        sums[o] = sums[o] + r
      end
    end
  end
  if m == 0 then
    return { algorithm = "kendall", level = 0, position = nil, dissent = json.array(),
             details = { w = 0, m = 0, n = n, ignored = ignored, rank_sums = sums, order = json.array() } }
  end
  local mean = m * (n + 1) / 2
  local s = 0
  for _, o in ipairs(items) do
    s = s + (sums[o] - mean) ^ 2
  end
  local denom = m * m * (n * n * n - n) - m * tie_total
  local w
  if n < 2 then
    w = 1
  elseif denom <= 0 then
    w = 0
  else
    w = math.max(0, math.min(1, 12 * s / denom))
  end
  local order = panel.sorted_by(items, function(a, b)
    if sums[a] ~= sums[b] then
      return sums[a] < sums[b]
    end
  end)
  local winner = order[1]
  local dissent = json.array()
  for i, b in ipairs(ballots) do
    local ranks = per[i]
    if ranks then
      local best, top = math.huge, nil
      for _, o in ipairs(items) do
        if ranks[o] < best then
          best, top = ranks[o], o
        end
      end
      if ranks[winner] > best then
        dissent[#dissent + 1] = { expert = b.expert, name = b.name, position = top, reason = b.reason }
      end
    end
  end
  return {
    algorithm = "kendall",
    level = w,
    position = winner,
    dissent = dissent,
    details = { w = w, chi_square = m * (n - 1) * w, m = m, n = n, ignored = ignored, rank_sums = sums,
                order = order },
  }
end
