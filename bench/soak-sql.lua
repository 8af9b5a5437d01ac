-- wrk script for bench/soak.sh: Neon SQL-over-HTTP batches (POST /sql {"queries":[...]}) and single
-- queries, as @neondatabase/serverless sends them, paced by SOAK_DELAY_MS (default 20) per connection.
-- Mix (by request number): most are a 3-query batch (a parameterised SELECT, an UPDATE of one of 64
-- rows, a SELECT of 8 rows); every 10th a single query returning 2,000 rows (~30 KiB of JSON); every 25th
-- a batch whose second query fails (division by zero: 400 and a rolled-back transaction, the pooled
-- connection kept). A 200 is checked for "results" (batch) or "rowCount" (single).
-- done() prints "RESULT part=sql requests=N codes=200:n,400:n badbody=n sockerr=...".
-- Env: SQL_CONNSTR (Neon-Connection-String), SOAK_DELAY_MS.
local connstr = os.getenv("SQL_CONNSTR") or "postgresql://soak:soak@localhost/soak"
local pause = tonumber(os.getenv("SOAK_DELAY_MS") or "20")
local threads = {}

wrk.method = "POST"
wrk.headers["Neon-Connection-String"] = connstr
wrk.headers["Neon-Raw-Text-Output"] = "true"
wrk.headers["Neon-Array-Mode"] = "true"
wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"

local batch = '{"queries":[{"query":"SELECT $1::int * 2 AS n","params":["%d"]},'
  .. '{"query":"UPDATE counters SET n = n + 1 WHERE id = $1","params":["%d"]},'
  .. '{"query":"SELECT id, n FROM counters WHERE id <= $1 ORDER BY id","params":["8"]}]}'
local failing = '{"queries":[{"query":"SELECT 1 AS one","params":[]},'
  .. '{"query":"SELECT 1 / $1::int AS boom","params":["0"]}]}'
local big = '{"query":"SELECT g, md5(g::text) FROM generate_series(1, $1::int) AS g","params":["2000"]}'

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  n = 0
  badbody = 0
  math.randomseed(os.time() + #threads)
end

function delay()
  return pause
end

function request()
  n = n + 1
  local body
  if n % 25 == 0 then
    body = failing
  elseif n % 10 == 0 then
    body = big
  else
    body = string.format(batch, math.random(1, 1000), math.random(1, 64))
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  local k = "c" .. status
  _G[k] = (_G[k] or 0) + 1
  if status == 200 and not (string.find(body, '"results":[', 1, true) or string.find(body, '"rowCount":2000', 1, true)) then
    badbody = badbody + 1
  end
end

function done(summary, latency, requests)
  local codes, bad = {}, 0
  for code = 100, 599 do
    local c = 0
    for _, t in ipairs(threads) do c = c + (t:get("c" .. code) or 0) end
    if c > 0 then table.insert(codes, code .. ":" .. c) end
  end
  for _, t in ipairs(threads) do bad = bad + (t:get("badbody") or 0) end
  local e = summary.errors
  io.write(string.format("RESULT part=sql requests=%d duration_s=%.1f p50_us=%d p99_us=%d max_us=%d codes=%s badbody=%d sockerr=connect:%d,read:%d,write:%d,timeout:%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(codes, ","), bad, e.connect, e.read, e.write, e.timeout))
end
