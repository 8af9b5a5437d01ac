-- wrk script for bench/sql.sh: Neon SQL-over-HTTP point selects by primary key, as the
-- @neondatabase/serverless driver sends them (POST /sql, raw text output, array mode).
-- Every response must be 200 with exactly one row; anything else is counted (non200 / badbody)
-- and reported on the RESULT line printed by done().
-- Env: SQL_CONNSTR (Neon-Connection-String), SQL_ACCOUNTS (aid range, 100000 * pgbench scale).
local connstr = os.getenv("SQL_CONNSTR") or "postgresql://postgres:bench@localhost/bench"
local accounts = tonumber(os.getenv("SQL_ACCOUNTS") or "1000000")
local body_fmt = '{"query":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":["%d"]}'

wrk.method = "POST"
wrk.headers["Neon-Connection-String"] = connstr
wrk.headers["Neon-Raw-Text-Output"] = "true"
wrk.headers["Neon-Array-Mode"] = "true"
wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  non200 = 0
  badbody = 0
  first_bad = ""
  math.randomseed(os.time() * 1000 + (id or 0))
end

function request()
  return wrk.format(nil, nil, nil, string.format(body_fmt, math.random(1, accounts)))
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 200) end
  elseif not string.find(body, '"rowCount":1,', 1, true) then
    badbody = badbody + 1
    if first_bad == "" then first_bad = "200 " .. string.sub(body or "", 1, 200) end
  end
end

function done(summary, latency, requests)
  local n, b, first = 0, 0, ""
  for _, t in ipairs(threads) do
    n = n + (t:get("non200") or 0)
    b = b + (t:get("badbody") or 0)
    local f = t:get("first_bad") or ""
    if first == "" then first = f end
  end
  local s = summary.duration / 1e6
  local e = summary.errors
  local ok = summary.requests - n - b
  io.write(string.format(
    "RESULT requests=%d ok=%d duration_s=%.3f qps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d sockerr=%d non200=%d badbody=%d\n",
    summary.requests, ok, s, ok / s,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, n, b))
  if first ~= "" then io.write("FIRST_BAD " .. string.gsub(first, "\n", " ") .. "\n") end
end
