//! What servicedb's resources mean, checked and named: the validated
//! ServiceDatabase, shared servers' facts, naming, admission and credential
//! rotation plans. Pure: no client, no clock of its own. Below `build/` and
//! every controller, and importing neither (`tests/architecture.rs`).

pub mod admission;
pub mod database;
pub mod managed;
pub mod naming;
pub mod quantity;
pub mod rotation;
pub mod server;
