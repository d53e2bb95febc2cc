-- The agent protocol under load (protocol 2): lease a batch, then post its results in one call, as the
-- reference agent does. wrk calls request() whenever one of this thread's connections is free and
-- response() for every answer on any of them, so the leased batches wait in a per-thread queue until a free
-- connection posts their results. Set by bench/load.py: AGENT_TOKEN, MAX_JOBS.
local token = os.getenv("AGENT_TOKEN")
local lease_body = string.format('{"wait_seconds": 0, "max_jobs": %s, "protocol": 2}', os.getenv("MAX_JOBS"))
local pending = {}
counts = {lease = 0, results = 0, empty = 0, refused = 0}

local headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}

local stats = '"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 4.0, "n": 10'

function request()
  local body = table.remove(pending)
  if body then
    return wrk.format("POST", "/v1/agent/results", headers, body)
  end
  return wrk.format("POST", "/v1/agent/lease", headers, lease_body)
end

function response(status, _, body)
  if status == 204 then
    counts.empty = counts.empty + 1
    return
  end
  if status ~= 200 then
    counts.refused = counts.refused + 1
    return
  end
  if body:find('"acks"', 1, true) then
    counts.results = counts.results + 1
    return
  end
  local lease = body:match('"lease_token":%s*"([^"]+)"')  -- the batch's token comes first, before its jobs
  counts.lease = counts.lease + 1
  local items = {}
  for id in body:gmatch('"job_id":%s*(%d+)') do
    table.insert(items, '{"job_id": ' .. id .. ', ' .. stats .. '}')
  end
  table.insert(pending, '{"lease_token": "' .. lease .. '", "results": [' .. table.concat(items, ", ") .. ']}')
end
