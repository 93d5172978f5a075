-- wrk script: every request is a fresh Fanfare admission webhook, signed in
-- the load generator as Fanfare signs it (HMAC-SHA256 over
-- "{timestamp}.{raw body}" with OpenSSL's libcrypto through LuaJIT's FFI),
-- with its own event id, consumer, grant and delivery id.
-- Environment: BENCH_SECRET, BENCH_NONCE, BENCH_OUT (summary JSON path),
-- BENCH_EXPERIENCES (how many queue ids the admissions spread over).

local ffi = require("ffi")
ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
]]

local crypto
local ok = pcall(function() crypto = ffi.load("crypto") end)
if not ok then crypto = ffi.load("libcrypto.so.3") end

local secret = os.getenv("BENCH_SECRET") or "whsec_bench"
local nonce = os.getenv("BENCH_NONCE") or tostring(os.time())
local experiences = tonumber(os.getenv("BENCH_EXPERIENCES") or "8")
local out_path = os.getenv("BENCH_OUT")

local md = ffi.new("unsigned char[32]")
local md_len = ffi.new("unsigned int[1]")
local hexdigits = {}
for i = 0, 255 do hexdigits[i] = string.format("%02x", i) end

local function hmac_hex(data)
  crypto.HMAC(crypto.EVP_sha256(), secret, #secret, data, #data, md, md_len)
  local parts = {}
  for i = 0, 31 do parts[i + 1] = hexdigits[md[i]] end
  return table.concat(parts)
end

local threads = {}
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  local ts = os.time()
  local stamp = os.date("!%Y-%m-%dT%H:%M:%SZ", ts)
  local uid = nonce .. "-" .. thread_id .. "-" .. counter
  local body = '{"id":"whk-' .. uid .. '","type":"queue.consumer.admitted","timestamp":"'
    .. stamp .. '","organizationId":"org_bench","data":{"queueId":"bench_q'
    .. (counter % experiences) .. '","consumerId":"c-' .. uid .. '","admittedAt":"'
    .. stamp .. '","admissionToken":"grant-' .. uid .. '"}}'
  local tss = tostring(ts)
  local headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "Fanfare-Webhooks/1.0",
    ["X-Fanfare-Event-Type"] = "queue.consumer.admitted",
    ["X-Fanfare-Delivery-Id"] = "dlv-" .. uid,
    ["X-Fanfare-Timestamp"] = tss,
    ["X-Fanfare-Signature"] = "sha256=" .. hmac_hex(tss .. "." .. body),
  }
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  if not out_path then return end
  local f = assert(io.open(out_path, "w"))
  local e = summary.errors
  f:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,'
      .. '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
  f:close()
end
