//! What the e2e tests share: the harness (a namespace, the operator
//! process, waits, HTTP), the servers they start, and helpers to read and
//! play the objects of each feature. Test files import from here only,
//! never from one another.

pub mod backups;
pub mod cli;
pub mod harness;
pub mod monitoring;
pub mod objects;
pub mod rotations;
pub mod servers;
pub mod shared_servers;
pub mod storage;
