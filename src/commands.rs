//! Subcommands: one file each under `commands/`.

pub mod certs;
pub mod check;
pub mod review;
pub mod serve;
