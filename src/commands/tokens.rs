//! `gatehouse tokens issue|list|revoke|prune`: manage one-time deployment tokens in the
//! configured store (`database_url`, by default SQLite in the data directory).

use std::time::Duration;

use clap::Subcommand;

use super::{print_line, print_text};
use crate::config::{Config, parse_duration};
use crate::store::{self, IssueSpec, StoreSettings, TokenRecord, Tokens};

/// Exit code on success.
pub const EXIT_OK: u8 = 0;
/// Exit code when the token named does not exist.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code when the arguments, the configuration or the store cannot be used.
pub const EXIT_UNUSABLE: u8 = 2;

/// The `tokens` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue new tokens. Each value is printed once, one per line, and never stored.
    Issue {
        /// How many tokens.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// How long each stays valid (500ms, 10s, 5m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// Valid only for objects in this namespace (default: any namespace).
        #[arg(long)]
        namespace: Option<String>,
        /// Free text kept with the token (who asked, which change).
        #[arg(long, default_value = "")]
        note: String,
        /// Print a JSON array instead of bare tokens.
        #[arg(long)]
        json: bool,
    },
    /// List tokens: metadata only (the values are not stored).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (from `tokens list`).
    Revoke {
        /// The token's id.
        id: i64,
    },
    /// Delete tokens that expired, were used or were revoked longer ago than `--older-than`.
    Prune {
        /// Keep what ended more recently than this.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        older_than: Duration,
    },
}

/// Opens the store, runs the command, prints the result; returns the exit code.
pub async fn run(config: &Config, command: TokensCommand) -> u8 {
    let settings = StoreSettings::from_config(config);
    let tokens = match store::open(&settings).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "gatehouse tokens: cannot open the token store ({}): {e}",
                settings.describe()
            );
            return EXIT_UNUSABLE;
        }
    };
    let code = match execute(&tokens, command).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("gatehouse tokens: {message}");
            EXIT_UNUSABLE
        }
    };
    tokens.close().await;
    code
}

async fn execute(tokens: &Tokens, command: TokensCommand) -> Result<u8, String> {
    let now = store::now_unix();
    match command {
        TokensCommand::Issue {
            count,
            ttl,
            namespace,
            note,
            json,
        } => {
            let spec = IssueSpec {
                count,
                ttl,
                namespace,
                note,
            };
            spec.validate().map_err(|m| format!("--{m}"))?;
            let issued = tokens.issue(&spec, now).await.map_err(|e| e.to_string())?;
            let shown = if json {
                let text = serde_json::to_string_pretty(&issued).map_err(|e| e.to_string())?;
                print_line(text)
            } else {
                issued.iter().all(|t| print_line(&t.token))
            };
            if !shown {
                eprintln!(
                    "gatehouse tokens: stdout closed before every token was printed; the tokens were issued (revoke them by id if they are lost)"
                );
            }
            let ids: Vec<String> = issued.iter().map(|t| format!("#{}", t.id)).collect();
            eprintln!(
                "issued {} ({}), valid until {} in {}; tokens are shown only this once",
                if issued.len() == 1 {
                    "1 token".to_owned()
                } else {
                    format!("{} tokens", issued.len())
                },
                ids.join(", "),
                issued
                    .first()
                    .map_or_else(String::new, |t| store::format_time(t.expires_at)),
                spec.namespace.as_deref().map_or_else(
                    || "any namespace".to_owned(),
                    |ns| format!("namespace {ns}")
                ),
            );
            Ok(EXIT_OK)
        }
        TokensCommand::List { json } => {
            let records = tokens.list().await.map_err(|e| e.to_string())?;
            if json {
                let text = serde_json::to_string_pretty(&records).map_err(|e| e.to_string())?;
                print_line(text);
            } else {
                print_text(table(&records, now));
            }
            Ok(EXIT_OK)
        }
        TokensCommand::Revoke { id } => match tokens.revoke(id, now).await {
            Ok(Some(r)) => {
                let when = store::format_time(r.revoked_at.unwrap_or(now));
                match r.used_at {
                    Some(used) => print_line(format_args!(
                        "revoked token #{id} at {when} (it was already used at {})",
                        store::format_time(used)
                    )),
                    None => print_line(format_args!("revoked token #{id} at {when}")),
                };
                Ok(EXIT_OK)
            }
            Ok(None) => {
                eprintln!("gatehouse tokens: no token #{id}");
                Ok(EXIT_NOT_FOUND)
            }
            Err(e) => Err(e.to_string()),
        },
        TokensCommand::Prune { older_than } => {
            let n = tokens
                .prune(older_than, now)
                .await
                .map_err(|e| e.to_string())?;
            let cutoff = now.saturating_sub(i64::try_from(older_than.as_secs()).unwrap_or(0));
            print_line(format_args!(
                "pruned {n} token{} expired, used or revoked before {}",
                if n == 1 { "" } else { "s" },
                store::format_time(cutoff)
            ));
            Ok(EXIT_OK)
        }
    }
}

/// The `tokens list` table.
fn table(records: &[TokenRecord], now: i64) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "STATE".to_owned(),
        "CREATED".to_owned(),
        "EXPIRES".to_owned(),
        "NAMESPACE".to_owned(),
        "USED".to_owned(),
        "NOTE".to_owned(),
    ]];
    for r in records {
        let used = match (&r.used_at, &r.used_by) {
            (Some(at), Some(by)) => format!(
                "{} by {} for {} {} ({})",
                store::format_time(*at),
                if by.user.is_empty() { "?" } else { &by.user },
                by.kind,
                by.object,
                by.uid
            ),
            (Some(at), None) => store::format_time(*at),
            _ => "-".to_owned(),
        };
        rows.push([
            r.id.to_string(),
            r.state(now).to_owned(),
            store::format_time(r.created_at),
            store::format_time(r.expires_at),
            r.namespace.clone().unwrap_or_else(|| "*".to_owned()),
            used,
            r.note.clone(),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UsedBy;

    #[test]
    fn table_shows_state_scope_and_use() {
        let used = TokenRecord {
            id: 7,
            created_at: 1_777_629_600,
            expires_at: 1_777_633_200,
            namespace: Some("app-ns".into()),
            note: "release 1.2".into(),
            used_at: Some(1_777_630_000),
            used_by: Some(UsedBy {
                user: "alice".into(),
                kind: "Deployment".into(),
                object: "app-ns/web".into(),
                uid: "u-1".into(),
            }),
            revoked_at: None,
        };
        let fresh = TokenRecord {
            id: 8,
            namespace: None,
            note: String::new(),
            used_at: None,
            used_by: None,
            ..used.clone()
        };
        let text = table(&[used, fresh], 1_777_630_100);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID  STATE"), "{text}");
        assert!(lines[1].contains("used"), "{text}");
        assert!(
            lines[1].contains("2026-05-01T10:06:40Z by alice for Deployment app-ns/web (u-1)"),
            "{text}"
        );
        assert!(lines[1].ends_with("release 1.2"), "{text}");
        assert!(
            lines[2].contains("unused") && lines[2].contains(" * "),
            "{text}"
        );
    }
}
