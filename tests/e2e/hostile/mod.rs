//! A neighbour on a shared server is an adversary: each test here is one way
//! a namespace tried to reach, lock out or destroy another's data, or to
//! stall the operator for everyone, run against the real API server and real
//! database servers (issue: shared servers are safe against hostile
//! neighbours).

mod boundaries;
mod stall;
mod takeover;
