//! The worker's integration tests, against real Postgres and RabbitMQ.

mod dlq;
mod foundation;
mod helpers;
mod hostile;
mod janitor;
mod nothing_lost;
mod privilege;
mod resilience;
mod sentry;
mod writes;
