//! servicedb: a Kubernetes operator that gives every microservice its own
//! private database.

pub mod api;
