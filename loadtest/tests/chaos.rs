//! `loadtest chaos` at smoke size, through the library: a worker killed
//! mid-batch, a broker restart, a primary outage, poison, and a backfill of
//! historic writes while the replica's replay is paused, each for 3 s
//! under low steady load, on a stack of the run's own with debug binaries.
//! Nothing may be lost, applied twice or misfiled, and reads must recover.

use std::time::Duration;

use loadtest::chaos::{Scenario, Settings};

use harness::process::debug_bin_dir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_apply_nothing_twice_and_reads_recover() {
    let out = std::env::temp_dir().join(format!("addonreg-chaos-{}", std::process::id()));
    let settings = Settings {
        scenarios: vec![
            Scenario::WorkerKill,
            Scenario::BrokerRestart,
            Scenario::PrimaryStop,
            Scenario::Poison,
            Scenario::BackfillLagging,
        ],
        fault: Duration::from_secs(3),
        lead: Duration::from_secs(1),
        soak: Duration::from_secs(10),
        long_pause: Duration::from_secs(3),
        backfill_records: 2_000,
        write_rate: 40.0,
        read_rate: 40.0,
        bulk_share: 0.02,
        bulk_ops: 100,
        worker_kills: 1,
        poison: 200,
        burst: 1_000,
        freshness_samples: 3,
        records: 500,
        gateways: 1,
        workers: 2,
        broker_nodes: 1,
        recovery_limit: Duration::from_secs(60),
        drain_limit: Duration::from_secs(60),
        bin_dir: debug_bin_dir(),
        out_dir: out.clone(),
        seed: 42,
    };
    let report = loadtest::chaos::run(settings, std::future::pending())
        .await
        .expect("the run completes");
    let table = loadtest::chaos::report::render(&report);
    eprintln!("{table}");
    assert_eq!(report.scenarios.len(), 5, "{table}");
    for row in &report.scenarios {
        assert_eq!(row.error, None, "{table}");
        let c = &row.counts;
        assert!(
            c.writes_sent > 0,
            "{}: writes were sent\n{table}",
            row.scenario
        );
        assert_eq!(
            (c.lost, c.applied_twice, c.valid_dead_lettered),
            (0, 0, 0),
            "{}: lost, applied twice, valid dead-lettered\n{table}",
            row.scenario
        );
        assert_eq!(c.poison_missed, 0, "{}\n{table}", row.scenario);
        assert_eq!(c.records_differing, 0, "{}\n{table}", row.scenario);
        assert!(row.receipts_complete, "{}\n{table}", row.scenario);
        assert!(
            row.recovery_s.is_some(),
            "{}: reads and writes recovered\n{table}",
            row.scenario
        );
        assert!(row.unexpected_exits.is_empty(), "{}\n{table}", row.scenario);
        assert!(!row.broken(), "{}\n{table}", row.scenario);
    }
    let poison = &report.scenarios[3].counts;
    assert_eq!(poison.poison_sent, 200, "{table}");
    assert!(report.dir.join("report.json").exists());
    assert!(report.dir.join("table.md").exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// The node hosting the writes queue's leader stopped for 3 s on a stack
/// with a three-node RabbitMQ cluster: a follower takes over, the worker,
/// the gateway and the publisher move to another node, and nothing is lost,
/// applied twice or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_writes_queue_leader_loses_nothing() {
    let out = std::env::temp_dir().join(format!("addonreg-chaos-cluster-{}", std::process::id()));
    let settings = Settings {
        scenarios: vec![Scenario::ClusterLeaderStop],
        fault: Duration::from_secs(3),
        lead: Duration::from_secs(1),
        soak: Duration::from_secs(10),
        long_pause: Duration::from_secs(3),
        backfill_records: 0,
        write_rate: 40.0,
        read_rate: 40.0,
        bulk_share: 0.0,
        bulk_ops: 1,
        worker_kills: 1,
        poison: 0,
        burst: 0,
        freshness_samples: 2,
        records: 200,
        gateways: 1,
        workers: 1,
        broker_nodes: 3,
        recovery_limit: Duration::from_secs(60),
        drain_limit: Duration::from_secs(60),
        bin_dir: debug_bin_dir(),
        out_dir: out.clone(),
        seed: 7,
    };
    let report = loadtest::chaos::run(settings, std::future::pending())
        .await
        .expect("the run completes");
    let table = loadtest::chaos::report::render(&report);
    eprintln!("{table}");
    let [row] = report.scenarios.as_slice() else {
        panic!("one row\n{table}");
    };
    assert_eq!(row.error, None, "{table}");
    let c = &row.counts;
    assert!(c.writes_sent > 0, "{table}");
    assert_eq!(
        (c.lost, c.applied_twice, c.valid_dead_lettered),
        (0, 0, 0),
        "lost, applied twice, valid dead-lettered\n{table}"
    );
    assert!(row.receipts_complete, "{table}");
    assert!(row.recovery_s.is_some(), "{table}");
    assert!(
        row.notes.iter().any(|n| n.starts_with("stopped node-")),
        "the leader's node was found and stopped\n{table}"
    );
    assert!(!row.broken(), "{table}");
    let _ = std::fs::remove_dir_all(&out);
}
