//! The edge purger's settings: flags and `ADDONREG_*` variables.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use shared::settings::{AmqpSettings, InvalidSetting, LogSettings, OptionalListen, Secret};

use super::Timing;
use super::cdn::{Cdn, Fastly, GoogleCdn, Varnish};

/// Which CDN the purger purges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CdnKind {
    /// Varnish with `infra/varnish/addonreg.vcl` (xkey).
    Varnish,
    /// Fastly's surrogate-key purge API.
    Fastly,
    /// Google Cloud CDN's cache-tag invalidation.
    Google,
}

/// addonreg's edge purger: purges the CDN by surrogate key on every
/// invalidation, once every gateway has applied it.
#[derive(Debug, Clone, Parser)]
#[command(name = "edge-purger", version, about)]
pub struct PurgerSettings {
    /// Comma-separated admin base URLs of every gateway the CDN fetches
    /// from (each gateway's `ADDONREG_METRICS_LISTEN`), e.g.
    /// `http://10.0.0.5:9101`. [env: ADDONREG_EDGE_GATEWAYS]
    #[arg(
        long,
        env = "ADDONREG_EDGE_GATEWAYS",
        value_delimiter = ',',
        required = true
    )]
    pub edge_gateways: Vec<String>,

    /// Which CDN to purge: `varnish`, `fastly` or `google`. [env: ADDONREG_EDGE_CDN]
    #[arg(long, env = "ADDONREG_EDGE_CDN", value_enum, default_value = "varnish")]
    pub edge_cdn: CdnKind,

    /// Comma-separated base URLs of every Varnish node to purge.
    /// [env: ADDONREG_EDGE_VARNISH_URLS]
    #[arg(
        long,
        env = "ADDONREG_EDGE_VARNISH_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:6081"
    )]
    pub edge_varnish_urls: Vec<String>,

    /// Fastly's API. [env: ADDONREG_EDGE_FASTLY_API_URL]
    #[arg(
        long,
        env = "ADDONREG_EDGE_FASTLY_API_URL",
        default_value = "https://api.fastly.com"
    )]
    pub edge_fastly_api_url: String,

    /// The Fastly service id. [env: ADDONREG_EDGE_FASTLY_SERVICE_ID]
    #[arg(long, env = "ADDONREG_EDGE_FASTLY_SERVICE_ID", default_value = "")]
    pub edge_fastly_service_id: String,

    /// A Fastly API token with the `purge_select` and `purge_all` scopes.
    /// [env: ADDONREG_EDGE_FASTLY_TOKEN]
    #[arg(long, env = "ADDONREG_EDGE_FASTLY_TOKEN", hide_env_values = true)]
    pub edge_fastly_token: Option<Secret>,

    /// Google's Compute API. [env: ADDONREG_EDGE_GOOGLE_API_URL]
    #[arg(
        long,
        env = "ADDONREG_EDGE_GOOGLE_API_URL",
        default_value = "https://compute.googleapis.com"
    )]
    pub edge_google_api_url: String,

    /// The Google Cloud project. [env: ADDONREG_EDGE_GOOGLE_PROJECT]
    #[arg(long, env = "ADDONREG_EDGE_GOOGLE_PROJECT", default_value = "")]
    pub edge_google_project: String,

    /// The URL map (load balancer) with Cloud CDN on. [env: ADDONREG_EDGE_GOOGLE_URL_MAP]
    #[arg(long, env = "ADDONREG_EDGE_GOOGLE_URL_MAP", default_value = "")]
    pub edge_google_url_map: String,

    /// An OAuth access token allowed `compute.urlMaps.invalidateCache`.
    /// [env: ADDONREG_EDGE_GOOGLE_TOKEN]
    #[arg(long, env = "ADDONREG_EDGE_GOOGLE_TOKEN", hide_env_values = true)]
    pub edge_google_token: Option<Secret>,

    /// How long to wait for every gateway to confirm an event before
    /// purging anyway (the confirmed purge still follows), in ms.
    /// [env: ADDONREG_EDGE_MAX_WAIT_MS]
    // Under the 1 s promise with room for the purge itself.
    #[arg(long, env = "ADDONREG_EDGE_MAX_WAIT_MS", default_value_t = 500)]
    pub edge_max_wait_ms: u64,

    /// When a confirmed purge is repeated, in ms: longer than the edge
    /// lets a fetch take (the VCL's first-byte plus between-bytes
    /// timeouts, 5 s + 2 s). [env: ADDONREG_EDGE_REPURGE_AFTER_MS]
    #[arg(long, env = "ADDONREG_EDGE_REPURGE_AFTER_MS", default_value_t = 10_000)]
    pub edge_repurge_after_ms: u64,

    /// How often the gateways are asked while events wait, in ms.
    /// [env: ADDONREG_EDGE_POLL_MS]
    #[arg(long, env = "ADDONREG_EDGE_POLL_MS", default_value_t = 5)]
    pub edge_poll_ms: u64,

    #[command(flatten)]
    pub amqp: AmqpSettings,

    /// AMQP heartbeat asked of the broker, in seconds; 0 leaves it to the
    /// broker. [env: ADDONREG_AMQP_HEARTBEAT_SECS]
    #[arg(long, env = "ADDONREG_AMQP_HEARTBEAT_SECS", default_value_t = 5)]
    pub amqp_heartbeat_secs: u16,

    /// Admin address serving /metrics; 0 turns it off. [env: ADDONREG_METRICS_LISTEN]
    #[arg(
        long,
        env = "ADDONREG_METRICS_LISTEN",
        default_value = "127.0.0.1:9110"
    )]
    pub metrics_listen: OptionalListen,

    #[command(flatten)]
    pub log: LogSettings,

    /// version.json to report. [env: ADDONREG_VERSION_FILE]
    #[arg(
        long,
        env = "ADDONREG_VERSION_FILE",
        default_value = "/app/version.json"
    )]
    pub version_file: PathBuf,
}

