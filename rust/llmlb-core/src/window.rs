//! Per-node sliding-window statistics of completed requests (`load_balance_window`),
//! kept in one-second buckets.

use std::collections::VecDeque;

use crate::outcome::Outcome;

const BUCKET_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    ok: u64,
    errors: u64,
    timeouts: u64,
    expired: u64,
    ttft_sum_s: f64,
    ttft_count: u64,
    tokens_in: u64,
    tokens_out: u64,
}

#[derive(Debug)]
pub struct OutcomeWindow {
    window_s: f64,
    buckets: VecDeque<Bucket>,
}

/// Totals over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowSummary {
    pub window_s: f64,
    pub completed: u64,
    pub ok: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub expired: u64,
    pub error_rate: f64,
    pub mean_ttft_s: Option<f64>,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

impl OutcomeWindow {
    pub fn new(window_s: f64) -> Self {
        OutcomeWindow {
            window_s,
            buckets: VecDeque::new(),
        }
    }

    pub fn set_window(&mut self, window_s: f64) {
        self.window_s = window_s;
    }

    fn oldest_second(&self, now_ns: u64) -> u64 {
        let span = self.window_s.ceil().max(1.0) as u64;
        (now_ns / BUCKET_NS).saturating_sub(span - 1)
    }

    fn prune(&mut self, now_ns: u64) {
        let oldest = self.oldest_second(now_ns);
        while self.buckets.front().is_some_and(|b| b.second < oldest) {
            self.buckets.pop_front();
        }
    }

    pub fn record(
        &mut self,
        now_ns: u64,
        outcome: Outcome,
        ttft_s: Option<f64>,
        tokens_in: u64,
        tokens_out: u64,
    ) {
        self.prune(now_ns);
        let second = now_ns / BUCKET_NS;
        if self.buckets.back().is_none_or(|b| b.second != second) {
            self.buckets.push_back(Bucket {
                second,
                ..Bucket::default()
            });
        }
        let bucket = self.buckets.back_mut().expect("bucket just ensured");
        match outcome {
            Outcome::Ok => bucket.ok += 1,
            Outcome::Error => bucket.errors += 1,
            Outcome::Timeout => bucket.timeouts += 1,
            Outcome::Expired => bucket.expired += 1,
        }
        if let Some(ttft) = ttft_s {
            bucket.ttft_sum_s += ttft;
            bucket.ttft_count += 1;
        }
        bucket.tokens_in += tokens_in;
        bucket.tokens_out += tokens_out;
    }

    pub fn summary(&mut self, now_ns: u64) -> WindowSummary {
        self.prune(now_ns);
        let mut s = WindowSummary {
            window_s: self.window_s,
            ..WindowSummary::default()
        };
        let (mut ttft_sum, mut ttft_count) = (0.0, 0u64);
        for b in &self.buckets {
            s.ok += b.ok;
            s.errors += b.errors;
            s.timeouts += b.timeouts;
            s.expired += b.expired;
            s.tokens_in += b.tokens_in;
            s.tokens_out += b.tokens_out;
            ttft_sum += b.ttft_sum_s;
            ttft_count += b.ttft_count;
        }
        s.completed = s.ok + s.errors + s.timeouts + s.expired;
        if s.completed > 0 {
            s.error_rate = (s.completed - s.ok) as f64 / s.completed as f64;
        }
        s.mean_ttft_s = (ttft_count > 0).then(|| ttft_sum / ttft_count as f64);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = BUCKET_NS;

    #[test]
    fn old_buckets_leave_the_window() {
        let mut w = OutcomeWindow::new(10.0);
        w.record(0, Outcome::Error, None, 0, 0);
        w.record(5 * S, Outcome::Ok, Some(0.2), 10, 20);
        let s = w.summary(9 * S);
        assert_eq!((s.completed, s.errors, s.ok), (2, 1, 1));
        assert_eq!(s.mean_ttft_s, Some(0.2));
        let s = w.summary(12 * S);
        assert_eq!((s.completed, s.errors), (1, 0));
        assert_eq!(w.summary(100 * S).completed, 0);
    }

    #[test]
    fn error_rate_counts_everything_but_ok() {
        let mut w = OutcomeWindow::new(30.0);
        for outcome in [Outcome::Ok, Outcome::Timeout, Outcome::Expired, Outcome::Ok] {
            w.record(S, outcome, None, 0, 0);
        }
        assert_eq!(w.summary(S).error_rate, 0.5);
    }
}
