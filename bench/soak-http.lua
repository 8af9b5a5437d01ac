-- wrk script for bench/soak.sh: paced HTTP load that counts every response by status.
-- Each connection waits SOAK_DELAY_MS (default 10) between its requests (wrk's delay() hook), so the
-- load stays light and steady whatever the upstream does (an open breaker answers at once).
-- done() prints "RESULT part=<SOAK_PART> requests=N codes=200:n,503:n sockerr=connect:n,read:n,write:n,timeout:n".
local part = os.getenv("SOAK_PART") or "http"
local pause = tonumber(os.getenv("SOAK_DELAY_MS") or "10")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function delay()
  return pause
end

function response(status, headers, body)
  local k = "c" .. status
  _G[k] = (_G[k] or 0) + 1
end

function done(summary, latency, requests)
  local codes = {}
  for code = 100, 599 do
    local n = 0
    for _, t in ipairs(threads) do n = n + (t:get("c" .. code) or 0) end
    if n > 0 then table.insert(codes, code .. ":" .. n) end
  end
  local e = summary.errors
  io.write(string.format("RESULT part=%s requests=%d duration_s=%.1f p50_us=%d p99_us=%d max_us=%d codes=%s sockerr=connect:%d,read:%d,write:%d,timeout:%d\n",
    part, summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    latency.max, table.concat(codes, ","), e.connect, e.read, e.write, e.timeout))
end
