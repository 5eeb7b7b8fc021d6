//! The command documents (`createUser`, `updateUser`, `dropUser`,
//! `usersInfo`, `replSetInitiate`) as plain functions, so that their exact
//! shape is unit-tested.

use super::*;

/// The only authentication mechanism servicedb gives its users.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Where the administrator is defined.
pub const ADMIN_DATABASE: &str = "admin";
/// MongoDB refuses database names of 64 bytes or more.
pub const MAX_DATABASE_NAME_BYTES: usize = 63;
/// Not a MongoDB limit: a bound that keeps names sane in logs and URIs.
pub const MAX_USERNAME_BYTES: usize = 128;
/// Databases that belong to the server: `readWrite` on them would let a
/// service change users, the replica set or sharding metadata.
pub const RESERVED_DATABASES: [&str; 4] = ["admin", "local", "config", "$external"];
/// Characters MongoDB forbids in database names on some platform; refused
/// everywhere so that a dump restores anywhere.
pub(super) const FORBIDDEN_DATABASE_CHARS: &[char] =
    &['/', '\\', '.', ' ', '"', '$', '*', '<', '>', ':', '|', '?'];

// Server error codes (src/mongo/base/error_codes.yml).
pub(super) const USER_NOT_FOUND: i32 = 11;
pub(super) const UNAUTHORIZED: i32 = 13;
pub(super) const AUTHENTICATION_FAILED: i32 = 18;
pub(super) const ALREADY_INITIALIZED: i32 = 23;
pub(super) const COMMAND_NOT_FOUND: i32 = 59;
pub(super) const NOT_WRITABLE_PRIMARY: i32 = 10107;
pub(super) const NOT_PRIMARY_NO_SECONDARY_OK: i32 = 13435;
pub(super) const NOT_PRIMARY_OR_SECONDARY: i32 = 13436;
pub(super) const PRIMARY_STEPPED_DOWN: i32 = 189;
pub(super) const NOT_IMPLEMENTED: i32 = 238;
pub(super) const USER_ALREADY_EXISTS: i32 = 51003;

/// A built-in role on a database, as `createUser` and `usersInfo` spell it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Role {
    pub role: String,
    pub db: String,
}

impl Role {
    /// Read and write every collection of `db`, create and drop its
    /// collections and indexes; nothing on any other database.
    pub fn read_write(db: &str) -> Role {
        Role {
            role: "readWrite".to_owned(),
            db: db.to_owned(),
        }
    }

    /// The superuser role, for the instance's administrator.
    pub fn root() -> Role {
        Role {
            role: "root".to_owned(),
            db: ADMIN_DATABASE.to_owned(),
        }
    }

    fn to_bson(&self) -> Bson {
        Bson::Document(doc! { "role": &self.role, "db": &self.db })
    }
}

/// A user as it should be on the server.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// The database the user is defined on: its `authSource`.
    pub db: String,
    pub name: String,
    pub password: String,
    pub roles: Vec<Role>,
}

impl std::fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSpec")
            .field("db", &self.db)
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("roles", &self.roles)
            .finish()
    }
}

impl UserSpec {
    /// A service's user: defined on its own database, `readWrite` there only.
    pub fn service(db: &str, name: &str, password: &str) -> UserSpec {
        UserSpec {
            db: db.to_owned(),
            name: name.to_owned(),
            password: password.to_owned(),
            roles: vec![Role::read_write(db)],
        }
    }

    /// The instance's administrator: `root` on `admin`.
    pub fn root(name: &str, password: &str) -> UserSpec {
        UserSpec {
            db: ADMIN_DATABASE.to_owned(),
            name: name.to_owned(),
            password: password.to_owned(),
            roles: vec![Role::root()],
        }
    }

    /// Checks the names and the password before anything is sent.
    pub fn validate(&self) -> Result<(), UserError> {
        validate_database_name(&self.db)?;
        validate_username(&self.name)?;
        validate_password(&self.password)
    }

    /// `createUser`, to be run on [`UserSpec::db`].
    pub fn create_command(&self) -> Document {
        doc! {
            "createUser": &self.name,
            "pwd": &self.password,
            "roles": roles_bson(&self.roles),
            "mechanisms": [SCRAM_SHA_256],
        }
    }

    /// `updateUser` setting what `change` names, to be run on
    /// [`UserSpec::db`]. A new password always comes with the mechanisms,
    /// so that a user made with SCRAM-SHA-1 loses it.
    pub fn update_command(&self, change: Change) -> Document {
        let mut command = doc! { "updateUser": &self.name };
        if change.password {
            command.insert("pwd", &self.password);
            command.insert("mechanisms", vec![SCRAM_SHA_256]);
        }
        if change.roles {
            command.insert("roles", roles_bson(&self.roles));
        }
        command
    }
}

pub(super) fn roles_bson(roles: &[Role]) -> Vec<Bson> {
    roles.iter().map(Role::to_bson).collect()
}

/// `createUser` for a service user on `db` (run it on `db`):
/// `{createUser, pwd, roles: [{role: "readWrite", db}], mechanisms: ["SCRAM-SHA-256"]}`.
pub fn create_user_command(user: &str, password: &str, db: &str) -> Document {
    UserSpec::service(db, user, password).create_command()
}

/// `updateUser` bringing a service user on `db` wholly to its desired
/// state: password, mechanisms and roles (run it on `db`).
pub fn update_user_command(user: &str, password: &str, db: &str) -> Document {
    UserSpec::service(db, user, password).update_command(Change {
        password: true,
        roles: true,
    })
}

/// `dropUser` (run it on the user's database).
pub fn drop_user_command(user: &str) -> Document {
    doc! { "dropUser": user }
}

/// `usersInfo` for one user of the database it is run on, with the stored
/// SCRAM keys (needs `viewUser` on that database; `root` has it).
pub fn users_info_command(user: &str) -> Document {
    doc! { "usersInfo": user, "showCredentials": true }
}

/// `replSetInitiate` for a one-member replica set named
/// [`REPLICA_SET`] whose member is `host` (`host:port`, as the member reaches
/// itself). Run on `admin`.
pub fn repl_set_initiate_command(host: &str) -> Document {
    doc! {
        "replSetInitiate": {
            "_id": REPLICA_SET,
            "version": 1,
            "members": [ { "_id": 0, "host": host } ],
        }
    }
}
