-- wrk script for bench/intake: POST /api/v1/signalen with a unique partnerSignaalId per
-- request. The body template (with the placeholder @ID@) and the bearer token come from
-- the environment (set by bench/intake.py).
local template = os.getenv("BENCH_SIGNAL_TEMPLATE")
local token = os.getenv("BENCH_TOKEN")
local counter = 0

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("prefix", "W" .. tostring(os.time()) .. "-" .. threads)  -- a global per thread
end

function init(args)
  wrk.method = "POST"
  wrk.path = "/api/v1/signalen"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  counter = counter + 1
  local body = (template:gsub("@ID@", prefix .. "-" .. counter))
  return wrk.format(nil, nil, nil, body)
end
