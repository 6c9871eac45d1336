-- wrk speaks to an origin, not to a proxy; this script makes it send what a
-- browser sends to a forward proxy: the absolute-form URL, the site's Host
-- header and the user's Proxy-Authorization, cycling through a traffic mix.
--
--   wrk -t1 -c16 -d10s -s benchmarks/wrk-proxy.lua http://127.0.0.1:PROXYPORT \
--       -- "GET http://www.linkedin.com/feed/ Basic BASE64(user:pw)" ...
--
-- Each argument is "METHOD URL [AUTHORIZATION]" (benchmarks/loadgen.py,
-- Call.wrk_spec).  done() prints one JSON line that loadgen.wrk_result reads.

local requests = {}
local counter = 0

function init(args)
  for _, spec in ipairs(args) do
    local method, url, auth = spec:match("^(%S+) (%S+) ?(.*)$")
    local headers = {["Host"] = url:match("^http://([^/]+)"), ["Accept"] = "*/*"}
    if auth ~= "" then
      headers["Proxy-Authorization"] = auth
    end
    requests[#requests + 1] = wrk.format(method, url, headers)
  end
end

function request()
  counter = counter + 1
  return requests[(counter % #requests) + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
