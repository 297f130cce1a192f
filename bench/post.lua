-- wrk script: POST the review in BODY_FILE to /validate?timeout=10s, as the API server does.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = "/validate?timeout=10s"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

-- UID_VARY=1: every request gets its own request uid (as the API server sends), so
-- per-uid de-duplication of notifications does not hide the notification load.
if os.getenv("UID_VARY") == "1" then
  local template = body
  local counter = 0
  request = function()
    counter = counter + 1
    local b = string.gsub(template, '"uid": "[^"]*"', string.format('"uid": "bench-%012d"', counter), 1)
    return wrk.format(nil, nil, nil, b)
  end
end

-- RATE > 0: each connection waits between requests so that all CONNS together send about
-- RATE requests a second (an open-loop approximation for "latency at half the maximum").
local rate = tonumber(os.getenv("RATE") or "0")
local conns = tonumber(os.getenv("CONNS") or "1")
if rate > 0 then
  local gap_ms = conns * 1000 / rate
  delay = function() return gap_ms end
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d non2xx=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
