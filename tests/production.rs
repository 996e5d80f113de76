//! The production profile (`render-envoy-config.py --profile production`) against a fake Amazon:
//! a local TLS server (tests/fake_amazon.py) holding a certificate for
//! `sellingpartnerapi-na.amazon.com` from a test CA (tests/gen-amazon-certs.sh). The config is
//! the production rendering with only the upstream address (`--upstream-override`) and the trust
//! store (`--trust-store`) changed, plus the local listener ports, Wasm path and listener
//! certificates every test rendering has. Run with `make test`.
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jsonpath_rust::query::js_path;
use serde_json::Value;
use spapi_guard::catalog::{Catalog, CatalogOverrides};
use spapi_guard::tokens::ValueKind;
use support::*;

const NA: &str = "sellingpartnerapi-na.amazon.com";
/// The host name the app is configured with: Amazon's first label, the seller's own domain.
const APP_HOST_NA: &str = "sellingpartnerapi-na.spapi-guard.test";
const ADDRESS_FIXTURE: &str = "orders-v0_getOrderAddress_1.json";

/// The fake Amazon's PKI, made once per test run.
fn amazon_certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| make_pki("tests/gen-amazon-certs.sh", "amazon-certs"))
}

/// Which fake Amazon listens on the upstream port.
#[derive(Clone, Copy, Debug)]
enum Fake {
    /// sellingpartnerapi-na.amazon.com from the trusted test CA.
    Good,
    /// Trusted CA, CN right, DNS SAN sellingpartnerapi-eu.amazon.com.
    WrongName,
    /// The right name from a CA the config does not trust.
    Rogue,
    /// The good certificate, but TLS 1.0/1.1 only.
    Tls11,
    /// Plain HTTP, answering any request with a PII fixture.
    Plaintext,
}

struct Amazon {
    child: Child,
    events: PathBuf,
}

impl Amazon {
    fn start(dir: &Path, port: u16, fake: Fake, fixture_dirs: &[PathBuf]) -> Amazon {
        let events = dir.join(format!("amazon-{fake:?}.jsonl"));
        let _ = fs::remove_file(&events);
        let certs = amazon_certs();
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/fake_amazon.py")).args(["serve", "--port", &port.to_string()]).arg("--events").arg(&events);
        let cert = match fake {
            Fake::Good | Fake::Tls11 => Some("na"),
            Fake::WrongName => Some("wrong-name"),
            Fake::Rogue => Some("rogue"),
            Fake::Plaintext => None,
        };
        match cert {
            Some(name) => {
                cmd.arg("--cert").arg(certs.join(format!("{name}.crt"))).arg("--key").arg(certs.join(format!("{name}.key")));
            }
            None => {
                cmd.arg("--plaintext");
            }
        }
        if let Fake::Tls11 = fake {
            cmd.args(["--max-tls", "1.1"]);
        }
        cmd.arg(repo().join("tests/fixtures/spapi")).args(fixture_dirs);
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("fake_amazon.py");
        let amazon = Amazon { child, events };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !amazon.events().iter().any(|e| e["event"] == "listening") {
            assert!(Instant::now() < deadline, "the fake Amazon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        amazon
    }

    fn events(&self) -> Vec<Value> {
        fs::read_to_string(&self.events).unwrap_or_default().lines().map(|l| serde_json::from_str(l).expect("event json")).collect()
    }

    fn of(&self, kind: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == kind).collect()
    }

    fn stop(self) {}
}

impl Drop for Amazon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy with the production profile, every SP-API cluster pointed at 127.0.0.1:`upstream_port`
/// and the fake Amazon's CA as the trust store. The returned stack's "mock" is `first` upstream.
fn start_production(name: &'static str, key: &[u8; 32], first: Fake, fixture_dirs: &[PathBuf]) -> (Stack, Amazon) {
    let dir = stack_dir(name);
    let (port, admin_port, upstream_port) = (free_port(), free_port(), free_port());
    let policy_file = dir.join("policy.json");
    fs::write(&policy_file, serde_json::to_vec_pretty(&default_policy()).expect("json")).expect("write policy");
    let config = dir.join("envoy.yaml");
    let status = Command::new("python3")
        .arg(repo().join("scripts/render-envoy-config.py"))
        .args(["--profile", "production", "--policy"])
        .arg(&policy_file)
        .arg("--out")
        .arg(&config)
        .args(["--listen-port", &port.to_string(), "--admin-port", &admin_port.to_string()])
        .arg("--wasm")
        .arg(wasm())
        .arg("--tls-dir")
        .arg(certs())
        .arg("--trust-store")
        .arg(amazon_certs().join("amazon-ca.crt"))
        .args(["--upstream-override", &format!("127.0.0.1:{upstream_port}")])
        .status()
        .expect("python3");
    assert!(status.success(), "render failed");
    let amazon = Amazon::start(&dir, upstream_port, first, fixture_dirs);
    // A placeholder child for the stack's "mock" slot: the fake Amazon is owned by the test, so
    // it can be swapped for another on the same port.
    let placeholder = Command::new("sleep").arg("600").spawn().expect("sleep");
    let envoy = spawn_envoy(&dir, &config, &[(KEY_VAR.to_string(), key_b64(key))], 1, &[]);
    let mut stack = Stack::assemble(dir, port, admin_port, upstream_port, envoy, placeholder);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get_status(admin_port, "/ready") != Some(200) {
        if let Some(status) = stack.envoy_exit() {
            panic!("Envoy exited ({status}):\n{}", stack.envoy_output());
        }
        assert!(Instant::now() < deadline, "Envoy did not become ready:\n{}", stack.envoy_output());
        std::thread::sleep(Duration::from_millis(100));
    }
    (stack, amazon)
}

/// A counter of Envoy's admin /stats (0 when absent).
fn stat(stack: &Stack, name: &str) -> u64 {
    stack.stats().lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(|v| v.trim().parse().unwrap_or(0))).unwrap_or(0)
}

