//! Credential rotation, decided purely from the credentials Secret, the spec
//! and the clock (the steps are described in [`crate::engine::logins`]).
//!
//! The Secret is the only record: its keys hold the logins and its
//! annotations when the current password was issued, until when the previous
//! one stays valid, and which on-demand request was last carried out. So an
//! operator that dies half-way picks up exactly where it stopped, and nothing
//! secret is ever written to the status.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::engine::logins::{Login, Logins, other_identity};

/// Set on a ServiceDatabase (any new value) to rotate its credentials now.
pub const ROTATE_ANNOTATION: &str = "servicedb.dev/rotate-credentials";
/// On the Secret: when the current password was issued (RFC 3339).
pub const ISSUED_AT: &str = "servicedb.dev/password-issued-at";
/// On the Secret: until when the previous login is accepted (RFC 3339).
pub const PREVIOUS_VALID_UNTIL: &str = "servicedb.dev/previous-valid-until";
/// On the Secret: the value of [`ROTATE_ANNOTATION`] last carried out.
pub const HANDLED_REQUEST: &str = "servicedb.dev/rotation-request";

/// How long the replaced login keeps working when the spec does not say.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What the existing Secret says (absent on a new database).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    pub current: Option<Login>,
    pub next: Option<Login>,
    pub previous: Option<Login>,
    pub issued_at: Option<Timestamp>,
    pub previous_valid_until: Option<Timestamp>,
    pub handled_request: Option<String>,
}

impl Recorded {
    /// Reads the keys and annotations of a credentials Secret.
    pub fn from_secret(
        data: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Recorded {
        let login = |user: &str, password: &str| match (data.get(user), data.get(password)) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => Some(Login::new(u, p)),
            _ => None,
        };
        let time = |key: &str| annotations.get(key).and_then(|t| t.parse().ok());
        Recorded {
            current: login("username", "password"),
            next: login("next-username", "next-password"),
            previous: login("previous-username", "previous-password"),
            issued_at: time(ISSUED_AT),
            previous_valid_until: time(PREVIOUS_VALID_UNTIL),
            handled_request: annotations.get(HANDLED_REQUEST).cloned(),
        }
    }
}

/// What the spec asks for.
#[derive(Clone, Debug)]
pub struct Policy<'a> {
    /// The service's owner identity (its role/user name).
    pub owner: &'a str,
    /// The engine keeps one user with several passwords (Redis).
    pub same_user: bool,
    pub rotate_every: Option<Duration>,
    pub grace: Duration,
    /// The current value of [`ROTATE_ANNOTATION`].
    pub request: Option<&'a str>,
}

/// The credentials to publish, and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub logins: Logins,
    pub issued_at: Timestamp,
    pub previous_valid_until: Option<Timestamp>,
    pub handled_request: Option<String>,
    /// A rotation is waiting for the previous grace period to end.
    pub deferred: bool,
}

impl Plan {
    /// The annotations that record this plan on the Secret.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::from([(ISSUED_AT.to_string(), self.issued_at.to_string())]);
        if let Some(until) = self.previous_valid_until {
            out.insert(PREVIOUS_VALID_UNTIL.to_string(), until.to_string());
        }
        if let Some(request) = &self.handled_request {
            out.insert(HANDLED_REQUEST.to_string(), request.clone());
        }
        out
    }

    /// When something will be due without any change: the end of the grace
    /// period or the next scheduled rotation.
    pub fn next_event(&self, policy: &Policy<'_>, now: Timestamp) -> Option<Duration> {
        let until = |t: Timestamp| {
            Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
                + Duration::from_secs(1)
        };
        let mut due: Vec<Duration> = Vec::new();
        if self.logins.next.is_some() {
            due.push(Duration::from_secs(10));
        }
        if let Some(t) = self.previous_valid_until {
            due.push(until(t));
        }
        if let Some(every) = policy.rotate_every
            && let Ok(every) = SignedDuration::try_from(every)
            && let Ok(at) = self.issued_at.checked_add(every)
        {
            due.push(until(at));
        }
        due.into_iter().min()
    }
}

