//! `kubectl servicedb rotate NAME`: the on-demand rotation that already
//! exists, the annotation `servicedb.dev/rotate-credentials` with a new
//! value; then waits until the credentials Secret's login was issued after
//! the request (its metadata; `status.credentialsRotatedAt` without access
//! to it). The plugin never reads the credentials Secret's values.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::output::or_none;
use super::{Kube, WaitArgs, get_database, poll};
use crate::api::ServiceDatabase;
use crate::api::conditions::types;
use crate::model::rotation::{ISSUED_AT, ROTATE_ANNOTATION};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The Secret switches to the service's other login with a fresh password; the replaced \
login keeps working for spec.credentials.gracePeriod (1h by default), so pods can re-read the Secret. \
Exit status: 0 when rotated (or requested, with --wait=false), 1 when the wait timed out."
)]
pub struct Args {
    /// The ServiceDatabase whose credentials to rotate.
    pub name: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(kube: &Kube, args: Args) -> anyhow::Result<i32> {
    let sdb = get_database(kube, &args.name).await?;
    let before = sdb
        .status
        .as_ref()
        .and_then(|s| s.credentials_rotated_at.clone());
    let requested = Timestamp::now();
    // Any new value is a new request: the time it was made is one.
    let value = requested.to_string();
    let api: Api<ServiceDatabase> = Api::namespaced(kube.client.clone(), &kube.namespace);
    api.patch(
        &args.name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}})),
    )
    .await
    .with_context(|| format!("annotating ServiceDatabase {}", args.name))?;
    println!(
        "servicedatabase.servicedb.dev/{} annotated {ROTATE_ANNOTATION}={value}",
        args.name
    );
    if !args.wait.wait {
        return Ok(0);
    }
    let timeout = args.wait.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let secrets: Api<Secret> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let done = poll(timeout, || async {
        let sdb = api
            .get(&args.name)
            .await
            .with_context(|| format!("reading ServiceDatabase {}", args.name))?;
        let status = sdb.status.unwrap_or_default();
        // The Secret's metadata records when its login was issued, to the
        // nanosecond; the status keeps whole seconds, so a rotation in the
        // second of the previous issue shows only on the Secret. Without
        // access to the Secret's metadata, the status decides.
        let issued = match &status.credentials_secret {
            Some(name) => secrets
                .get_metadata_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|m| {
                    m.metadata
                        .annotations?
                        .get(ISSUED_AT)?
                        .parse::<Timestamp>()
                        .ok()
                }),
            None => None,
        };
        let rotated = match issued {
            Some(at) => (at >= requested)
                .then(|| Timestamp::from_second(at.as_second()).ok().map(Time))
                .flatten(),
            // The request's second counts.
            None => status
                .credentials_rotated_at
                .clone()
                .filter(|t| Some(t) != before.as_ref() && t.0.as_second() >= requested.as_second()),
        };
        Ok(rotated.map(|t| (t, status.credentials_secret)))
    })
    .await?;
    let grace = sdb
        .spec
        .credentials
        .as_ref()
        .and_then(|c| c.grace_period.clone())
        .unwrap_or_else(|| "1h".into());
    match done {
        Some((at, secret)) => {
            println!(
                "Credentials rotated at {}: Secret {} holds the new login; the replaced login keeps working for {grace}.",
                at.0,
                or_none(secret)
            );
            Ok(0)
        }
        None => {
            let why = api
                .get(&args.name)
                .await
                .ok()
                .and_then(|s| s.status)
                .and_then(|s| {
                    s.conditions
                        .into_iter()
                        .find(|c| c.type_ == types::CREDENTIALS_READY && c.status != "True")
                })
                .map(|c| format!(" ({}: {})", c.reason, c.message))
                .unwrap_or_default();
            eprintln!(
                "error: timed out after {}s: the operator has not rotated the credentials of {} yet{why}; see `kubectl servicedb status {}`",
                timeout.as_secs(),
                args.name,
                args.name
            );
            Ok(1)
        }
    }
}
