//! The worker's integration tests, against real Postgres and RabbitMQ.

mod foundation;
mod helpers;
mod janitor;
mod resilience;
mod writes;
