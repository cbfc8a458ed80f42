//! The worker's integration tests, against real Postgres and RabbitMQ.

mod dlq;
mod foundation;
mod helpers;
mod janitor;
mod resilience;
mod writes;
