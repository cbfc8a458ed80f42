//! The summary: the machine, each figure, and its ratio to the baseline
//! measured in the same run.

use crate::baseline::QueueRates;
use crate::writes::Measured;

/// The machine as `/proc` describes it.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cpus} cores ({model}), {mem_gib:.0} GiB")
}

/// Prints the write benchmark's table.
pub fn print_writes(queue: QueueRates, upsert_rows_per_sec: f64, runs: &[Measured]) {
    println!("machine: {}", machine());
    println!(
        "baseline, raw quorum queue (300 B persistent): publish {:.0} msg/s, consume {:.0} msg/s",
        queue.publish, queue.consume
    );
    println!(
        "baseline, Postgres unnest upsert (500 rows/stmt, 2 clients): {upsert_rows_per_sec:.0} rows/s"
    );
    println!();
    println!(
        "| ops/message | workers | messages | seconds | ops/s committed | messages/s | ratio to baseline |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for m in runs {
        let s = m.scenario;
        let ratio = if s.ops_per_message == 1 {
            format!(
                "{:.2}x raw queue consume",
                m.messages_per_sec() / queue.consume
            )
        } else {
            format!("{:.2}x raw upsert", m.ops_per_sec() / upsert_rows_per_sec)
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {} |",
            s.ops_per_message,
            s.workers,
            s.messages,
            m.seconds,
            m.ops_per_sec(),
            m.messages_per_sec(),
            ratio
        );
    }
}

/// Prints the read benchmark's table: each run beside the bare handler.
pub fn print_reads(runs: &[crate::reads::HttpRun], pgbench_tps: f64) {
    println!("machine: {}", machine());
    println!(
        "baseline, pgbench select by primary key (prepared, 16 clients): {pgbench_tps:.0} tps"
    );
    println!();
    println!(
        "| server | req/s | p50 ms | p99 ms | errors | req/s vs bare warp | p99 vs bare warp | req/s vs pgbench |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let Some(bare) = runs.first() else { return };
    for r in runs {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {:.2}x | {:.2}x | {:.2}x |",
            r.name,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.rps / bare.rps,
            r.p99_ms / bare.p99_ms,
            r.rps / pgbench_tps
        );
    }
}
