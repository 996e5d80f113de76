//! End-to-end test support: a real Envoy (from `make envoy`) running the built filter in front
//! of the mock SP-API, on free loopback ports, in a folder under `target/e2e/` that keeps every
//! byte Envoy printed for the assertions (and for debugging a failure).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jsonpath_rust::query::js_path;
use serde_json::json;
use serde_json::Value;
use spapi_guard::catalog::Operation;
use spapi_guard::pii::PiiClass;
use spapi_guard::tokens::{TokenEngine, KEY_LEN};

pub const KEY_VAR: &str = "SPAPI_GUARD_KEY_DEMO_1";
pub const KEY_ID: &str = "demo-1";
/// The demo caller with every operation and tokenized PII.
pub const ORDER_SYNC: &str = "order-sync";

/// Runs a PKI script of the repo (`script`, e.g. `scripts/gen-certs.sh`) into a fresh
/// `target/e2e/<dir>`: each test file keeps the result in a `OnceLock`, made once per test run.
pub fn make_pki(script: &str, dir: &str) -> PathBuf {
    let dir = repo().join("target/e2e").join(dir);
    let _ = fs::remove_dir_all(&dir);
    let ok = Command::new("bash").arg(repo().join(script)).arg(&dir).stdout(Stdio::null()).status().expect("bash");
    assert!(ok.success(), "{script} failed");
    dir
}

/// The dev PKI (scripts/gen-certs.sh), made once per test run.
pub fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| make_pki("scripts/gen-certs.sh", "certs"))
}

/// How a test client connects.
#[derive(Clone, Copy, Debug)]
pub enum Client<'a> {
    /// mTLS with the dev CA's certificate of this caller (`order-sync`, `intruder`…).
    Cert(&'a str),
    /// TLS without a client certificate.
    NoCert,
    /// A client certificate from a CA Envoy does not trust.
    Rogue,
    /// No TLS at all.
    Plaintext,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn envoy_bin() -> PathBuf {
    std::env::var_os("ENVOY_BIN").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv/envoy-bin"))
}

pub fn wasm() -> PathBuf {
    std::env::var_os("SPAPI_GUARD_WASM").map(PathBuf::from).unwrap_or_else(|| repo().join("target/wasm32-wasip1/release/spapi_guard.wasm"))
}

/// The shipped default policy.
pub fn default_policy() -> Value {
    serde_json::from_str(&fs::read_to_string(repo().join("policies/default.json")).expect("policy")).expect("json")
}

/// A fresh random 256-bit key.
pub fn random_key() -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    getrandom::fill(&mut k).expect("random");
    k
}

pub fn key_b64(key: &[u8; KEY_LEN]) -> String {
    STANDARD.encode(key)
}

/// The token engine that opens what the filter made with `key` under the default key id.
pub fn engine(key: &[u8; KEY_LEN]) -> TokenEngine {
    let mut keys = BTreeMap::new();
    keys.insert(KEY_ID.to_string(), *key);
    TokenEngine::new(keys, KEY_ID).expect("engine")
}

/// The current time in milliseconds since the Unix epoch (tokens open until their key's notAfter).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

static STACKS: AtomicUsize = AtomicUsize::new(0);

/// What to start.
pub struct Options {
    pub name: &'static str,
    pub policy: Value,
    /// Environment of the Envoy process (the key variables).
    pub env: Vec<(String, String)>,
    /// Extra fixture folders for the mock (the Amazon fixtures are always served).
    pub fixture_dirs: Vec<PathBuf>,
    pub concurrency: u32,
    /// Extra Envoy command-line arguments.
    pub envoy_args: Vec<String>,
    /// HTTP filters (YAML, indented for the filter list) put where the rendered config says to
    /// place the authentication filter that sets the identity header.
    pub auth_filter: Option<String>,
    /// How Envoy talks to the mock (render-envoy-config.py --upstream-protocol).
    pub upstream_protocol: UpstreamProtocol,
    /// Start Envoy able to hot restart ([`Stack::hot_restart`]) instead of `--disable-hot-restart`.
    pub hot_restart: bool,
    /// Edits the rendered Envoy config before Envoy starts (a route timeout, another upstream).
    pub config_edit: Option<Box<dyn Fn(String) -> String>>,
    /// More arguments for scripts/render-envoy-config.py (e.g. --document-trust-store).
    pub render_args: Vec<String>,
}

impl Options {
    /// The same options for another try (none when a config edit, which cannot be copied, is set).
    fn copy_for_retry(&self) -> Option<Options> {
        if self.config_edit.is_some() {
            return None;
        }
        Some(Options {
            name: self.name,
            policy: self.policy.clone(),
            env: self.env.clone(),
            fixture_dirs: self.fixture_dirs.clone(),
            concurrency: self.concurrency,
            envoy_args: self.envoy_args.clone(),
            auth_filter: self.auth_filter.clone(),
            upstream_protocol: self.upstream_protocol,
            hot_restart: self.hot_restart,
            config_edit: None,
            render_args: self.render_args.clone(),
        })
    }

