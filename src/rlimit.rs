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

/// Fits connection caps (`(config key, cap)`) below an open-file limit: when their sum does not
/// leave [`RESERVED`] descriptors (a quarter of a small limit) free, each is scaled down in
/// proportion (at least 1) and the change is logged. Returns whether anything changed.
pub fn fit_caps(limit: Option<u64>, caps: &mut [(&str, &mut usize)], log: bool) -> bool {
    let Some(limit) = limit else {
        return false;
    };
    let reserve = RESERVED.min(limit / 4);
    let room = limit.saturating_sub(reserve).max(1);
    let sum: u64 = caps.iter().map(|(_, c)| **c as u64).sum();
    if sum <= room {
        return false;
    }
    for (key, cap) in caps.iter_mut() {
        let fitted = ((**cap as u64).saturating_mul(room) / sum).max(1);
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
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_kept_below_the_open_file_limit() {
        let (mut a, mut b) = (4096, 128);
        assert!(!fit_caps(None, &mut [("a", &mut a), ("b", &mut b)], false));
        assert!(!fit_caps(
            Some(1_048_576),
            &mut [("a", &mut a), ("b", &mut b)]
        ));
        assert_eq!((a, b), (4096, 128));

        assert!(fit_caps(
            Some(1024),
            &mut [("a", &mut a), ("b", &mut b)],
            false
        ));
        // 1024 - 256 reserved = 768 shared in proportion.
        assert_eq!((a, b), (741, 23));
        assert!(a + b <= 768);

        let (mut a, mut b) = (4096, 1);
        assert!(fit_caps(
            Some(64),
            &mut [("a", &mut a), ("b", &mut b)],
            false
        ));
        assert_eq!((a, b), (47, 1));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let after = raise_nofile();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(after, now.current);
        assert_eq!(now.current, now.maximum);
    }
}
