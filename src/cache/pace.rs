//! The pace a blob's bytes must keep: every window (the registry timeout, 60 s by default) must
//! bring at least `min_rate × window` bytes, or the rest of the read when less is left. A registry
//! that drips (one byte every few seconds, or a fast start then a trickle) is cut off at the end of
//! the first window it falls short in, so a read of `n` bytes lasts at most about
//! `n / min_rate + window`, whatever the registry does.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::Error;

/// `pull --min-rate`: 64 KiB/s per connection, 3.75 MiB per 60 s window. Far below any registry
/// in use (a link shared by `--concurrency` connections still passes at 256 KiB/s), far above a
/// drip.
pub const DEFAULT_MIN_RATE: u64 = 64 << 10;

/// Where a read stands against its pace.
#[derive(Clone, Debug)]
pub struct Pace {
    window: Duration,
    min_rate: u64,
    /// Bytes the read is to bring in all.
    expected: u64,
    received: u64,
    /// When the current window began, and the bytes received by then.
    started: Instant,
    at_start: u64,
}

impl Pace {
    pub fn new(window: Duration, min_rate: u64, expected: u64, now: Instant) -> Pace {
        Pace { window, min_rate, expected, received: 0, started: now, at_start: 0 }
    }

    /// Bytes the current window must bring: its share at the minimum rate, or what is left.
    fn due(&self) -> u64 {
        let share = (u128::from(self.min_rate) * self.window.as_millis() / 1000).min(u128::from(u64::MAX)) as u64;
        share.max(1).min(self.expected.saturating_sub(self.at_start).max(1))
    }

    /// When the current window ends: a read still short of [`Pace::due`] then is too slow.
    pub fn deadline(&self) -> Instant {
        self.started + self.window
    }

    /// `n` bytes arrived at `now`; a window that has brought its due begins the next one.
    pub fn record(&mut self, n: u64, now: Instant) {
        self.received += n;
        if self.received - self.at_start >= self.due() {
            self.started = now;
            self.at_start = self.received;
        }
    }

    fn too_slow(&self, digest: &str) -> Error {
        Error::TooSlow {
            digest: digest.to_owned(),
            received: self.received - self.at_start,
            window: self.window,
            min_rate: self.min_rate,
        }
    }
}

/// The next chunk of `chunks`, or [`Error::TooSlow`] when the window ends first.
pub async fn next_chunk<S>(chunks: &mut S, pace: &mut Pace, digest: &str) -> Result<Option<bytes::Bytes>, Error>
where
    S: futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin,
{
    let next = tokio::time::timeout_at(pace.deadline().into(), chunks.next()).await;
    match next.map_err(|_| pace.too_slow(digest))? {
        None => Ok(None),
        Some(Ok(chunk)) => {
            pace.record(chunk.len() as u64, Instant::now());
            Ok(Some(chunk))
        }
        Some(Err(e)) => Err(Error::Download { digest: digest.to_owned(), reason: e.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// Feeds `arrivals` (seconds after the start, bytes) and returns when the read is cut off, if
    /// it is: the first deadline passed before the next arrival.
    fn cut_off_at(min_rate: u64, expected: u64, arrivals: &[(f64, u64)]) -> Option<f64> {
        let t0 = Instant::now();
        let mut pace = Pace::new(MINUTE, min_rate, expected, t0);
        for &(at, n) in arrivals {
            let when = t0 + Duration::from_secs_f64(at);
            if when > pace.deadline() {
                return Some(((pace.deadline() - t0).as_secs_f64() * 10.0).round() / 10.0);
            }
            pace.record(n, when);
        }
        None
    }

    #[test]
    fn a_drip_is_cut_off_at_the_end_of_its_first_window() {
        let drip: Vec<(f64, u64)> = (0..1000).map(|i| (f64::from(i) * 3.0, 1)).collect();
        assert_eq!(cut_off_at(DEFAULT_MIN_RATE, 1 << 30, &drip), Some(60.0));
        // A fast start, then a trickle: cut off one window after the last full one.
        let mut burst: Vec<(f64, u64)> = (0..100).map(|i| (f64::from(i) * 0.1, 1 << 20)).collect();
        burst.extend((0..1000).map(|i| (10.0 + f64::from(i), 100)));
        assert_eq!(cut_off_at(DEFAULT_MIN_RATE, 1 << 30, &burst), Some(69.9));
        // Nothing at all.
        assert_eq!(cut_off_at(DEFAULT_MIN_RATE, 100, &[(61.0, 100)]), Some(60.0));
    }

    #[test]
    fn reads_at_or_above_the_minimum_are_never_cut_off() {
        let steady: Vec<(f64, u64)> = (1..=600).map(|i| (f64::from(i), DEFAULT_MIN_RATE)).collect();
        assert_eq!(cut_off_at(DEFAULT_MIN_RATE, 600 * DEFAULT_MIN_RATE, &steady), None);
        // Bursty: a whole window's share in one chunk near each window's end.
        let bursty: Vec<(f64, u64)> = (1..=20).map(|i| (f64::from(i) * 59.0, 60 * DEFAULT_MIN_RATE)).collect();
        assert_eq!(cut_off_at(DEFAULT_MIN_RATE, 20 * 60 * DEFAULT_MIN_RATE, &bursty), None);
        // The last window needs only what is left: 10 bytes in 59 s end a small read.
        assert_eq!(cut_off_at(DEFAULT_MIN_RATE, 10, &[(59.0, 10)]), None);
        let tail = [(1.0, 60 * DEFAULT_MIN_RATE), (59.0, 5)];
        assert_eq!(cut_off_at(DEFAULT_MIN_RATE, 60 * DEFAULT_MIN_RATE + 5, &tail), None);
    }

    #[test]
    fn the_time_a_read_may_take_is_proportional_to_its_size() {
        // The slowest read that is never cut off: each window's share at the last moment.
        for size in [1u64 << 20, 100 << 20, 1 << 30] {
            let share = 60 * DEFAULT_MIN_RATE;
            let arrivals: Vec<(f64, u64)> =
                (0..size.div_ceil(share)).map(|i| ((i + 1) as f64 * 59.999, share.min(size - i * share))).collect();
            assert_eq!(cut_off_at(DEFAULT_MIN_RATE, size, &arrivals), None, "{size}");
            let last = arrivals.last().unwrap().0;
            assert!(last <= size as f64 / DEFAULT_MIN_RATE as f64 + 60.0, "{size}: {last} s");
        }
    }
}
