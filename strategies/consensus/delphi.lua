-- delphi: the statistics a Delphi round feeds back — median and interquartile
-- range of the estimates — and whether they have stopped moving.
--
-- Reads ballot.estimate (finite number; anything else is ignored).
-- Quartiles use linear interpolation between order statistics (the usual
-- "type 7" definition): q(p) = x[h] + (h - floor h)(x[h+1] - x[h]) with
-- h = 1 + (n - 1) p over the sorted estimates x[1..n].
--
-- opts.scale     positive number the IQR is measured against (e.g. the width
--                of the answer range); default |median| (or 1 when the
--                median is 0).
-- opts.previous  the previous round's delphi result; enables details.stable.
-- opts.tolerance relative change (of scale) below which median and IQR count
--                as unchanged; default 0.05.
--
-- level    1 - IQR / scale, clamped to [0,1]: 1 when the middle half agrees
--          exactly, 0 when it spreads over a whole scale or more.
-- position the median (a number; nil without estimates).
-- dissent  ballots whose estimate lies outside [q1, q3].
-- details  median, q1, q3, iqr, mean, min, max, n, ignored, scale and, with
--          opts.previous, median_change, iqr_change, stable.
local finite = panel.finite

local function quantile(sorted, p)
  local n = #sorted
  local h = 1 + (n - 1) * p
  local lo = math.floor(h)
  local hi = math.min(lo + 1, n)
  return sorted[lo] + (h - lo) * (sorted[hi] - sorted[lo])
end

local function positive(x)
  return finite(x) and x > 0
end

return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local xs, ignored = {}, 0
  for _, b in ipairs(ballots) do
    if type(b) == "table" and finite(b.estimate) then
      xs[#xs + 1] = b.estimate
    else
      ignored = ignored + 1
    end
  end
  if #xs == 0 then
    return { algorithm = "delphi", level = 0, position = nil, dissent = json.array(),
             details = { n = 0, ignored = ignored } }
  end
  table.sort(xs)
  local mean = 0
  for _, x in ipairs(xs) do
    mean = mean + x / #xs -- divided first so huge estimates cannot overflow the sum
  end
  local median, q1, q3 = quantile(xs, 0.5), quantile(xs, 0.25), quantile(xs, 0.75)
  local iqr = q3 - q1
  local scale = positive(opts.scale) and opts.scale or (median ~= 0 and math.abs(median) or 1)
  local level = 1 - iqr / scale
  if not finite(level) then
    level = 0
  end
  local details = { median = median, q1 = q1, q3 = q3, iqr = iqr, mean = mean, min = xs[1],
                    max = xs[#xs], n = #xs, ignored = ignored, scale = scale }
  local prev = type(opts.previous) == "table" and type(opts.previous.details) == "table" and opts.previous.details
  if prev and finite(prev.median) and finite(prev.iqr) then
    local tol = positive(opts.tolerance) and opts.tolerance or 0.05
    details.median_change = median - prev.median
    details.iqr_change = iqr - prev.iqr
    details.stable = math.abs(details.median_change) <= tol * scale and math.abs(details.iqr_change) <= tol * scale
  end
  local dissent = json.array()
  for _, b in ipairs(ballots) do
    if type(b) == "table" and finite(b.estimate) and (b.estimate < q1 or b.estimate > q3) then
      dissent[#dissent + 1] = { expert = b.expert, name = b.name, position = b.estimate, reason = b.reason }
    end
  end
  return {
    algorithm = "delphi",
    level = math.max(0, math.min(1, level)),
    position = median,
    dissent = dissent,
    details = details,
  }
end
