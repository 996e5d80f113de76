-- wrk script: a different 100-order getOrders page on each request (?page=0…49), so that no
-- token is remembered from an earlier response.
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/orders/v0/orders?page=" .. (counter % 50))
end
