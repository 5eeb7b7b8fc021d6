//! One stalled server stalls nothing else; one leader at a time; the admin
//! password never reaches a server that cannot prove who it is.