    pub fn new(name: &'static str, key: &[u8; KEY_LEN]) -> Options {
        Options {
            name,
            policy: default_policy(),
            env: vec![(KEY_VAR.into(), key_b64(key))],
            fixture_dirs: vec![],
            concurrency: 1,
            envoy_args: vec![],
            auth_filter: None,
            upstream_protocol: UpstreamProtocol::H1,
            hot_restart: false,
            config_edit: None,
            render_args: vec![],
        }
    }
}

/// A running mock + Envoy. Dropping it stops both.
pub struct Stack {
    pub dir: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub mock_port: u16,
    envoy: Child,
    mock: Child,
    /// How the stack was started (a hot restart starts the next Envoy the same way).
    concurrency: u32,
    upstream_protocol: UpstreamProtocol,
    /// The hot restart epoch of the running Envoy, and the Envoys it replaced (they drain and exit).
    epoch: u32,
    retired: Vec<Child>,
}

/// Drain and parent shutdown times of hot restarts in the tests (Envoy's defaults: 600 s and 900 s).
pub const HOT_RESTART_DRAIN_S: u32 = 2;
pub const HOT_RESTART_PARENT_SHUTDOWN_S: u32 = 4;

/// The arguments that let an Envoy hot restart: the first one picks a free base id (other Envoys
/// may run on this machine) and writes it to `base-id` in the stack's folder.
fn hot_restart_args(dir: &Path, epoch: u32) -> Vec<String> {
    let mut args = vec![
        "--restart-epoch".to_string(),
        epoch.to_string(),
        "--drain-time-s".to_string(),
        HOT_RESTART_DRAIN_S.to_string(),
        "--parent-shutdown-time-s".to_string(),
        HOT_RESTART_PARENT_SHUTDOWN_S.to_string(),
        // The new Envoy's gauges are its own: imported, the parent's would add to them while it
        // drains (spapi_guard_key_info{…} 2). Counters restart at 0, which Prometheus handles.
        "--skip-hot-restart-parent-stats".to_string(),
    ];
    if epoch == 0 {
        args.extend(["--use-dynamic-base-id".to_string(), "--base-id-path".to_string(), dir.join("base-id").display().to_string()]);
    } else {
        let base_id = fs::read_to_string(dir.join("base-id")).expect("base-id of the first Envoy");
        args.extend(["--base-id".to_string(), base_id.trim().to_string()]);
    }
    args
}

/// Envoy did not come up; `log` is everything it printed.
#[derive(Debug)]
pub struct Refused {
    pub log: String,
    pub exit_code: Option<i32>,
}

