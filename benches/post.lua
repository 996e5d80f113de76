-- wrk script: POSTs the JSON body held in the file named by the script's first argument
-- (wrk … URL -- FILE), the same bytes on every request.
local request_text
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  wrk.headers["content-type"] = "application/json"
  request_text = wrk.format("POST", nil, nil, body)
end
request = function()
  return request_text
end
