//! What unit tests share: the YAML fixtures of `tests/fixtures`, the
//! operator's facts, and a stand-in API server that answers a reconcile's
//! requests and records them (kube-rs' controller-rs `ApiServerVerifier`
//! pattern), so that a whole pass runs without a cluster.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use crate::build::OperatorFacts;
use crate::controller::Context;

/// A YAML file of `tests/fixtures`.
pub fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture YAML")
}

/// The operator as the builders' tests see it.
pub fn facts() -> OperatorFacts {
    OperatorFacts {
        image: "example.com/servicedb:1.0".into(),
        binary_path: "/usr/local/bin/servicedb".into(),
        namespace: "servicedb-system".into(),
        pod_labels: BTreeMap::from([("app.kubernetes.io/name".into(), "servicedb".into())]),
        runbook_url: crate::build::monitoring::DEFAULT_RUNBOOK_URL.into(),
        scraper: Default::default(),
    }
}

/// One request the stand-in API server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The path and query.
    pub path: String,
    pub body: Value,
}

/// How the stand-in answers: the status and body for a request, or `None`
/// for the default (404 for a read, the request's own body for a write).
pub type Answer = Box<dyn Fn(&Recorded) -> Option<(StatusCode, Value)> + Send + Sync>;

/// A stand-in API server: every request is recorded and answered.
pub struct ApiServer {
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl ApiServer {
    /// A Context whose client talks to a stand-in that answers with
    /// `answer` (see [`Answer`]).
    pub fn start(answer: Answer) -> (Arc<Context>, ApiServer) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let recorded = Recorded { method, path, body };
                let (status, reply) = answer(&recorded).unwrap_or_else(|| default(&recorded));
                seen.lock().expect("requests").push(recorded);
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).expect("JSON")))
                    .expect("response");
                respond.send_response(response);
            }
        });
        let client = Client::new(service, "default");
        let metrics = Arc::new(crate::operator::Metrics::default());
        let ctx = Arc::new(Context::new(client, facts(), metrics, None));
        (ctx, ApiServer { requests })
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests").clone()
    }

    /// The requests that would change something (anything but GET/LIST),
    /// Events left out.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET" && !r.path.contains("/events"))
            .collect()
    }
}

/// 404 for a read, as for an object that does not exist; a write echoes its
/// body, as the API server returns the object it stored.
fn default(request: &Recorded) -> (StatusCode, Value) {
    if request.method == "GET" {
        (
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    } else {
        (StatusCode::OK, request.body.clone())
    }
}
