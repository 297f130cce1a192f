//! The open-file limit: raised from its soft to its hard value at start, and the listeners'
//! connection caps kept well below it, so that no listener can use up the descriptors the
//! others (and the reloader, the token store, log files) need.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept free for everything that is not a client connection (listeners, the
/// token store, policy and certificate files, the runtime); a quarter of the limit when the
/// limit is small.
const RESERVED: u64 = 256;

/// Raises the soft open-file limit to the hard limit. Returns the soft limit in force
/// afterwards (`None`: unlimited).
pub fn raise_nofile() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), maximum) = (limit.current, limit.maximum) else {
        return None;
    };
    if maximum.is_some_and(|max| max <= current) {
        return Some(current);
    }
    let wanted = Rlimit {
        current: maximum,
        maximum,
    };
    match setrlimit(Resource::Nofile, wanted) {
        Ok(()) => {
            tracing::debug!(from = current, to = ?maximum, "raised the open-file limit to its hard limit");
            maximum
        }
        Err(e) => {
            tracing::warn!(limit = current, error = %e, "could not raise the open-file limit; connection caps are fitted below it");
            Some(current)
        }
    }
}

/// Fits connection caps (`(config key, cap)`) below an open-file limit, leaving [`RESERVED`]
/// descriptors (a quarter of a small limit) free. When the caps do not fit, the room is shared
/// fairly: the smaller caps keep their value while it is at most an equal share, the larger
/// ones split what is left, so a small listener (health) keeps room beside a large one. Each
/// lowered cap is logged when `log` is set. Returns whether anything changed.
pub fn fit_caps(limit: Option<u64>, caps: &mut [(&str, &mut usize)], log: bool) -> bool {
    let Some(limit) = limit else {
        return false;
    };
    let reserve = RESERVED.min(limit / 4);
    let room = limit.saturating_sub(reserve).max(caps.len() as u64);
    let sum: u64 = caps.iter().map(|(_, c)| **c as u64).sum();
    if sum <= room {
        return false;
    }
    let mut order: Vec<usize> = (0..caps.len()).collect();
    order.sort_by_key(|&i| *caps[i].1);
    let mut left = room;
    for (n, &i) in order.iter().enumerate() {
        let (key, cap) = &mut caps[i];
        let share = left / (order.len() - n) as u64;
        let fitted = (**cap as u64).min(share).max(1);
        left = left.saturating_sub(fitted);
        if fitted < **cap as u64 {
            let fitted = usize::try_from(fitted).unwrap_or(usize::MAX);
            if log {
                tracing::warn!(
                    key = %format_args!("limits.{key}"),
                    configured = **cap,
                    used = fitted,
                    open_file_limit = limit,
                    "connection cap lowered to fit the open-file limit"
                );
            }
            **cap = fitted;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_kept_below_the_open_file_limit() {
        let (mut web, mut health, mut admin) = (4096, 128, 256);
        let mut caps = [
            ("max_connections", &mut web),
            ("health_max_connections", &mut health),
            ("token_admin_max_connections", &mut admin),
        ];
        assert!(!fit_caps(None, &mut caps, false));
        assert!(!fit_caps(Some(1_048_576), &mut caps, false));
        assert_eq!((web, health, admin), (4096, 128, 256));

        // 1024 - 256 reserved = 768: health keeps 128, the token endpoint its 256, the
        // webhook the rest.
        let mut caps = [("a", &mut web), ("b", &mut health), ("c", &mut admin)];
        assert!(fit_caps(Some(1024), &mut caps, false));
        assert_eq!((web, health, admin), (384, 128, 256));

        // 256 - 64 reserved = 192, shared equally.
        let (mut web, mut health, mut admin) = (4096, 128, 256);
        let mut caps = [("a", &mut web), ("b", &mut health), ("c", &mut admin)];
        assert!(fit_caps(Some(256), &mut caps, false));
        assert_eq!((web, health, admin), (64, 64, 64));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let after = raise_nofile();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(after, now.current);
        assert_eq!(now.current, now.maximum);
    }
}
