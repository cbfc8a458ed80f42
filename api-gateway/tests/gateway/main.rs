//! The gateway's integration tests, against real Postgres (with a real
//! streaming replica) and RabbitMQ.

mod abuse;
mod edge;
mod foundation;
mod freshness;
mod fuzz;
mod helpers;
mod model;
mod observability;
mod openapi;
mod privilege;
mod reads;
mod sentry;
