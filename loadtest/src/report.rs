//! The summary: the machine, each figure, and its ratio to the baseline
//! measured in the same run.

use crate::baseline::QueueRates;
use crate::write_bench::Measured;

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
pub fn print_reads(runs: &[crate::read_bench::HttpRun], pgbench_tps: f64) {
    println!("machine: {}", machine());
    println!(
        "baseline, pgbench select by primary key (prepared, 16 clients): {pgbench_tps:.0} tps"
    );
    println!();
    print!("{}", reads_table(runs, pgbench_tps));
}

/// The read runs as a markdown table, each beside the first (bare warp)
/// and pgbench: for `read-bench` and for the bench report.
pub fn reads_table(runs: &[crate::read_bench::HttpRun], pgbench_tps: f64) -> String {
    let mut table = String::from(
        "| server | req/s | p50 ms | p99 ms | errors | req/s vs bare warp | p99 vs bare warp | req/s vs pgbench |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let Some(bare) = runs.first() else {
        return table;
    };
    for r in runs {
        table.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {:.2}x | {:.2}x | {:.2}x |\n",
            r.name,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.rps / bare.rps,
            r.p99_ms / bare.p99_ms,
            r.rps / pgbench_tps
        ));
    }
    table
}

/// Prints `loadtest writes`' summary: what was sent, how fast it went
/// through, and each check's count (all 0 on a correct stack).
pub fn print_check(o: &crate::writes::Outcome) {
    println!("machine: {}", machine());
    let workers = o
        .workers
        .map_or_else(|| "running stack".to_string(), |n| format!("{n} worker(s)"));
    println!("run {} (seed {}), {workers}", o.run, o.seed);
    println!();
    println!("| sent | count |");
    println!("| --- | ---: |");
    println!("| valid writes | {} |", o.writes);
    println!("| ops in them | {} |", o.ops);
    println!("| pairs touched | {} |", o.pairs);
    println!("| writes published twice | {} |", o.duplicates);
    println!("| poison messages | {} |", o.poison);
    println!("| messages published | {} |", o.published);
    println!();
    println!("| measured | value |");
    println!("| --- | ---: |");
    println!(
        "| publish, confirms included | {:.2} s ({:.0} msg/s) |",
        o.publish_seconds,
        o.published as f64 / o.publish_seconds
    );
    println!("| first publish to last receipt | {:.2} s |", o.seconds);
    println!("| ops/s end to end | {:.0} |", o.ops as f64 / o.seconds);
    println!(
        "| messages/s end to end | {:.0} |",
        o.published as f64 / o.seconds
    );
    if o.timed_out {
        println!("| timed out before the last receipt | yes |");
    }
    println!();
    println!("| check | count |");
    println!("| --- | ---: |");
    for (name, n) in o.counts.rows() {
        println!("| {name} | {n} |");
    }
}

/// Prints `loadtest backfill`'s summary.
pub fn print_backfill(b: &crate::backfill::Backfilled) {
    println!("machine: {}", machine());
    println!();
    println!(
        "| records | ops/message | messages | workers | publish s | seconds to last applied | ops/s | records found |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {} |",
        b.backfill.records,
        b.backfill.ops_per_message,
        b.messages,
        b.backfill.workers,
        b.publish_seconds,
        b.seconds,
        b.ops_per_sec(),
        b.records_found
    );
}

/// The `reads` table: closed loop, then each open-loop rate.
pub fn print_traffic(runs: &[crate::reads::Measured]) {
    println!("machine: {}", machine());
    println!();
    println!(
        "| loop | offered req/s | answered req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | wrong | failed |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for run in runs {
        let (kind, offered) = match run.offered {
            Some(rate) => ("open", format!("{rate:.0}")),
            None => ("closed", "-".to_string()),
        };
        println!(
            "| {kind} | {offered} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            run.rps(),
            run.percentile_ms(0.5),
            run.percentile_ms(0.9),
            run.percentile_ms(0.99),
            run.percentile_ms(0.999),
            run.latency_us.max() as f64 / 1000.0,
            run.wrong,
            run.failed,
        );
    }
}

/// The `freshness` table.
pub fn print_freshness(measured: &crate::freshness::Freshness) {
    let reads = &measured.reads;
    println!("machine: {}", machine());
    println!();
    println!(
        "| samples | p50 ms | p99 ms | max ms | never served | background reads/s | read p99 ms | wrong reads |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {} | {:.2} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {} |",
        measured.delay_us.len(),
        measured.percentile_ms(0.5),
        measured.percentile_ms(0.99),
        measured.delay_us.max() as f64 / 1000.0,
        measured.stale,
        reads.rps(),
        reads.percentile_ms(0.99),
        reads.wrong + reads.failed,
    );
    println!();
    println!(
        "(promise: every delay < 1 s, p99 aimed under 50 ms; delays from the first sighting of the receipt on the primary to the first answer with the new value, both polled every ~1 ms)"
    );
}
