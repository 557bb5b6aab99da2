//! The agent's metrics: counters and histograms kept where things happen (DNS answer loops,
//! the HTTP router), gauges read when scraped, and both of `/v1/agent/metrics`' encodings
//! (Consul's JSON, Prometheus' text format).
//!
//! Hot paths write only to counters of their own: each DNS UDP loop has a [`DnsCounters`]
//! no other loop writes (relaxed atomic adds on cache lines that stay with that core); a
//! scrape sums them. Why: a shared counter every core bumps on every query would bounce one
//! cache line between cores at hundreds of thousands of queries per second.
//!
//! Why not the `prometheus-client` crate: `/v1/agent/metrics` answers in Consul's JSON shape
//! too, which needs the values back, and its label families take a lock per increment; the
//! text format (v0.0.4) is a few lines to write.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A histogram over fixed bucket bounds (seconds), with the sum of what it observed. Two
/// atomic adds per observation; the count, min and max are derived from the buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus +Inf. Not cumulative (summed when encoded).
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records `d`; `single_writer`: only this thread of control ever writes here (see
    /// [`bump`]).
    pub fn observe(&self, d: Duration, single_writer: bool) {
        let secs = d.as_secs_f64();
        let slot = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len());
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        bump(&self.buckets[slot], 1, single_writer);
        bump(&self.sum_ns, ns, single_writer);
    }

    /// A copy of the values, to add up and encode.
    pub fn snapshot(&self) -> HistogramValues {
        HistogramValues {
            bounds: self.bounds,
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// Adds `n`: with one writer, a plain load and store (no locked instruction, as cheap as a
/// local variable, and readers still see whole values); else an atomic add.
fn bump(counter: &AtomicU64, n: u64, single_writer: bool) {
    if single_writer {
        counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    } else {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The values of a [`Histogram`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValues {
    pub bounds: &'static [f64],
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl HistogramValues {
    pub fn empty(bounds: &'static [f64]) -> HistogramValues {
        HistogramValues { bounds, buckets: vec![0; bounds.len() + 1], sum_ns: 0 }
    }

    pub fn add(&mut self, other: &HistogramValues) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum_ns += other.sum_ns;
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper bound (seconds) of the highest non-empty bucket; the last bound's for +Inf.
    pub fn max_bound(&self) -> f64 {
        let last = self.buckets.iter().rposition(|c| *c > 0).unwrap_or(0);
        self.bounds[last.min(self.bounds.len() - 1)]
    }

    /// The lower bound (seconds) of the lowest non-empty bucket.
    pub fn min_bound(&self) -> f64 {
        let first = self.buckets.iter().position(|c| *c > 0).unwrap_or(0);
        if first == 0 {
            0.0
        } else {
            self.bounds[first - 1]
        }
    }
}

/// DNS answer latency bounds: 50 µs to 1 s.
pub const DNS_SECONDS: &[f64] = &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];
/// HTTP request latency bounds: 1 ms to 10 min (blocking queries).
pub const HTTP_SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 600.0];
/// Disk flush bounds (fsync of the data dir): 100 µs to 10 s (a stalled disk).
pub const FSYNC_SECONDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0];
/// Raft commit bounds: 500 µs to 10 s.
pub const RAFT_COMMIT_SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];
/// Health-check probe bounds: 1 ms to 60 s (the longest check timeouts).
pub const PROBE_SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0];

/// Query types counted apart; every other type is `other`.
pub const DNS_QTYPES: [(u16, &str); 8] =
    [(1, "A"), (28, "AAAA"), (33, "SRV"), (16, "TXT"), (6, "SOA"), (2, "NS"), (255, "ANY"), (0, "other")];
/// Response codes counted apart (by value); every other is `other`.
pub const DNS_RCODES: [&str; 7] = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other"];

/// One DNS answer loop's counters (single writer), or the ones answers from several tasks
/// share (the TCP listener's, the slow path's).
#[derive(Debug)]
pub struct DnsCounters {
    single_writer: bool,
    /// By `DNS_QTYPES` index, then `DNS_RCODES` index.
    answers: [[AtomicU64; DNS_RCODES.len()]; DNS_QTYPES.len()],
    truncated: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    latency: Histogram,
    /// Queries seen, for [`DnsCounters::time_this_one`] (single writer only).
    seen: std::sync::atomic::AtomicU32,
}

/// A single-writer loop times one query in this many (reading the clock twice costs ~70 ns,
/// about 1% of a fast-path answer); its counters count every query.
pub const DNS_TIMED_ONE_IN: u32 = 16;

impl Default for DnsCounters {
    fn default() -> Self {
        DnsCounters::new(false)
    }
}

impl DnsCounters {
    fn new(single_writer: bool) -> Self {
        DnsCounters {
            single_writer,
            answers: Default::default(),
            truncated: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            latency: Histogram::new(DNS_SECONDS),
            seen: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Whether to time this query: every one on shared counters, one in
    /// [`DNS_TIMED_ONE_IN`] on a loop's own.
    pub fn time_this_one(&self) -> bool {
        if !self.single_writer {
            return true;
        }
        let seen = self.seen.load(Ordering::Relaxed).wrapping_add(1);
        self.seen.store(seen, Ordering::Relaxed);
        seen.is_multiple_of(DNS_TIMED_ONE_IN)
    }

    /// One answer sent: `query` as received, `answer` as sent, `took` since the query
    /// arrived if it was timed.
    pub fn answered(&self, query: &[u8], answer: &[u8], took: Option<Duration>) {
        let qtype = question_type(query).map_or(DNS_QTYPES.len() - 1, |t| {
            DNS_QTYPES.iter().position(|(code, _)| *code == t).unwrap_or(DNS_QTYPES.len() - 1)
        });
        let rcode = answer.get(3).map_or(DNS_RCODES.len() - 1, |b| usize::from(b & 0x0f).min(DNS_RCODES.len() - 1));
        bump(&self.answers[qtype][rcode], 1, self.single_writer);
        if answer.get(2).is_some_and(|b| b & 0x02 != 0) {
            bump(&self.truncated, 1, self.single_writer);
        }
        if let Some(took) = took {
            self.latency.observe(took, self.single_writer);
        }
    }

    /// Whether the answer cache had the answer.
    pub fn cache(&self, hit: bool) {
        let counter = if hit { &self.cache_hits } else { &self.cache_misses };
        bump(counter, 1, self.single_writer);
    }
}

/// The type of a packet's first question, if it has a readable one.
fn question_type(packet: &[u8]) -> Option<u16> {
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        at += 1 + len;
    }
    Some(u16::from_be_bytes([*packet.get(at + 1)?, *packet.get(at + 2)?]))
}

/// One HTTP route's figures.
#[derive(Debug)]
struct RouteStats {
    /// By (method, status).
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: Histogram,
}

/// Everything the agent counts as it goes. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    dns: Arc<Mutex<Vec<Arc<DnsCounters>>>>,
    http: Arc<Mutex<BTreeMap<String, RouteStats>>>,
}

impl Metrics {
    /// Counters for one more DNS answer loop: `single_writer` when only that loop writes to
    /// them (never from tasks it spawns), else shared by concurrent tasks.
    pub fn dns_counters(&self, single_writer: bool) -> Arc<DnsCounters> {
        let counters = Arc::new(DnsCounters::new(single_writer));
        self.dns.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&counters));
        counters
    }

    /// One HTTP request answered: `route` is the matched path template (or `unmatched`).
    /// Allocates only for a route or method and status seen for the first time.
    pub fn http_request(&self, route: &str, method: &'static str, status: u16, took: Duration) {
        let mut routes = self.http.lock().unwrap_or_else(|e| e.into_inner());
        if !routes.contains_key(route) {
            let fresh = RouteStats { requests: BTreeMap::new(), latency: Histogram::new(HTTP_SECONDS) };
            routes.insert(route.to_string(), fresh);
        }
        let Some(stats) = routes.get_mut(route) else { return };
        *stats.requests.entry((method, status)).or_default() += 1;
        stats.latency.observe(took, false);
    }

    /// Every metric now, plus the gauges, counters and histograms the caller read at scrape
    /// time from the modules that keep them (Raft, the store, gossip, checks).
    pub fn collect(&self, gauges: Vec<Gauge>, counters: Vec<Counter>, histograms: Vec<NamedHistogram>) -> Collected {
        let loops = self.dns.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut counters = counters;
        let mut histograms = histograms;
        let mut dns_latency = HistogramValues::empty(DNS_SECONDS);
        let (mut truncated, mut hits, mut misses) = (0, 0, 0);
        let mut answers = [[0u64; DNS_RCODES.len()]; DNS_QTYPES.len()];
        for l in &loops {
            for (q, row) in l.answers.iter().enumerate() {
                for (r, count) in row.iter().enumerate() {
                    answers[q][r] += count.load(Ordering::Relaxed);
                }
            }
            truncated += l.truncated.load(Ordering::Relaxed);
            hits += l.cache_hits.load(Ordering::Relaxed);
            misses += l.cache_misses.load(Ordering::Relaxed);
            dns_latency.add(&l.latency.snapshot());
        }
        for (q, row) in answers.iter().enumerate() {
            for (r, count) in row.iter().enumerate().filter(|(_, c)| **c > 0) {
                let labels = vec![("qtype", DNS_QTYPES[q].1.to_string()), ("rcode", DNS_RCODES[r].to_string())];
                counters.push(Counter { name: "dns_queries_total", labels, value: *count });
            }
        }
        counters.push(Counter { name: "dns_udp_truncated_total", labels: Vec::new(), value: truncated });
        counters.push(Counter { name: "dns_cache_hits_total", labels: Vec::new(), value: hits });
        counters.push(Counter { name: "dns_cache_misses_total", labels: Vec::new(), value: misses });
        histograms.push(NamedHistogram { name: "dns_answer_seconds", labels: Vec::new(), values: dns_latency });
        let routes = self.http.lock().unwrap_or_else(|e| e.into_inner());
        for (route, stats) in routes.iter() {
            for ((method, status), count) in &stats.requests {
                let labels =
                    vec![("route", route.clone()), ("method", method.to_string()), ("status", status.to_string())];
                counters.push(Counter { name: "http_requests_total", labels, value: *count });
            }
            let labels = vec![("route", route.clone())];
            histograms.push(NamedHistogram { name: "http_request_seconds", labels, values: stats.latency.snapshot() });
        }
        Collected { gauges, counters, histograms }
    }
}

pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
pub struct Gauge {
    pub name: &'static str,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Counter {
    pub name: &'static str,
    pub labels: Labels,
    pub value: u64,
}

#[derive(Debug, Clone)]
pub struct NamedHistogram {
    pub name: &'static str,
    pub labels: Labels,
    pub values: HistogramValues,
}

/// Every metric at one scrape.
#[derive(Debug, Clone)]
pub struct Collected {
    pub gauges: Vec<Gauge>,
    pub counters: Vec<Counter>,
    pub histograms: Vec<NamedHistogram>,
}

/// The prefix of every metric name (Prometheus: `cairn_dns_queries_total`; JSON:
/// `cairn.dns.queries_total`).
const PREFIX: &str = "cairn";

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn prometheus_labels(labels: &[(&str, String)], extra: Option<(&str, String)>) -> String {
    let all: Vec<String> = labels
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .chain(extra)
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(&v)))
        .collect();
    if all.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", all.join(","))
    }
}

impl Collected {
    /// Prometheus' text format (version 0.0.4): one `# TYPE` line per family.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut typed = std::collections::HashSet::new();
        let mut type_line = |out: &mut String, name: &str, kind: &str| {
            if typed.insert(name.to_string()) {
                let _ = writeln!(out, "# TYPE {PREFIX}_{name} {kind}");
            }
        };
        for g in &self.gauges {
            type_line(&mut out, g.name, "gauge");
            let _ = writeln!(out, "{PREFIX}_{}{} {}", g.name, prometheus_labels(&g.labels, None), g.value);
        }
        for c in &self.counters {
            type_line(&mut out, c.name, "counter");
            let _ = writeln!(out, "{PREFIX}_{}{} {}", c.name, prometheus_labels(&c.labels, None), c.value);
        }
        for h in &self.histograms {
            type_line(&mut out, h.name, "histogram");
            let v = &h.values;
            let mut cumulative = 0;
            for (i, count) in v.buckets.iter().enumerate() {
                cumulative += count;
                let le = v.bounds.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                let labels = prometheus_labels(&h.labels, Some(("le", le)));
                let _ = writeln!(out, "{PREFIX}_{}_bucket{labels} {cumulative}", h.name);
            }
            let labels = prometheus_labels(&h.labels, None);
            let _ = writeln!(out, "{PREFIX}_{}_sum{labels} {}", h.name, v.sum_ns as f64 / 1e9);
            let _ = writeln!(out, "{PREFIX}_{}_count{labels} {}", h.name, v.count());
        }
        out
    }

    /// Consul's JSON shape: `Gauges`, `Counters` (cumulative counts: `Count` and `Sum` both
    /// the total), `Samples` (the histograms, in milliseconds as Consul's timers).
    pub fn consul_json(&self, timestamp: String) -> serde_json::Value {
        use serde_json::json;
        let name = |n: &str| format!("{PREFIX}.{}", n.replacen('_', ".", 1));
        let labels = |l: &Labels| l.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>();
        let gauges: Vec<_> = self
            .gauges
            .iter()
            .map(|g| json!({"Name": name(g.name), "Value": g.value, "Labels": labels(&g.labels)}))
            .collect();
        let counters: Vec<_> = self
            .counters
            .iter()
            .map(|c| {
                json!({"Name": name(c.name), "Count": c.value, "Rate": 0.0, "Sum": c.value as f64,
                       "Min": 1.0, "Max": 1.0, "Mean": 1.0, "Stddev": 0.0, "Labels": labels(&c.labels)})
            })
            .collect();
        let samples: Vec<_> = self
            .histograms
            .iter()
            .filter(|h| h.values.count() > 0)
            .map(|h| {
                let v = &h.values;
                let count = v.count();
                let sum_ms = v.sum_ns as f64 / 1e6;
                // Min and Max are bucket bounds (cairn keeps buckets, not extremes).
                json!({"Name": name(h.name), "Count": count, "Rate": 0.0, "Sum": sum_ms,
                       "Min": v.min_bound() * 1e3, "Max": v.max_bound() * 1e3, "Mean": sum_ms / count as f64,
                       "Stddev": 0.0, "Labels": labels(&h.labels)})
            })
            .collect();
        json!({"Timestamp": timestamp, "Gauges": gauges, "Points": [], "Counters": counters, "Samples": samples})
    }
}