fn get_address(stack: &Stack, host: &str, token: &str) -> Response {
    let fx = fixture(ADDRESS_FIXTURE);
    stack.request("GET", &fx.url(), &[("host", host), ("x-amz-access-token", token), ("x-mock-fixture", &fx.file)])
}

fn lwa_token() -> String {
    // Shaped like an LWA access token, unique per run so a leak cannot be a coincidence.
    format!("Atza|IwEBIFakeProductionTestToken{}", key_b64(&random_key()).replace(['/', '+', '='], "x"))
}

#[test]
fn production_profile_reaches_amazon_over_verified_tls_and_tokenizes() {
    let key = random_key();
    let engine = engine(&key);
    // A 3 MiB PII response: more than Envoy's default 1 MiB buffers, over a TLS upstream.
    let big_name = "Jane Q. Bigbody";
    let big = format!(r#"{{"payload":{{"ShippingAddress":{{"Name":"{big_name}","City":"Springfield"}},"pad":"{}"}}}}"#, "x".repeat(3 << 20));
    let big_dir = fixture_dir("prod-big-fixture", &[("big.json", "GET", "/orders/v0/orders/902-0000000-0000000/address", 200, serde_json::json!({}), false, big.into_bytes())]);
    let (stack, amazon) = start_production("prod-good", &key, Fake::Good, &[big_dir]);
    let token = lwa_token();

    // 1. A PII read reaches Amazon over TLS, with Amazon's SNI and Host, and comes back tokenized.
    let fx = fixture(ADDRESS_FIXTURE);
    let resp = get_address(&stack, APP_HOST_NA, &token);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), stack.envoy_output());
    let upstream: Value = serde_json::from_slice(&fx.body()).expect("fixture json");
    let got = resp.json();
    let catalog = Catalog::build(&CatalogOverrides::default()).expect("catalog");
    let op = catalog.route("GET", &fx.path).expect("op");
    let pii = reference_pii(op, &upstream);
    assert!(pii.len() >= 5, "the fixture carries PII");
    for p in &pii {
        let at = js_path(&p.location, &got).expect("query")[0].clone().val().clone();
        if p.value.is_number() {
            // Coordinates stay numbers, coarsened (docs/POLICY.md, "Schema-faithful protection").
            assert!(at.is_number() && at != p.value, "{}: {at}", p.location);
            continue;
        }
        let t = at.as_str().expect("a token").to_string();
        let opened = engine.open(&t, now_ms()).unwrap_or_else(|e| panic!("{}: {t} does not open: {e}", p.location));
        let value = match opened.kind {
            ValueKind::Text => Value::String(String::from_utf8(opened.plaintext).expect("utf8")),
            ValueKind::RawJson => serde_json::from_slice(&opened.plaintext).expect("raw json"),
        };
        assert_eq!(value, p.value, "{}", p.location);
    }
    let distinctive = distinctive_pii(op, &upstream);
    for v in &distinctive {
        assert!(!resp.text().contains(v.as_str()), "PII in the response: {v}");
    }
    let requests = amazon.of("request");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r["sni"], NA, "SNI");
    assert!(r["version"] == "TLSv1.3" || r["version"] == "TLSv1.2", "{}", r["version"]);
    assert_eq!(r["headers"]["host"], NA, "auto_host_rewrite: Amazon's host name");
    assert_eq!(r["headers"]["x-amz-access-token"], token.as_str(), "the LWA token passes untouched");
    assert_eq!(r["path"], fx.url());
    assert!(r["headers"].get("x-forwarded-for").is_none(), "internal addresses are not Amazon's business");
    let handshakes = amazon.of("handshake");
    assert!(handshakes.iter().all(|h| h["ok"] == true && h["sni"] == NA), "{handshakes:?}");

    let resp = stack.request("GET", "/orders/v0/orders/902-0000000-0000000/address", &[("host", APP_HOST_NA), ("x-mock-fixture", "big.json")]);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)]));
    let name = resp.json()["payload"]["ShippingAddress"]["Name"].as_str().expect("token").to_string();
    assert_eq!(engine.open(&name, now_ms()).expect("opens").plaintext, big_name.as_bytes());
    assert!(!resp.text().contains(big_name));

    // 2. Amazon's own host name works too (the app's DNS points it at this Envoy).
    let resp = get_address(&stack, NA, &token);
    assert_eq!(resp.status, 200);

    // 3. The host name picks the region: an EU name goes to the EU cluster (SNI and SAN
    //    sellingpartnerapi-eu.amazon.com), which this NA certificate cannot satisfy.
    let before = amazon.of("request").len();
    let resp = get_address(&stack, "sellingpartnerapi-eu.spapi-guard.test", &token);
    assert_ne!(resp.status, 200);
    assert!(amazon.of("client_hello").iter().any(|e| e["sni"] == "sellingpartnerapi-eu.amazon.com"), "EU SNI");
    assert_eq!(amazon.of("request").len(), before, "an EU request reached the NA server");
    let resp = get_address(&stack, "sandbox.sellingpartnerapi-fe.spapi-guard.test", &token);
    assert_ne!(resp.status, 200);
    assert!(amazon.of("client_hello").iter().any(|e| e["sni"] == "sandbox.sellingpartnerapi-fe.amazon.com"), "FE sandbox SNI");

    // 4. A host name that names no endpoint: an SP-API-style 404 from Envoy, nothing sent.
    let resp = get_address(&stack, "api.example.com", &token);
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert_eq!(resp.json()["errors"][0]["details"], "spapi-guard:unknown_endpoint");
    assert_eq!(amazon.of("request").len(), before);

    // 5. Retries: a GET whose connection dies before the response is retried (twice); a POST
    //    never is: Amazon may have acted on it.
    let flaky = |method: &str| {
        let before = amazon.of("request").iter().filter(|r| r["method"] == method).count();
        let resp = stack
            .send(Client::Cert(ORDER_SYNC), method, "/sellers/v1/drop-connection", &[("host", APP_HOST_NA), ("x-amz-access-token", &token)], None, None)
            .map(|r| r.status)
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(300));
        (resp, amazon.of("request").iter().filter(|r| r["method"] == method).count() - before)
    };
    let (get_status, get_tries) = flaky("GET");
    assert_eq!(get_tries, 3, "GET: one try and two retries (status {get_status})");
    let (post_status, post_tries) = flaky("POST");
    assert_eq!(post_tries, 1, "POST must never be retried (status {post_status})");

    // 6. The access token reached Amazon and appears nowhere in what Envoy printed or serves.
    stack.wait_for_audit_events(8);
    let printed = format!("{}{}", stack.envoy_output(), stack.stats());
    assert!(!printed.contains(&token), "the LWA token is in Envoy's output ({})", stack.dir.display());
    assert!(!printed.contains("IwEBIFakeProductionTestToken"), "part of the LWA token is in Envoy's output");
    for v in &distinctive {
        assert!(!printed.contains(v.as_str()), "PII in Envoy's output: {v}");
    }
    amazon.stop();
}

