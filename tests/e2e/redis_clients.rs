//! Stock Redis clients on servicedb's Redis users, with the operator on the
//! real API server: a dedicated instance with `spec.redis.scripting` (the
//! test plays the kubelet: it runs the StatefulSet's database container,
//! the instance manager, with the container's own arguments and the mounted
//! Secrets' keys as files) and a key space on a shared server, each used
//! with nothing but the credentials Secret's keys; and the API server's
//! refusal of scripting on a shared placement.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use kube::{Api, Client};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use serde_json::json;
use servicedb::api::{Phase, ServiceDatabase};

use crate::common::{owned_tempdir, servicedb_binary, system_user};
use crate::support::harness::{Env, free_port, http_get, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::secret_value;
use crate::support::objects::set_ready_replicas;
use crate::support::objects::wait_phase;
use crate::support::servers::Redis;
use crate::support::shared_servers::server_of;

/// Where a Redis binary lives on the test machine (the image has its own).
const REDIS_BIN_DIR: &str = "/usr/bin";

/// The `database` container of a StatefulSet, run as a kubelet would: its
/// command line as built, with each mount path replaced by a directory of
/// this machine (Secrets written there key by key), its ports by free ones,
/// listening on loopback. `port` stands in for the client Service.
struct InstancePod {
    child: Child,
    port: u16,
    log: PathBuf,
    args: Vec<String>,
}

impl InstancePod {
    async fn start(
        client: &Client,
        ns: &str,
        sts: &StatefulSet,
        volume: &Path,
        user: &User,
    ) -> InstancePod {
        let pod = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod template");
        let container = pod
            .containers
            .iter()
            .find(|c| c.name == "database")
            .expect("database container");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let local = volume.join(&mount.name);
            let source = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .and_then(|v| v.secret.as_ref())
                .and_then(|s| s.secret_name.clone());
            if let Some(name) = source {
                let secret = secrets.get(&name).await.expect("mounted Secret");
                std::fs::create_dir_all(&local).expect("secret dir");
                std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
                for (key, value) in secret.data.iter().flatten() {
                    let file = local.join(key);
                    std::fs::write(&file, &value.0).expect("secret file");
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
                        .expect("chmod");
                }
            }
            mounts.push((mount.mount_path.clone(), local));
        }
        let (port, status_port) = (free_port(), free_port());
        let mut args = Vec::new();
        let mut given = container.args.clone().unwrap_or_default().into_iter();
        while let Some(arg) = given.next() {
            let value = match arg.as_str() {
                "--port" => Some(port.to_string()),
                "--status-port" => Some(status_port.to_string()),
                _ => None,
            };
            match value {
                Some(value) => {
                    given.next();
                    args.extend([arg, value]);
                }
                None => match mounts.iter().find(|(path, _)| *path == arg) {
                    Some((_, local)) => args.push(local.display().to_string()),
                    None => args.push(arg),
                },
            }
        }
        let log = volume.join(format!("instance-{port}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let mut command = Command::new(servicedb_binary());
        command
            .args(&args)
            .args(["--listen-address", "127.0.0.1", "--bin-dir", REDIS_BIN_DIR])
            .args(["--sync-interval", "1s"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .uid(user.uid.as_raw())
            .gid(user.gid.as_raw());
        let mut child = command.spawn().expect("servicedb instance");
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(status_port, "/readyz").await.is_none() {
            let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the instance manager exited ({status}):\n{}", log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the instance is not ready within 60 s:\n{}",
                log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        InstancePod {
            child,
            port,
            log,
            args,
        }
    }

    /// SIGTERM, as the kubelet stops a pod; Redis saves and exits.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

impl Drop for InstancePod {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Secret's `REDIS_URL`, pointed at `port` on loopback when its host is
/// a cluster Service (the kube-proxy's part), optionally asking for RESP3.
fn redis_url(secret: &Secret, port: Option<u16>, resp3: bool) -> String {
    let mut url = secret_value(secret, "REDIS_URL");
    if let Some(port) = port {
        let service = format!(
            "@{}:{}",
            secret_value(secret, "host"),
            secret_value(secret, "port")
        );
        assert!(url.contains(&service), "{url} names its Service");
        url = url.replace(&service, &format!("@127.0.0.1:{port}"));
    }
    if resp3 {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("protocol=resp3");
    }
    url
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the service logs in with its Secret")
}

async fn run(conn: &mut MultiplexedConnection, words: &[&str]) -> RedisResult<Value> {
    redis::cmd(words[0])
        .arg(&words[1..])
        .query_async(conn)
        .await
}

async fn refused(conn: &mut MultiplexedConnection, words: &[&str]) {
    match run(conn, words).await {
        Err(error) => assert_eq!(error.code(), Some("NOPERM"), "{words:?}: {error}"),
        Ok(value) => panic!("{words:?} was allowed: {value:?}"),
    }
}

/// What ioredis, node-redis and redis-rs send on connect, over RESP2 and
/// RESP3; the prefix's keys work; the server's controls stay closed.
async fn a_stock_client_connects(secret: &Secret, port: Option<u16>) -> MultiplexedConnection {
    let prefix = secret_value(secret, "keyPrefix");
    let mut conn = connect(&redis_url(secret, port, false)).await;
    run(&mut conn, &["CLIENT", "SETNAME", "checkout"])
        .await
        .expect("CLIENT SETNAME");
    let info: String = redis::cmd("INFO")
        .query_async(&mut conn)
        .await
        .expect("INFO: ioredis' ready check");
    assert!(info.contains("loading:0"), "{info}");
    for words in [
        &["PING"][..],
        &["ECHO", "hi"],
        &["COMMAND", "DOCS", "GET"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "ID"],
    ] {
        run(&mut conn, words).await.expect("a connection command");
    }
    let key = format!("{prefix}greeting");
    run(&mut conn, &["SET", &key, "hello"]).await.expect("SET");
    let mut resp3 = connect(&redis_url(secret, port, true)).await;
    let hello = run(&mut resp3, &["HELLO", "3"]).await.expect("HELLO 3");
    assert!(format!("{hello:?}").contains("proto"), "{hello:?}");
    let got: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut resp3)
        .await
        .expect("GET over RESP3");
    assert_eq!(got, "hello");
    for words in [
        &["FLUSHALL"][..],
        &["CONFIG", "GET", "*"],
        &["KEYS", "*"],
        &["CLIENT", "LIST"],
        &["CLIENT", "KILL", "ID", "1"],
    ] {
        refused(&mut conn, words).await;
    }
    conn
}

/// redis-cli on the Secret's URL: its answer, or the error it printed.
fn redis_cli(url: &str, words: &[&str]) -> String {
    let out = Command::new(Path::new(REDIS_BIN_DIR).join("redis-cli"))
        .args(["--no-auth-warning", "-u", url])
        .args(words)
        .output()
        .expect("redis-cli");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const LUA_SET: &str = "return redis.call('SET', KEYS[1], ARGV[1])";

fn sdb(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": name}, "spec": spec})
}

async fn apply(api: &Api<ServiceDatabase>, name: &str, object: &serde_json::Value) {
    api.patch(
        name,
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(object),
    )
    .await
    .expect("ServiceDatabase applied");
}

async fn instance_args(api: &Api<StatefulSet>, name: &str, scripting: bool) -> StatefulSet {
    wait_for(
        &format!("StatefulSet {name} with --redis-scripting {scripting}"),
        Duration::from_secs(30),
        || async {
            let sts = api.get_opt(name).await.ok()??;
            let args = sts.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                .args
                .clone()?;
            (args.contains(&"--redis-scripting".to_owned()) == scripting).then_some(sts)
        },
    )
    .await
}

#[tokio::test]
async fn a_dedicated_redis_with_scripting_serves_stock_clients_and_lua_on_its_own_keys() {
    let env = Env::new("redis-lua").await;
    let user = system_user("redis", "redis-server");
    let volume = owned_tempdir("sdbe2e", &user);
    let sdbs: Api<ServiceDatabase> = env.api();
    let statefulsets: Api<StatefulSet> = env.api();
    let spec = |scripting: bool| {
        sdb(
            "jobs",
            json!({"engine": "Redis", "owner": {"podSelector": {"matchLabels": {"app": "jobs"}}},
                "redis": {"scripting": scripting}}),
        )
    };
    apply(&sdbs, "jobs", &spec(true)).await;
    let sts = instance_args(&statefulsets, "jobs-db", true).await;
    let secret = get_when(&env.api::<Secret>(), "jobs-db").await;
    let mut pod = InstancePod::start(&env.client, &env.ns, &sts, volume.path(), &user).await;
    assert!(pod.args.contains(&"--redis-scripting".to_owned()));
    set_ready_replicas(&statefulsets, "jobs-db", 1).await;
    wait_phase(&sdbs, "jobs", Phase::Ready).await;

    let prefix = secret_value(&secret, "keyPrefix");
    let mut conn = a_stock_client_connects(&secret, Some(pod.port)).await;
    // BullMQ and Redlock: scripts and functions on the service's keys.
    let own = format!("{prefix}lua");
    run(&mut conn, &["EVAL", LUA_SET, "1", &own, "from lua"])
        .await
        .expect("EVAL on its own key");
    let library = "#!lua name=jobs\nredis.register_function('jobs_incr', function(keys) return redis.call('INCR', keys[1]) end)";
    run(&mut conn, &["FUNCTION", "LOAD", library])
        .await
        .expect("FUNCTION LOAD");
    let n: i64 = redis::cmd("FCALL")
        .arg("jobs_incr")
        .arg(1)
        .arg(format!("{prefix}n"))
        .query_async(&mut conn)
        .await
        .expect("FCALL");
    assert_eq!(n, 1);
    let url = redis_url(&secret, Some(pod.port), false);
    let answer = redis_cli(
        &url,
        &["EVAL", "return redis.call('GET', KEYS[1])", "1", &own],
    );
    assert_eq!(answer.trim(), "from lua", "redis-cli EVAL");
    // Outside the prefix, a script is refused as the command would be.
    for words in [
        &["EVAL", LUA_SET, "1", "elsewhere:1", "x"][..],
        &["EVAL", "return redis.call('SET', 'elsewhere:2', 'x')", "0"],
        &["EVAL", "return redis.call('FLUSHALL')", "0"],
        &["FCALL", "jobs_incr", "1", "elsewhere:n"],
    ] {
        let error = run(&mut conn, words).await.expect_err("outside the prefix");
        let text = error.to_string();
        assert!(
            error.code() == Some("NOPERM") || text.contains("can't"),
            "{words:?}: {text}"
        );
    }
    refused(&mut conn, &["SCRIPT", "DEBUG", "YES"]).await;

    // Switched off, the StatefulSet loses the flag; its next pod refuses Lua.
    apply(&sdbs, "jobs", &spec(false)).await;
    let sts = instance_args(&statefulsets, "jobs-db", false).await;
    pod.stop();
    let pod = InstancePod::start(&env.client, &env.ns, &sts, volume.path(), &user).await;
    let mut conn = connect(&redis_url(&secret, Some(pod.port), false)).await;
    refused(&mut conn, &["EVAL", LUA_SET, "1", &own, "x"]).await;
    refused(
        &mut conn,
        &["FCALL", "jobs_incr", "1", &format!("{prefix}n")],
    )
    .await;
    let kept: String = redis::cmd("GET")
        .arg(&own)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(kept, "from lua");
    let log = std::fs::read_to_string(&pod.log).unwrap_or_default();
    assert!(!log.contains(&secret_value(&secret, "password")));
}

#[tokio::test]
async fn a_shared_redis_serves_stock_clients_and_refuses_scripting() {
    let env = Env::new("redis-shared-clients").await;
    let cache = Redis::start_new();
    server_of(
        &env,
        "cache",
        "Redis",
        cache.port,
        &cache.admin_user,
        &cache.admin_password,
        json!({"from": "Same"}),
    )
    .await;
    let sdbs: Api<ServiceDatabase> = env.api();
    let shared = |redis: serde_json::Value| {
        sdb(
            "sessions",
            json!({"engine": "Redis", "isolation": "Database", "serverRef": {"name": "cache"},
                "owner": {"podSelector": {"matchLabels": {"app": "sessions"}}}, "deletionPolicy": "Delete",
                "redis": redis}),
        )
    };
    apply(&sdbs, "sessions", &shared(json!({}))).await;
    let ready = wait_phase(&sdbs, "sessions", Phase::Ready).await;
    assert_eq!(
        ready.spec.redis.map(|r| r.scripting),
        Some(false),
        "scripting defaults to false"
    );
    let secret = get_when(&env.api::<Secret>(), "sessions-db").await;
    let prefix = secret_value(&secret, "keyPrefix");
    let mut conn = a_stock_client_connects(&secret, None).await;
    for words in [
        &["EVAL", LUA_SET, "1", &format!("{prefix}lua"), "x"][..],
        &["SCRIPT", "LOAD", LUA_SET],
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=x\nredis.register_function('x', function() return 1 end)",
        ],
        &["FCALL", "x", "0"],
    ] {
        refused(&mut conn, words).await;
    }
    let url = redis_url(&secret, None, false);
    assert!(redis_cli(&url, &["INFO", "server"]).contains("redis_version:"));
    assert!(redis_cli(&url, &["EVAL", "return 1", "0"]).contains("NOPERM"));

    // Scripting on a shared server: refused by the API server, naming the field.
    let error = sdbs
        .patch(
            "sessions",
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&shared(json!({"scripting": true}))),
        )
        .await
        .expect_err("scripting on a shared server");
    let message = match error {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.message
        }
        other => panic!("unexpected error: {other}"),
    };
    assert!(message.contains("spec.redis.scripting"), "{message}");
    assert!(message.contains("isolation Dedicated"), "{message}");
    let ar = ApiResource::erase::<ServiceDatabase>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    for (name, spec, field) in [
        (
            "new-shared",
            json!({"engine": "Redis", "isolation": "Database", "serverRef": {"name": "cache"},
                "owner": {"podSelector": {}}, "redis": {"scripting": true}}),
            "spec.redis.scripting",
        ),
        (
            "postgres",
            json!({"engine": "Postgres", "owner": {"podSelector": {}}, "redis": {"scripting": false}}),
            "spec.redis",
        ),
    ] {
        let object: DynamicObject = serde_json::from_value(sdb(name, spec)).expect("object");
        match raw.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{e:?}");
                assert!(e.message.contains(field), "{name}: {}", e.message);
            }
            other => panic!("{name} was not refused: {other:?}"),
        }
    }
    let kept = sdbs.get("sessions").await.expect("sessions");
    assert_eq!(kept.spec.redis.map(|r| r.scripting), Some(false));
}
