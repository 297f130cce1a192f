//! `exemptImages`: per-image exemptions for the kinds that look at containers (`registries`,
//! `resources`, `ports`), as in gatekeeper's library.
//!
//! An entry is an image written with its registry host (`safeimages.com/istio/proxyv2:1.22`)
//! or such a prefix followed by a single trailing `*` (`safeimages.com/*`,
//! `ghcr.io/acme/agent:*`). It is compared with the container's image in its normalised form
//! (`registry/repository[:tag][@digest]`, `nginx` being `docker.io/library/nginx`), so
//! `safeimages.com/*` never covers `safeimages.com.evil.io/x`. An image that is not a valid
//! reference is never exempt.

use oci_spec::distribution::Reference;
use serde::Deserialize;

/// The `exemptImages` list of a policy's params.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub(crate) struct ExemptImages {
    entries: Vec<String>,
}

impl ExemptImages {
    /// Checks the entries; `field` names the list in errors (`params.exemptImages`).
    pub(crate) fn validate(&self, field: &str) -> Result<(), String> {
        for (i, e) in self.entries.iter().enumerate() {
            let bad = |why: &str| format!("{field}[{i}]: `{e}` {why}");
            let body = e.strip_suffix('*').unwrap_or(e);
            if body.contains('*') {
                return Err(bad(
                    "may hold `*` only at the end (for example safeimages.com/*)",
                ));
            }
            let host = body.split('/').next().unwrap_or("");
            if !body.contains('/') || !(host.contains(['.', ':']) || host == "localhost") {
                return Err(bad(
                    "must start with a registry host and a slash (for example safeimages.com/* or docker.io/library/busybox:1.36)",
                ));
            }
        }
        Ok(())
    }

    /// An entry with its host lower-cased and `index.docker.io` written `docker.io`.
    fn normal_entry(entry: &str) -> String {
        let (host, rest) = entry.split_once('/').unwrap_or((entry, ""));
        let mut host = host.to_ascii_lowercase();
        if host == "index.docker.io" {
            host = "docker.io".into();
        }
        format!("{host}/{rest}")
    }

    /// Whether the container image `image` is exempt.
    pub(crate) fn covers(&self, image: Option<&str>) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let Some(normal) = image.and_then(normalise) else {
            return false;
        };
        self.entries.iter().any(|e| {
            let e = Self::normal_entry(e);
            match e.strip_suffix('*') {
                Some(prefix) => normal.starts_with(prefix),
                None => normal == e,
            }
        })
    }
}

/// `registry/repository[:tag][@digest]` for a valid image reference.
pub(crate) fn normalise(image: &str) -> Option<String> {
    let r = Reference::try_from(image).ok()?;
    let mut registry = r.registry().to_ascii_lowercase();
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    let mut out = format!("{registry}/{}", r.repository());
    if let Some(tag) = r.tag() {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(d) = r.digest() {
        out.push('@');
        out.push_str(d);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn list(entries: &[&str]) -> ExemptImages {
        let e = ExemptImages {
            entries: entries.iter().map(|s| (*s).to_owned()).collect(),
        };
        e.validate("params.exemptImages").unwrap();
        e
    }

    #[rstest]
    #[case("SafeImages.com/tool:1", true)]
    #[case("safeimages.com/team/tool", true)]
    #[case("safeimages.com.evil.io/tool", false)]
    #[case("evil.io/safeimages.com/tool", false)]
    #[case("busybox:1.36", true)]
    #[case("docker.io/library/busybox:1.37", false)]
    #[case("busybox", false)]
    #[case("Not A Reference", false)]
    fn entries_match_the_normalised_image(#[case] image: &str, #[case] exempt: bool) {
        let e = list(&["safeimages.com/*", "docker.io/library/busybox:1.36"]);
        assert_eq!(e.covers(Some(image)), exempt, "{image}");
        assert!(!e.covers(None));
    }

    #[rstest]
    #[case("*", "must start with a registry host")]
    #[case("safe*images.com/*", "may hold `*` only at the end")]
    #[case("busybox", "must start with a registry host")]
    #[case("library/busybox", "must start with a registry host")]
    fn bad_entries_are_refused(#[case] entry: &str, #[case] expected: &str) {
        let e = ExemptImages {
            entries: vec![entry.to_owned()],
        };
        let err = e.validate("params.exemptImages").unwrap_err();
        assert!(
            err.starts_with("params.exemptImages[0]: ") && err.contains(expected),
            "{err}"
        );
    }
}