pub fn stack_dir(name: &str) -> PathBuf {
    let n = STACKS.fetch_add(1, Ordering::SeqCst);
    let dir = repo().join("target/e2e").join(format!("{name}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn render(dir: &Path, policy: &Value, port: u16, admin_port: u16, mock_port: u16, upstream: UpstreamProtocol, extra: &[String]) -> PathBuf {
    let policy_file = dir.join("policy.json");
    fs::write(&policy_file, serde_json::to_vec_pretty(policy).expect("json")).expect("write policy");
    let config = dir.join("envoy.yaml");
    let status = Command::new("python3")
        .arg(repo().join("scripts/render-envoy-config.py"))
        .arg("--policy")
        .arg(&policy_file)
        .arg("--out")
        .arg(&config)
        .args(["--listen-port", &port.to_string(), "--admin-port", &admin_port.to_string(), "--upstream-port", &mock_port.to_string()])
        .arg("--wasm")
        .arg(wasm())
        .arg("--tls-dir")
        .arg(certs())
        .args(["--upstream-protocol", upstream.arg()])
        .args(extra)
        .status()
        .expect("python3");
    assert!(status.success(), "render failed");
    config
}

pub fn spawn_envoy(dir: &Path, config: &Path, env: &[(String, String)], concurrency: u32, args: &[String]) -> Child {
    spawn_envoy_epoch(dir, config, env, concurrency, args, None)
}

/// Starts Envoy; with `epoch`, able to hot restart (epoch 0) or as the hot restart of the running
/// one (epoch n > 0). Every Envoy of a stack appends to the same stdout and stderr files.
fn spawn_envoy_epoch(dir: &Path, config: &Path, env: &[(String, String)], concurrency: u32, args: &[String], epoch: Option<u32>) -> Child {
    let bin = envoy_bin();
    assert!(bin.exists(), "{} is missing: run the tests with `make test` (it installs Envoy)", bin.display());
    let restart = match epoch {
        Some(epoch) => hot_restart_args(dir, epoch),
        None => vec!["--disable-hot-restart".to_string()],
    };
    let append = |name: &str| fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).expect("log");
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(config)
        .args(["--concurrency", &concurrency.to_string(), "--log-level", "info"])
        .args(restart)
        // The audit log is Envoy's stdout access log: flush it promptly for the assertions.
        .args(["--file-flush-interval-msec", "100"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(append("envoy.stdout"))
        .stderr(append("envoy.stderr"))
        .env_remove(KEY_VAR);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn envoy")
}

fn read(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

impl Stack {
    /// A stack from processes a test started itself (another config, another upstream): Envoy
    /// with its output in `dir` (as `spawn_envoy` writes it) and the upstream on `mock_port`.
    /// Dropping it stops both.
    pub fn assemble(dir: PathBuf, port: u16, admin_port: u16, mock_port: u16, envoy: Child, mock: Child) -> Stack {
        Stack { dir, port, admin_port, mock_port, envoy, mock, concurrency: 1, upstream_protocol: UpstreamProtocol::H1, epoch: 0, retired: Vec::new() }
    }

    pub fn start(opts: Options) -> Stack {
        // Ports are picked free, then released for Envoy: a test running in parallel can take one
        // in between. Only that bind race is retried, with new ports.
        let mut opts = opts;
        for _ in 0..3 {
            let Some(retry) = opts.copy_for_retry() else { break };
            match Stack::try_start(opts) {
                Ok(s) => return s,
                Err(r) if r.log.contains("Address already in use") => opts = retry,
                Err(r) => panic!("Envoy did not start (exit {:?}):\n{}", r.exit_code, r.log),
            }
        }
        match Stack::try_start(opts) {
            Ok(s) => s,
            Err(r) => panic!("Envoy did not start (exit {:?}):\n{}", r.exit_code, r.log),
        }
    }

    pub fn try_start(opts: Options) -> Result<Stack, Refused> {
        let dir = stack_dir(opts.name);
        let (port, admin_port, mock_port) = (free_port(), free_port(), free_port());
        let config = render(&dir, &opts.policy, port, admin_port, mock_port, opts.upstream_protocol, &opts.render_args);
        if let Some(filters) = &opts.auth_filter {
            let text = fs::read_to_string(&config).expect("config");
            let marker = "          # Place the authentication filter that sets the identity header here.\n";
            assert!(text.contains(marker), "the rendered config has no place for an authentication filter");
            fs::write(&config, text.replace(marker, filters)).expect("write config");
        }
        if let Some(edit) = &opts.config_edit {
            let text = fs::read_to_string(&config).expect("config");
            fs::write(&config, edit(text)).expect("write config");
        }
        // The mock speaks h2c with the `h2` package of the venv.
        let python = if opts.upstream_protocol == UpstreamProtocol::H2 { repo().join(".venv/bin/python") } else { PathBuf::from("python3") };
        let mut mock_cmd = Command::new(python);
        mock_cmd
            .arg(repo().join("tests/mock_spapi.py"))
            .args(["--port", &mock_port.to_string()])
            .arg(repo().join("tests/fixtures/spapi"))
            .args(&opts.fixture_dirs)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("mock.log")).expect("log"))
            .stderr(Stdio::inherit());
        let mock = mock_cmd.spawn().expect("spawn mock");
        let envoy = spawn_envoy_epoch(&dir, &config, &opts.env, opts.concurrency, &opts.envoy_args, opts.hot_restart.then_some(0));
        let (concurrency, upstream_protocol) = (opts.concurrency, opts.upstream_protocol);
        let mut stack = Stack { dir, port, admin_port, mock_port, envoy, mock, concurrency, upstream_protocol, epoch: 0, retired: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = stack.envoy.try_wait() {
                return Err(Refused { log: stack.envoy_output(), exit_code: status.code() });
            }
            if http_get_status(admin_port, "/ready") == Some(200) && http_get_status(mock_port, "/__mock/calls") == Some(200) {
                return Ok(stack);
            }
            if Instant::now() > deadline {
                return Err(Refused { log: stack.envoy_output(), exit_code: None });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends a request through Envoy with curl, as the `order-sync` caller.
    pub fn request(&self, method: &str, path_and_query: &str, headers: &[(&str, &str)]) -> Response {
        self.request_as(Client::Cert(ORDER_SYNC), method, path_and_query, headers, None)
    }

    /// Sends a request as `client`, optionally from another loopback source address, with a body.
    pub fn request_as(&self, client: Client, method: &str, path_and_query: &str, headers: &[(&str, &str)], from: Option<&str>) -> Response {
        self.send(client, method, path_and_query, headers, from, None).expect("curl")
    }

    /// Sends a request with an explicit body; `Err` when the connection failed (e.g. handshake).
    pub fn send(&self, client: Client, method: &str, path_and_query: &str, headers: &[(&str, &str)], from: Option<&str>, body: Option<&str>) -> Result<Response, String> {
        send_to(self.port, client, method, path_and_query, headers, from, body)
    }

    /// Plays one fixture of the Amazon set (picked by file name) as the `order-sync` caller,
    /// with the recorded request body where the set has one.
    pub fn play(&self, fixture: &Fixture) -> Response {
        self.play_as(Client::Cert(ORDER_SYNC), fixture)
    }
}

/// Sends a request to Envoy's listener on `port` (without a [`Stack`]: from load threads while
/// the stack hot restarts).
pub fn send_to(port: u16, client: Client, method: &str, path_and_query: &str, headers: &[(&str, &str)], from: Option<&str>, body: Option<&str>) -> Result<Response, String> {
    let dir = certs();
    let mut args: Vec<String> = Vec::new();
    let scheme = match client {
        Client::Plaintext => "http",
        _ => "https",
    };
    if scheme == "https" {
        args.extend(["--cacert".into(), dir.join("ca.crt").display().to_string()]);
    }
    let cert = match client {
        Client::Cert(name) => Some(name.to_string()),
        Client::Rogue => Some("rogue".to_string()),
        _ => None,
    };
    if let Some(name) = cert {
        args.extend(["--cert".into(), dir.join(format!("{name}.crt")).display().to_string()]);
        args.extend(["--key".into(), dir.join(format!("{name}.key")).display().to_string()]);
    }
    if let Some(ip) = from {
        args.extend(["--interface".into(), ip.to_string()]);
    }
    curl_url(&format!("{scheme}://127.0.0.1:{port}{path_and_query}"), method, headers, &args, body)
}

impl Stack {
    /// Plays one fixture as `client`.
    pub fn play_as(&self, client: Client, fixture: &Fixture) -> Response {
        let body = fixture.request_body();
        self.send(client, &fixture.method, &fixture.url(), &[("x-mock-fixture", &fixture.file)], None, body.as_deref()).expect("curl")
    }

    /// Everything Envoy printed so far (stdout: access log; stderr: Envoy and filter logs).
    pub fn envoy_output(&self) -> String {
        format!("{}{}", read(&self.dir.join("envoy.stdout")), read(&self.dir.join("envoy.stderr")))
    }

    /// The audit events so far: the JSON lines of Envoy's stdout access log.
    pub fn audit_events(&self) -> Vec<Value> {
        read(&self.dir.join("envoy.stdout")).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))).collect()
    }

    /// The filter's security events so far (`spapi-guard event {json}` in Envoy's log).
    pub fn security_events(&self) -> Vec<Value> {
        read(&self.dir.join("envoy.stderr")).lines().filter_map(|l| l.split_once("spapi-guard event ").map(|(_, json)| serde_json::from_str(json).expect("event json"))).collect()
    }

    /// Waits (up to 10 s) until a security event of this kind has been logged.
    pub fn wait_for_security_event(&self, kind: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.security_events();
            if events.iter().any(|e| e["event"] == kind) || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Envoy's Prometheus metrics of the filter: `name{labels}` → value.
    pub fn metrics(&self) -> BTreeMap<String, u64> {
        let text = String::from_utf8_lossy(&admin_get(self.admin_port, "/stats/prometheus").body).into_owned();
        text.lines().filter(|l| l.starts_with("spapi_guard_")).filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))).collect()
    }

    /// Waits until the access log has `n` lines (Envoy writes it after the response).
    pub fn wait_for_audit_events(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.audit_events();
            if events.len() >= n || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The requests the mock SP-API received.
    pub fn mock_calls(&self) -> Vec<Value> {
        let r = curl(self.mock_port, "GET", "/__mock/calls", &[]);
        serde_json::from_slice(&r.body).expect("calls")
    }

    /// Envoy's admin /stats.
    pub fn stats(&self) -> String {
        String::from_utf8_lossy(&curl(self.admin_port, "GET", "/stats", &[]).body).into_owned()
    }
}

impl Stack {
    /// Hot restarts Envoy (the stack must be started with `hot_restart`) with a new policy and
    /// process environment, on the same ports: the new Envoy takes the listening sockets over, the
    /// old one drains its connections and exits. Returns once the new Envoy serves (its admin
    /// reports its epoch), or what it printed if it refused the configuration.
    pub fn hot_restart(&mut self, policy: &Value, env: &[(String, String)]) -> Result<(), Refused> {
        let epoch = self.epoch + 1;
        let dir = self.dir.join(format!("epoch-{epoch}"));
        fs::create_dir_all(&dir).expect("mkdir");
        let config = render(&dir, policy, self.port, self.admin_port, self.mock_port, self.upstream_protocol, &[]);
        let mut child = spawn_envoy_epoch(&self.dir, &config, env, self.concurrency, &[], Some(epoch));
        let deadline = Instant::now() + Duration::from_secs(60);
        let stat = format!("server.hot_restart_epoch: {epoch}");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Refused { log: self.envoy_output(), exit_code: status.code() });
            }
            // The admin port passes from the old Envoy to the new one meanwhile: a refused
            // connection is "not yet", never a failure.
            let serving = curl_url(&format!("http://127.0.0.1:{}/stats?filter=hot_restart_epoch", self.admin_port), "GET", &[], &[], None)
                .is_ok_and(|r| String::from_utf8_lossy(&r.body).contains(&stat))
                && http_get_status(self.admin_port, "/ready") == Some(200);
            if serving {
                self.retired.push(std::mem::replace(&mut self.envoy, child));
                self.epoch = epoch;
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(Refused { log: self.envoy_output(), exit_code: None });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for mut old in self.retired.drain(..) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let _ = self.envoy.kill();
        let _ = self.mock.kill();
        let _ = self.envoy.wait();
        let _ = self.mock.wait();
    }
}

