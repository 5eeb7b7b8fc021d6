//! `kubectl servicedb connect NAME`: the engine's shell (psql, redis-cli,
//! mongosh) as the service's own login, in a short-lived pod that carries
//! the owner's labels (so the NetworkPolicy admits it, as it admits the
//! service) and reads the login from the credentials Secret through
//! `secretKeyRef` (the plugin never reads it). The terminal is attached with
//! `kubectl attach -it`, as `kubectl cnpg psql` uses `kubectl exec`; the pod
//! is deleted afterwards, whatever happened.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Kube, KubeArgs, get_database, parse_duration};
use crate::api::database_server::{TlsMode, TlsSpec};
use crate::api::{DatabaseServer, Engine, Isolation, ServiceDatabase};

/// The label that marks the plugin's pods, with the database's name.
pub const LABEL_CONNECT: &str = "servicedb.dev/connect";
/// Where the server's CA (`ca.crt` of the credentials Secret) is mounted.
const CA_DIR: &str = "/etc/servicedb-tls";
/// The longest a session pod lives, even if the plugin is killed.
const MAX_SESSION_SECONDS: i64 = 4 * 3600;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The pod runs the engine's official image at the database's version \
(postgres, redis, mongo), as a non-root user under the restricted Pod Security profile, with the owner's \
pod labels, and takes host, port, database, username and password from the credentials Secret by \
secretKeyRef. Needs kubectl on PATH, or $KUBECTL (the terminal is attached with `kubectl attach -it`). mongosh takes \
its login as a URI argument, so on MongoDB the password is in that pod's process list (never in the pod \
spec or in any output). The pod is deleted when the session ends, when it does not start within \
--pod-timeout, and on Ctrl-C; it is stopped after 4 hours in any case."
)]
pub struct Args {
    /// The ServiceDatabase to connect to.
    pub name: String,
    /// Image of the client (default: the engine's official image at the database's version).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// How long to wait for the pod to start, such as 60s or 5m.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub pod_timeout: Duration,
    /// Print the pod as YAML instead of creating it.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(kube: &Kube, kube_args: &KubeArgs, args: Args) -> anyhow::Result<i32> {
    let sdb = get_database(kube, &args.name).await?;
    let tls = server_tls(kube, &sdb).await;
    let pod = session_pod(&sdb, &kube.namespace, args.image.as_deref(), tls.as_ref())?;
    if args.dry_run {
        print!("{}", serde_yaml::to_string(&pod)?);
        return Ok(0);
    }
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .context("creating the session pod")?;
    let name = created.name_any();
    eprintln!("pod/{name} created; waiting for it to start (Ctrl-C to give up)");
    let started = tokio::select! {
        started = wait_running(&pods, &name, args.pod_timeout) => started,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let code = match started {
        Ok(()) => attach(kube, kube_args, &name).await,
        Err(e) => Err(e),
    };
    let deleted = pods
        .delete(&name, &DeleteParams::default().grace_period(0))
        .await;
    match &deleted {
        Ok(_) => eprintln!("pod/{name} deleted"),
        Err(e) => eprintln!(
            "error: deleting pod/{name}: {e}; delete it with `kubectl delete pod {name} -n {}`",
            kube.namespace
        ),
    }
    let code = code?;
    Ok(if deleted.is_err() { code.max(1) } else { code })
}

/// The TLS settings of the shared server the database lives on; none for a
/// dedicated instance (plain TCP inside the cluster).
async fn server_tls(kube: &Kube, sdb: &ServiceDatabase) -> Option<TlsSpec> {
    let server = sdb.spec.server_ref.as_ref()?;
    if sdb.spec.isolation == Isolation::Dedicated {
        return None;
    }
    let ns = server
        .namespace
        .clone()
        .unwrap_or_else(|| kube.namespace.clone());
    match Api::<DatabaseServer>::namespaced(kube.client.clone(), &ns)
        .get(&server.name)
        .await
    {
        Ok(found) => found.spec.external.and_then(|e| e.tls),
        Err(e) => {
            eprintln!(
                "warning: reading DatabaseServer {ns}/{}: {e}; connecting without TLS options",
                server.name
            );
            None
        }
    }
}

/// The effective TLS mode and whether the Secret carries the CA.
fn tls_mode(tls: Option<&TlsSpec>) -> (TlsMode, bool) {
    let Some(tls) = tls else {
        return (TlsMode::Disable, false);
    };
    let ca = tls.ca_secret_ref.is_some();
    let mode = tls.mode.unwrap_or(if ca {
        TlsMode::VerifyFull
    } else {
        TlsMode::Disable
    });
    (mode, ca && mode != TlsMode::Disable)
}

/// Waits until the client container runs; says why not on a timeout.
async fn wait_running(pods: &Api<Pod>, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pod = pods
            .get(name)
            .await
            .with_context(|| format!("reading pod {name}"))?;
        let status = pod.status.clone().unwrap_or_default();
        match status.phase.as_deref() {
            Some("Running") => return Ok(()),
            Some(phase @ ("Succeeded" | "Failed")) => {
                anyhow::bail!(
                    "pod {name} ended ({phase}) before the session started: {}",
                    why(&pod)
                )
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "pod {name} did not start within {}s: {}",
                timeout.as_secs(),
                why(&pod)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the pod's status says about why it does not run.
fn why(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref())
        .map(|w| {
            format!(
                "{}{}",
                w.reason.clone().unwrap_or_default(),
                w.message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )
        });
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status != "True")
        .map(|c| {
            format!(
                "not scheduled: {}",
                c.message.clone().or(c.reason.clone()).unwrap_or_default()
            )
        });
    waiting.or(unscheduled).unwrap_or_else(|| {
        format!(
            "{} (no node has started it)",
            status.phase.unwrap_or_else(|| "Pending".into())
        )
    })
}

/// `kubectl attach -it` to the session, with the same cluster flags.
async fn attach(kube: &Kube, kube_args: &KubeArgs, pod: &str) -> anyhow::Result<i32> {
    let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    let mut cmd = tokio::process::Command::new(&kubectl);
    cmd.args(["attach", "-it", pod, "-c", "client", "-n", &kube.namespace]);
    if let Some(path) = &kube_args.kubeconfig {
        cmd.arg("--kubeconfig").arg(path);
    }
    if let Some(context) = &kube_args.context {
        cmd.args(["--context", context]);
    }
    let status = cmd
        .status()
        .await
        .with_context(|| format!("running {} attach", kubectl.to_string_lossy()))?;
    Ok(status.code().unwrap_or(1))
}

/// The labels that make the pod one of the owner's: the selector's
/// `matchLabels`, and for `In`/`Exists` expressions a value they accept.
pub fn owner_labels(sdb: &ServiceDatabase) -> BTreeMap<String, String> {
    let selector = &sdb.spec.owner.pod_selector;
    let mut labels = selector.match_labels.clone().unwrap_or_default();
    for e in selector.match_expressions.iter().flatten() {
        match e.operator.as_str() {
            "In" => {
                if let Some(v) = e.values.iter().flatten().next() {
                    labels.insert(e.key.clone(), v.clone());
                }
            }
            "Exists" => {
                labels.entry(e.key.clone()).or_insert_with(|| "true".into());
            }
            _ => {}
        }
    }
    labels
}

/// The session pod: restricted, the owner's labels, the login by
/// secretKeyRef, TLS as the shared server asks (its CA from the Secret).
pub fn session_pod(
    sdb: &ServiceDatabase,
    namespace: &str,
    image: Option<&str>,
    tls: Option<&TlsSpec>,
) -> anyhow::Result<Pod> {
    let name = sdb.name_any();
    let status = sdb.status.clone().unwrap_or_default();
    let secret = status.credentials_secret.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "ServiceDatabase {name} has no credentials Secret yet (phase {}); see `kubectl servicedb status {name}`",
            status.phase
        )
    })?;
    let engine = crate::engine::for_engine(sdb.spec.engine);
    let image = match image {
        Some(image) => image.to_string(),
        None => {
            let version = status
                .version
                .clone()
                .or(sdb.spec.version.clone())
                .ok_or_else(|| {
                    anyhow::anyhow!("ServiceDatabase {name} reports no version yet; pass --image")
                })?;
            format!("{}:{version}", engine.default_image())
        }
    };
    let from_secret = |var: &str, key: &str| json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
    let (mode, ca) = tls_mode(tls);
    let ca_file = format!("{CA_DIR}/ca.crt");
    let (mut command, mut env): (Vec<&str>, Vec<serde_json::Value>) = match sdb.spec.engine {
        Engine::Postgres => (
            vec!["psql"],
            vec![
                from_secret("PGHOST", "host"),
                from_secret("PGPORT", "port"),
                from_secret("PGDATABASE", "database"),
                from_secret("PGUSER", "username"),
                from_secret("PGPASSWORD", "password"),
            ],
        ),
        Engine::Redis => (
            vec![
                "redis-cli",
                "-h",
                "$(REDIS_HOST)",
                "-p",
                "$(REDIS_PORT)",
                "-n",
                "$(REDIS_DB)",
                "--user",
                "$(REDIS_USER)",
            ],
            vec![
                from_secret("REDIS_HOST", "host"),
                from_secret("REDIS_PORT", "port"),
                from_secret("REDIS_DB", "database"),
                from_secret("REDIS_USER", "username"),
                // redis-cli reads the password from here, not from its arguments.
                from_secret("REDISCLI_AUTH", "password"),
            ],
        ),
        Engine::MongoDB => (
            vec!["mongosh", "$(MONGODB_URI)"],
            vec![from_secret("MONGODB_URI", "uri")],
        ),
    };
    match (sdb.spec.engine, mode) {
        (_, TlsMode::Disable) => {}
        (Engine::Postgres, _) => {
            let sslmode = if mode == TlsMode::Require {
                "require"
            } else {
                "verify-full"
            };
            env.push(json!({"name": "PGSSLMODE", "value": sslmode}));
            if ca {
                env.push(json!({"name": "PGSSLROOTCERT", "value": ca_file}));
            }
        }
        (Engine::Redis, _) => {
            command.push("--tls");
            if mode == TlsMode::Require {
                command.push("--insecure");
            } else if ca {
                command.extend(["--cacert", ca_file.as_str()]);
            }
        }
        // The URI carries tls=true (and, for Require, no verification).
        (Engine::MongoDB, _) => {
            if ca && mode == TlsMode::VerifyFull {
                command.extend(["--tlsCAFile", ca_file.as_str()]);
            }
        }
    }
    let mut mounts = vec![json!({"name": "tmp", "mountPath": "/tmp"})];
    let mut volumes = vec![json!({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}})];
    if ca {
        mounts.push(json!({"name": "ca", "mountPath": CA_DIR, "readOnly": true}));
        volumes.push(json!({"name": "ca", "secret": {"secretName": secret,
            "items": [{"key": crate::build::secret::CA_KEY, "path": "ca.crt"}]}}));
    }
    let mut labels = owner_labels(sdb);
    labels.insert(LABEL_CONNECT.into(), name.clone());
    let uid = engine.run_as_user();
    env.push(json!({"name": "HOME", "value": "/tmp"}));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": format!("{name}-connect-"), "namespace": namespace, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": MAX_SESSION_SECONDS,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": uid, "runAsGroup": uid,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "containers": [{
                "name": "client", "image": image, "command": command, "env": env,
                "stdin": true, "stdinOnce": true, "tty": true,
                "securityContext": {
                    "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]}
                },
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                "volumeMounts": mounts
            }],
            "volumes": volumes
        }
    });
    serde_json::from_value(pod).context("building the session pod")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdb(engine: &str, selector: serde_json::Value) -> ServiceDatabase {
        serde_json::from_value(json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"engine": engine, "owner": {"podSelector": selector}},
            "status": {"phase": "Ready", "version": "17", "credentialsSecret": "orders-db"}
        }))
        .unwrap()
    }

    #[test]
    fn the_session_pod_takes_every_login_value_from_the_secret() {
        for engine in ["Postgres", "Redis", "MongoDB"] {
            let pod = session_pod(
                &sdb(engine, json!({"matchLabels": {"app": "orders"}})),
                "shop",
                None,
                None,
            )
            .unwrap();
            let c = &pod.spec.as_ref().unwrap().containers[0];
            for e in c.env.iter().flatten().filter(|e| e.name != "HOME") {
                assert!(
                    e.value.is_none(),
                    "{engine}: {} has a literal value",
                    e.name
                );
                let r = e
                    .value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap();
                assert_eq!(r.name, "orders-db");
            }
            let text = serde_json::to_string(&pod).unwrap();
            assert!(!text.contains("password\":\""), "{text}");
        }
    }

    #[test]
    fn owner_labels_satisfy_the_owner_selector() {
        let s = sdb(
            "Postgres",
            json!({"matchLabels": {"app": "orders"},
                   "matchExpressions": [{"key": "tier", "operator": "In", "values": ["api", "web"]},
                                        {"key": "team", "operator": "Exists"},
                                        {"key": "canary", "operator": "DoesNotExist"}]}),
        );
        let labels = owner_labels(&s);
        assert_eq!(labels.get("app").map(String::as_str), Some("orders"));
        assert_eq!(labels.get("tier").map(String::as_str), Some("api"));
        assert!(labels.contains_key("team"));
        assert!(!labels.contains_key("canary"));
    }

    #[test]
    fn a_tls_server_is_reached_over_tls_with_the_ca_from_the_secret() {
        let verify: TlsSpec =
            serde_json::from_value(json!({"caSecretRef": {"name": "pg-ca"}})).unwrap();
        let require: TlsSpec = serde_json::from_value(json!({"mode": "Require"})).unwrap();
        let s = sdb("Postgres", json!({"matchLabels": {"app": "orders"}}));
        let pod =
            serde_json::to_value(session_pod(&s, "shop", None, Some(&verify)).unwrap()).unwrap();
        let env = &pod["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .contains(&json!({"name": "PGSSLMODE", "value": "verify-full"}))
        );
        assert!(
            env.as_array()
                .unwrap()
                .contains(&json!({"name": "PGSSLROOTCERT", "value": "/etc/servicedb-tls/ca.crt"}))
        );
        assert_eq!(
            pod["spec"]["volumes"][1]["secret"]["secretName"],
            "orders-db"
        );
        assert_eq!(
            pod["spec"]["volumes"][1]["secret"]["items"][0]["key"],
            "ca.crt"
        );

        let r = sdb("Redis", json!({"matchLabels": {"app": "orders"}}));
        let pod =
            serde_json::to_value(session_pod(&r, "shop", None, Some(&verify)).unwrap()).unwrap();
        let cmd: Vec<&str> = pod["spec"]["containers"][0]["command"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            cmd.ends_with(&["--tls", "--cacert", "/etc/servicedb-tls/ca.crt"]),
            "{cmd:?}"
        );
        let pod =
            serde_json::to_value(session_pod(&r, "shop", None, Some(&require)).unwrap()).unwrap();
        let cmd: Vec<&str> = pod["spec"]["containers"][0]["command"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(cmd.ends_with(&["--tls", "--insecure"]), "{cmd:?}");
        assert_eq!(
            pod["spec"]["volumes"].as_array().unwrap().len(),
            1,
            "no CA to mount"
        );

        let plain = serde_json::to_value(session_pod(&r, "shop", None, None).unwrap()).unwrap();
        assert!(!plain.to_string().contains("--tls"));
    }

    #[test]
    fn no_secret_yet_is_a_clear_error() {
        let mut s = sdb("Redis", json!({"matchLabels": {"app": "orders"}}));
        s.status = None;
        let e = session_pod(&s, "shop", None, None).unwrap_err().to_string();
        assert!(e.contains("no credentials Secret yet"), "{e}");
    }
}
