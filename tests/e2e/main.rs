//! End-to-end tests against a real Kubernetes API server (KUBECONFIG): the
//! local control plane of `hack/testenv` (`make e2e`), or any cluster.
//!
//! Each test gets its own namespace and its own operator process (the real
//! `servicedb operator` binary); tests take a lock so that one operator runs
//! at a time. Without a kubelet or controller manager, tests play their part
//! where needed: they patch a StatefulSet's status to report ready replicas
//! and create the PVCs a StatefulSet controller would.

#[path = "../common/mod.rs"]
mod common;
#[path = "../agent_common/ferretdb.rs"]
#[allow(dead_code)] // shared with the agent tests, which use all of it
mod ferretdb;
#[path = "../gitops_common/mod.rs"]
mod gitops_common;
#[path = "../agent_common/s3.rs"]
#[allow(dead_code)] // shared with the agent tests, which use all of it
mod s3;
mod support;
use support::servers;

mod agent_jobs;
mod archives;
mod backup;
mod chart;
mod class_defaults;
mod cli;
mod database_server;
mod dedicated;
mod formats;
mod gitops;
mod hostile;
mod kubectl_get;
mod lifecycle;
mod monitoring;
mod redis_clients;
mod rollout;
mod rotation;
mod shared;
mod storage;
mod tls;
mod validation;
