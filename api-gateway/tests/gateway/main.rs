//! The gateway's integration tests, against real Postgres (with a real
//! streaming replica) and RabbitMQ.

mod foundation;
mod helpers;
mod reads;
