//! One retry policy for every client of another service: the InfluxDB sink, the schema registry,
//! the MySQL source and the cluster's connections.
//!
//! A [`RetryPolicy`] is exponential backoff: a first wait that doubles up to a cap, for a bounded
//! number of retries (or until the caller's own deadline), with or without full jitter. Its
//! schedule comes from backon's [`ExponentialBuilder`]. [`RetryPolicy::run`] retries one blocking
//! call by it, waits at least what the server asked for ([`retry_after`], an HTTP `Retry-After`),
//! and stops waiting when told to. Loops that wait on several things at once (the cluster's
//! connections, the binlog follower's reconnections) take the waits one by one from
//! [`RetryPolicy::delays`].
//!
//! backon's own blocking loop is not used: it has no way to honour a server's wait, and after a
//! sleep cut short it would still make one more attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

/// The longest wait a server's `Retry-After` is honoured for: a longer one is cut to this, so a
/// confused server cannot stall a client for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How often a wait checks whether it was cancelled.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// How a client retries: the wait before retry `r` (1-based) is at most
/// `first · 2^(r-1)`, capped at `max`; exactly that, or with [full jitter](RetryPolicy::with_full_jitter)
/// drawn uniformly from zero to it. Waits are whole milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
    /// How many retries follow a failed first attempt; `None`: as many as the caller allows
    /// (a loop with a deadline of its own).
    pub retries: Option<u32>,
    /// Whether each wait is drawn uniformly from zero to its cap, so that clients that failed
    /// together do not retry together.
    pub full_jitter: bool,
}

impl RetryPolicy {
    /// Waits of `first`, doubling up to `max`, with no bound on the retries and no jitter.
    pub const fn exponential(first: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy {
            first,
            max,
            retries: None,
            full_jitter: false,
        }
    }

    /// At most `retries` retries after the first attempt.
    pub const fn with_retries(mut self, retries: u32) -> RetryPolicy {
        self.retries = Some(retries);
        self
    }

    /// Each wait drawn uniformly from zero to its cap ("full jitter").
    pub const fn with_full_jitter(mut self) -> RetryPolicy {
        self.full_jitter = true;
        self
    }

    /// The attempts made at most, the first included; `None` when the retries are unbounded.
    pub fn attempts(&self) -> Option<u32> {
        self.retries.map(|retries| retries.saturating_add(1))
    }

    /// The waits before each retry, in order; it ends after [`retries`](RetryPolicy::retries).
    pub fn delays(&self) -> Delays {
        let builder = ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(self.first)
            .with_max_delay(self.max.max(self.first));
        let builder = match self.retries {
            Some(retries) => builder.with_max_times(retries as usize),
            None => builder.without_max_times(),
        };
        Delays {
            caps: builder.build(),
            full_jitter: self.full_jitter,
        }
    }

