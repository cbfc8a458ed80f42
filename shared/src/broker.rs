//! Reaching RabbitMQ: the URLs of the broker's nodes, tried in turn, and the
//! wait between rounds of attempts — one place for every client (the
//! worker's two connections, the gateway's invalidation subscriber, the
//! load generator's publisher).
//!
//! lapin does not reconnect by itself: a lost connection ends its streams,
//! and its user connects again through a [`Reconnect`]. With several nodes
//! (`ADDONREG_AMQP_URL=amqp://a…,amqp://b…,amqp://c…`) a client moves to the
//! next node when its own goes away; in production one URL of a Kubernetes
//! Service does the same job.
//!
//! The waits are exponential with full jitter: a uniform draw in
//! `[0, min(LONGEST_WAIT, FIRST_WAIT × 2^round)]`, so that the clients a
//! node dropped at once do not all come back at the same instants.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::settings::Secret;

/// The ceiling of the first wait. Short: a node restart or a failover is
/// usually over within a second or two.
pub const FIRST_WAIT: Duration = Duration::from_millis(200);
/// The highest ceiling: a broker down for long is retried every ~2.5 s on
/// average, which costs it nothing and keeps recovery quick.
pub const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// Longest one connection attempt may take: a node that does not answer at
/// all (a partition) must not hold the client away from the others.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// Exponential backoff with full jitter (see the module's documentation).
#[derive(Debug, Clone)]
pub struct Backoff {
    round: u32,
    rng: fastrand::Rng,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// A backoff at its first round, randomly seeded.
    pub fn new() -> Self {
        Self::with_rng(fastrand::Rng::new())
    }

    /// A backoff drawing from `rng` (tests seed it).
    pub fn with_rng(rng: fastrand::Rng) -> Self {
        Self { round: 0, rng }
    }

    /// The ceiling of the current round's wait.
    pub fn ceiling(&self) -> Duration {
        // 2^5 × 200 ms already passes 5 s: no overflow past that.
        FIRST_WAIT
            .saturating_mul(1 << self.round.min(5))
            .min(LONGEST_WAIT)
    }

    /// The wait before the next round (uniform in `[0, ceiling]`); the
    /// ceiling then doubles, up to [`LONGEST_WAIT`].
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling().as_millis() as u64;
        self.round = self.round.saturating_add(1);
        Duration::from_millis(self.rng.u64(0..=ceiling))
    }

    /// Back to the first round, after a session that worked.
    pub fn reset(&mut self) {
        self.round = 0;
    }
}

/// One or more AMQP URLs, one per broker node, in the order to try them.
/// Parsed from a comma-separated list (a comma inside a password must be
/// percent-encoded as `%2C`); a single URL is a list of one.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrls(Vec<Secret>);

impl AmqpUrls {
    /// The URLs, in order.
    pub fn urls(&self) -> &[Secret] {
        &self.0
    }

    /// The first URL: for one-shot tools (the dead-letter commands), which
    /// do not move between nodes.
    pub fn first(&self) -> &Secret {
        // Never empty: `from_str` refuses an empty list.
        &self.0[0]
    }
}

impl fmt::Debug for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} URL(s) ***]", self.0.len())
    }
}

impl FromStr for AmqpUrls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let urls: Vec<Secret> = s
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| Secret::from_str(u).unwrap_or_else(|never| match never {}))
            .collect();
        if urls.is_empty() {
            return Err("at least one amqp:// or amqps:// URL".into());
        }
        if let Some(bad) = urls.iter().position(|u| {
            !(u.expose().starts_with("amqp://") || u.expose().starts_with("amqps://"))
        }) {
            // The URL itself is never echoed: it may hold a password.
            return Err(format!("URL {} is not amqp:// or amqps://", bad + 1));
        }
        Ok(Self(urls))
    }
}

/// Where a client connects next and how long it waits: the URLs in turn,
/// starting at a random one (clients spread over the nodes), moving on
/// when a session is lost.
#[derive(Debug, Clone)]
pub struct Reconnect {
    urls: AmqpUrls,
    /// Index of the URL tried first in the next round.
    next: usize,
    backoff: Backoff,
}