/// Step one of three, from the recorded state: start a rotation, finish the
/// grace period, or keep things as they are. `generate` makes passwords.
/// Switching to a prepared next login happens in [`promote`], once it works.
pub fn plan(
    recorded: &Recorded,
    policy: &Policy<'_>,
    now: Timestamp,
    generate: &mut dyn FnMut() -> String,
) -> Plan {
    let current = recorded
        .current
        .clone()
        .unwrap_or_else(|| Login::new(policy.owner, generate()));
    let issued_at = match (&recorded.current, recorded.issued_at) {
        (Some(_), Some(at)) => at,
        _ => now,
    };
    // The grace period is over: the previous login goes.
    let (previous, previous_valid_until) = match (&recorded.previous, recorded.previous_valid_until)
    {
        (Some(previous), Some(until)) if until > now => (Some(previous.clone()), Some(until)),
        _ => (None, None),
    };
    let mut plan = Plan {
        logins: Logins {
            current,
            next: recorded.next.clone(),
            previous,
        },
        issued_at,
        previous_valid_until,
        handled_request: recorded.handled_request.clone(),
        deferred: false,
    };
    if plan.logins.next.is_some() {
        return plan;
    }
    let requested = policy
        .request
        .is_some_and(|r| Some(r) != recorded.handled_request.as_deref());
    let scheduled = recorded.current.is_some()
        && policy.rotate_every.is_some_and(|every| {
            SignedDuration::try_from(every)
                .ok()
                .and_then(|every| issued_at.checked_add(every).ok())
                .is_some_and(|at| at <= now)
        });
    if !(requested || scheduled) {
        return plan;
    }
    if plan.logins.previous.is_some() {
        // Two identities only: the one still in its grace period cannot be
        // reused yet. The rotation waits for it to end.
        plan.deferred = true;
        return plan;
    }
    let username = other_identity(
        policy.owner,
        &plan.logins.current.username,
        policy.same_user,
    );
    plan.logins.next = Some(Login::new(username, generate()));
    if requested {
        plan.handled_request = policy.request.map(str::to_string);
    }
    plan
}

