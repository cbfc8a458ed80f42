//! The read benchmark: the real gateway against a bare warp handler answering
//! the same record bytes, both driven by wrk (HTTP/1.1 keep-alive) from a
//! second process, plus pgbench's select-by-primary-key on the same table.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::BenchError;
use crate::env::{Scratch, Target};

/// What wrk measured against one server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpRun {
    /// What was measured.
    pub name: String,
    /// Requests per second.
    pub rps: f64,
    /// Median latency in ms.
    pub p50_ms: f64,
    /// 99th percentile latency in ms.
    pub p99_ms: f64,
    /// Non-2xx/3xx answers or socket errors.
    pub errors: u64,
}

/// Row names, which the bench's targets look up.
pub const BARE_WARP: &str = "bare warp, fixed body";
/// nginx serving the hot record as a static file.
pub const NGINX: &str = "nginx, static file";
/// The gateway answering one hot key from its cache, request logs off.
pub const GATEWAY_HOT: &str = "gateway, cache hits (one hot key), logs off";
/// The same gateway as `infra/local/up` runs it: every request logged, to a file.
pub const GATEWAY_HOT_LOGGED: &str =
    "gateway, cache hits, as infra/local/up (every request logged to a file)";
/// The same as the production overlay runs it: info, 10% of requests logged.
pub const GATEWAY_HOT_SAMPLED: &str =
    "gateway, cache hits, as the production overlay (10% of requests logged)";
/// The gateway on uniformly random keys with its cache on.
pub const GATEWAY_RANDOM: &str = "gateway, random keys (cache on)";
/// The gateway with its cache off.
pub const GATEWAY_UNCACHED: &str = "gateway, cache off, random keys";

/// The shape of one read benchmark.
#[derive(Debug, Clone, Copy)]
pub struct ReadBench {
    /// Records seeded.
    pub records: usize,
    /// wrk connections.
    pub connections: usize,
    /// Seconds per wrk run.
    pub seconds: u64,
    /// Alternated rounds of the bare warp and hot-key runs.
    pub rounds: usize,
}

/// The record every bare-warp answer carries: the same bytes the gateway
/// answers for the hot key.
pub fn hot_record_json() -> String {
    format!(
        r#"{{"addon_id":"addon1@bench","sha256":"{}","status":"registered","version":"1.0","registered_at":"2026-11-22T10:00:00.000000Z","updated_at":"2026-11-22T10:00:00.000000Z"}}"#,
        hash_hex(1)
    )
}

fn hash_hex(i: u64) -> String {
    format!("{i:016x}").repeat(4)
}

/// `registered_at` and `updated_at` of every seeded record, as answered.
pub const SEEDED_AT: &str = "2026-11-22T10:00:00.000000Z";

/// The add-on of seeded record `i` (1000 add-ons share the records).
pub fn seeded_addon(i: u64) -> String {
    format!("addon{}@bench", i % 1000)
}

/// The digest of seeded record `i`, as 64 hex digits.
pub fn seeded_hash(i: u64) -> String {
    hash_hex(i)
}

/// Serves [`hot_record_json`] on every GET until killed: the baseline.
pub async fn serve_bare_warp(listen: std::net::SocketAddr) {
    use warp::Filter;
    let body = hot_record_json();
    let route = warp::get().map(move || {
        warp::http::Response::builder()
            .header("content-type", "application/json")
            .body(body.clone())
    });
    warp::serve(route).run(listen).await;
}

/// Runs the benchmark: seeds, starts both servers, drives them, measures.
pub async fn run(target: &Target, bench: ReadBench) -> Result<(Vec<HttpRun>, f64), BenchError> {
    let scratch = Scratch::create(target).await?;
    let result = measure(target, &scratch, bench).await;
    scratch.drop().await?;
    result
}

