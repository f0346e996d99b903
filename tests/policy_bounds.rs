//! ModelPolicy rules against their bounds, without the bed: the memory a rule's evaluation takes
//! (every allocation of this test binary counted) stays bounded on configs near 1 MiB, whatever
//! the rule, and an evaluation awaited by the controller never holds an async worker.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use modelpack_operator::api::{ModelPolicySpec, PolicyAction, PolicyRule};
use modelpack_operator::modelpack::Manifest;
use modelpack_operator::policy::{self, CompiledPolicy, MAX_MEMORY, RuleResult, Source, Variables};
use serde_json::{Value, json};

/// Counts the bytes alive and their peak since the last [`reset_peak`].
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the counters are global.
static SERIAL: Mutex<()> = Mutex::new(());

fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

fn policy(expressions: &[&str]) -> CompiledPolicy {
    let rules = expressions
        .iter()
        .enumerate()
        .map(|(i, e)| PolicyRule { name: format!("r{i}"), expression: (*e).into(), message: None })
        .collect();
    let spec = ModelPolicySpec { action: PolicyAction::Enforce, namespace_selector: None, model_selector: None, rules };
    policy::compile("p", &spec).unwrap()
}

/// Variables whose config's `descriptor.licenses` holds `n` strings of `len` bytes.
fn variables(n: usize, len: usize) -> Variables {
    let manifest: Manifest = serde_json::from_value(json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.cnai.model.config.v1+json", "digest": "sha256:c", "size": 2},
        "layers": [],
    }))
    .unwrap();
    let licenses: Vec<Value> = (0..n).map(|i| json!(format!("{i:0len$}"))).collect();
    let config = json!({"descriptor": {"licenses": licenses}});
    let source = Source {
        repository: "r.example/m".into(),
        digest: "sha256:d",
        tag: Some("v1"),
        manifest: &manifest,
        config_json: &config,
        referrers: &[],
    };
    Variables::new(&source).unwrap()
}

/// The rule's results, the time taken and the peak of bytes allocated beyond those alive before.
fn measured(policy: &CompiledPolicy, vars: &Variables) -> (Vec<RuleResult>, Duration, usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = reset_peak();
    let started = Instant::now();
    let results = policy::evaluate(policy, vars);
    let elapsed = started.elapsed();
    (results, elapsed, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// The variables alone (their JSON and CEL copies, about 3 times their text) are what any
/// evaluation costs; beyond them a rule may take [`MAX_MEMORY`] of values, counted twice for the
/// allocator's boxes.
fn bound(vars: &Variables) -> usize {
    let json = serde_json::to_vec(&vars.to_json()).unwrap().len();
    4 * json + 2 * MAX_MEMORY as usize
}

#[test]
fn memory_stays_bounded_on_a_config_near_one_mebibyte() {
    // 0.9 MB of licenses: few long strings, many short ones.
    for (n, len) in [(900, 1000), (36_000, 24)] {
        let vars = variables(n, len);
        for rule in [
            "descriptor.licenses.map(a, descriptor.licenses.map(b, a + b)).size() > 0",
            "descriptor.licenses.map(a, descriptor.licenses).size() > 0",
            "descriptor.licenses.all(a, size(descriptor.licenses.map(b, a + b + a + b)) > 0)",
            "descriptor.licenses.map(l, l + l + l + l + l + l + l + l).size() > 0",
            "descriptor.licenses.filter(l, l + l != '').map(l, [l, l, l]).size() > 0",
            "descriptor.licenses.map(l, descriptor).size() > 0",
        ] {
            let (results, elapsed, peak) = measured(&policy(&[rule]), &vars);
            assert!(peak < bound(&vars), "{rule} ({n} × {len}): {peak} bytes, more than {}", bound(&vars));
            assert!(elapsed < Duration::from_secs(10), "{rule} ({n} × {len}): {elapsed:?}");
            let r = &results[0];
            assert!(r.passed || r.message.contains("not evaluated"), "{rule} ({n} × {len}): {}", r.message);
        }
    }
}

#[test]
fn a_rule_that_ran_took_no_more_memory_than_its_bound() {
    let vars = variables(900, 1000);
    let rule = "descriptor.licenses.map(l, l + l + l + l + l + l + l + l).size() == 900";
    let (results, _, peak) = measured(&policy(&[rule]), &vars);
    assert!(results[0].passed, "{}", results[0].message);
    assert!(peak > 7_000_000, "the 900 strings of 8 kB were made: {peak}");
    assert!(peak < bound(&vars), "{peak}");
}

/// A current-thread runtime has one worker: a ticker on it keeps ticking while a long rule is
/// evaluated, because the evaluation runs on a thread of its own.
#[tokio::test(flavor = "current_thread")]
async fn a_long_rule_does_not_hold_the_async_worker() {
    let vars = variables(36_000, 24);
    let rule = "descriptor.licenses.map(l, l + l).all(x, size(x) == 48)";
    let policy = policy(&[rule, rule, rule]);
    let ticker = tokio::spawn(async {
        let mut longest = Duration::ZERO;
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            longest = longest.max(last.elapsed());
            last = Instant::now();
            if STOP.load(Ordering::Relaxed) {
                return longest;
            }
        }
    });
    // The ticker is ticking before the evaluation starts, and ticks once more after it ended.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let started = Instant::now();
    let results = policy::evaluate_off_workers(&policy, &vars).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(30)).await;
    STOP.store(true, Ordering::Relaxed);
    let longest = ticker.await.unwrap();
    assert!(results.iter().all(|r| r.passed), "{results:?}");
    assert!(took > Duration::from_millis(200), "the rules are long enough to tell: {took:?}");
    assert!(longest < Duration::from_millis(100), "the worker was held {longest:?} of {took:?}");
}

static STOP: AtomicBool = AtomicBool::new(false);
