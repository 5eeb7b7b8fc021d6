//! What to do next, decided from what the server shows (a pure function, so
//! that first starts, later starts and starts after a crash half-way are all
//! unit-tested without a mongod).
//!
//! A first start goes: initiate the one-member replica set through the
//! localhost exception (there are no users yet) → wait until the member is
//! PRIMARY → create `root` (which closes the exception) → as root, create the
//! service's user. A later start finds root able to log in and goes straight
//! to the users. Every step is observable, so a start killed anywhere simply
//! resumes: nothing is ever done twice.

use mongodb::bson::Document;

/// The member's state, from an unauthenticated `hello` (which needs no user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplicaSet {
    /// No replica set config yet (`isreplicaset: true`, no `setName`).
    NotInitiated,
    /// In the set but not (yet) primary: electing, recovering, or removed.
    NotPrimary,
    Primary,
}

impl ReplicaSet {
    pub(super) fn from_hello(hello: &Document) -> ReplicaSet {
        let flag = |key| hello.get_bool(key).unwrap_or(false);
        if flag("isWritablePrimary") || flag("ismaster") {
            ReplicaSet::Primary
        } else if hello.contains_key("setName") {
            ReplicaSet::NotPrimary
        } else {
            ReplicaSet::NotInitiated
        }
    }
}

/// Whether root could log in, trying the Secret's password first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RootLogin {
    /// With the Secret's current password.
    Current,
    /// Only with an older one (the Secret was rotated): the server still
    /// has to be told the new one.
    Outdated,
    /// With none: root does not exist yet, or has a password we don't know.
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// `replSetInitiate`, as root if root can log in (data that has users
    /// but no replica set config), else through the localhost exception.
    InitiateReplicaSet { as_root: bool },
    /// Elections take a moment after the initiation or a restart.
    WaitForPrimary,
    /// `createUser root` through the localhost exception. If users exist
    /// already the server refuses: root's password is none we know.
    CreateRoot,
    /// `updateUser root` with the Secret's password, logged in with the old.
    RotateRootPassword,
    /// Root works on the primary: keep the service's user in step.
    SyncUsers,
}