async fn measure(
    target: &Target,
    scratch: &Scratch,
    bench: ReadBench,
) -> Result<(Vec<HttpRun>, f64), BenchError> {
    seed(&scratch.pool, bench.records as u64).await?;

    let gateway_port = free_port()?;
    let uncached_port = free_port()?;
    let bare_port = free_port()?;
    let _gateway = start_gateway(target, scratch, gateway_port, 1_000_000)?;
    let _uncached = start_gateway(target, scratch, uncached_port, 0)?;
    // Each way the gateway can log gets a row, so a logging cost can't hide.
    let logs = tempfile_dir()?;
    let (logged_port, sampled_port) = (free_port()?, free_port()?);
    let _logged = start_gateway_logging(
        target,
        scratch,
        logged_port,
        &logs.join("local.log"),
        &[
            ("ADDONREG_LOG", "info".into()),
            ("ADDONREG_REQUEST_LOG_SAMPLE", "1.0".into()),
        ],
    )?;
    let _sampled = start_gateway_logging(
        target,
        scratch,
        sampled_port,
        &logs.join("production.log"),
        &[
            ("ADDONREG_LOG", "info,sqlx=warn".into()),
            ("ADDONREG_REQUEST_LOG_SAMPLE", "0.1".into()),
        ],
    )?;
    let me = std::env::current_exe().map_err(|e| BenchError::Process("loadtest".into(), e))?;
    let _bare = Command::new(&me)
        .args(["bare-warp", "--listen", &format!("127.0.0.1:{bare_port}")])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Process("bare warp".into(), e))?;
    let nginx_port = free_port()?;
    let nginx = if crate::baseline::Nginx::installed() {
        let nginx = crate::baseline::Nginx::start(nginx_port, &hot_record_json())?;
        wait_listening(nginx_port).await?;
        Some(nginx)
    } else {
        eprintln!(
            "read-bench: nginx is not installed (apt-get install nginx-light): no static-file baseline"
        );
        None
    };
    wait_listening(gateway_port).await?;
    wait_listening(uncached_port).await?;
    wait_listening(logged_port).await?;
    wait_listening(sampled_port).await?;
    wait_listening(bare_port).await?;

    let hot = format!("/v1/addons/addon1@bench/hashes/{}", hash_hex(1));
    let mut runs = Vec::new();
    // The machine's speed drifts between runs: alternate, keep the medians.
    let (mut bare, mut static_file, mut gateway_hot) = (Vec::new(), Vec::new(), Vec::new());
    let (mut logged, mut sampled) = (Vec::new(), Vec::new());
    for _ in 0..bench.rounds {
        bare.push(wrk(BARE_WARP, bare_port, &hot, None, bench).await?);
        if nginx.is_some() {
            static_file.push(wrk(NGINX, nginx_port, &hot, None, bench).await?);
        }
        gateway_hot.push(wrk(GATEWAY_HOT, gateway_port, &hot, None, bench).await?);
        logged.push(wrk(GATEWAY_HOT_LOGGED, logged_port, &hot, None, bench).await?);
        sampled.push(wrk(GATEWAY_HOT_SAMPLED, sampled_port, &hot, None, bench).await?);
    }
    runs.push(median(bare));
    if !static_file.is_empty() {
        runs.push(median(static_file));
    }
    runs.push(median(gateway_hot));
    runs.push(median(logged));
    runs.push(median(sampled));
    let _ = std::fs::remove_dir_all(&logs);
    let random = random_keys_script(bench.records)?;
    runs.push(wrk(GATEWAY_RANDOM, gateway_port, "/", Some(&random), bench).await?);
    runs.push(wrk(GATEWAY_UNCACHED, uncached_port, "/", Some(&random), bench).await?);
    let pgbench = pgbench_tps(scratch, bench).await?;
    Ok((runs, pgbench))
}

/// Seeds records 1..=`records` (see [`seeded_addon`], [`seeded_hash`]):
/// registered, version 1.0, at [`SEEDED_AT`].
pub async fn seed(pool: &sqlx::PgPool, records: u64) -> Result<(), BenchError> {
    sqlx::query(
        "INSERT INTO records (addon_id, sha256, status, version, registered_at, updated_at, \
                              last_write_id, last_op_index, ops) \
         SELECT 'addon' || (i % 1000) || '@bench', \
                int8send(i) || int8send(i) || int8send(i) || int8send(i), 'registered', '1.0', \
                '2026-11-22T10:00:00Z', '2026-11-22T10:00:00Z', 'seed', 0, '[]' \
         FROM generate_series(1, $1::int8) AS i",
    )
    .bind(records as i64)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE records").execute(pool).await?;
    Ok(())
}

/// Starts a release gateway on `port` over `scratch`, with
/// `ADDONREG_CACHE_MAX_ENTRIES` = `cache_entries` and request lines off.
pub fn start_gateway(
    target: &Target,
    scratch: &Scratch,
    port: u16,
    cache_entries: u64,
) -> Result<Child, BenchError> {
    start_gateway_with(target, scratch, port, cache_entries, None, &[])
}

/// [`start_gateway`], with its metrics listener on `metrics_port` if given,
/// and `extra` settings.
pub fn start_gateway_with(
    target: &Target,
    scratch: &Scratch,
    port: u16,
    cache_entries: u64,
    metrics_port: Option<u16>,
    extra: &[(&str, String)],
) -> Result<Child, BenchError> {
    let metrics = metrics_port.map_or_else(|| "0".into(), |p| format!("127.0.0.1:{p}"));
    let launch = gateway(target, scratch, port)
        .set("ADDONREG_METRICS_LISTEN", &metrics)
        .set("ADDONREG_LOG", "warn")
        .set("ADDONREG_CACHE_MAX_ENTRIES", &cache_entries.to_string())
        .settings(extra);
    crate::env::spawn(&launch, Stdio::null())
}

