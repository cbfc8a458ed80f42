//! Asking every gateway which pending invalidations it has applied
//! (`POST /edge/applied` on each one's admin listener, see `crate::edge`).

use std::sync::Arc;
use std::time::Duration;

use crate::edge::{AppliedAnswer, AppliedItem, AppliedQuestion};

/// How long one gateway may take to answer; a gateway that does not
/// answer in time confirms nothing this round.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// The gateways the edge fetches from, by admin base URL.
#[derive(Clone)]
pub struct Gateways {
    admin_urls: Arc<Vec<String>>,
    agent: ureq::Agent,
}

/// What one gateway said about a round's items.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Per item, whether it is fresh there.
    Fresh(Vec<bool>),
    /// Refuses connections: it serves nothing, so it holds nothing back.
    Down,
    /// No usable answer: it confirms nothing.
    Unknown,
}

impl Gateways {
    /// The gateways whose admin listeners are at `admin_urls`.
    pub fn new(admin_urls: Vec<String>) -> Self {
        Self {
            admin_urls: Arc::new(
                admin_urls
                    .into_iter()
                    .map(|u| u.trim_end_matches('/').to_string())
                    .collect(),
            ),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(ASK_TIMEOUT))
                .http_status_as_error(false)
                .build()
                .into(),
        }
    }

    /// Per item, whether every gateway is fresh for it.
    pub async fn confirmed(&self, items: Vec<AppliedItem>) -> Vec<bool> {
        let n = items.len();
        let question = Arc::new(AppliedQuestion { items });
        let asks = self.admin_urls.iter().map(|url| {
            let (url, agent, question) = (url.clone(), self.agent.clone(), question.clone());
            tokio::task::spawn_blocking(move || ask(&agent, &url, &question, n))
        });
        let mut all = vec![true; n];
        for verdict in futures_util::future::join_all(asks).await {
            match verdict.unwrap_or(Verdict::Unknown) {
                Verdict::Fresh(fresh) => {
                    for (all, fresh) in all.iter_mut().zip(fresh) {
                        *all &= fresh;
                    }
                }
                Verdict::Down => {}
                Verdict::Unknown => return vec![false; n],
            }
        }
        all
    }
}

fn ask(agent: &ureq::Agent, url: &str, question: &AppliedQuestion, n: usize) -> Verdict {
    let Ok(body) = serde_json::to_vec(question) else {
        return Verdict::Unknown;
    };
    let answer = agent
        .post(format!("{url}/edge/applied"))
        .content_type("application/json")
        .send(body);
    let mut response = match answer {
        Ok(response) => response,
        Err(ureq::Error::ConnectionFailed) => return Verdict::Down,
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Verdict::Down;
        }
        Err(e) => {
            tracing::warn!(type = "purge.gateway", gateway = url, error = %e, "gateway did not answer");
            return Verdict::Unknown;
        }
    };
    if !response.status().is_success() {
        return Verdict::Unknown;
    }
    let Ok(text) = response.body_mut().read_to_string() else {
        return Verdict::Unknown;
    };
    match serde_json::from_str::<AppliedAnswer>(&text) {
        Ok(answer) if answer.fresh.len() == n => Verdict::Fresh(answer.fresh),
        _ => Verdict::Unknown,
    }
}