#[test]
fn production_profile_refuses_unverified_old_or_plaintext_upstreams() {
    let key = random_key();
    let fx = fixture(ADDRESS_FIXTURE);
    let upstream: Value = serde_json::from_slice(&fx.body()).expect("fixture json");
    let catalog = Catalog::build(&CatalogOverrides::default()).expect("catalog");
    let op = catalog.route("GET", &fx.path).expect("op");
    let distinctive = distinctive_pii(op, &upstream);
    let token = lwa_token();
    let (stack, first) = start_production("prod-refused", &key, Fake::WrongName, &[]);
    let mut amazon = Some(first);
    let cases = [
        (Fake::WrongName, "cluster.spapi-na.ssl.fail_verify_san"),
        (Fake::Rogue, "cluster.spapi-na.ssl.fail_verify_error"),
        (Fake::Tls11, "cluster.spapi-na.ssl.connection_error"),
        (Fake::Plaintext, "cluster.spapi-na.ssl.connection_error"),
    ];
    for (fake, counter) in cases {
        let server = match amazon.take() {
            Some(a) => a,
            None => Amazon::start(&stack.dir, stack.mock_port, fake, &[]),
        };
        if let Fake::Tls11 = fake {
            // The server really speaks TLS 1.1 with a certificate Envoy would accept: a TLS 1.1
            // client that checks it as Envoy does gets through.
            let out = Command::new("python3")
                .arg(repo().join("tests/fake_amazon.py"))
                .args(["probe", "--port", &stack.mock_port.to_string(), "--name", NA, "--max-tls", "1.1", "--ca"])
                .arg(amazon_certs().join("amazon-ca.crt"))
                .output()
                .expect("probe");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "TLSv1.1", "{}", String::from_utf8_lossy(&out.stderr));
        }
        let refused_before = stat(&stack, counter);
        let seen_before = server.events().len();
        let resp = get_address(&stack, APP_HOST_NA, &token);
        assert!(resp.status == 503 || resp.status == 502, "{fake:?}: status {} {}", resp.status, resp.text());
        for v in &distinctive {
            assert!(!resp.text().contains(v.as_str()), "{fake:?}: PII in the response: {v}");
        }
        assert!(server.of("request").is_empty(), "{fake:?}: the request reached the server: {:?}", server.of("request"));
        match fake {
            Fake::Plaintext => {
                // All that reached the plaintext server is a TLS ClientHello (record type 0x16),
                // on every try: no fallback to plain HTTP.
                let seen = server.of("plaintext");
                assert!(!seen.is_empty());
                assert!(seen.iter().all(|e| e["first_bytes"].as_str().is_some_and(|b| b.starts_with("1603"))), "{seen:?}");
            }
            _ => {
                let new: Vec<Value> = server.events().into_iter().skip(seen_before).collect();
                assert!(new.iter().filter(|e| e["event"] == "client_hello").all(|e| e["sni"] == NA), "{fake:?}: SNI");
                let handshakes: Vec<&Value> = new.iter().filter(|e| e["event"] == "handshake").collect();
                assert!(!handshakes.is_empty(), "{fake:?}: Envoy did not try");
                // Wrong name or untrusted CA: the server's side may complete before Envoy checks
                // the certificate and hangs up; only Envoy's refusal (no request) matters there.
                let client_side_only = matches!(fake, Fake::WrongName | Fake::Rogue);
                assert!(handshakes.iter().all(|h| h["ok"] == false || client_side_only), "{fake:?}: {handshakes:?}");
            }
        }
        assert!(stat(&stack, counter) > refused_before, "{fake:?}: {counter} did not count the refusal:\n{}", stack.stats());
        server.stop();
    }
    let printed = format!("{}{}", stack.envoy_output(), stack.stats());
    assert!(!printed.contains(&token), "the LWA token is in Envoy's output");
    let ok = stat(&stack, "cluster.spapi-na.upstream_rq_200");
    assert_eq!(ok, 0, "no request was answered by a refused upstream");
}