/// Starts Envoy with `policy` and `env`, expecting it to refuse the configuration.
pub fn expect_refusal(name: &'static str, policy: Value, env: Vec<(String, String)>) -> Refused {
    let opts = Options { name, policy, env, ..Options::new(name, &[0; KEY_LEN]) };
    match Stack::try_start(opts) {
        Ok(stack) => panic!("Envoy accepted the configuration of {name}:\n{}", stack.envoy_output()),
        Err(refused) => refused,
    }
}

pub fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    use std::io::Write;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf);
    line.split(' ').nth(1)?.parse().ok()
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

/// A GET on Envoy's admin port, retried while nothing listens there (for up to 15 s): during a hot
/// restart the port passes from the old process to the new one.
pub fn admin_get(port: u16, path: &str) -> Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match curl_url(&format!("http://127.0.0.1:{port}{path}"), "GET", &[], &[], None) {
            Ok(r) => return r,
            Err(e) if Instant::now() > deadline => panic!("admin {path}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A plain HTTP request to a local port (the mock, Envoy's admin).
pub fn curl(port: u16, method: &str, path_and_query: &str, headers: &[(&str, &str)]) -> Response {
    curl_url(&format!("http://127.0.0.1:{port}{path_and_query}"), method, headers, &[], None).expect("curl")
}

fn curl_url(url: &str, method: &str, headers: &[(&str, &str)], extra: &[String], body: Option<&str>) -> Result<Response, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "--http1.1", "-i", "--max-time", "30", "-X", method]);
    cmd.args(extra);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    match body {
        Some(b) => {
            cmd.args(["--data-binary", b, "-H", "content-type: application/json"]);
        }
        None if matches!(method, "POST" | "PUT" | "PATCH") => {
            cmd.args(["--data-binary", "{}", "-H", "content-type: application/json"]);
        }
        None => {}
    }
    cmd.arg(url);
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(parse_response(&out.stdout))
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers = lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))).collect();
    Response { status, headers, body: raw[split + 4..].to_vec() }
}

