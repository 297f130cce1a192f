//! Subcommands: one file each under `commands/`.

pub mod certs;
pub mod check;
pub mod review;
pub mod serve;
pub mod test;
pub mod tokens;

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
