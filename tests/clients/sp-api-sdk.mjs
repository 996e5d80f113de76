// The typed @sp-api-sdk packages (npm: auth 3.1.4, common 4.0.4, orders-api-v0 6.2.5,
// orders-api-2026-01-01 2.3.3) through spapi-guard.
//
// Setup, as docs/CLIENTS.md shows it:
// - endpoint: OrdersApiClient takes only a region (its endpoint is Amazon's), so build the same
//   client from the packages' public parts: `createAxiosInstance(configuration, clientRateLimits)`
//   (@sp-api-sdk/common: auth, retry on 429, errors) and `new OrdersApi(undefined, endpoint, axios)`.
// - mTLS: axios.defaults.httpsAgent = new https.Agent({ ca, cert, key })
// - retries: rateLimiting: { retry: true }, the packages' documented setting for 429s
// - LWA: SellingPartnerApiAuth posts to https://api.amazon.com/auth/o2/token with an axios
//   instance of its own and no setting. In production that is right (the token exchange does not
//   go through spapi-guard). Here a subclass whose getAccessToken() asks the LWA stand-in (the
//   same refresh_token grant) replaces it.
import https from 'node:https'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import axios from 'axios'
import { SellingPartnerApiAuth } from '@sp-api-sdk/auth'
import { createAxiosInstance } from '@sp-api-sdk/common'
import * as v0 from '@sp-api-sdk/orders-api-v0'
import * as v2026 from '@sp-api-sdk/orders-api-2026-01-01'
import { errorCode, run, split } from './common.mjs'

class StandInAuth extends SellingPartnerApiAuth {
  constructor (parameters, tokenUrl) {
    super(parameters)
    this.tokenUrl = tokenUrl
  }

  async getAccessToken () {
    if (this.token) return this.token
    const { data } = await axios.post(this.tokenUrl, new URLSearchParams({
      grant_type: 'refresh_token', refresh_token: this.refreshToken, client_id: this.clientId, client_secret: this.clientSecret
    }))
    this.token = data.access_token
    return this.token
  }
}

function makeClient (config, caller, via) {
  const endpoint = via === 'guard' ? config.guard : config.direct
  const auth = new StandInAuth({ clientId: 'amzn1.application-oa2-client.test', clientSecret: 'test-secret', refreshToken: `Atzr|test-${caller}` }, config.lwa)
  const agent = via === 'guard'
    ? new https.Agent({
      ca: readFileSync(join(config.tls, 'ca.crt')),
      cert: readFileSync(join(config.tls, `${caller}.crt`)),
      key: readFileSync(join(config.tls, `${caller}.key`))
    })
    : undefined
  const state = { retries: [] }
  const build = (pkg) => {
    const { axios: instance } = createAxiosInstance({ auth, region: 'na', rateLimiting: { retry: true, onRetry: (info) => state.retries.push(info.delay) } }, pkg.clientRateLimits)
    if (agent) instance.defaults.httpsAgent = agent
    return new pkg.OrdersApi(undefined, endpoint, instance)
  }
  return { v0: build(v0), v2026: build(v2026), state }
}

async function call (client, c, result) {
  const options = { headers: { 'x-mock-fixture': c.fixture ?? '' } }
  const q = c.query
  // Retries the client made on its own (delays in ms), reported with the result.
  client.state.retries = []
  result.retries = client.state.retries
  let response
  switch (c.op) {
    case 'v0.getOrders': {
      const p = { marketplaceIds: split(q.MarketplaceIds ?? 'ATVPDKIKX0DER'), createdAfter: q.CreatedAfter ?? '2020-01-01T00:00:00Z' }
      if (q.NextToken) p.nextToken = q.NextToken
      response = await client.v0.getOrders(p, options)
      break
    }
    case 'v0.getOrder': response = await client.v0.getOrder({ orderId: c.orderId }, options); break
    case 'v0.getOrderAddress': response = await client.v0.getOrderAddress({ orderId: c.orderId }, options); break
    case 'v0.getOrderBuyerInfo': response = await client.v0.getOrderBuyerInfo({ orderId: c.orderId }, options); break
    case 'v0.getOrderItems': response = await client.v0.getOrderItems({ orderId: c.orderId }, options); break
    case 'v0.getOrderItemsBuyerInfo': response = await client.v0.getOrderItemsBuyerInfo({ orderId: c.orderId }, options); break
    case 'v0.getOrderRegulatedInfo': response = await client.v0.getOrderRegulatedInfo({ orderId: c.orderId }, options); break
    case '2026.searchOrders': {
      const p = { createdAfter: q.createdAfter ?? '2025-01-01T00:00:00Z', marketplaceIds: split(q.marketplaceIds ?? 'ATVPDKIKX0DER') }
      if (q.includedData) p.includedData = split(q.includedData)
      if (q.paginationToken) p.paginationToken = q.paginationToken
      response = await client.v2026.searchOrders(p, options)
      break
    }
    case '2026.getOrder': {
      const p = { orderId: c.orderId }
      if (q.includedData) p.includedData = split(q.includedData)
      response = await client.v2026.getOrder(p, options)
      break
    }
    default: throw new Error(`unknown op ${c.op}`)
  }
  return response.data
}

// SellingPartnerApiError (an AxiosError): .response.status and .response.data.
function describeError (err) {
  if (err?.response && typeof err.response.status === 'number') return [err.response.status, errorCode(err.response.data)]
  return null
}

await run(makeClient, call, describeError)
