//! Benchmarks of the expectation table at 1 M entries.
//!
//! Besides the criterion benches (insert, lookup hit/miss at 1 k and 1 M, next_expiry), this
//! prints measurements criterion cannot express directly:
//! - heap bytes per expectation, counted by a global allocator wrapper (live bytes before and
//!   after filling a table), with and without `try_reserve`;
//! - the average cost of filling an empty table to 1 M;
//! - expire throughput while draining 1 M expectations, with three call patterns;
//! - lookup cost at 1 k vs 1 M entries (flat-cost check).
//!
//! Run: `cargo bench --bench expect`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use ftpct::expect::{ExpectKind, ExpectLimits, ExpectTable, Expectation};
use ftpct::types::{SessionId, Timestamp};
use ftpct_testutil::alloc::{live_bytes, Counting};

/// Counts live heap bytes.
#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    live_bytes() as usize
}

const N: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const TIMEOUT: u64 = 300 * SEC;
/// Start of the clock (an uptime of a day), so the wheel cursor is not at 0.
const T0: u64 = 86_400 * SEC;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Destination number `k`: 64 public addresses × 65536 ports.
fn dst_of(k: u64) -> SocketAddr {
    let k = k % (1 << 22);
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(0xcb00_7100u32 + (k >> 16) as u32)),
        (k & 0xffff) as u16,
    )
}

fn src_of(k: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc633_6400u32 + (k % 251) as u32))
}

/// Expectation number `k` of master `master`, created at `created`.
fn exp_of(k: u64, master: u64, created: u64) -> Expectation {
    Expectation {
        master: SessionId(master),
        kind: ExpectKind::Pasv227,
        src: src_of(k),
        dst: dst_of(k),
        nat_to: Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + (k % 65_000) as u32)),
            40_000,
        )),
        created: Timestamp(created),
        expires: Timestamp(created + TIMEOUT),
    }
}

fn limits() -> ExpectLimits {
    ExpectLimits {
        max_total: 1 << 24,
        max_per_master: 1,
    }
}

/// A table of `n` expectations (one per master), created over the last 300 s before `T0 + 300 s`
/// so their deadlines are spread over the following 300 s.
fn build(n: u64, reserve: bool) -> ExpectTable {
    let mut t = ExpectTable::new(limits());
    if reserve {
        t.try_reserve(n as usize).expect("reserve");
    }
    let spacing = TIMEOUT / n.max(1);
    for k in 0..n {
        t.insert(exp_of(k, k, T0 + k * spacing)).expect("insert");
    }
    t
}

fn report_memory_and_fill() {
    for reserve in [false, true] {
        let before = live();
        let start = Instant::now();
        let t = build(N, reserve);
        let took = start.elapsed();
        let bytes = live() - before;
        println!(
            "expect/memory ({}): {} entries, {} heap bytes = {:.1} bytes/expectation \
             (table.heap_bytes() = {:.1}/entry); fill {:.1} ns/insert",
            if reserve { "reserved" } else { "grown" },
            t.len(),
            bytes,
            bytes as f64 / N as f64,
            t.heap_bytes() as f64 / N as f64,
            took.as_nanos() as f64 / N as f64,
        );
        drop(black_box(t));
    }
}

fn report_expire() {
    let mut out = Vec::with_capacity(1 << 16);

    // 1. A periodic timer every 10 ms.
    let mut t = build(N, true);
    let start = Instant::now();
    let mut now = T0 + TIMEOUT;
    let mut n = 0usize;
    while !t.is_empty() {
        now += 10_000_000;
        out.clear();
        t.expire(Timestamp(now), &mut out);
        n += out.len();
    }
    let took = start.elapsed();
    println!(
        "expect/expire drain, 10 ms timer: {n} expired in {:?} = {:.1} ns/expired",
        took,
        took.as_nanos() as f64 / n as f64
    );

    // 2. Engine pattern: timer armed on next_expiry(), then expire(now) (one call per deadline).
    let mut t = build(N, true);
    let start = Instant::now();
    let mut n = 0usize;
    let mut calls = 0usize;
    while let Some(next) = t.next_expiry() {
        out.clear();
        t.expire(next, &mut out);
        n += out.len();
        calls += 1;
    }
    let took = start.elapsed();
    println!(
        "expect/expire drain, next_expiry-driven: {n} expired in {calls} calls, {:?} = {:.1} ns/expired",
        took,
        took.as_nanos() as f64 / n as f64
    );

    // 3. One call after everything is due.
    let mut t = build(N, true);
    let start = Instant::now();
    out.clear();
    t.expire(Timestamp(T0 + 2 * TIMEOUT), &mut out);
    let took = start.elapsed();
    println!(
        "expect/expire drain, single call: {} expired in {:?} = {:.1} ns/expired",
        out.len(),
        took,
        took.as_nanos() as f64 / out.len() as f64
    );
}

