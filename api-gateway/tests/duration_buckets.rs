//! The request-duration histogram must reach past the slowest read, or its
//! p99 clips at the top bucket exactly during incidents.

use api_gateway::Settings;
use api_gateway::metrics::DURATION_BUCKETS;
use clap::Parser;

#[test]
fn duration_buckets_reach_past_reads_that_try_every_source() {
    let settings = Settings::try_parse_from(["api-gateway"]).expect("defaults parse");
    let read_timeout = settings.read_timeout().as_secs_f64();
    let top = DURATION_BUCKETS.last().copied().unwrap_or_default();
    // A read may wait out the timeout on a stopped replica and then on the
    // next source: two timeouts and then some.
    assert!(
        top > 2.0 * read_timeout,
        "top bucket {top} s, read timeout {read_timeout} s"
    );
    assert!(
        DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]),
        "buckets ascend"
    );
    // The freshness alert reads the 1 s bucket of the same list.
    assert!(DURATION_BUCKETS.contains(&1.0));
    // The latency SLO reads the 250 ms bucket.
    assert!(DURATION_BUCKETS.contains(&0.25));
}
