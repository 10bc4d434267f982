//! The dispatcher: a bounded queue and a thread per sink, so that a slow or dead sink
//! costs the daemon a few counters and never a blocked decision.
//!
//! A sink's thread takes up to `batch_max` records off its queue, hands them to
//! `Sink::deliver`, and on a transient failure waits `retry_base`, then twice that,
//! ... (at most `retry_cap`) and tries the same batch again, up to `max_attempts`
//! deliveries; then the batch is dropped. Records pushed meanwhile wait in the queue,
//! and when it is full the oldest goes: the newest receipts are the ones someone
//! watching a SIEM during an outage wants first, and the store keeps them all anyway.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::{debug, warn};

use super::{Record, Severity, Sink, SinkSpec, SinkStats};

const DEFAULT_QUEUE_MAX: usize = 10_000;
const DEFAULT_BATCH_MAX: usize = 100;
const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(500);
const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(30);
const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// How the dispatcher runs one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Records below this are not sent to the sink (and not counted as dropped).
    pub min_severity: Severity,
    /// Records waiting at most; past it the oldest is dropped.
    pub queue_max: usize,
    /// Records per `deliver` call at most.
    pub batch_max: usize,
    /// The wait after the first failed delivery; it doubles after each further one...
    pub retry_base: Duration,
    /// ...up to this.
    pub retry_cap: Duration,
    /// Deliveries of one batch, the first included, before it is dropped.
    pub max_attempts: u32,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            min_severity: Severity::Info,
            queue_max: DEFAULT_QUEUE_MAX,
            batch_max: DEFAULT_BATCH_MAX,
            retry_base: DEFAULT_RETRY_BASE,
            retry_cap: DEFAULT_RETRY_CAP,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl Delivery {
    /// The wait after the `failures`-th failed delivery of a batch (1-based):
    /// `retry_base`, twice that, four times, ... never more than `retry_cap`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.retry_base.saturating_mul(1u32 << doublings).min(self.retry_cap)
    }
}

/// One sink's name and counters, as `agentctl status` shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub min_severity: Severity,
    #[serde(flatten)]
    pub stats: SinkStats,
}

/// Hands every receipt to every sink that wants it; see the module documentation.
#[derive(Default)]
pub struct Dispatcher {
    workers: Vec<Worker>,
}

struct Worker {
    name: String,
    delivery: Delivery,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What a sink's thread and the pushers share.
struct Shared {
    state: Mutex<State>,
    /// Signalled when a record is queued and when the dispatcher stops.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Record>,
    /// Records in the batch being delivered.
    in_flight: usize,
    stats: SinkStats,
    /// Set by `shutdown`: deliver what is queued until this instant, then stop.
    stop_at: Option<Instant>,
    /// Whether the queue has overflowed since it was last empty (to warn once).
    overflowing: bool,
}

impl State {
    fn stopping_now(&self) -> bool {
        self.stop_at.is_some_and(|t| Instant::now() >= t)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a sink's thread must not take the pushers down with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.workers.iter().map(|w| &w.name)).finish()
    }
}

impl Dispatcher {
    /// A dispatcher with no sinks: `push` does nothing.
    pub fn new() -> Self {
        Dispatcher::default()
    }

    /// A dispatcher running every configured sink.
    pub fn start(specs: &[SinkSpec]) -> std::io::Result<Self> {
        let mut d = Dispatcher::new();
        for spec in specs {
            d.add(spec.build()?, spec.delivery.clone())?;
        }
        Ok(d)
    }

