// Shared by the Node client scripts: reads the cases tests/clients.rs wrote, runs each with a
// time limit, writes one result per case. Usage: node <client script> CASES_JSON RESULTS_JSON
// (the case and result format: tests/clients/common.py).
import { readFileSync, writeFileSync } from 'node:fs'

// JSON text of a client's value; non-finite numbers (parseFloat of a token: NaN) become "NaN"
// instead of JSON.stringify's silent null.
export function plain (value) {
  return JSON.parse(JSON.stringify(value, (k, v) => (typeof v === 'number' && !Number.isFinite(v) ? 'NaN' : v)))
}

export function errorCode (body) {
  try {
    if (typeof body === 'string') body = JSON.parse(body)
    return body?.errors?.[0]?.code ?? null
  } catch {
    return null
  }
}

export const split = (v) => (typeof v === 'string' ? v.split(',').filter(Boolean) : v)

// makeClient(config, caller, via) → client; call(client, case) → data; describeError(err) →
// [status, errorCode] for the client's error type, or null.
export async function run (makeClient, call, describeError) {
  const [casesPath, resultsPath] = process.argv.slice(2)
  const config = JSON.parse(readFileSync(casesPath, 'utf8'))
  const clients = new Map()
  const results = []
  for (const c of config.cases) {
    const key = `${c.caller}/${c.via}`
    const start = Date.now()
    const result = { id: c.id }
    let timer
    const limit = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error('no answer within the case\'s time limit (the client kept waiting or retrying)'), { name: 'CaseTimeout' })), config.timeout_s * 1000)
    })
    try {
      if (!clients.has(key)) clients.set(key, await makeClient(config, c.caller, c.via))
      const data = await Promise.race([call(clients.get(key), c, result), limit])
      Object.assign(result, { ok: true, data: plain(data) })
    } catch (err) {
      const described = describeError(err)
      Object.assign(result, { ok: false, error_class: err?.constructor?.name === 'Error' ? (err.name || 'Error') : (err?.constructor?.name ?? typeof err), error: String(err?.message ?? err).slice(0, 2000) })
      if (described) [result.status, result.error_code] = described
      else if (err?.name !== 'CaseTimeout') result.traceback = String(err?.stack ?? '').slice(0, 3000)
    } finally {
      clearTimeout(timer)
    }
    result.ms = Date.now() - start
    results.push(result)
  }
  writeFileSync(resultsPath, JSON.stringify(results, null, 1))
  // A call abandoned at its time limit may still be sleeping before a retry: do not wait for it.
  process.exit(0)
}
