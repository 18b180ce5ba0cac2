-- approval: every ballot approves any number of options; most approvals wins.
--
-- Reads ballot.approvals, an array of option names (repeats count once). The
-- options are opts.options when given (other names are skipped), else every
-- name that appears. A ballot whose approvals is not an array is ignored; an
-- empty array is a valid ballot that approves nothing.
--
-- level    share of counted ballots that approve the winner.
-- position the most approved option (nil when no option has an approval).
-- dissent  counted ballots that do not approve the winner.
-- details  approvals {option=count}, order (best first), n, ignored.
-- Tie-break: most approvals, then the smaller name in byte order.
local function known_set(given)
  if type(given) ~= "table" or #given == 0 then
    return nil
  end
  local set = {}
  for _, o in ipairs(given) do
    if type(o) == "string" then
      set[o] = true
    end
  end
  return set
end

local function approved(list, known)
  local out, seen = {}, {}
  for _, o in ipairs(list) do
    if type(o) == "string" and o ~= "" and not seen[o] and (not known or known[o]) then
      seen[o] = true
      out[#out + 1] = o
    end
  end
  return out, seen
end

return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local known = known_set(opts.options)
  local counts, order, sets, n, ignored = {}, json.array(), {}, 0, 0
  if known then
    for _, o in ipairs(opts.options) do
      if type(o) == "string" and counts[o] == nil then
        counts[o] = 0
        order[#order + 1] = o
      end
    end
  end
  for i, b in ipairs(ballots) do
    if type(b) == "table" and type(b.approvals) == "table" then
      n = n + 1
      local list, set = approved(b.approvals, known)
      sets[i] = set
      for _, o in ipairs(list) do
        if counts[o] == nil then
          counts[o] = 0
          order[#order + 1] = o
        end
        counts[o] = counts[o] + 1
      end
    else
      ignored = ignored + 1
    end
  end
  table.sort(order, function(a, b)
    if counts[a] ~= counts[b] then
      return counts[a] > counts[b]
    end
    return a < b
  end)
  local winner = order[1]
  if n == 0 or not winner or counts[winner] == 0 then
    return { algorithm = "approval", level = 0, position = nil, dissent = json.array(),
             details = { n = n, ignored = ignored, approvals = counts, order = order } }
  end
  local dissent = json.array()
  for i, b in ipairs(ballots) do
    if sets[i] and not sets[i][winner] then
      dissent[#dissent + 1] = { expert = b.expert, name = b.name, position = b.position, reason = b.reason }
    end
  end
  return {
    algorithm = "approval",
    level = counts[winner] / n,
    position = winner,
    dissent = dissent,
    details = { n = n, ignored = ignored, approvals = counts, order = order },
  }
end