    /// Starts a thread delivering to `sink`.
    pub fn add(&mut self, sink: Box<dyn Sink>, delivery: Delivery) -> std::io::Result<()> {
        let name = sink.name().to_string();
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), wake: Condvar::new() });
        let thread = std::thread::Builder::new().name(format!("sink-{}", self.workers.len())).spawn({
            let shared = Arc::clone(&shared);
            let delivery = delivery.clone();
            move || run(sink, &shared, &delivery)
        })?;
        self.workers.push(Worker { name, delivery, shared, thread: Some(thread) });
        Ok(())
    }

    /// Queues `record` for every sink whose `min_severity` it meets. Never waits for a
    /// sink: a full queue drops its oldest record instead.
    pub fn push(&self, record: Record) {
        let wanted: Vec<&Worker> = self.workers.iter().filter(|w| record.severity >= w.delivery.min_severity).collect();
        let mut record = Some(record);
        for (i, w) in wanted.iter().enumerate() {
            let r = if i + 1 == wanted.len() { record.take() } else { record.clone() };
            let Some(r) = r else { break };
            let mut st = w.shared.lock();
            if st.queue.len() >= w.delivery.queue_max {
                st.queue.pop_front();
                st.stats.dropped += 1;
                if !st.overflowing {
                    st.overflowing = true;
                    warn!(sink = %w.name, queue_max = w.delivery.queue_max, "receipt sink is behind; dropping its oldest queued receipts");
                }
            }
            st.queue.push_back(r);
            drop(st);
            w.shared.wake.notify_one();
        }
    }

    /// Every sink's counters, in configuration order.
    pub fn stats(&self) -> Vec<SinkStatus> {
        self.workers
            .iter()
            .map(|w| {
                let st = w.shared.lock();
                let mut stats = st.stats.clone();
                stats.queued = (st.queue.len() + st.in_flight) as u64;
                SinkStatus { name: w.name.clone(), min_severity: w.delivery.min_severity, stats }
            })
            .collect()
    }

    /// Delivers what is queued for up to `grace` (retrying as usual), then drops the
    /// rest (counted) and stops the threads. Returns once they have stopped: after at
    /// most `grace` plus one delivery's own timeout.
    pub fn shutdown(mut self, grace: Duration) -> Vec<SinkStatus> {
        self.stop_all(Instant::now() + grace);
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    warn!(sink = %w.name, "receipt sink thread panicked");
                }
            }
        }
        self.stats()
    }

    fn stop_all(&self, at: Instant) {
        for w in &self.workers {
            w.shared.lock().stop_at.get_or_insert(at);
            w.shared.wake.notify_all();
        }
    }
}

impl Drop for Dispatcher {
    /// Without `shutdown`, the threads stop as soon as their current delivery ends.
    fn drop(&mut self) {
        self.stop_all(Instant::now());
    }
}

