-- wrk script for the mterelay bench: POST a fixed body, optional think time,
-- and one machine-readable JSON line from done().
--
-- Arguments (after `--` on the wrk command line), each `key=value`:
--   body=N            request body size in bytes (default 1024)
--   header=Name:Value an extra request header (repeatable)
--   delay=MS          mean think time per connection between an answer and
--                     the next request (float, ms; 0 = closed loop, no delay)
-- Think times are drawn uniformly from [0.5, 1.5] x MS so connections do not
-- march in lockstep, and rounded stochastically because wrk's delay() is
-- whole milliseconds.

local mean_delay = 0

function init(args)
   local size = 1024
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   for _, arg in ipairs(args) do
      local key, value = arg:match("^([^=]+)=(.*)$")
      if key == "body" then
         size = tonumber(value)
      elseif key == "delay" then
         mean_delay = tonumber(value)
      elseif key == "header" then
         local name, hvalue = value:match("^([^:]+):%s*(.*)$")
         wrk.headers[name] = hvalue
      end
   end
   -- A JSON document of exactly `size` bytes: {"data":"xxxx..."}
   wrk.body = '{"data":"' .. string.rep("x", size - 11) .. '"}'
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

if true then
   -- delay() must exist before wrk inspects the script, so it is always
   -- defined; it returns 0 (no think time) unless delay=MS was given.
   function delay()
      if mean_delay <= 0 then
         return 0
      end
      local wanted = mean_delay * (0.5 + math.random())
      local whole = math.floor(wanted)
      if math.random() < wanted - whole then
         whole = whole + 1
      end
      return whole
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
      '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99.9":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end
