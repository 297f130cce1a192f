//! Subcommands: one file each under `commands/`.

pub mod certs;
pub mod review;
pub mod serve;