/// Step two: the next login works, so it becomes the current one and the
/// current one is kept for the grace period.
pub fn promote(mut plan: Plan, policy: &Policy<'_>, now: Timestamp) -> Plan {
    let Some(next) = plan.logins.next.take() else {
        return plan;
    };
    let previous = std::mem::replace(&mut plan.logins.current, next);
    plan.logins.previous = Some(previous);
    plan.issued_at = now;
    plan.previous_valid_until = SignedDuration::try_from(policy.grace)
        .ok()
        .and_then(|grace| now.checked_add(grace).ok())
        .or(Some(now));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("pw{n}")
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn policy<'a>(request: Option<&'a str>, every: Option<Duration>) -> Policy<'a> {
        Policy {
            owner: "shop_orders",
            same_user: false,
            rotate_every: every,
            grace: Duration::from_secs(600),
            request,
        }
    }

    fn recorded(plan: &Plan) -> Recorded {
        Recorded {
            current: Some(plan.logins.current.clone()),
            next: plan.logins.next.clone(),
            previous: plan.logins.previous.clone(),
            issued_at: Some(plan.issued_at),
            previous_valid_until: plan.previous_valid_until,
            handled_request: plan.handled_request.clone(),
        }
    }

    #[test]
    fn a_new_database_gets_the_owner_login_and_no_rotation() {
        let mut gen_ = counter();
        let now = t("2026-01-01T00:00:00Z");
        let plan = plan(&Recorded::default(), &policy(None, None), now, &mut gen_);
        assert_eq!(
            plan.logins,
            Logins::single(Login::new("shop_orders", "pw1"))
        );
        assert_eq!(plan.issued_at, now);
        assert!(plan.next_event(&policy(None, None), now).is_none());
    }

    #[test]
    fn a_requested_rotation_walks_through_the_three_steps() {
        let mut gen_ = counter();
        let p = policy(Some("1"), None);
        let t0 = t("2026-01-01T00:00:00Z");
        let start = plan(&Recorded::default(), &policy(None, None), t0, &mut gen_);
        // Step 1: the twin is prepared, the application still uses the owner.
        let t1 = t("2026-01-02T00:00:00Z");
        let step1 = plan(&recorded(&start), &p, t1, &mut gen_);
        assert_eq!(step1.logins.current, Login::new("shop_orders", "pw1"));
        assert_eq!(step1.logins.next, Some(Login::new("shop_orders-b", "pw2")));
        assert_eq!(step1.handled_request.as_deref(), Some("1"));
        // Planning again before the switch changes nothing.
        assert_eq!(plan(&recorded(&step1), &p, t1, &mut gen_), step1);
        // Step 2: both work for the grace period.
        let step2 = promote(step1, &p, t1);
        assert_eq!(step2.logins.current, Login::new("shop_orders-b", "pw2"));
        assert_eq!(
            step2.logins.previous,
            Some(Login::new("shop_orders", "pw1"))
        );
        assert_eq!(step2.issued_at, t1);
        assert_eq!(
            step2.next_event(&p, t1),
            Some(Duration::from_secs(601)),
            "looks again when the grace period ends"
        );
        // The same request is not carried out twice.
        let again = plan(&recorded(&step2), &p, t1, &mut gen_);
        assert_eq!(again, step2);
        // Step 3: after the grace period only the new login is listed.
        let t3 = t("2026-01-02T00:10:01Z");
        let step3 = plan(&recorded(&step2), &p, t3, &mut gen_);
        assert_eq!(
            step3.logins,
            Logins::single(Login::new("shop_orders-b", "pw2"))
        );
        assert_eq!(step3.previous_valid_until, None);
        // A second request goes back to the owner identity, fresh password.
        let step4 = plan(&recorded(&step3), &policy(Some("2"), None), t3, &mut gen_);
        assert_eq!(step4.logins.next, Some(Login::new("shop_orders", "pw3")));
    }

    #[test]
    fn a_secret_on_a_twin_of_the_old_name_keeps_it_until_rotated_back() {
        let mut gen_ = counter();
        let t0 = t("2026-01-01T00:00:00Z");
        let old = Recorded {
            current: Some(Login::new("shop_orders_b", "pw0")),
            issued_at: Some(t0),
            ..Recorded::default()
        };
        let kept = plan(&old, &policy(None, None), t0, &mut gen_);
        assert_eq!(
            kept.logins,
            Logins::single(Login::new("shop_orders_b", "pw0"))
        );
        let rotated = plan(&old, &policy(Some("1"), None), t0, &mut gen_);
        assert_eq!(rotated.logins.next, Some(Login::new("shop_orders", "pw1")));
    }

    #[test]
    fn a_rotation_during_a_grace_period_waits() {
        let mut gen_ = counter();
        let t0 = t("2026-01-01T00:00:00Z");
        let p = policy(Some("1"), None);
        let start = plan(&Recorded::default(), &policy(None, None), t0, &mut gen_);
        let step2 = promote(plan(&recorded(&start), &p, t0, &mut gen_), &p, t0);
        let waiting = plan(&recorded(&step2), &policy(Some("2"), None), t0, &mut gen_);
        assert!(waiting.deferred);
        assert!(waiting.logins.next.is_none());
        assert_eq!(waiting.handled_request.as_deref(), Some("1"));
    }

    #[test]
    fn scheduled_rotation_is_due_after_rotate_every() {
        let mut gen_ = counter();
        let every = Some(Duration::from_secs(3600));
        let t0 = t("2026-01-01T00:00:00Z");
        let start = plan(&Recorded::default(), &policy(None, every), t0, &mut gen_);
        assert!(start.logins.next.is_none(), "not at creation");
        assert_eq!(
            start.next_event(&policy(None, every), t0),
            Some(Duration::from_secs(3601))
        );
        let early = plan(
            &recorded(&start),
            &policy(None, every),
            t("2026-01-01T00:59:00Z"),
            &mut gen_,
        );
        assert!(early.logins.next.is_none());
        let due = plan(
            &recorded(&start),
            &policy(None, every),
            t("2026-01-01T01:00:00Z"),
            &mut gen_,
        );
        assert_eq!(due.logins.next, Some(Login::new("shop_orders-b", "pw2")));
    }

    #[test]
    fn redis_keeps_one_user_with_two_passwords() {
        let mut gen_ = counter();
        let t0 = t("2026-01-01T00:00:00Z");
        let p = Policy {
            owner: "shop_cart",
            same_user: true,
            ..policy(Some("1"), None)
        };
        let start = plan(
            &Recorded::default(),
            &Policy {
                request: None,
                ..p.clone()
            },
            t0,
            &mut gen_,
        );
        let step2 = promote(plan(&recorded(&start), &p, t0, &mut gen_), &p, t0);
        assert_eq!(step2.logins.passwords_of("shop_cart"), vec!["pw2", "pw1"]);
    }

    #[test]
    fn the_secret_round_trips() {
        let data = BTreeMap::from([
            ("username".to_string(), "u".to_string()),
            ("password".to_string(), "p".to_string()),
            ("previous-username".to_string(), "v".to_string()),
            ("previous-password".to_string(), "q".to_string()),
        ]);
        let annotations = BTreeMap::from([
            (ISSUED_AT.to_string(), "2026-01-01T00:00:00Z".to_string()),
            (
                PREVIOUS_VALID_UNTIL.to_string(),
                "2026-01-01T01:00:00Z".to_string(),
            ),
        ]);
        let r = Recorded::from_secret(&data, &annotations);
        assert_eq!(r.current, Some(Login::new("u", "p")));
        assert_eq!(r.previous, Some(Login::new("v", "q")));
        assert_eq!(r.next, None);
        assert_eq!(r.previous_valid_until, Some(t("2026-01-01T01:00:00Z")));
    }

    #[test]
    fn durations_parse_like_go() {
        use crate::model::database::parse_duration;
        assert_eq!(
            parse_duration("720h"),
            Some(Duration::from_secs(720 * 3600))
        );
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "h", "10", "10d", "-1h", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
