-- entropy: agreement from the Shannon entropy of the position distribution.
--
-- Reads ballot.position (non-empty string, normalised as in majority:
-- trimmed, whitespace collapsed, ASCII lower-cased). With p_j the share of
-- counted ballots holding position j, H = -sum_j p_j ln p_j and the largest
-- entropy possible is ln K, where K is #opts.options when given, else the
-- number of counted ballots (each expert could have said something else).
--
-- level    1 - H / ln K: 1 when everyone holds one position, 0 when the
--          ballots are spread evenly over as many positions as possible.
--          K = 1 (one ballot, or one option) gives 1.
-- position the plurality position (tie-break as in majority: most ballots,
--          then larger summed confidence, then smaller normalised position).
-- dissent  counted ballots not holding that position.
-- details  entropy, max_entropy, shares {position = p}, n, ignored.
return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local allowed, k_options = panel.option_set(opts.options)
  local order, ignored = panel.tally(ballots, allowed)
  local n = 0
  for _, g in ipairs(order) do
    n = n + g.count
  end
  if n == 0 then
    return { algorithm = "entropy", level = 0, position = nil, dissent = json.array(),
             details = { n = 0, ignored = ignored, entropy = 0, max_entropy = 0, shares = {} } }
  end
  local h, shares = 0, {}
  for _, g in ipairs(order) do
    local p = g.count / n
    shares[g.position] = p
    h = h - p * math.log(p)
  end
  local k = allowed and k_options or n
  local hmax = k > 1 and math.log(k) or 0
  local level = hmax > 0 and 1 - h / hmax or 1
  local winner = panel.by_count(order)[1]
  local dissent = panel.dissent(ballots, winner.key, panel.ballot_position, allowed)
  return {
    algorithm = "entropy",
    level = math.max(0, math.min(1, level)),
    position = winner.position,
    dissent = dissent,
    details = { entropy = h, max_entropy = hmax, shares = shares, n = n, ignored = ignored },
  }
end
