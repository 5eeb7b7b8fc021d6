//! servicedb: a Kubernetes operator that gives every microservice its own
//! private database.

pub mod agent;
pub mod api;
pub mod build;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod instance;
pub mod model;
pub mod operator;
pub mod password;
pub mod run;
#[cfg(test)]
pub mod test_support;
