//! The cache sweep: the same Zipf-shaped reads over 1 M records against a
//! gateway whose cache holds 1 k, 100 k or 1 M entries, or is off; then the
//! gateway's memory once every record is cached.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::BenchError;
use crate::env::{Scratch, Target};
use crate::read_bench::{free_port, seed, start_gateway_with, wait_listening};
use crate::reads::{self, Shape};

/// A memory bound (8 GiB) that no sweep reaches (~3.6 KB an entry).
fn memory_to_spare() -> (&'static str, String) {
    ("ADDONREG_CACHE_MAX_BYTES", (8u64 << 30).to_string())
}

/// The sweep's shape.
#[derive(Debug, Clone)]
pub struct CacheSweep {
    /// Records seeded (the key space).
    pub records: u64,
    /// Cache sizes measured, in entries (0: cache off).
    pub sizes: Vec<u64>,
    /// The reads; `records` is overridden by the sweep's.
    pub shape: Shape,
}

/// One cache size, measured.
#[derive(Debug, Clone, Serialize)]
pub struct CacheRun {
    /// Cache size in entries (0: off).
    pub cache_entries: u64,
    /// Answers per second, closed loop.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Reads answered from memory, as a share of cache hits plus misses.
    pub hit_ratio: f64,
    /// Wrong or failed answers.
    pub wrong: u64,
}

/// The gateway's memory with every record cached.
#[derive(Debug, Clone, Serialize)]
pub struct CacheMemory {
    /// Entries its `cache_entries` metric reports.
    pub entries: u64,
    /// Its resident set size before the fill, in bytes.
    pub rss_before_bytes: u64,
    /// Its resident set size after the fill, in bytes.
    pub rss_bytes: u64,
    /// How long the fill took (one lookup a record, 32 connections).
    pub fill_seconds: f64,
}

/// Seeds, then measures each size in turn, then fills the largest cache.
pub async fn run(
    target: &Target,
    sweep: CacheSweep,
) -> Result<(Vec<CacheRun>, Option<CacheMemory>), BenchError> {
    let scratch = Scratch::create(target).await?;
    let result = measure(target, &scratch, sweep).await;
    scratch.drop().await?;
    result
}

async fn measure(
    target: &Target,
    scratch: &Scratch,
    sweep: CacheSweep,
) -> Result<(Vec<CacheRun>, Option<CacheMemory>), BenchError> {
    seed(&scratch.pool, sweep.records).await?;
    let shape = Shape {
        records: sweep.records,
        rate: None,
        ..sweep.shape
    };
    let mut runs = Vec::new();
    for &size in &sweep.sizes {
        // The entry bound is what varies: memory to spare.
        let gateway = Gateway::start(target, scratch, size, &[memory_to_spare()]).await?;
        let warm = Shape {
            duration: Duration::from_secs(3),
            ..shape
        };
        reads::drive(gateway.addr, warm, 7).await?;
        let before = gateway.metrics().await?;
        let measured = reads::drive(gateway.addr, shape, 11).await?;
        let after = gateway.metrics().await?;
        let hits = after.hits.saturating_sub(before.hits) as f64;
        let misses = after.misses.saturating_sub(before.misses) as f64;
        runs.push(CacheRun {
            cache_entries: size,
            rps: measured.rps(),
            p50_ms: measured.percentile_ms(0.5),
            p99_ms: measured.percentile_ms(0.99),
            hit_ratio: if hits + misses > 0.0 {
                hits / (hits + misses)
            } else {
                0.0
            },
            wrong: measured.wrong + measured.failed,
        });
    }
    let memory = if sweep.sizes.iter().any(|&size| size >= sweep.records) {
        // A fresh gateway, so that only records fill it (the sweep's reads
        // also cache unknown keys and listings), with room for every one:
        // the default memory bound (512 MiB) would evict before 1 M.
        // Twice the entries it needs: moka's admission turns candidates
        // away once its (approximate) capacity is nearly reached.
        // A long lifetime too: at a few thousand misses a second the fill
        // takes minutes, longer than an answer's default 60 s.
        let room = [
            memory_to_spare(),
            ("ADDONREG_CACHE_TTL_FOUND_SECS", "3600".to_string()),
        ];
        let gateway = Gateway::start(target, scratch, sweep.records * 2, &room).await?;
        Some(gateway.fill(sweep.records).await?)
    } else {
        None
    };
    Ok((runs, memory))
}

/// A gateway with its metrics listener, over the sweep's database.
struct Gateway {
    child: tokio::process::Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

/// The cache counters of one scrape.
struct Scrape {
    hits: u64,
    misses: u64,
    entries: u64,
}

impl Gateway {
    async fn start(
        target: &Target,
        scratch: &Scratch,
        size: u64,
        extra: &[(&str, String)],
    ) -> Result<Self, BenchError> {
        let (port, metrics_port) = (free_port()?, free_port()?);
        let child = start_gateway_with(target, scratch, port, size, Some(metrics_port), extra)?;
        wait_listening(port).await?;
        wait_listening(metrics_port).await?;
        let gateway = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
        };
        // Subscribing to invalidations clears the cache (events may have
        // been missed before): what was cached earlier would be lost.
        for _ in 0..100 {
            if gateway.value("addonreg_gateway_broker_connected").await? == 1 {
                return Ok(gateway);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(BenchError::Timeout(
            "the gateway did not subscribe to invalidations within 10 s".into(),
        ))
    }

    async fn metrics(&self) -> Result<Scrape, BenchError> {
        Ok(Scrape {
            hits: self.value("addonreg_gateway_cache_hits_total").await?,
            misses: self.value("addonreg_gateway_cache_misses_total").await?,
            entries: self.value("addonreg_gateway_cache_entries").await?,
        })
    }

    /// One unlabelled metric of the gateway's.
    async fn value(&self, name: &str) -> Result<u64, BenchError> {
        let (_, body) = reads::request(self.metrics, "/metrics", None).await?;
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| BenchError::Check(format!("no {name} in the gateway's /metrics")))
    }

    /// Caches every record, then reads the process's memory.
    async fn fill(&self, records: u64) -> Result<CacheMemory, BenchError> {
        let rss_before_bytes = self.rss()?;
        let started = Instant::now();
        reads::fill(self.addr, records, 32).await?;
        let fill_seconds = started.elapsed().as_secs_f64();
        // The gauge is refreshed every second and moka counts lazily: wait
        // until two readings agree (at most 10 s).
        let mut entries = self.metrics().await?.entries;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            let now = self.metrics().await?.entries;
            if now == entries {
                break;
            }
            entries = now;
        }
        Ok(CacheMemory {
            entries,
            rss_before_bytes,
            rss_bytes: self.rss()?,
            fill_seconds,
        })
    }

    fn rss(&self) -> Result<u64, BenchError> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| BenchError::Check("the gateway exited".into()))?;
        rss_bytes(pid)
    }
}

/// A process's resident set size (VmRSS), in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| BenchError::Process(format!("/proc/{pid}/status"), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::Check(format!("no VmRSS in /proc/{pid}/status")))
}