/// A sink's thread.
fn run(mut sink: Box<dyn Sink>, shared: &Shared, delivery: &Delivery) {
    loop {
        let batch: Vec<Record> = {
            let mut st = shared.lock();
            while st.queue.is_empty() && st.stop_at.is_none() {
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.queue.is_empty() {
                return;
            }
            if st.stopping_now() {
                st.stats.dropped += st.queue.len() as u64;
                st.queue.clear();
                return;
            }
            let n = st.queue.len().min(delivery.batch_max);
            st.in_flight = n;
            if n == st.queue.len() {
                st.overflowing = false;
            }
            st.queue.drain(..n).collect()
        };
        deliver_with_retries(sink.as_mut(), &batch, shared, delivery);
    }
}

/// Delivers one batch, retrying with backoff; counts the outcome.
fn deliver_with_retries(sink: &mut dyn Sink, batch: &[Record], shared: &Shared, delivery: &Delivery) {
    let mut failures = 0u32;
    loop {
        let result = sink.deliver(batch);
        let mut st = shared.lock();
        let err = match result {
            Ok(()) => {
                st.stats.delivered += batch.len() as u64;
                st.in_flight = 0;
                return;
            }
            Err(e) => e,
        };
        failures += 1;
        st.stats.failed_attempts += 1;
        st.stats.last_error = Some(err.to_string());
        let give_up = if !err.is_transient() {
            Some("rejected")
        } else if failures >= delivery.max_attempts {
            Some("out of attempts")
        } else {
            None
        };
        if let Some(why) = give_up {
            st.stats.dropped += batch.len() as u64;
            st.in_flight = 0;
            drop(st);
            warn!(sink = sink.name(), records = batch.len(), attempts = failures, error = %err, "receipt sink dropped a batch ({why})");
            return;
        }
        let wait = delivery.backoff(failures);
        debug!(sink = sink.name(), attempts = failures, error = %err, retry_in = ?wait, "receipt delivery failed; retrying");
        // Sleep on the condition variable, so that shutdown cuts the wait short.
        let until = Instant::now() + wait;
        loop {
            let now = Instant::now();
            if st.stopping_now() {
                st.stats.dropped += batch.len() as u64;
                st.in_flight = 0;
                return;
            }
            let end = st.stop_at.map_or(until, |s| s.min(until));
            if now >= end {
                break;
            }
            st = shared.wake.wait_timeout(st, end - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::SystemTime};

    use super::*;
    use crate::receipts::sinks::SinkError;

    fn record(seq: u64, severity: Severity) -> Record {
        Record {
            seq,
            id: format!("r{seq}"),
            time: SystemTime::UNIX_EPOCH,
            kind: "decision".into(),
            verdict: "allow".into(),
            severity,
            host: "h".into(),
            line: format!(r#"{{"seq":{seq}}}"#),
        }
    }

    /// A sink that reports each batch it is given and answers from a script (then Ok).
    /// With a gate, each delivery waits for a token after reporting.
    struct Scripted {
        script: VecDeque<Result<(), SinkError>>,
        seen: mpsc::Sender<(Vec<u64>, Instant)>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Sink for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        fn deliver(&mut self, batch: &[Record]) -> Result<(), SinkError> {
            let _ = self.seen.send((batch.iter().map(|r| r.seq).collect(), Instant::now()));
            if let Some(g) = &self.gate {
                let _ = g.recv();
            }
            self.script.pop_front().unwrap_or(Ok(()))
        }
    }

    fn fast(batch_max: usize, max_attempts: u32) -> Delivery {
        Delivery {
            batch_max,
            max_attempts,
            retry_base: Duration::from_millis(20),
            retry_cap: Duration::from_millis(80),
            ..Delivery::default()
        }
    }

    /// Each batch's seqs and when it was delivered.
    type Deliveries = mpsc::Receiver<(Vec<u64>, Instant)>;

    fn scripted(
        script: Vec<Result<(), SinkError>>,
        gated: bool,
    ) -> (Box<dyn Sink>, Deliveries, Option<mpsc::Sender<()>>) {
        let (tx, rx) = mpsc::channel();
        let (gate_tx, gate) = if gated {
            let (t, r) = mpsc::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        (Box::new(Scripted { script: script.into(), seen: tx, gate }), rx, gate_tx)
    }

    use super::test_support::wait_for;

    fn transient() -> Result<(), SinkError> {
        Err(SinkError::Transient("HTTP 503".into()))
    }

    #[test]
    fn delivers_everything_in_order_in_batches() {
        let (sink, seen, gate) = scripted(vec![], true);
        let mut d = Dispatcher::new();
        d.add(sink, fast(3, 1)).unwrap();
        for seq in 1..=7 {
            d.push(record(seq, Severity::Info));
        }
        // Held at the gate, the thread has taken the first batch and the rest wait.
        let s = d.stats().remove(0).stats;
        assert_eq!((s.queued, s.delivered), (7, 0));
        let gate = gate.unwrap();
        for _ in 0..3 {
            gate.send(()).unwrap();
        }
        let s = wait_for(&d, |s| s.delivered == 7);
        assert_eq!(s, SinkStats { delivered: 7, ..SinkStats::default() });
        let batches: Vec<Vec<u64>> = seen.try_iter().map(|(b, _)| b).collect();
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 3), "{batches:?}");
        assert_eq!(batches.concat(), (1..=7).collect::<Vec<_>>());
    }

    #[test]
    fn retries_with_exponential_backoff_then_delivers() {
        let (sink, seen, _) = scripted(vec![transient(), transient(), transient()], false);
        let mut d = Dispatcher::new();
        d.add(sink, fast(10, 5)).unwrap();
        d.push(record(1, Severity::Info));
        let s = wait_for(&d, |s| s.delivered == 1);
        assert_eq!((s.failed_attempts, s.dropped, s.queued), (3, 0, 0));
        assert_eq!(s.last_error.as_deref(), Some("HTTP 503"), "kept after the success");
        let times: Vec<Instant> = seen.try_iter().map(|(_, t)| t).collect();
        assert_eq!(times.len(), 4);
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        // 20 ms, 40 ms, 80 ms (the cap).
        for (gap, want) in gaps.iter().zip([20, 40, 80]) {
            assert!(*gap >= Duration::from_millis(want), "gaps {gaps:?}");
        }
    }

    #[test]
    fn drops_the_batch_after_max_attempts() {
        let (sink, seen, _) = scripted(vec![transient(); 10], false);
        let mut d = Dispatcher::new();
        d.add(sink, fast(10, 3)).unwrap();
        d.push(record(1, Severity::Info));
        d.push(record(2, Severity::Info));
        let s = wait_for(&d, |s| s.dropped == 2);
        assert_eq!((s.delivered, s.failed_attempts, s.queued), (0, 3, 0));
        assert_eq!(seen.try_iter().count(), 3);
        // The next record is a new batch with its own attempts.
        d.push(record(3, Severity::Info));
        let s = wait_for(&d, |s| s.dropped == 3);
        assert_eq!(s.failed_attempts, 6);
    }

    #[test]
    fn a_rejected_batch_is_dropped_without_retrying() {
        let (sink, seen, _) = scripted(vec![Err(SinkError::Rejected("HTTP 400: bad".into()))], false);
        let mut d = Dispatcher::new();
        d.add(sink, fast(10, 5)).unwrap();
        d.push(record(1, Severity::Info));
        let s = wait_for(&d, |s| s.dropped == 1);
        assert_eq!((s.delivered, s.failed_attempts, s.last_error.as_deref()), (0, 1, Some("HTTP 400: bad")));
        d.push(record(2, Severity::Info));
        wait_for(&d, |s| s.delivered == 1);
        assert_eq!(seen.try_iter().count(), 2);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_push_does_not_wait() {
        let (sink, seen, gate) = scripted(vec![], true);
        let mut d = Dispatcher::new();
        d.add(sink, Delivery { queue_max: 3, ..fast(1, 1) }).unwrap();
        d.push(record(1, Severity::Info));
        // Record 1 is in flight, held at the gate.
        assert_eq!(seen.recv_timeout(Duration::from_secs(5)).unwrap().0, [1]);
        let started = Instant::now();
        for seq in 2..=10 {
            d.push(record(seq, Severity::Info));
        }
        assert!(started.elapsed() < Duration::from_millis(500), "push waited for the sink");
        let s = d.stats().remove(0).stats;
        assert_eq!((s.queued, s.dropped), (4, 6));
        let gate = gate.unwrap();
        for _ in 0..4 {
            gate.send(()).unwrap();
        }
        wait_for(&d, |s| s.delivered == 4);
        let delivered: Vec<u64> = seen.try_iter().flat_map(|(b, _)| b).collect();
        assert_eq!(delivered, [8, 9, 10]);
    }

    #[test]
    fn records_below_min_severity_are_skipped_not_dropped() {
        let (quiet, quiet_seen, _) = scripted(vec![], false);
        let (all, _, _) = scripted(vec![], false);
        let mut d = Dispatcher::new();
        d.add(quiet, Delivery { min_severity: Severity::Warning, ..fast(10, 1) }).unwrap();
        d.add(all, fast(10, 1)).unwrap();
        for (seq, sev) in [(1, Severity::Info), (2, Severity::Notice), (3, Severity::Warning), (4, Severity::Critical)]
        {
            d.push(record(seq, sev));
        }
        let stats = d.shutdown(Duration::from_secs(5));
        assert_eq!(stats[0].min_severity, Severity::Warning);
        assert_eq!(stats[0].stats, SinkStats { delivered: 2, ..SinkStats::default() });
        assert_eq!(stats[1].stats, SinkStats { delivered: 4, ..SinkStats::default() });
        assert_eq!(quiet_seen.try_iter().flat_map(|(b, _)| b).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn shutdown_delivers_what_is_queued_then_gives_up_at_the_grace() {
        let (sink, _, _) = scripted(vec![], false);
        let mut d = Dispatcher::new();
        d.add(sink, fast(2, 1)).unwrap();
        for seq in 1..=5 {
            d.push(record(seq, Severity::Info));
        }
        assert_eq!(d.shutdown(Duration::from_secs(5))[0].stats.delivered, 5);

        // A sink that never works: shutdown stops retrying at the grace, dropping the rest.
        let (sink, _, _) = scripted(vec![transient(); 1000], false);
        let mut d = Dispatcher::new();
        d.add(sink, Delivery { retry_base: Duration::from_secs(1), retry_cap: Duration::from_secs(1), ..fast(1, 100) })
            .unwrap();
        for seq in 1..=3 {
            d.push(record(seq, Severity::Info));
        }
        let started = Instant::now();
        let s = d.shutdown(Duration::from_millis(200)).remove(0).stats;
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!((s.delivered, s.dropped, s.queued), (0, 3, 0));
    }

    #[test]
    fn stats_serialize_with_stable_names() {
        let s = SinkStatus {
            name: "jsonl:/x".into(),
            min_severity: Severity::Notice,
            stats: SinkStats { delivered: 1, dropped: 2, failed_attempts: 3, queued: 4, last_error: Some("e".into()) },
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"name":"jsonl:/x","min_severity":"notice","delivered":1,"dropped":2,"failed_attempts":3,"queued":4,"last_error":"e"}"#
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let d = Delivery {
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(1),
            ..Delivery::default()
        };
        let ms: Vec<u128> = (1..=7).map(|n| d.backoff(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(d.backoff(u32::MAX), Duration::from_secs(1));
    }
}

/// For the tests of every sink that go through a dispatcher.
#[cfg(test)]
pub(super) mod test_support {
    use std::time::{Duration, Instant};

    use super::{Dispatcher, SinkStats};

    /// Waits until the only sink's stats satisfy `done` (at most 10 s).
    pub fn wait_for(d: &Dispatcher, done: impl Fn(&SinkStats) -> bool) -> SinkStats {
        let started = Instant::now();
        loop {
            let s = d.stats().remove(0).stats;
            if done(&s) {
                return s;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "stats never got there: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
