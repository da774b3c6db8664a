//! Prometheus metrics: a small registry of atomics and the text exposition format (0.0.4).
//!
//! Counters, gauges and histograms are plain atomics, so the code that records them (the apply
//! path, the Raft log writer, every gRPC call) pays one or two relaxed atomic adds and never
//! takes a lock. Values computed at scrape time (database size, key count, leader) are read by
//! whoever renders them and written straight into a [`Text`].
//!
//! `etcd.rs` holds the datastore's metrics under etcd's names, `grpc.rs` the gRPC server
//! family of go-grpc-prometheus, `k8sd.rs` the node daemon's own (certificates, components,
//! load balancer), `server.rs` the `/metrics` listener. This module names no
//! other module of the crate: everything else may record into it.

pub mod etcd;
pub mod grpc;
pub mod k8sd;
pub mod server;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Prometheus' `ExponentialBuckets(start, factor, N)`: upper bounds `start * factor^i`.
pub const fn exponential_buckets<const N: usize>(start: f64, factor: f64) -> [f64; N] {
    let mut out = [0.0; N];
    let mut i = 0;
    let mut b = start;
    while i < N {
        out[i] = b;
        b *= factor;
        i += 1;
    }
    out
}

/// A histogram of durations in seconds with fixed upper bounds. Each observation lands in one
/// slot (the first bound it does not exceed, or the overflow slot); the cumulative buckets,
/// `_count` and `_sum` are derived at render time, so a scrape is always self-consistent.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    slots: [AtomicU64; N],
    overflow: AtomicU64,
    sum_nanos: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            slots: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        match self.bounds.iter().position(|b| secs <= *b) {
            Some(i) => self.slots[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>()
            + self.overflow.load(Ordering::Relaxed)
    }

    /// The sample lines of this histogram (no HELP/TYPE), with `labels` on every line.
    pub fn render(&self, out: &mut Text, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0u64;
        for (bound, slot) in self.bounds.iter().zip(&self.slots) {
            cumulative += slot.load(Ordering::Relaxed);
            out.sample_le(
                &format!("{name}_bucket"),
                labels,
                &format_float(*bound),
                cumulative,
            );
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        out.sample_le(&format!("{name}_bucket"), labels, "+Inf", cumulative);
        #[allow(clippy::cast_precision_loss)] // a sum of nanoseconds; f64 is the format's type
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        out.sample(&format!("{name}_sum"), labels, sum);
        #[allow(clippy::cast_precision_loss)] // counts stay far below 2^53
        out.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// A metric's type, as the `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The text exposition format being written: `# HELP` and `# TYPE` once per family, then its
/// samples.
#[derive(Debug, Default)]
pub struct Text {
    buf: String,
}

impl Text {
    pub fn new() -> Self {
        Text::default()
    }

    /// Start a metric family. Call once per name, before its samples.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.buf, "# HELP {name} {help}");
        let _ = writeln!(self.buf, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.buf.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.buf, " {}", format_float(value));
    }

    /// A family with a single unlabelled sample, the common case.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn sample_le(&mut self, name: &str, labels: &[(&str, &str)], le: &str, value: u64) {
        self.buf.push_str(name);
        self.labels(labels, Some(le));
        let _ = writeln!(self.buf, " {value}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.buf.push('{');
        let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                self.buf.push(',');
            }
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = write!(self.buf, "{k}=\"{v}\"");
        }
        self.buf.push('}');
    }

    /// Append text rendered elsewhere (another registry's families).
    pub fn extend(&mut self, other: Text) {
        self.buf.push_str(&other.buf);
    }

    pub fn finish(self) -> String {
        self.buf
    }
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` closely enough for Prometheus: integers without a
/// fraction, infinities as `+Inf`/`-Inf`.
fn format_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v.is_nan() {
        return "NaN".into();
    }
    #[allow(clippy::cast_possible_truncation)] // checked: v is integral and within i64
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn exponential_buckets_match_prometheus() {
        let b: [f64; 14] = exponential_buckets(0.001, 2.0);
        assert_eq!(b[0], 0.001);
        assert!((b[13] - 8.192).abs() < 1e-12, "{}", b[13]);
    }

    #[test]
    fn histogram_renders_cumulative_buckets_count_and_sum() {
        let h = Histogram::new([0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut t = Text::new();
        t.family("x_seconds", Kind::Histogram, "help");
        h.render(&mut t, "x_seconds", &[("To", "a\"b")]);
        let s = t.finish();
        assert!(s.contains("# TYPE x_seconds histogram\n"), "{s}");
        assert!(
            s.contains("x_seconds_bucket{To=\"a\\\"b\",le=\"0.001\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{To=\"a\\\"b\",le=\"0.01\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{To=\"a\\\"b\",le=\"+Inf\"} 3\n"),
            "{s}"
        );
        assert!(s.contains("x_seconds_sum{To=\"a\\\"b\"} 1.0055\n"), "{s}");
        assert!(s.contains("x_seconds_count{To=\"a\\\"b\"} 3\n"), "{s}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn floats_print_as_go_does_for_the_values_we_use() {
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(0.25), "0.25");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(-3.0), "-3");
    }
}