impl Reconnect {
    /// Starts at a random URL of `urls`.
    pub fn new(urls: AmqpUrls) -> Self {
        let mut rng = fastrand::Rng::new();
        let next = rng.usize(0..urls.0.len());
        Self {
            urls,
            next,
            backoff: Backoff::with_rng(rng),
        }
    }

    /// Starts at URL `first`, with a seeded backoff (tests).
    pub fn starting_at(urls: AmqpUrls, first: usize, seed: u64) -> Self {
        let next = first % urls.0.len();
        Self {
            urls,
            next,
            backoff: Backoff::with_rng(fastrand::Rng::with_seed(seed)),
        }
    }

    /// The order of the next round: every URL once, from the next one.
    pub fn round(&self) -> impl Iterator<Item = (usize, &Secret)> {
        let n = self.urls.0.len();
        (0..n).map(move |k| {
            let i = (self.next + k) % n;
            (i, &self.urls.0[i])
        })
    }

    /// Runs `attempt` on each URL (owned: the attempt's future may keep it) of a round in turn (each given
    /// [`CONNECT_LIMIT`]) until one succeeds; after a round where none did,
    /// waits the backoff and starts another. `None` once `stop` fires.
    /// `what` names the client in the logs.
    pub async fn connect<T, E, F, Fut>(
        &mut self,
        what: &str,
        stop: &CancellationToken,
        mut attempt: F,
    ) -> Option<T>
    where
        E: fmt::Display,
        F: FnMut(Secret) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        loop {
            let round: Vec<(usize, Secret)> =
                self.round().map(|(i, url)| (i, url.clone())).collect();
            for (i, url) in round {
                let outcome = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return None,
                    outcome = tokio::time::timeout(CONNECT_LIMIT, attempt(url)) => outcome,
                };
                match outcome {
                    Ok(Ok(connected)) => {
                        self.next = i;
                        tracing::info!(type = "broker.connected", client = what, node = i + 1, "connected to RabbitMQ");
                        return Some(connected);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(type = "broker.unavailable", client = what, node = i + 1, error = %e, "cannot reach RabbitMQ")
                    }
                    Err(_) => {
                        tracing::warn!(type = "broker.unavailable", client = what, node = i + 1, error = "connect timed out", "cannot reach RabbitMQ")
                    }
                }
            }
            if !self.pause(stop).await {
                return None;
            }
        }
    }

    /// The session on the current URL ended. `worked`: it did its job for
    /// a while (the backoff starts over); otherwise the waits keep growing,
    /// so that a broker that accepts connections and then refuses the rest
    /// (a missing exchange, a permission) is not a hot loop. The next round
    /// starts on the next URL, and begins after a backoff wait. Answers
    /// false when `stop` fired meanwhile.
    pub async fn lost(&mut self, worked: bool, stop: &CancellationToken) -> bool {
        self.advance();
        if worked {
            self.backoff.reset();
        }
        self.pause(stop).await
    }

    /// Moves the next round's start to the URL after the current one.
    pub fn advance(&mut self) {
        self.next = (self.next + 1) % self.urls.0.len();
    }

    async fn pause(&mut self, stop: &CancellationToken) -> bool {
        let wait = self.backoff.next_wait();
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_from_the_first_wait_up_to_the_longest() {
        let mut b = Backoff::with_rng(fastrand::Rng::with_seed(1));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_wait();
        }
        assert_eq!(
            ceilings,
            [
                200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000, 5_000, 5_000
            ]
        );
        b.reset();
        assert_eq!(b.ceiling(), FIRST_WAIT);
        // Thousands of rounds do not overflow.
        for _ in 0..10_000 {
            assert!(b.next_wait() <= LONGEST_WAIT);
        }
    }

    #[test]
    fn waits_are_drawn_over_the_whole_range_below_the_ceiling() {
        let mut b = Backoff::with_rng(fastrand::Rng::with_seed(7));
        for _ in 0..6 {
            b.next_wait();
        }
        let waits: Vec<u128> = (0..2_000).map(|_| b.next_wait().as_millis()).collect();
        assert!(waits.iter().all(|&w| w <= 5_000));
        // Full jitter: the draws cover [0, ceiling], not a band near it.
        assert!(waits.iter().any(|&w| w < 500), "some short waits");
        assert!(waits.iter().any(|&w| w > 4_500), "some long waits");
        let mean = waits.iter().sum::<u128>() / waits.len() as u128;
        assert!((2_200..=2_800).contains(&mean), "mean {mean} ms near 2.5 s");
        // Two clients seeded apart do not wait in lockstep.
        let mut other = Backoff::with_rng(fastrand::Rng::with_seed(8));
        let mut mine = Backoff::with_rng(fastrand::Rng::with_seed(9));
        let a: Vec<_> = (0..5).map(|_| other.next_wait()).collect();
        let b: Vec<_> = (0..5).map(|_| mine.next_wait()).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn url_lists_parse_one_or_several_and_refuse_the_rest() {
        let one: AmqpUrls = "amqp://guest:guest@127.0.0.1:5672/%2f".parse().unwrap();
        assert_eq!(one.urls().len(), 1);
        let three: AmqpUrls = "amqp://a:1@h1:5672/%2f, amqp://a:1@h2:5672/%2f,amqps://a:1@h3/%2f,"
            .parse()
            .unwrap();
        assert_eq!(three.urls().len(), 3);
        assert_eq!(three.first().expose(), "amqp://a:1@h1:5672/%2f");
        assert_eq!(three.urls()[1].expose(), "amqp://a:1@h2:5672/%2f");
        assert!("".parse::<AmqpUrls>().is_err());
        assert!(" , ".parse::<AmqpUrls>().is_err());
        let bad = "amqp://a@h1,http://u:hunter2@h2"
            .parse::<AmqpUrls>()
            .unwrap_err();
        assert!(bad.contains("URL 2") && !bad.contains("hunter2"), "{bad}");
        assert!(!format!("{three:?}").contains("a:1"));
    }

    fn order(r: &Reconnect) -> Vec<usize> {
        r.round().map(|(i, _)| i).collect()
    }

    #[test]
    fn rounds_try_every_url_once_and_a_lost_session_moves_to_the_next() {
        let urls: AmqpUrls = "amqp://h1,amqp://h2,amqp://h3".parse().unwrap();
        let mut r = Reconnect::starting_at(urls.clone(), 1, 3);
        assert_eq!(order(&r), [1, 2, 0]);
        r.advance();
        assert_eq!(order(&r), [2, 0, 1]);
        r.advance();
        assert_eq!(order(&r), [0, 1, 2]);
        // Random starts spread clients over every node.
        let starts: std::collections::HashSet<usize> = (0..200)
            .map(|_| order(&Reconnect::new(urls.clone()))[0])
            .collect();
        assert_eq!(starts.len(), 3);
    }

    #[tokio::test]
    async fn connect_skips_nodes_that_refuse_and_stays_on_the_one_that_answers() {
        let urls: AmqpUrls = "amqp://h1,amqp://h2,amqp://h3".parse().unwrap();
        let mut r = Reconnect::starting_at(urls, 0, 5);
        let stop = CancellationToken::new();
        let mut tried = Vec::new();
        // h1 is down and h2 answers: connected to h2, without a pause.
        let got = r
            .connect("test", &stop, |url| {
                tried.push(url.expose().to_string());
                let up = url.expose() == "amqp://h2";
                drop(url);
                async move { if up { Ok(2) } else { Err("refused") } }
            })
            .await;
        assert_eq!(got, Some(2));
        assert_eq!(tried, ["amqp://h1", "amqp://h2"]);
        // h2 goes away: the next round starts at h3.
        assert!(r.lost(true, &stop).await);
        assert_eq!(order(&r), [2, 0, 1]);
        // Everything down: rounds repeat (after a wait) until stop fires.
        let rounds = std::sync::atomic::AtomicUsize::new(0);
        let stopper = stop.clone();
        let got: Option<()> = r
            .connect("test", &stop, |_| {
                if rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 5 {
                    stopper.cancel();
                }
                async { Err::<(), _>("refused") }
            })
            .await;
        assert_eq!(got, None);
        assert_eq!(rounds.into_inner(), 6, "two rounds of three");
    }
}
