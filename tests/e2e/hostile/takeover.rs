//! Logins, twins, scratch databases and ACL users of two ServiceDatabases
//! never meet, and servicedb never adopts or drops what it did not create.