/// One entry of tests/fixtures/spapi/INDEX.json.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Fixture {
    pub file: String,
    pub kind: String,
    pub method: String,
    pub path: String,
    pub query: String,
    #[serde(default)]
    pub status: Option<u16>,
}

impl Fixture {
    pub fn url(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    pub fn body(&self) -> Vec<u8> {
        fs::read(repo().join("tests/fixtures/spapi").join(&self.file)).expect("fixture")
    }

    /// The recorded request body that goes with this response (`X_1.json` ↔ `X_1.request.json`).
    pub fn request_body(&self) -> Option<String> {
        let name = self.file.strip_suffix(".json")?;
        fs::read_to_string(repo().join("tests/fixtures/spapi").join(format!("{name}.request.json"))).ok()
    }
}

/// The response fixtures of the Amazon set.
pub fn response_fixtures() -> Vec<Fixture> {
    let index: Vec<Fixture> = serde_json::from_str(&fs::read_to_string(repo().join("tests/fixtures/spapi/INDEX.json")).expect("index")).expect("json");
    index.into_iter().filter(|f| f.kind == "response").collect()
}

impl Fixture {
    /// The status the mock answers with.
    pub fn status(&self) -> u16 {
        self.status.unwrap_or(200)
    }
}

/// One response fixture of the Amazon set, by file name.
pub fn fixture(file: &str) -> Fixture {
    response_fixtures().into_iter().find(|f| f.file == file).unwrap_or_else(|| panic!("no fixture {file}"))
}

/// Writes a fixture folder for the mock: `(file, method, path, status, headers, chunked, body)`.
/// One mock fixture: `(file, method, path, status, headers, chunked, body)`.
pub type FixtureEntry<'a> = (&'a str, &'a str, &'a str, u16, Value, bool, Vec<u8>);