    /// Calls `attempt` (with the attempt's number, from 1) until it succeeds, `judge` finds its
    /// error fatal, the retries are spent, or `cancel` is set; before each wait, `retrying` is
    /// told the error and the wait (to log them). A wait is the policy's, or what the server
    /// asked for ([`Verdict::RetryAfter`], at most [`MAX_RETRY_AFTER`]) when that is longer, and
    /// ends early once `cancel` is set, without another attempt.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shopflow::retry::{Reason, RetryPolicy, Verdict};
    ///
    /// let policy = RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(4))
    ///     .with_retries(2);
    /// // Fails twice, then answers.
    /// let answer = policy.run(
    ///     None,
    ///     |attempt| if attempt < 3 { Err("busy") } else { Ok(attempt) },
    ///     |_| Verdict::Retry,
    ///     |_, _| {},
    /// );
    /// assert_eq!(answer.ok(), Some(3));
    /// // A refusal is not retried.
    /// let refused = policy
    ///     .run(None, |_| Err::<(), _>("no"), |_| Verdict::Fatal, |_, _| {})
    ///     .unwrap_err();
    /// assert_eq!((refused.attempts, refused.reason), (1, Reason::Fatal));
    /// ```
    pub fn run<T, E>(
        &self,
        cancel: Option<&AtomicBool>,
        mut attempt: impl FnMut(u32) -> Result<T, E>,
        mut judge: impl FnMut(&E) -> Verdict,
        mut retrying: impl FnMut(&E, &Retrying),
    ) -> Result<T, GaveUp<E>> {
        let cancelled = || cancel.is_some_and(|cancel| cancel.load(Ordering::Relaxed));
        let mut delays = self.delays();
        let mut number = 0u32;
        loop {
            number += 1;
            let error = match attempt(number) {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let gave_up = |error, reason| GaveUp {
                error,
                attempts: number,
                reason,
            };
            let asked = match judge(&error) {
                Verdict::Fatal => return Err(gave_up(error, Reason::Fatal)),
                Verdict::Retry => None,
                Verdict::RetryAfter(asked) => Some(asked.min(MAX_RETRY_AFTER)),
            };
            if cancelled() {
                return Err(gave_up(error, Reason::Cancelled));
            }
            let Some(own) = delays.next() else {
                return Err(gave_up(error, Reason::Exhausted));
            };
            let wait = asked.map_or(own, |asked| asked.max(own));
            retrying(
                &error,
                &Retrying {
                    attempt: number,
                    of: self.attempts(),
                    wait,
                    asked,
                },
            );
            let slept = match cancel {
                Some(cancel) => sleep_unless(wait, cancel),
                None => {
                    std::thread::sleep(wait);
                    true
                }
            };
            if !slept {
                return Err(gave_up(error, Reason::Cancelled));
            }
        }
    }
}

/// The waits of a [`RetryPolicy`], one per retry ([`RetryPolicy::delays`]).
#[derive(Debug)]
pub struct Delays {
    caps: <ExponentialBuilder as BackoffBuilder>::Backoff,
    full_jitter: bool,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let cap = self.caps.next()?;
        // backon doubles in f32 seconds: whole milliseconds keep the doubling exact.
        let cap_ms = (cap.as_secs_f64() * 1e3).round() as u64;
        let ms = if self.full_jitter {
            rand::random_range(0..=cap_ms)
        } else {
            cap_ms
        };
        Some(Duration::from_millis(ms))
    }
}

/// Whether a failed attempt is worth another, as [`RetryPolicy::run`]'s `judge` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The same call would fail again: give up at once.
    Fatal,
    /// The failure may pass: retry after the policy's wait.
    Retry,
    /// The server asked to wait this long (`Retry-After`): retry after that or the policy's wait,
    /// whichever is longer.
    RetryAfter(Duration),
}

/// A retry about to wait, as [`RetryPolicy::run`] tells its `retrying`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retrying {
    /// The attempt that failed, from 1.
    pub attempt: u32,
    /// The attempts allowed, the first included, if bounded.
    pub of: Option<u32>,
    /// How long it waits before the next attempt.
    pub wait: Duration,
    /// What the server asked for, if it did (cut to [`MAX_RETRY_AFTER`]).
    pub asked: Option<Duration>,
}

/// Why [`RetryPolicy::run`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The last error was fatal.
    Fatal,
    /// Every retry failed.
    Exhausted,
    /// The caller's cancel flag was set.
    Cancelled,
}

/// [`RetryPolicy::run`] gave up: the last attempt's error, how many attempts were made, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GaveUp<E> {
    /// The last attempt's error.
    pub error: E,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// Why no other attempt follows.
    pub reason: Reason,
}

/// Sleeps for `wait`, ending early once `cancel` is set (checked every 50 ms); whether it slept
/// the whole wait.
pub fn sleep_unless(wait: Duration, cancel: &AtomicBool) -> bool {
    let until = Instant::now() + wait;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(SLEEP_SLICE));
    }
}

