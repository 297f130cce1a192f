//! Subcommands: one file each under `commands/`.

pub mod certs;
pub mod check;
pub mod review;
pub mod serve;
pub mod test;
pub mod tokens;

use std::io::Write as _;

use anyhow::Context as _;

use crate::config::Config;
use crate::policy::{LoadContext, PolicySet};
use crate::store::{StoreSettings, TokenStoreSlot};

/// Loads the configured policies and, only if one of them needs it, opens the token store
/// (running its migrations). Returns the set and the store slot the policies share.
pub async fn load_policies(config: &Config) -> anyhow::Result<(PolicySet, TokenStoreSlot)> {
    let settings = StoreSettings::from_config(config);
    let described = settings.describe();
    let ctx = LoadContext {
        token_store: TokenStoreSlot::new(settings),
    };
    let policies = PolicySet::load_with(
        config.policies.as_deref(),
        config.excluded_namespaces.clone(),
        &ctx,
    )?;
    if let Some(tokens) = ctx
        .token_store
        .open_if_wanted()
        .await
        .with_context(|| format!("cannot open the token store ({described})"))?
    {
        tracing::info!(store = %described, backend = tokens.backend(), "token store open");
    }
    Ok((policies, ctx.token_store))
}

/// Writes `text` and a newline to stdout. A reader that went away (`| head`) is not an error:
/// returns `false` and the command carries on to its normal exit code.
pub fn print_line(text: impl std::fmt::Display) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
}

/// [`print_line`] without the newline.
pub fn print_text(text: impl std::fmt::Display) -> bool {
    let mut out = std::io::stdout().lock();
    write!(out, "{text}").and_then(|()| out.flush()).is_ok()
}