/// A gateway over `scratch` answering on `port`.
fn gateway(target: &Target, scratch: &Scratch, port: u16) -> harness::Launch {
    harness::Launch::gateway(
        target.bin_dir.join("api-gateway"),
        &[scratch.url_as("addonreg_gateway")],
        &target.amqp_url,
        scratch.prefix.as_str(),
        port,
    )
}

/// A scratch directory for the logging gateways' log files.
fn tempfile_dir() -> Result<std::path::PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!("addonreg-read-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::Process("log directory".into(), e))?;
    Ok(dir)
}

/// A cached gateway whose stdout (its MozLog lines) goes to `log`, with
/// `logging` settings, as a deployment runs it.
fn start_gateway_logging(
    target: &Target,
    scratch: &Scratch,
    port: u16,
    log: &Path,
    logging: &[(&str, String)],
) -> Result<Child, BenchError> {
    let file = std::fs::File::create(log)
        .map_err(|e| BenchError::Process(log.display().to_string(), e))?;
    crate::env::spawn(&gateway(target, scratch, port).settings(logging), file)
}

/// The run with the median requests/s (the upper one of an even count).
fn median(mut runs: Vec<HttpRun>) -> HttpRun {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs.swap_remove(runs.len() / 2)
}

/// A wrk script requesting uniformly random seeded keys.
fn random_keys_script(records: usize) -> Result<std::path::PathBuf, BenchError> {
    let path = std::env::temp_dir().join(format!("addonreg-wrk-{}.lua", std::process::id()));
    let script = format!(
        "math.randomseed(42)\n\
         request = function()\n\
           local i = math.random(1, {records})\n\
           local h = string.rep(string.format(\"%016x\", i), 4)\n\
           return wrk.format(\"GET\", \"/v1/addons/addon\" .. (i % 1000) .. \"@bench/hashes/\" .. h)\n\
         end\n"
    );
    std::fs::write(&path, script).map_err(|e| BenchError::Process("wrk script".into(), e))?;
    Ok(path)
}

async fn wrk(
    name: &str,
    port: u16,
    path: &str,
    script: Option<&Path>,
    bench: ReadBench,
) -> Result<HttpRun, BenchError> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{}", bench.connections),
        &format!("-d{}s", bench.seconds),
        "--latency",
    ]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = cmd
        .output()
        .await
        .map_err(|e| BenchError::Process("wrk (apt-get install wrk)".into(), e))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let find = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
    };
    let rps = find("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BenchError::Check(format!("wrk said: {text}")))?;
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(HttpRun {
        name: name.into(),
        rps,
        p50_ms: find("50%").map(to_ms).unwrap_or(f64::NAN),
        p99_ms: find("99%").map(to_ms).unwrap_or(f64::NAN),
        errors,
    })
}

/// wrk's latency with its unit (`812.00us`, `1.23ms`, `2.00s`) in ms.
fn to_ms(v: &str) -> f64 {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, f64::NAN)
    };
    number.parse::<f64>().map_or(f64::NAN, |n| n * factor)
}

/// pgbench select-by-primary-key on the same table, prepared, 16 clients.
async fn pgbench_tps(scratch: &Scratch, bench: ReadBench) -> Result<f64, BenchError> {
    let path = std::env::temp_dir().join(format!("addonreg-pgbench-{}.sql", std::process::id()));
    let script = format!(
        "\\set i random(1, {})\nSELECT status FROM records WHERE addon_id = 'addon' || (:i % 1000) || '@bench' \
         AND sha256 = int8send(:i) || int8send(:i) || int8send(:i) || int8send(:i);\n",
        bench.records
    );
    std::fs::write(&path, script).map_err(|e| BenchError::Process("pgbench script".into(), e))?;
    let url = scratch.url_as("postgres");
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            &bench.seconds.to_string(),
            "-f",
        ])
        .arg(&path)
        .arg(&url)
        .output()
        .await
        .map_err(|e| BenchError::Process("pgbench".into(), e))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            BenchError::Check(format!(
                "pgbench said: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })
}

pub fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Process("free port".into(), e))
}

pub async fn wait_listening(port: u16) -> Result<(), BenchError> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BenchError::Timeout(format!("nothing listens on {port}")))
}

#[derive(Debug, clap::Args)]
pub struct ReadBenchArgs {
    #[command(flatten)]
    pub target: crate::env::TargetArgs,
    /// Records seeded.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Rounds of bare warp then gateway (hot key), alternated so that both
    /// see the same machine; each row is the round with the median req/s.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

pub async fn command(args: ReadBenchArgs) -> Result<(), crate::BenchError> {
    let target = args.target.target();
    let bench = ReadBench {
        records: args.records,
        connections: args.connections,
        seconds: args.seconds,
        rounds: args.rounds.max(1),
    };
    let (runs, pgbench) = run(&target, bench).await?;
    crate::report::print_reads(&runs, pgbench);
    Ok(())
}