impl PurgerSettings {
    /// The CDN adapter, or which variable is missing.
    pub fn cdn(&self) -> Result<Arc<dyn Cdn>, InvalidSetting> {
        let required = |variable: &'static str, value: &str| {
            if value.is_empty() {
                Err(InvalidSetting {
                    variable,
                    problem: "required for this ADDONREG_EDGE_CDN".into(),
                })
            } else {
                Ok(value.to_string())
            }
        };
        let secret = |variable: &'static str, value: &Option<Secret>| {
            value.clone().ok_or(InvalidSetting {
                variable,
                problem: "required for this ADDONREG_EDGE_CDN".into(),
            })
        };
        Ok(match self.edge_cdn {
            CdnKind::Varnish => {
                if self.edge_varnish_urls.is_empty() {
                    return Err(InvalidSetting {
                        variable: "ADDONREG_EDGE_VARNISH_URLS",
                        problem: "names no node".into(),
                    });
                }
                Arc::new(Varnish::new(self.edge_varnish_urls.clone()))
            }
            CdnKind::Fastly => Arc::new(Fastly::new(
                self.edge_fastly_api_url.clone(),
                required(
                    "ADDONREG_EDGE_FASTLY_SERVICE_ID",
                    &self.edge_fastly_service_id,
                )?,
                secret("ADDONREG_EDGE_FASTLY_TOKEN", &self.edge_fastly_token)?,
            )),
            CdnKind::Google => Arc::new(GoogleCdn::new(
                self.edge_google_api_url.clone(),
                required("ADDONREG_EDGE_GOOGLE_PROJECT", &self.edge_google_project)?,
                required("ADDONREG_EDGE_GOOGLE_URL_MAP", &self.edge_google_url_map)?,
                secret("ADDONREG_EDGE_GOOGLE_TOKEN", &self.edge_google_token)?,
            )),
        })
    }

    /// The waits, checked.
    pub fn timing(&self) -> Result<Timing, InvalidSetting> {
        if self.edge_poll_ms == 0 {
            return Err(InvalidSetting {
                variable: "ADDONREG_EDGE_POLL_MS",
                problem: "must be at least 1".into(),
            });
        }
        Ok(Timing {
            poll: Duration::from_millis(self.edge_poll_ms),
            max_wait: Duration::from_millis(self.edge_max_wait_ms),
            repurge_after: Duration::from_millis(self.edge_repurge_after_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_required_settings() {
        let s = PurgerSettings::try_parse_from([
            "edge-purger",
            "--edge-gateways",
            "http://127.0.0.1:9101,http://127.0.0.1:9111",
        ])
        .unwrap();
        assert_eq!(s.edge_gateways.len(), 2);
        assert_eq!(s.edge_cdn, CdnKind::Varnish);
        assert_eq!(s.cdn().unwrap().name(), "varnish");
        let t = s.timing().unwrap();
        assert_eq!(
            (t.poll, t.max_wait, t.repurge_after),
            (
                Duration::from_millis(5),
                Duration::from_millis(500),
                Duration::from_secs(10)
            )
        );
        assert!(PurgerSettings::try_parse_from(["edge-purger"]).is_err());
        let fastly = PurgerSettings::try_parse_from([
            "edge-purger",
            "--edge-gateways",
            "http://g:9101",
            "--edge-cdn",
            "fastly",
        ])
        .unwrap();
        let e = fastly.cdn().err().unwrap();
        assert_eq!(e.variable, "ADDONREG_EDGE_FASTLY_SERVICE_ID");
    }
}
