-- borda: rank aggregation by Borda count.
--
-- Reads ballot.ranking, an array of option names, best first. The options are
-- opts.options when given, else every name that appears in some ranking. With
-- m options, the option a ballot ranks i-th (1-based) earns m - i points;
-- options a ballot leaves out earn 0 (a truncated ballot); repeated or unknown
-- names in a ranking are skipped. A ballot with no usable ranking is ignored.
--
-- level    winner's points / the most it could earn (n ballots x (m - 1)):
--          1 when every ballot puts the winner first. With a single option
--          level is 1.
-- position the option with the most points.
-- dissent  ballots whose first choice is not the winner.
-- details  scores {option=points}, order (all options, best first),
--          first_places {option=count}, n, m, ignored.
-- Tie-break: most points, then most first places, then the smaller name in
-- byte order.
-- The usable part of a ranking: known options, first occurrence only.
local function usable(ranking, known)
  local out, seen = {}, {}
  if type(ranking) ~= "table" then
    return out
  end
  for _, o in ipairs(ranking) do
    if type(o) == "string" and known[o] and not seen[o] then
      seen[o] = true
      out[#out + 1] = o
    end
  end
  return out
end

return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local options, known = panel.option_names(ballots, opts.options, "ranking")
  local m = #options
  local scores, firsts = {}, {}
  for _, o in ipairs(options) do
    scores[o], firsts[o] = 0, 0
  end
  local n, ignored, tops = 0, 0, {}
  for i, b in ipairs(ballots) do
    local r = usable(type(b) == "table" and b.ranking or nil, known)
    if #r == 0 then
      ignored = ignored + 1
    else
      n = n + 1
      tops[i] = r[1]
      firsts[r[1]] = firsts[r[1]] + 1
      for pos, o in ipairs(r) do
        scores[o] = scores[o] + (m - pos)
      end
    end
  end
  if n == 0 then
    return { algorithm = "borda", level = 0, position = nil, dissent = json.array(),
             details = { n = 0, m = m, ignored = ignored, scores = scores, order = json.array(), first_places = firsts } }
  end
  local order = panel.sorted_by(options, function(a, b)
    if scores[a] ~= scores[b] then
      return scores[a] > scores[b]
    end
    if firsts[a] ~= firsts[b] then
      return firsts[a] > firsts[b]
    end
  end)
  local winner = order[1]
  local dissent = json.array()
  for i, b in ipairs(ballots) do
    if tops[i] and tops[i] ~= winner then
      dissent[#dissent + 1] = { expert = b.expert, name = b.name, position = tops[i], reason = b.reason }
    end
  end
  local level = m > 1 and scores[winner] / (n * (m - 1)) or 1
  return {
    algorithm = "borda",
    level = level,
    position = winner,
    dissent = dissent,
    details = { n = n, m = m, ignored = ignored, scores = scores, order = order, first_places = firsts },
  }
end