pub(super) fn next_step(replica: ReplicaSet, root: RootLogin) -> Step {
    match (replica, root) {
        (ReplicaSet::NotInitiated, login) => Step::InitiateReplicaSet {
            as_root: login != RootLogin::Rejected,
        },
        // Users can only be written on the primary.
        (ReplicaSet::NotPrimary, _) => Step::WaitForPrimary,
        (ReplicaSet::Primary, RootLogin::Rejected) => Step::CreateRoot,
        (ReplicaSet::Primary, RootLogin::Outdated) => Step::RotateRootPassword,
        (ReplicaSet::Primary, RootLogin::Current) => Step::SyncUsers,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn hello_replies() {
        // mongod --replSet before replSetInitiate.
        let fresh = doc! {
            "isWritablePrimary": false, "secondary": false, "isreplicaset": true,
            "info": "Does not have a valid replica set config", "ok": 1.0,
        };
        assert_eq!(ReplicaSet::from_hello(&fresh), ReplicaSet::NotInitiated);
        let secondary = doc! {
            "isWritablePrimary": false, "secondary": true, "setName": "rs0", "ok": 1.0,
        };
        assert_eq!(ReplicaSet::from_hello(&secondary), ReplicaSet::NotPrimary);
        let primary = doc! {
            "isWritablePrimary": true, "secondary": false, "setName": "rs0",
            "primary": "127.0.0.1:27017", "ok": 1.0,
        };
        assert_eq!(ReplicaSet::from_hello(&primary), ReplicaSet::Primary);
        // Legacy isMaster spelling.
        let legacy = doc! { "ismaster": true, "setName": "rs0" };
        assert_eq!(ReplicaSet::from_hello(&legacy), ReplicaSet::Primary);
        // A wrong type is not primary.
        let odd = doc! { "isWritablePrimary": "yes", "setName": "rs0" };
        assert_eq!(ReplicaSet::from_hello(&odd), ReplicaSet::NotPrimary);
    }

    #[test]
    fn every_observation_has_one_step() {
        use ReplicaSet::*;
        use RootLogin::*;
        let table = [
            (
                NotInitiated,
                Rejected,
                Step::InitiateReplicaSet { as_root: false },
            ),
            (
                NotInitiated,
                Current,
                Step::InitiateReplicaSet { as_root: true },
            ),
            (
                NotInitiated,
                Outdated,
                Step::InitiateReplicaSet { as_root: true },
            ),
            (NotPrimary, Rejected, Step::WaitForPrimary),
            (NotPrimary, Current, Step::WaitForPrimary),
            (NotPrimary, Outdated, Step::WaitForPrimary),
            (Primary, Rejected, Step::CreateRoot),
            (Primary, Outdated, Step::RotateRootPassword),
            (Primary, Current, Step::SyncUsers),
        ];
        for (replica, root, step) in table {
            assert_eq!(next_step(replica, root), step, "{replica:?} {root:?}");
        }
    }

    /// A toy of the relevant mongod rules (a unit-test aid, not proof that
    /// mongod behaves so): the localhost exception holds while there are no
    /// users; an initiated member becomes primary one observation later.
    #[derive(Debug, Default, Clone)]
    struct Server {
        initiated: bool,
        primary: bool,
        users: BTreeMap<&'static str, String>,
        writes: Vec<&'static str>,
    }

    impl Server {
        fn observe(&mut self, secret: &str, previous: Option<&str>) -> (ReplicaSet, RootLogin) {
            let replica = match (self.initiated, self.primary) {
                (false, _) => ReplicaSet::NotInitiated,
                (true, false) => {
                    self.primary = true; // the election
                    ReplicaSet::NotPrimary
                }
                (true, true) => ReplicaSet::Primary,
            };
            let root = match self.users.get("root") {
                Some(password) if password == secret => RootLogin::Current,
                Some(password) if Some(password.as_str()) == previous => RootLogin::Outdated,
                _ => RootLogin::Rejected,
            };
            (replica, root)
        }

        /// Applies a step; `Err` where mongod would refuse it.
        fn apply(&mut self, step: Step, secret: &str) -> Result<(), &'static str> {
            let exception_open = self.users.is_empty();
            match step {
                Step::InitiateReplicaSet { as_root } => {
                    if !as_root && !exception_open {
                        return Err("Unauthorized");
                    }
                    if !self.initiated {
                        self.initiated = true;
                        self.writes.push("replSetInitiate");
                    }
                }
                Step::WaitForPrimary => {}
                Step::CreateRoot => {
                    if !exception_open {
                        return Err("Unauthorized");
                    }
                    self.users.insert("root", secret.to_owned());
                    self.writes.push("createUser root");
                }
                Step::RotateRootPassword => {
                    self.users.insert("root", secret.to_owned());
                    self.writes.push("updateUser root");
                }
                Step::SyncUsers => {
                    if !self.users.contains_key("catalog") {
                        self.users.insert("catalog", "app".to_owned());
                        self.writes.push("createUser catalog");
                    }
                }
            }
            Ok(())
        }

        /// Runs the instance manager's loop for at most `budget` steps (a
        /// kill after that many); returns the last step taken.
        fn run(&mut self, secret: &str, previous: Option<&str>, budget: usize) -> Option<Step> {
            let mut last = None;
            for _ in 0..budget {
                let (replica, root) = self.observe(secret, previous);
                let step = next_step(replica, root);
                self.apply(step, secret).ok()?;
                last = Some(step);
                if step == Step::SyncUsers {
                    break;
                }
            }
            last
        }
    }

    #[test]
    fn first_start_runs_the_whole_sequence_once() {
        let mut server = Server::default();
        assert_eq!(server.run("pw", None, 10), Some(Step::SyncUsers));
        assert_eq!(
            server.writes,
            ["replSetInitiate", "createUser root", "createUser catalog"]
        );
        // A later start: nothing to write.
        let before = server.writes.len();
        server.primary = false; // elections again after the restart
        assert_eq!(server.run("pw", None, 10), Some(Step::SyncUsers));
        assert_eq!(server.writes.len(), before);
    }

    #[test]
    fn a_start_killed_anywhere_resumes_without_repeating_anything() {
        for killed_after in 0..6 {
            let mut server = Server::default();
            server.run("pw", None, killed_after);
            assert_eq!(
                server.run("pw", None, 10),
                Some(Step::SyncUsers),
                "killed after {killed_after} steps"
            );
            assert_eq!(
                server.writes,
                ["replSetInitiate", "createUser root", "createUser catalog"],
                "killed after {killed_after} steps"
            );
        }
    }

    #[test]
    fn a_rotated_admin_password_is_applied_with_the_old_one() {
        let mut server = Server::default();
        server.run("old", None, 10);
        assert_eq!(server.run("new", Some("old"), 10), Some(Step::SyncUsers));
        assert_eq!(server.users.get("root").map(String::as_str), Some("new"));
        assert_eq!(
            server.writes,
            [
                "replSetInitiate",
                "createUser root",
                "createUser catalog",
                "updateUser root"
            ]
        );
    }

    #[test]
    fn an_unknown_admin_password_stops_at_create_root() {
        let mut server = Server::default();
        server.run("old", None, 10);
        // Rotated with no previous password to log in with: root exists, the
        // exception is closed, so creating root is refused — never forced.
        assert_eq!(server.run("new", None, 10), None);
        assert_eq!(server.users.get("root").map(String::as_str), Some("old"));
    }
}