/// The wait an HTTP `Retry-After` value asks for at `now`: delay-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2026 07:28:00 GMT`, zero once past); `None` if it is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait a response's `Retry-After` header asks for, now; `None` without a readable one.
pub fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    retry_after(value, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn waits_double_to_their_cap_and_stop_after_the_retries() {
        let policy = RetryPolicy::exponential(ms(100), ms(1_000)).with_retries(6);
        let waits: Vec<u64> = policy.delays().map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        // Awkward values stay exact in whole milliseconds, however long it runs.
        let policy = RetryPolicy::exponential(ms(7), ms(60_000));
        let waits: Vec<u64> = policy
            .delays()
            .take(40)
            .map(|d| d.as_millis() as u64)
            .collect();
        let expected: Vec<u64> = (0..40).map(|r| (7u64 << r.min(20)).min(60_000)).collect();
        assert_eq!(waits, expected);
        assert_eq!(
            RetryPolicy::exponential(ms(5), ms(5))
                .with_retries(0)
                .delays()
                .count(),
            0
        );
    }

    #[test]
    fn full_jitter_draws_from_zero_to_the_cap() {
        let policy = RetryPolicy::exponential(ms(100), ms(1_000))
            .with_retries(4)
            .with_full_jitter();
        for _ in 0..50 {
            let waits: Vec<Duration> = policy.delays().collect();
            assert_eq!(waits.len(), 4);
            for (wait, cap) in waits.iter().zip([100, 200, 400, 800]) {
                assert!(*wait <= ms(cap), "{wait:?} > {cap} ms");
            }
        }
        let draws: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| policy.delays().nth(3).expect("a fourth wait"))
            .collect();
        assert!(draws.len() > 10, "not random: {draws:?}");
    }

    #[test]
    fn run_retries_what_may_pass_and_says_why_it_gave_up() {
        let policy = RetryPolicy::exponential(ms(1), ms(2)).with_retries(2);
        let told = RefCell::new(Vec::new());
        let exhausted = policy
            .run(
                None,
                Err::<(), _>,
                |_| Verdict::Retry,
                |e, r| told.borrow_mut().push((*e, r.attempt, r.of, r.wait)),
            )
            .unwrap_err();
        assert_eq!(
            exhausted,
            GaveUp {
                error: 3,
                attempts: 3,
                reason: Reason::Exhausted
            }
        );
        assert_eq!(
            told.into_inner(),
            [(1, 1, Some(3), ms(1)), (2, 2, Some(3), ms(2))]
        );
        let fatal = policy
            .run(
                None,
                Err::<(), _>,
                |e| {
                    if *e < 2 {
                        Verdict::Retry
                    } else {
                        Verdict::Fatal
                    }
                },
                |_, _| {},
            )
            .unwrap_err();
        assert_eq!((fatal.error, fatal.reason), (2, Reason::Fatal));
    }

    #[test]
    fn a_servers_wait_is_honoured_when_longer_and_cut_when_absurd() {
        let policy = RetryPolicy::exponential(ms(1), ms(1)).with_retries(1);
        let started = Instant::now();
        let mut waits = Vec::new();
        let answer = policy.run(
            None,
            |n| if n == 1 { Err(()) } else { Ok(n) },
            |_| Verdict::RetryAfter(ms(300)),
            |_, r| waits.push((r.wait, r.asked)),
        );
        assert_eq!(answer, Ok(2));
        assert!(started.elapsed() >= ms(300), "{:?}", started.elapsed());
        assert_eq!(waits, [(ms(300), Some(ms(300)))]);
        // A shorter wait than the policy's does not shorten it.
        let policy = RetryPolicy::exponential(ms(200), ms(200)).with_retries(1);
        let mut waits = Vec::new();
        let _ = policy.run(
            None,
            |_| Err::<(), _>(()),
            |_| Verdict::RetryAfter(ms(1)),
            |_, r| waits.push(r.wait),
        );
        assert_eq!(waits, [ms(200)]);
        // A day is cut to the most honoured; cancelling ends the wait without another attempt.
        let cancel = AtomicBool::new(false);
        let mut attempts = 0;
        let gave_up = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(ms(100));
                cancel.store(true, Ordering::Relaxed);
            });
            policy.run(
                Some(&cancel),
                |_| {
                    attempts += 1;
                    Err::<(), _>(())
                },
                |_| Verdict::RetryAfter(Duration::from_secs(86_400)),
                |_, r| assert_eq!(r.wait, MAX_RETRY_AFTER),
            )
        });
        assert_eq!(gave_up.unwrap_err().reason, Reason::Cancelled);
        assert_eq!(attempts, 1);
        // Already cancelled: no wait at all.
        let gave_up = policy
            .run(
                Some(&cancel),
                |_| Err::<(), _>(()),
                |_| Verdict::Retry,
                |_, _| panic!("no wait once cancelled"),
            )
            .unwrap_err();
        assert_eq!((gave_up.attempts, gave_up.reason), (1, Reason::Cancelled));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Dec 2026 15:00:00 GMT").expect("a date");
        assert_eq!(retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            retry_after("Sun, 06 Dec 2026 15:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Sun, 06 Dec 2026 14:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-1", "1.5", "soon", "2 s", "Sun, 06 Dec 2026"] {
            assert_eq!(retry_after(bad, now), None, "{bad}");
        }
    }
}