pub fn fixture_dir(name: &str, entries: &[FixtureEntry]) -> PathBuf {
    let dir = stack_dir(name);
    let mut index = Vec::new();
    for (file, method, path, status, headers, chunked, body) in entries {
        fs::write(dir.join(file), body).expect("write fixture");
        index.push(serde_json::json!({"file": file, "method": method, "path": path, "query": "", "status": status, "headers": headers, "chunked": chunked}));
    }
    fs::write(dir.join("INDEX.json"), serde_json::to_vec(&index).expect("json")).expect("write index");
    dir
}

/// A PII value of an upstream body, found by the reference evaluator (jsonpath-rust on a DOM).
pub struct PiiValue {
    pub location: String,
    pub class: PiiClass,
    pub value: Value,
}

/// `$.payload.a.b` → `$.a.b` for an operation whose responses may come without the wrapper.
fn unwrapped_path(op: &Operation, jsonpath: &str) -> Option<String> {
    let wrapper = op.also_unwrapped.as_deref()?;
    let rest = jsonpath.strip_prefix(&format!("$.{wrapper}"))?;
    (rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')).then(|| format!("${rest}"))
}

/// A path and, for an operation whose bodies may come unwrapped, its unwrapped twin.
fn with_unwrapped(op: &Operation, jsonpath: &str) -> Vec<String> {
    std::iter::once(jsonpath.to_string()).chain(unwrapped_path(op, jsonpath)).collect()
}

/// `$['a'][0]['b']`, as jsonpath-rust writes locations.
fn child_location(parent: &str, step: &Step) -> String {
    match step {
        Step::Key(k) => format!("{parent}['{k}']"),
        Step::Index(i) => format!("{parent}[{i}]"),
    }
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Every value of `body` the filter must protect under the default policy, found by a reference
/// independent of the filter's one-pass automaton: a DOM, queried with jsonpath-rust, walked in
/// plain recursion. Nulls, booleans and empty strings carry no PII.
///
/// 1. The operation's rules (catalog paths, and members the customer objects' definitions
///    classify), also without the `payload` wrapper where Amazon's examples leave it out.
/// 2. Customer objects (docs/POLICY.md): every member of the object at each of their paths that
///    no rule names and that is not on the object's list of exceptions, and every scalar nested
///    in it, with the class its name, its value or the object says (`drift::member_class`). An
///    object that arrives as an array is taken element by element.
/// 3. The default detectors (emails and phones, tokenized) over every other string, outside the
///    non-customer subtrees. The shapes are `drift::detect`'s — the function under test for
///    precision in tests/drift_precision.rs; here what is checked is that the filter applies it
///    at the right places, byte for byte.
pub fn reference_pii(op: &Operation, body: &Value) -> Vec<PiiValue> {
    let mut out = catalog_pii(op, body);
    let enabled = |k: spapi_guard::drift::DriftKind| matches!(k, spapi_guard::drift::DriftKind::Email | spapi_guard::drift::DriftKind::Phone);
    for s in scanned_strings(op, body) {
        if let Some(kind) = spapi_guard::drift::detect(s.key, s.parent, s.text, &enabled) {
            out.push(PiiValue { location: s.location, class: kind.class(), value: Value::String(s.text.to_string()) });
        }
    }
    out
}

/// Steps 1 and 2 of [`reference_pii`]: what the catalog says is PII (its paths and its customer
/// objects), without the detectors.
pub fn catalog_pii(op: &Operation, body: &Value) -> Vec<PiiValue> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let add = |seen: &mut BTreeSet<String>, out: &mut Vec<PiiValue>, location: String, class: PiiClass, value: Value| {
        if matches!(value, Value::Null | Value::Bool(_)) || value == json!("") || !seen.insert(location.clone()) {
            return;
        }
        out.push(PiiValue { location, class, value });
    };
    for rule in &op.response_rules {
        for path in with_unwrapped(op, &rule.jsonpath) {
            for hit in js_path(&path, body).expect("reference query") {
                let value = hit.clone().val().clone();
                add(&mut seen, &mut out, hit.path(), rule.class, value);
            }
        }
    }
    let ruled = ruled_locations(op, body);
    for object in &op.objects {
        let class = op.catch_alls[object.catch_all].class;
        for path in with_unwrapped(op, &object.jsonpath) {
            // The object at `$.payload`, unwrapped, is the body: its `errors` are not the object's.
            let root = path == "$";
            for hit in js_path(&path, body).expect("reference query") {
                let location = hit.clone().path();
                let value = hit.val();
                let elements: Vec<(String, &Value)> = match value {
                    Value::Array(items) => items.iter().enumerate().map(|(i, v)| (child_location(&location, &Step::Index(i)), v)).collect(),
                    v => vec![(location.clone(), v)],
                };
                for (at, v) in elements {
                    let Value::Object(members) = v else { continue };
                    for (key, member) in members {
                        if object.except.iter().any(|e| e.eq_ignore_ascii_case(key)) || (root && key.eq_ignore_ascii_case("errors")) {
                            continue;
                        }
                        let member_at = child_location(&at, &Step::Key(key));
                        if ruled.contains(&member_at) {
                            continue;
                        }
                        for (scalar_at, scalar_key, _, scalar) in scalars(&member_at, key, "", member) {
                            let scalar_class = spapi_guard::drift::member_class(Some(scalar_key), scalar.as_str(), class);
                            add(&mut seen, &mut out, scalar_at, scalar_class, scalar.clone());
                        }
                    }
                }
            }
        }
    }
    out
}

/// Where the operation's rules select a value (whatever the value).
fn ruled_locations(op: &Operation, body: &Value) -> BTreeSet<String> {
    op.response_rules.iter().flat_map(|r| with_unwrapped(op, &r.jsonpath)).flat_map(|p| js_path(&p, body).expect("reference query").into_iter().map(|h| h.path())).collect()
}

/// A string the drift detectors look at: not PII by the catalog, not inside a value a rule
/// selects whole, not in a non-customer subtree.
pub struct Scanned<'a> {
    pub location: String,
    pub key: Option<&'a str>,
    pub parent: Option<&'a str>,
    pub text: &'a str,
}

