//! Subcommands: one file each under `commands/`.

pub mod review;
pub mod serve;
