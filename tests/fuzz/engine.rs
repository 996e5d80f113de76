//! The fuzzing engine: a seeded PRNG, the time-bounded loop, panic capture, a greedy minimizer
//! and reproducer files. No crate beyond std.
//!
//! Every case has its own seed, derived from the run's seed, the target's name and the case's
//! number, so one failing case replays alone (`FUZZ_REPLAY=<case seed>`), whatever ran before it.
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

/// The run's seed when `FUZZ_SEED` is not set: `cargo test` is the same run every time.
pub const DEFAULT_SEED: u64 = 0x5EED_5A9A_0001;
/// Seconds per target when `FUZZ_SECONDS` is not set: short enough for `make test`.
pub const DEFAULT_SECONDS: f64 = 3.0;
/// How long the minimizer may take, and how many candidates it may try.
const MINIMIZE_SECONDS: u64 = 30;
/// The same for the first hit of a known bug (it must not eat a short run's budget).
const KNOWN_MINIMIZE_SECONDS: u64 = 1;
const MINIMIZE_TRIES: usize = 20_000;

/// SplitMix64: small, fast, good enough to drive a fuzzer, and fully determined by its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A size skewed towards small values (most cases small, some large).
    pub fn small(&mut self, max: usize) -> usize {
        let bits = self.below(usize::BITS as usize - max.leading_zeros() as usize + 1);
        self.below((1usize << bits).min(max + 1))
    }
}

/// The SplitMix64 finalizer: a bijective mix of 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Why a case failed. `kind` is a short, stable label: the minimizer keeps a smaller case only if
/// it fails with the same kind.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    /// Set when the failure is a known, reported bug (see `KNOWN BUGS` in tests/fuzz.rs): counted
    /// and reported, but it fails the run only with `FUZZ_STRICT=1`.
    pub known: Option<&'static str>,
}

impl Failure {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure { kind: kind.into(), message: message.into(), known: None }
    }

    pub fn known(mut self, bug: &'static str) -> Failure {
        self.known = Some(bug);
        self
    }
}

/// What `check` saw in a passing case, for the statistics line (e.g. "changed", "refused").
pub type Outcome = &'static str;

/// A fuzz target: makes a case from a seeded PRNG and checks the invariants on it.
pub trait Target {
    type Case: Clone;
    fn name(&self) -> &'static str;
    fn generate(&mut self, rng: &mut Rng) -> Self::Case;
    fn check(&mut self, case: &Self::Case) -> Result<Outcome, Failure>;
    /// Smaller variants of `case`, most promising first (the minimizer keeps the first that
    /// still fails the same way and asks again). None by default.
    fn shrink(&self, _case: &Self::Case) -> Vec<Self::Case> {
        Vec::new()
    }
    /// The case as a reproducer: a JSON object (written to target/fuzz-failures/).
    fn describe(&self, case: &Self::Case) -> String;
}

/// A target made of two closures, for targets that need no shrinking: a generator and a check.
pub struct FnTarget<C, G, K> {
    pub name: &'static str,
    pub generate: G,
    pub check: K,
    _case: std::marker::PhantomData<C>,
}

impl<C, G, K> FnTarget<C, G, K>
where
    C: Clone + std::fmt::Debug,
    G: FnMut(&mut Rng) -> C,
    K: FnMut(&C) -> Result<Outcome, Failure>,
{
    #[allow(dead_code)] // for the exchange plug point in tests/fuzz.rs
    pub fn new(name: &'static str, generate: G, check: K) -> Self {
        FnTarget { name, generate, check, _case: std::marker::PhantomData }
    }
}