/// This process's resident memory (bytes) and open file descriptors, from /proc.
pub fn process_figures() -> (Option<f64>, Option<f64>) {
    let page = 4096.0;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|pages| pages * page);
    let fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    (rss, fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(qtype: u16) -> Vec<u8> {
        let mut p = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(b"\x03web\x07service\x06consul\x00");
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p
    }

    #[test]
    fn dns_answers_are_counted_by_type_and_rcode_and_encoded_both_ways() {
        let metrics = Metrics::default();
        let (a, b) = (metrics.dns_counters(true), metrics.dns_counters(false));
        let nxdomain = [0u8, 1, 0x84, 0x03];
        let truncated = [0u8, 1, 0x86, 0x00];
        a.answered(&query(1), &nxdomain, Some(Duration::from_micros(70)));
        b.answered(&query(1), &nxdomain, Some(Duration::from_micros(30)));
        b.answered(&query(33), &truncated, Some(Duration::from_millis(2)));
        b.answered(&query(99), &truncated, Some(Duration::from_millis(2)));
        a.answered(&query(1), &nxdomain, None);
        assert!((0..DNS_TIMED_ONE_IN * 2).filter(|_| a.time_this_one()).count() == 2, "one in 16 timed");
        assert!(b.time_this_one(), "shared counters time every answer");
        a.cache(true);
        metrics.http_request("/v1/kv/{*key}", "GET", 200, Duration::from_millis(3));
        let collected = metrics.collect(
            vec![Gauge { name: "raft_applied_index", labels: Vec::new(), value: 7.0 }],
            vec![Counter { name: "raft_leader_changes_total", labels: Vec::new(), value: 1 }],
            ["http", "tcp"]
                .into_iter()
                .map(|kind| {
                    let probes = Histogram::new(PROBE_SECONDS);
                    probes.observe(Duration::from_millis(if kind == "http" { 20 } else { 2 }), false);
                    NamedHistogram {
                        name: "check_probe_seconds",
                        labels: vec![("kind", kind.into())],
                        values: probes.snapshot(),
                    }
                })
                .collect(),
        );
        let text = collected.prometheus();
        for line in [
            "# TYPE cairn_raft_applied_index gauge",
            "cairn_raft_applied_index 7",
            "# TYPE cairn_raft_leader_changes_total counter",
            "cairn_raft_leader_changes_total 1",
            "# TYPE cairn_dns_queries_total counter",
            "cairn_dns_queries_total{qtype=\"A\",rcode=\"NXDOMAIN\"} 3",
            "cairn_dns_queries_total{qtype=\"SRV\",rcode=\"NOERROR\"} 1",
            "cairn_dns_queries_total{qtype=\"other\",rcode=\"NOERROR\"} 1",
            "cairn_dns_udp_truncated_total 2",
            "cairn_dns_cache_hits_total 1",
            "cairn_dns_answer_seconds_bucket{le=\"0.00005\"} 1",
            "cairn_dns_answer_seconds_bucket{le=\"0.0001\"} 2",
            "cairn_dns_answer_seconds_bucket{le=\"+Inf\"} 4",
            "cairn_dns_answer_seconds_count 4",
            "cairn_http_requests_total{route=\"/v1/kv/{*key}\",method=\"GET\",status=\"200\"} 1",
            "cairn_http_request_seconds_bucket{route=\"/v1/kv/{*key}\",le=\"0.005\"} 1",
            "cairn_check_probe_seconds_bucket{kind=\"http\",le=\"0.01\"} 0",
            "cairn_check_probe_seconds_bucket{kind=\"http\",le=\"0.05\"} 1",
            "cairn_check_probe_seconds_bucket{kind=\"tcp\",le=\"0.005\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert_eq!(text.matches("# TYPE cairn_dns_queries_total").count(), 1);
        assert_eq!(text.matches("# TYPE cairn_check_probe_seconds histogram").count(), 1);
        let json = collected.consul_json("t".into());
        assert_eq!(
            json["Gauges"][0],
            serde_json::json!({"Name": "cairn.raft.applied_index", "Value": 7.0, "Labels": {}})
        );
        let dns = json["Samples"].as_array().expect("samples").iter().find(|s| s["Name"] == "cairn.dns.answer_seconds");
        let dns = dns.expect("the DNS latency sample");
        assert_eq!((dns["Count"].as_u64(), dns["Min"].as_f64(), dns["Max"].as_f64()), (Some(4), Some(0.0), Some(2.5)));
    }

    #[test]
    fn a_question_type_is_read_only_from_a_well_formed_question() {
        assert_eq!(question_type(&query(28)), Some(28));
        assert_eq!(question_type(&query(28)[..20]), None);
        let mut compressed = query(1);
        compressed[12] = 0xc0;
        assert_eq!(question_type(&compressed), None);
    }
}
