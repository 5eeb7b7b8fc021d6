//! GitOps: children that Argo CD does not mistake for its own, health checks
//! for Argo CD and kstatus for Flux, and a restore that survives recreation
//! from Git.

mod health;
mod migration;
mod restore;