impl<C, G, K> Target for FnTarget<C, G, K>
where
    C: Clone + std::fmt::Debug,
    G: FnMut(&mut Rng) -> C,
    K: FnMut(&C) -> Result<Outcome, Failure>,
{
    type Case = C;
    fn name(&self) -> &'static str {
        self.name
    }
    fn generate(&mut self, rng: &mut Rng) -> C {
        (self.generate)(rng)
    }
    fn check(&mut self, case: &C) -> Result<Outcome, Failure> {
        (self.check)(case)
    }
    fn describe(&self, case: &C) -> String {
        format!("{{\"case\":{}}}", json_string(&format!("{case:?}")))
    }
}

/// The knobs, read from the environment.
pub struct Knobs {
    pub seed: u64,
    pub seconds: f64,
    pub replay: Option<u64>,
    pub strict: bool,
}

impl Knobs {
    pub fn from_env() -> Knobs {
        let seed = std::env::var("FUZZ_SEED").ok().map(|s| parse_u64(&s).expect("FUZZ_SEED: a number (decimal or 0x…)"));
        let seconds = std::env::var("FUZZ_SECONDS").ok().map(|s| s.parse::<f64>().expect("FUZZ_SECONDS: a number of seconds"));
        let replay = std::env::var("FUZZ_REPLAY").ok().map(|s| parse_u64(&s).expect("FUZZ_REPLAY: a case seed (0x…)"));
        let strict = std::env::var("FUZZ_STRICT").is_ok_and(|v| v == "1");
        Knobs { seed: seed.unwrap_or(DEFAULT_SEED), seconds: seconds.unwrap_or(DEFAULT_SECONDS), replay, strict }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

thread_local! {
    /// Panics on this thread are expected (caught and reported by the engine): don't print them.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent while the engine is catching panics on the
/// current thread, and prints as usual otherwise (other tests, the final failure).
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Runs `check`, turning a panic into a `panic` failure.
fn checked<T: Target>(target: &mut T, case: &T::Case) -> Result<Outcome, Failure> {
    QUIET.with(|q| q.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| target.check(case)));
    QUIET.with(|q| q.set(false));
    match result {
        Ok(r) => r,
        Err(payload) => Err(Failure::new("panic", format!("panicked: {}", panic_message(&*payload)))),
    }
}

/// What a run did.
pub struct Report {
    pub execs: u64,
    pub seconds: f64,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub known: BTreeMap<&'static str, (u64, String)>,
}

/// Runs `target` for the knobs' time (or replays one case), prints one statistics line, and on a
/// failure minimizes it, writes the reproducer and panics with the seeds to replay it.
pub fn run<T: Target>(target: &mut T, knobs: &Knobs) -> Report {
    install_quiet_hook();
    let name = target.name();
    let target_seed = mix(knobs.seed ^ name_hash(name));
    let budget = Duration::from_secs_f64(knobs.seconds.max(0.0));
    let start = Instant::now();
    let mut report = Report { execs: 0, seconds: 0.0, outcomes: BTreeMap::new(), known: BTreeMap::new() };
    let mut index: u64 = 0;
    loop {
        let case_seed = match knobs.replay {
            Some(s) => s,
            None => mix(target_seed.wrapping_add(index)),
        };
        let case = target.generate(&mut Rng::new(case_seed));
        report.execs += 1;
        index += 1;
        match checked(target, &case) {
            Ok(outcome) => *report.outcomes.entry(outcome).or_default() += 1,
            Err(f) if f.known.is_some() && !knobs.strict => {
                let bug = f.known.unwrap_or_default();
                if !report.known.contains_key(bug) {
                    // The first hit of each known bug: a short minimization, then its reproducer.
                    let (small, small_failure, _) = minimize(target, case.clone(), f.clone(), Duration::from_secs(KNOWN_MINIMIZE_SECONDS));
                    let file = write_reproducer(target, &small, &small_failure, knobs.seed, case_seed, true);
                    report.known.insert(bug, (0, file));
                }
                if let Some(entry) = report.known.get_mut(bug) {
                    entry.0 += 1;
                }
            }
            Err(f) => {
                report.seconds = start.elapsed().as_secs_f64();
                print_report(name, knobs, &report);
                let (small, small_failure, tries) = minimize(target, case, f.clone(), Duration::from_secs(MINIMIZE_SECONDS));
                let file = write_reproducer(target, &small, &small_failure, knobs.seed, case_seed, true);
                panic!(
                    "fuzz {name}: {} — {}\n  after {} cases; seed {:#x}, case seed {case_seed:#x}\n  minimized in {tries} tries: {}\n  replay: FUZZ_SEED={:#x} FUZZ_REPLAY={case_seed:#x} cargo test --profile fuzz --test fuzz {name} -- --nocapture\n  reproducer: {file}",
                    f.kind, f.message, report.execs, knobs.seed, small_failure.message, knobs.seed
                );
            }
        }
        if knobs.replay.is_some() || start.elapsed() >= budget {
            break;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    print_report(name, knobs, &report);
    report
}

fn print_report(name: &str, knobs: &Knobs, report: &Report) {
    let mut line = format!("fuzz {name}: {} execs in {:.1} s = {:.0} exec/s, seed {:#x}", report.execs, report.seconds, report.execs as f64 / report.seconds.max(1e-9), knobs.seed);
    let outcomes: Vec<String> = report.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = write!(line, "; outcomes: {}", outcomes.join(", "));
    println!("{line}");
    for (bug, (n, file)) in &report.known {
        println!("fuzz {name}: KNOWN BUG {bug}: hit {n} times (first reproducer: {file}); FUZZ_STRICT=1 fails on it");
    }
}

/// Greedy minimization: keeps the first smaller variant that fails with the same kind, until
/// none does or the budget is spent. Returns the smallest case, its failure and the tries made.
fn minimize<T: Target>(target: &mut T, mut case: T::Case, mut failure: Failure, budget: Duration) -> (T::Case, Failure, usize) {
    let deadline = Instant::now() + budget;
    let mut tries = 0;
    'outer: while Instant::now() < deadline && tries < MINIMIZE_TRIES {
        for candidate in target.shrink(&case) {
            tries += 1;
            if let Err(f) = checked(target, &candidate) {
                if f.kind == failure.kind {
                    case = candidate;
                    failure = f;
                    continue 'outer;
                }
            }
            if Instant::now() >= deadline || tries >= MINIMIZE_TRIES {
                break 'outer;
            }
        }
        break;
    }
    (case, failure, tries)
}

/// Writes the reproducer to target/fuzz-failures/ and returns its path.
fn write_reproducer<T: Target>(target: &T, case: &T::Case, failure: &Failure, seed: u64, case_seed: u64, minimized: bool) -> String {
    let dir = failures_dir();
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{}-{case_seed:016x}.json", target.name()));
    let text = format!(
        "{{\"target\":{},\"seed\":\"{seed:#x}\",\"case_seed\":\"{case_seed:#x}\",\"minimized\":{minimized},\"kind\":{},\"known_bug\":{},\"message\":{},\"input\":{}}}\n",
        json_string(target.name()),
        json_string(&failure.kind),
        failure.known.map_or("null".to_string(), json_string),
        json_string(&failure.message),
        target.describe(case)
    );
    let _ = std::fs::write(&file, text);
    file.display().to_string()
}

pub fn failures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures")
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `bytes` as a Rust byte-string literal (for pasting a reproducer into a test).
pub fn rust_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("b\"");
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    out
}

/// Byte-level shrink candidates: drop chunks, halving sizes down to single bytes (bounded).
pub fn byte_deletions(bytes: &[u8], limit: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = (bytes.len() / 2).max(1);
    while chunk >= 1 && out.len() < limit {
        let mut at = 0;
        while at < bytes.len() && out.len() < limit {
            let end = (at + chunk).min(bytes.len());
            let mut v = Vec::with_capacity(bytes.len() - (end - at));
            v.extend_from_slice(&bytes[..at]);
            v.extend_from_slice(&bytes[end..]);
            out.push(v);
            at += chunk;
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
    out
}
