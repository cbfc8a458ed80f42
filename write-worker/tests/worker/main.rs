//! The worker's integration tests, against real Postgres and RabbitMQ.

mod compaction;
mod dlq;
mod foundation;
mod helpers;
mod hostile;
mod janitor;
mod model;
mod privilege;
mod resilience;
mod sentry;
mod writes;