/// Step 3's input: every string of `body` the detectors see (non-empty).
pub fn scanned_strings<'a>(op: &Operation, body: &'a Value) -> Vec<Scanned<'a>> {
    let pii: BTreeSet<String> = catalog_pii(op, body).into_iter().map(|p| p.location).collect();
    let ruled = ruled_locations(op, body);
    let quiet: BTreeSet<String> =
        op.quiet_paths.iter().flat_map(|p| with_unwrapped(op, p)).flat_map(|p| js_path(&p, body).expect("reference query").into_iter().map(|h| h.path())).collect();
    let mut out = Vec::new();
    for (at, key, parent, value) in scalars("$", "", "", body) {
        let Value::String(text) = value else { continue };
        // Inside a value a rule selects whole (a container), or a non-customer subtree: not scanned.
        if text.is_empty() || pii.contains(&at) || ruled.iter().any(|r| at.starts_with(r.as_str())) || quiet.iter().any(|q| at.starts_with(q.as_str())) {
            continue;
        }
        out.push(Scanned { location: at, key: (!key.is_empty()).then_some(key), parent: (!parent.is_empty()).then_some(parent), text });
    }
    out
}

/// Every scalar (string or number) in `value`, with its location, the name of the member it is
/// (or its array is) under, and the member name above that.
fn scalars<'a>(location: &str, key: &'a str, parent: &'a str, value: &'a Value) -> Vec<(String, &'a str, &'a str, &'a Value)> {
    match value {
        Value::Object(members) => members.iter().flat_map(|(k, v)| scalars(&child_location(location, &Step::Key(k)), k, key, v)).collect(),
        Value::Array(items) => items.iter().enumerate().flat_map(|(i, v)| scalars(&child_location(location, &Step::Index(i)), key, parent, v)).collect(),
        Value::String(_) | Value::Number(_) => vec![(location.to_string(), key, parent, value)],
        Value::Null | Value::Bool(_) => vec![],
    }
}

/// How Envoy talks to the `spapi` cluster (the mock serves all of them on one port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// The template's HTTP/1.1 (trailers from upstream are not read).
    H1,
    /// HTTP/1.1 with `enable_trailers`: a chunked body's trailers reach the filters.
    H1Trailers,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

impl UpstreamProtocol {
    pub fn arg(self) -> &'static str {
        match self {
            UpstreamProtocol::H1 => "h1",
            UpstreamProtocol::H1Trailers => "h1-trailers",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// One HTTP/2 request for tests/h2_client.py (request trailers, a body in several DATA frames).
#[derive(Clone, Debug)]
pub struct H2Request<'a> {
    pub client: Client<'a>,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Option<Vec<u8>>,
    /// DATA frames the body is split into (each flushed on its own).
    pub chunks: usize,
    /// Sent after the body, ending the stream.
    pub trailers: Vec<(&'a str, &'a str)>,
}

impl<'a> H2Request<'a> {
    pub fn new(client: Client<'a>, method: &'a str, path: &'a str) -> Self {
        H2Request { client, method, path, headers: vec![], body: None, chunks: 1, trailers: vec![] }
    }
    pub fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn chunks(mut self, n: usize) -> Self {
        self.chunks = n;
        self
    }
    pub fn trailer(mut self, name: &'a str, value: &'a str) -> Self {
        self.trailers.push((name, value));
        self
    }
}

/// What the HTTP/2 client saw. `error` is None for a complete response, else what ended it
/// ("stream reset: …", "connection closed", …); the rest holds what arrived before.
pub struct H2Response {
    pub alpn: Option<String>,
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub error: Option<String>,
}

impl H2Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response is not JSON ({e}): {self:?}"))
    }
}

