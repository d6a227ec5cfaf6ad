//! dnsbridge: a DNS proxy and toolkit that lets executor microVMs reach private
//! registries under their private names.
//!
//! The crate is split by job: `wire` reads and writes DNS messages over byte
//! buffers, `config` turns a YAML file into validated settings and routes,
//! `route` matches names against routes, `core` decides what to do with one
//! query (no sockets, no clock of its own), `upstream` and `server` are the
//! thin async shell around it.

pub mod batch;
pub mod cache;
pub mod check;
pub mod config;
pub mod core;
pub mod egress;
pub mod firewall;
pub mod name;
pub mod net;
pub mod privdrop;
pub mod ratelimit;
pub mod route;
pub mod serve;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod validate;
pub mod wire;
