-- POSTs the file named by BODY to each path listed (one per line) in the
-- file named by PATHS, in turn: one wrk run spread over many models.
-- Used by benches/many_models.sh. Counts answers by status.
local f = assert(io.open(os.getenv("BODY"), "rb"))
local body = f:read("*a")
f:close()
local paths = {}
for line in io.lines(os.getenv("PATHS")) do
  if line ~= "" then table.insert(paths, line) end
end

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local i = 0
statuses = {}
function init(args)
  i = (id or 0) * 7919
end

function request()
  i = i + 1
  local path = paths[(i % #paths) + 1]
  return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end

-- DELAY_MS (optional): each connection waits this long before each
-- request, a fixed offered load instead of as fast as answers come.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "")
if delay_ms and delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write("status ", status, " ", n, "\n")
  end
  io.write("requests ", summary.requests, "\n")
  io.write("latency_p50_us ", latency:percentile(50), "\n")
  io.write("latency_p99_us ", latency:percentile(99), "\n")
end