impl std::fmt::Debug for H2Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Response")
            .field("status", &self.status)
            .field("error", &self.error)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .field("trailers", &self.trailers)
            .field("alpn", &self.alpn)
            .finish()
    }
}

static H2_REQUESTS: AtomicUsize = AtomicUsize::new(0);

impl Stack {
    /// Sends one request over HTTP/2 (TLS with ALPN h2, or h2c for `Client::Plaintext`) with
    /// tests/h2_client.py; the body travels through a file in the stack's folder.
    pub fn h2(&self, req: &H2Request) -> H2Response {
        let dir = certs();
        let mut cmd = Command::new(repo().join(".venv/bin/python"));
        cmd.arg(repo().join("tests/h2_client.py")).args(["--port", &self.port.to_string(), "--method", req.method, "--path", req.path]);
        match req.client {
            Client::Plaintext => {
                cmd.arg("--plaintext");
            }
            client => {
                cmd.arg("--ca").arg(dir.join("ca.crt"));
                let cert = match client {
                    Client::Cert(name) => Some(name),
                    Client::Rogue => Some("rogue"),
                    _ => None,
                };
                if let Some(name) = cert {
                    cmd.arg("--cert").arg(dir.join(format!("{name}.crt"))).arg("--key").arg(dir.join(format!("{name}.key")));
                }
            }
        }
        for (k, v) in &req.headers {
            cmd.arg("--header").arg(format!("{k}: {v}"));
        }
        if let Some(body) = &req.body {
            let file = self.dir.join(format!("h2-body-{}", H2_REQUESTS.fetch_add(1, Ordering::SeqCst)));
            fs::write(&file, body).expect("write body");
            cmd.arg("--body-file").arg(file).args(["--chunks", &req.chunks.to_string()]);
        }
        for (k, v) in &req.trailers {
            cmd.arg("--trailer").arg(format!("{k}: {v}"));
        }
        let out = cmd.stdin(Stdio::null()).output().expect("h2_client.py");
        assert!(out.status.success(), "h2_client.py failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("h2_client.py printed no JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        let pairs = |v: &Value| -> Vec<(String, String)> {
            v.as_array().map(|a| a.iter().map(|p| (p[0].as_str().unwrap_or("").to_string(), p[1].as_str().unwrap_or("").to_string())).collect()).unwrap_or_default()
        };
        H2Response {
            alpn: v["alpn"].as_str().map(str::to_string),
            status: v["status"].as_u64().map(|s| s as u16),
            headers: pairs(&v["headers"]),
            body: STANDARD.decode(v["body_b64"].as_str().unwrap_or("")).expect("base64"),
            trailers: pairs(&v["trailers"]),
            error: v["error"].as_str().map(str::to_string),
        }
    }

    /// Whether the Envoy process is still running (`Some(status)` once it exited).
    pub fn envoy_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.envoy.try_wait().expect("try_wait")
    }

    /// Envoy's admin /ready answers 200.
    pub fn is_ready(&self) -> bool {
        http_get_status(self.admin_port, "/ready") == Some(200)
    }
}

/// The PII strings of `body` at the catalog paths of `op` that are distinctive enough to look
/// for in logs (≥ 4 characters with a letter, or ≥ 8 digits), as tests/audit.rs does.
pub fn distinctive_pii(op: &Operation, body: &Value) -> BTreeSet<String> {
    reference_pii(op, body)
        .into_iter()
        .filter_map(|p| match p.value {
            Value::String(s) => {
                let letters = s.chars().any(char::is_alphabetic);
                let digits = s.chars().filter(char::is_ascii_digit).count();
                ((letters && s.chars().count() >= 4) || digits >= 8).then_some(s)
            }
            _ => None,
        })
        .collect()
}

/// Panics if anything Envoy printed (stdout, stderr) holds one of `pii`.
pub fn assert_nothing_printed_holds(stack: &Stack, pii: &BTreeSet<String>, what: &str) {
    let printed = stack.envoy_output();
    let leaked: Vec<&String> = pii.iter().filter(|v| printed.contains(v.as_str())).collect();
    assert!(leaked.is_empty(), "{what}: PII in Envoy's output ({}): {leaked:?}", stack.dir.display());
}
