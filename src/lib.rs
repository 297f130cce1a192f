//! Gatehouse: a validating admission webhook for Kubernetes.
//!
//! The kube-apiserver POSTs an AdmissionReview to `/validate`; [`policy::PolicySet`] evaluates
//! the built-in policies in process and [`admission::respond`] answers with the request's uid.
//! `main.rs` only parses the command line; everything else lives here so tests can use it.

pub mod admission;
pub mod api;
pub mod certs;
pub mod commands;
pub mod config;
pub mod conn;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod reload;
pub mod rlimit;
pub mod secret;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token_admin;

pub use config::Config;
pub use policy::PolicySet;
pub use server::Server;
