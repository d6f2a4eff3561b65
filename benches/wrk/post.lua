-- POSTs the file named by the BODY environment variable as JSON.
-- Used by benches/load.sh for both eddy and the no-op baseline.
local path = os.getenv("BODY")
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write("latency_p50_us ", latency:percentile(50), "\n")
  io.write("latency_p99_us ", latency:percentile(99), "\n")
end
