-- POSTs the file named by the BODY environment variable as JSON and counts
-- the answers by status, and the 429s that carry a Retry-After header.
-- Used by benches/overload.sh for the feedback load (wrk's own summary
-- lumps every non-2xx together).
local path = os.getenv("BODY")
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

statuses = {}
retry_after = 0
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 429 and (headers["retry-after"] or headers["Retry-After"]) then
    retry_after = retry_after + 1
  end
end

function done(summary, latency, requests)
  local total, with_retry = {}, 0
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
    with_retry = with_retry + t:get("retry_after")
  end
  for status, n in pairs(total) do
    io.write("status ", status, " ", n, "\n")
  end
  io.write("retry_after_429 ", with_retry, "\n")
  io.write("latency_p50_us ", latency:percentile(50), "\n")
  io.write("latency_p99_us ", latency:percentile(99), "\n")
end