/// Latency of one dependent random 8-byte load within a buffer of `bytes` (pointer chasing over a
/// random cycle): the hardware floor for a lookup's random accesses.
fn random_access_ns(bytes: usize) -> f64 {
    let n = bytes / 8;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng(3);
    for i in (1..n).rev() {
        order.swap(i, (rng.next() % i as u64) as usize);
    }
    let mut next = vec![0usize; n];
    for w in 0..n {
        next[order[w]] = order[(w + 1) % n];
    }
    const STEPS: usize = 2_000_000;
    let start = Instant::now();
    let mut p = 0;
    for _ in 0..STEPS {
        p = next[p];
    }
    black_box(p);
    start.elapsed().as_nanos() as f64 / STEPS as f64
}

/// Lookup cost at 1 k vs 1 M entries, measured directly.
fn report_flat_cost() {
    for (what, bytes) in [
        ("dst index at 1k (2 KiB)", 2 << 10),
        ("dst index at 1M (16 MiB)", 16 << 20),
        ("slab at 1M (144 MB)", 144 << 20),
    ] {
        println!(
            "expect/calibration: dependent random load in {what}: {:.1} ns",
            random_access_ns(bytes)
        );
    }
    const LOOKUPS: u64 = 5_000_000;
    let mut results = Vec::new();
    for n in [1_000u64, N] {
        let t = build(n, false);
        for (name, miss) in [("hit", false), ("miss", true)] {
            let mut rng = Rng(42);
            let start = Instant::now();
            let mut found = 0u64;
            for _ in 0..LOOKUPS {
                let k = rng.next() % n;
                let dst = if miss {
                    dst_of(k + (1 << 21))
                } else {
                    dst_of(k)
                };
                found += u64::from(t.lookup(src_of(k), dst).is_some());
            }
            let ns = start.elapsed().as_nanos() as f64 / LOOKUPS as f64;
            assert_eq!(found, if miss { 0 } else { LOOKUPS });
            println!("expect/lookup {name} at {n} entries: {ns:.1} ns/op");
            results.push(ns);
        }
    }
    // Control: the 1M table, but only 1000 hot keys (cache-resident). If lookups are O(1) in the
    // table size, this matches the 1k table and the rest of the 1M cost is cache/TLB misses.
    let t = build(N, false);
    let mut rng = Rng(42);
    let start = Instant::now();
    for _ in 0..LOOKUPS {
        let k = (rng.next() % 1_000) * (N / 1_000);
        black_box(t.lookup(src_of(k), dst_of(k)).is_some());
    }
    let hot = start.elapsed().as_nanos() as f64 / LOOKUPS as f64;
    println!("expect/lookup hit at 1000000 entries, 1000 hot keys: {hot:.1} ns/op");
    println!(
        "expect/lookup flat-cost: 1M/1k ratio hit {:.2}, miss {:.2}; 1M hot-keys/1k hit {:.2}",
        results[2] / results[0],
        results[3] / results[1],
        hot / results[0]
    );
}

fn criterion_benches(c: &mut Criterion) {
    let small = build(1_000, false);
    let mut big = build(N, false);

    for (name, t, n) in [("1k", &small, 1_000u64), ("1M", &big, N)] {
        let mut rng = Rng(7);
        c.bench_function(&format!("expect/lookup_hit_{name}"), |b| {
            b.iter(|| {
                let k = rng.next() % n;
                black_box(t.lookup(src_of(k), dst_of(k)).is_some())
            })
        });
        let mut rng = Rng(8);
        c.bench_function(&format!("expect/lookup_miss_{name}"), |b| {
            b.iter(|| {
                let k = rng.next() % n;
                black_box(t.lookup(src_of(k), dst_of(k + (1 << 21))).is_some())
            })
        });
    }

    c.bench_function("expect/next_expiry_1M", |b| {
        b.iter(|| black_box(big.next_expiry()))
    });

    // A new expectation into the 1M table, then its removal (the table stays at 1M).
    // Numbers N..3N: destinations and masters not in use.
    let mut k = 0;
    c.bench_function("expect/insert+remove_1M", |b| {
        b.iter(|| {
            k += 1;
            let j = N + k % (2 * N);
            let ins = big.insert(exp_of(j, j, T0 + TIMEOUT)).expect("insert");
            black_box(big.remove(ins.id))
        })
    });

    // Steady state at 1M: each master announces a new port, evicting its previous expectation
    // (max_per_master = 1), as a busy server with 1M sessions would. Destination numbers cycle
    // modulo 4N; a destination comes back only after its holder was evicted.
    let mut k = 2 * N;
    c.bench_function("expect/insert_evicting_1M", |b| {
        b.iter(|| {
            k += 1;
            let ins = big.insert(exp_of(k, k % N, T0 + TIMEOUT)).expect("insert");
            black_box(ins.evicted.is_some())
        })
    });
    assert_eq!(big.len() as u64, N);
}

fn main() {
    report_memory_and_fill();
    report_flat_cost();
    report_expire();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
}
