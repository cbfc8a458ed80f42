//! The worker's integration tests, against real Postgres and RabbitMQ.

mod compaction;
mod dlq;
mod dockerflow;
mod foundation;
mod helpers;
mod hostile;
mod intake;
mod janitor;
mod model;
mod nothing_lost;
mod policy;
mod privilege;
mod resilience;
mod sentry;
mod writes;
