//! Controllers, one folder per kind, each a fixed pipeline:
//! dereference → validate → build → apply → status.

pub mod databaseserver;
pub mod servicedatabase;

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::build::OperatorFacts;
use crate::operator::Metrics;

/// What every reconcile gets: the client, facts about the operator, metrics
/// and the Event recorder. Nothing inside a reconcile reads the environment.
pub struct Context {
    pub client: Client,
    pub facts: OperatorFacts,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub backoff: servicedatabase::Backoff,
}

impl Context {
    pub fn new(
        client: Client,
        facts: OperatorFacts,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "servicedb".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            facts,
            metrics,
            backoff: Default::default(),
        }
    }
}
