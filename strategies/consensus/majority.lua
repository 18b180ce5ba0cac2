-- majority: plurality over discrete positions.
--
-- Reads ballot.position (a non-empty string). Positions are compared after
-- trimming and collapsing whitespace and lower-casing ASCII letters, so
-- "Approve" and " approve " are one position; the first spelling seen is the
-- one reported. Other bytes (any UTF-8) are compared as they are.
--
-- opts.options (optional array of strings): only these positions count; a
-- ballot for anything else is ignored.
--
-- level    share of counted ballots that hold the winning position.
-- position the winning position (nil when nothing was counted).
-- dissent  every counted ballot whose position is not the winner.
-- Tie-break (deterministic, independent of ballot order): most ballots, then
-- the larger summed finite confidence, then the smaller normalised position
-- in byte order. details.tie lists the positions that shared the top count.
return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local allowed = panel.option_set(opts.options)
  local order, ignored = panel.tally(ballots, allowed)
  local counted = #ballots - ignored
  local counts, tie = {}, {}
  for _, g in ipairs(order) do
    counts[g.position] = g.count
  end
  if counted == 0 then
    return { algorithm = "majority", level = 0, position = nil, dissent = json.array(),
             details = { n = 0, ignored = ignored, counts = counts, tie = json.array() } }
  end
  panel.by_count(order)
  local winner = order[1]
  for _, g in ipairs(order) do
    if g.count == winner.count then
      tie[#tie + 1] = g.position
    end
  end
  local dissent = panel.dissent(ballots, winner.key, panel.ballot_position, allowed)
  return {
    algorithm = "majority",
    level = winner.count / counted,
    position = winner.position,
    dissent = dissent,
    details = { n = counted, ignored = ignored, counts = counts, votes = winner.count,
                tie = #tie > 1 and tie or json.array() },
  }
end
