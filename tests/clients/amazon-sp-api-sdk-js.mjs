// Amazon's official JS SDK (npm @amazon-sp-api-release/amazon-sp-api-sdk-js 1.12.0) through spapi-guard.
//
// Setup, as docs/CLIENTS.md shows it:
// - endpoint: new ApiClient('https://<spapi-guard>')
// - mTLS: apiClient.requestAgent = new https.Agent({ ca, cert, key }) (superagent's agent)
// - LWA: apiClient.enableAutoRetrievalAccessToken(clientId, clientSecret, refreshToken), which
//   posts to https://api.amazon.com/auth/o2/token — a URL written into the SDK with no setting.
//   In production that is right (the token exchange does not go through spapi-guard). Here, to
//   reach the LWA stand-in, a documented monkeypatch: superagent.post is wrapped so that this one
//   URL goes to the stand-in (the SDK and this script share node_modules/superagent).
import https from 'node:https'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import superagent from 'superagent'
import { OrdersSpApi, Orders_v2026SpApi } from '@amazon-sp-api-release/amazon-sp-api-sdk-js'
import { errorCode, run, split } from './common.mjs'

const AMAZON_LWA = 'https://api.amazon.com/auth/o2/token'

function patchLwa (standIn) {
  const post = superagent.post
  superagent.post = (url, ...rest) => post.call(superagent, url === AMAZON_LWA ? standIn : url, ...rest)
}

function makeClient (config, caller, via) {
  const endpoint = via === 'guard' ? config.guard : config.direct
  const agent = via === 'guard'
    ? new https.Agent({
      ca: readFileSync(join(config.tls, 'ca.crt')),
      cert: readFileSync(join(config.tls, `${caller}.crt`)),
      key: readFileSync(join(config.tls, `${caller}.key`))
    })
    : null
  const clients = {}
  for (const [name, Api] of [['v0', OrdersSpApi], ['2026', Orders_v2026SpApi]]) {
    const apiClient = new Api.ApiClient(endpoint)
    if (agent) apiClient.requestAgent = agent
    apiClient.enableAutoRetrievalAccessToken('amzn1.application-oa2-client.test', 'test-secret', `Atzr|test-${caller}`)
    clients[name] = apiClient
  }
  return {
    clients,
    v0: new OrdersSpApi.OrdersV0Api(clients.v0),
    search: new Orders_v2026SpApi.SearchOrdersApi(clients['2026']),
    get: new Orders_v2026SpApi.GetOrderApi(clients['2026'])
  }
}

async function call (client, c) {
  for (const apiClient of Object.values(client.clients)) apiClient.defaultHeaders['x-mock-fixture'] = c.fixture ?? ''
  const q = c.query
  switch (c.op) {
    case 'v0.getOrders': {
      const opts = { createdAfter: q.CreatedAfter ?? '2020-01-01T00:00:00Z' }
      if (q.NextToken) opts.nextToken = q.NextToken
      return client.v0.getOrders(split(q.MarketplaceIds ?? 'ATVPDKIKX0DER'), opts)
    }
    case 'v0.getOrder': return client.v0.getOrder(c.orderId)
    case 'v0.getOrderAddress': return client.v0.getOrderAddress(c.orderId)
    case 'v0.getOrderBuyerInfo': return client.v0.getOrderBuyerInfo(c.orderId)
    case 'v0.getOrderItems': return client.v0.getOrderItems(c.orderId, {})
    case 'v0.getOrderItemsBuyerInfo': return client.v0.getOrderItemsBuyerInfo(c.orderId, {})
    case 'v0.getOrderRegulatedInfo': return client.v0.getOrderRegulatedInfo(c.orderId)
    case '2026.searchOrders': {
      const opts = { createdAfter: q.createdAfter ?? '2025-01-01T00:00:00Z', marketplaceIds: split(q.marketplaceIds ?? 'ATVPDKIKX0DER') }
      if (q.includedData) opts.includedData = split(q.includedData)
      if (q.paginationToken) opts.paginationToken = q.paginationToken
      return client.search.searchOrders(opts)
    }
    case '2026.getOrder': return client.get.getOrder(c.orderId, q.includedData ? { includedData: split(q.includedData) } : {})
    default: throw new Error(`unknown op ${c.op}`)
  }
}

// superagent's HTTP errors carry .status and .response (its body parsed).
function describeError (err) {
  if (err && typeof err.status === 'number' && err.response) return [err.status, errorCode(err.response.body ?? err.response.text)]
  return null
}

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'))
patchLwa(config.lwa)
await run(makeClient, call, describeError)
