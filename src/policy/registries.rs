//! Policy kind `registries`: every container image (containers, initContainers,
//! ephemeralContainers) of a Pod or pod template comes from an allowed registry or repository
//! prefix, optionally pinned by digest.
//!
//! Images are parsed by hand (`exempt::ImageRef`, borrowing from the image, tested against
//! `oci-spec`'s regex parser) with the distribution/reference grammar and its normalisation: a first path component without a `.`
//! or `:` that is not `localhost` is not a registry, so `nginx` is `docker.io/library/nginx`,
//! `team/app` is `docker.io/team/app`, and `index.docker.io` is `docker.io`. Matching is on
//! the parsed parts, never on the string: the registry host (with its port) must be equal, and
//! the repository must equal the allowed path or continue it after a `/`. So
//! `myregistry.io.evil.com/app` and `myregistry.io:5000/app` do not pass for `myregistry.io`,
//! and `ghcr.io/acme-evil/app` does not pass for `ghcr.io/acme`.

use serde::Deserialize;

use super::exempt::{ExemptImages, ImageRef, RefError};
use super::podspec::Findings;
use super::{Check, Eval, EvalCtx, Outcome, Params};
use crate::admission::Review;
use crate::admission::describe_object;

/// `params` of a `registries` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registries {
    /// Registry hosts or repository prefixes: `myregistry.io`, `myregistry.io:5000`,
    /// `ghcr.io/acme`, `docker.io/library`.
    allowed: Vec<String>,
    /// Every image must name a digest (`@sha256:…`).
    #[serde(default)]
    require_digest: bool,
    /// Images no check of this policy applies to (`safeimages.com/*`).
    #[serde(default)]
    exempt_images: ExemptImages,
    #[serde(skip)]
    prefixes: Vec<Prefix>,
    /// Whether some entry is an exact image.
    #[serde(skip)]
    any_pin: bool,
}

/// One allowed registry or repository prefix, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prefix {
    /// Lower-case host with its port, `docker.io` for Docker Hub.
    registry: String,
    /// Repository path prefix without slashes at either end; empty: the whole registry.
    path: String,
    /// For an exact image entry (`bar.io/nginx:1.0`, `bar.io/nginx@sha256:…`): the tag and
    /// digest that pin it; the repository must then equal `path`.
    pin: Option<Pin>,
}

/// The tag and/or digest of an exact image entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pin {
    tag: Option<String>,
    digest: Option<String>,
}

impl Prefix {
    fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{text}` {why}");
        if text.contains('*') || text.contains("://") {
            return Err(bad(
                "must be a registry host, a repository prefix such as myregistry.io or ghcr.io/acme, or an exact image such as ghcr.io/acme/web:1.2 (no scheme or wildcard)",
            ));
        }
        let (host, path) = text.split_once('/').unwrap_or((text, ""));
        // A tag is a `:` in the last segment, except a host's port (`myregistry.io:5000`).
        let last = text.rsplit('/').next().unwrap_or(text);
        let tagged = last.split_once(':').is_some_and(|(h, t)| {
            text.contains('/') || !(h.contains('.') || t.parse::<u16>().is_ok())
        });
        let pinned = text.contains('@') || tagged;
        if pinned {
            return Self::parse_exact(text, host);
        }
        if !(host.contains(['.', ':']) || host == "localhost") {
            return Err(bad(&format!(
                "does not start with a registry host (a name with a dot or a port, or localhost); for Docker Hub write docker.io/{text}"
            )));
        }
        let valid_host = host.split(':').next().is_some_and(|h| {
            !h.is_empty()
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        }) && host
            .split_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_ok());
        if !valid_host {
            return Err(bad("has an invalid registry host"));
        }
        let path = path.trim_end_matches('/');
        if path.split('/').any(str::is_empty) && !path.is_empty() {
            return Err(bad("has an empty path segment"));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository paths are lower case"));
        }
        let mut registry = host.to_ascii_lowercase();
        if registry == "index.docker.io" {
            registry = "docker.io".into();
        }
        Ok(Self {
            registry,
            path: path.to_owned(),
            pin: None,
        })
    }

    /// An exact image entry: a repository with a tag, a digest or both.
    fn parse_exact(text: &str, host: &str) -> Result<Self, String> {
        if !(host.contains(['.', ':']) || host == "localhost") || !text.contains('/') {
            return Err(format!(
                "`{text}` is an exact image and must start with its registry host (for Docker Hub write docker.io/library/… or docker.io/<user>/…)"
            ));
        }
        let r = ImageRef::parse(text).map_err(|e| {
            format!("`{text}` is not a valid image reference ({e}); write a registry host, a repository prefix or an exact image such as ghcr.io/acme/web:1.2")
        })?;
        Ok(Self {
            registry: r.registry().to_ascii_lowercase(),
            path: r.repository().to_string(),
            pin: Some(Pin {
                tag: r.tag().map(str::to_owned),
                digest: r.digest().map(str::to_owned),
            }),
        })
    }

    fn allows(&self, image: &ImageRef<'_>) -> bool {
        if !image.registry().eq_ignore_ascii_case(&self.registry) {
            return false;
        }
        if let Some(pin) = &self.pin {
            // An exact entry: same repository, and the image pulled is the pinned one. A tag
            // entry does not cover a digest the entry does not name (the digest wins on pull).
            return image.repository_is(&self.path)
                && match (&pin.digest, image.digest()) {
                    (Some(want), Some(got)) => want == got,
                    (Some(_), None) => false,
                    (None, got) => got.is_none() && pin.tag.as_deref() == image.tag(),
                };
        }
        if self.path.is_empty() {
            return true;
        }
        image.repository_under(&self.path)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.registry)
        } else {
            write!(f, "{}/{}", self.registry, self.path)?;
            if let Some(pin) = &self.pin {
                if let Some(t) = &pin.tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = &pin.digest {
                    write!(f, "@{d}")?;
                }
            }
            Ok(())
        }
    }
}

impl Registries {
    /// Checks and normalises the allowed prefixes after parsing.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.allowed.is_empty() {
            return Err("params.allowed: list at least one registry or repository prefix".into());
        }
        self.prefixes = self
            .allowed
            .iter()
            .enumerate()
            .map(|(i, a)| Prefix::parse(a).map_err(|e| format!("params.allowed[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        self.exempt_images.validate("params.exemptImages")?;
        self.any_pin = self.prefixes.iter().any(|p| p.pin.is_some());
        Ok(())
    }

    /// Why `image` is not acceptable (an exempt image is).
    fn judge<'i>(&self, image: &'i str) -> Result<(), Problem<'i>> {
        let parsed = ImageRef::parse(image);
        if let Ok(r) = &parsed
            && !self.exempt_images.is_empty()
            && self.exempt_images.covers_ref(r)
        {
            return Ok(());
        }
        if is_image_id(image) {
            return Err(Problem::ImageId);
        }
        let reference = parsed.map_err(Problem::Invalid)?;
        if !self.prefixes.iter().any(|p| p.allows(&reference)) {
            return Err(Problem::NotAllowed(reference, self.any_pin));
        }
        if self.require_digest && reference.digest().is_none() {
            return Err(Problem::NoDigest);
        }
        Ok(())
    }

    /// Evaluates every container image of the request's Pod or pod template.
    pub fn evaluate(&self, policy: &str, req: &Review<'_>) -> Outcome {
        let Some(template) = req.pod_template() else {
            return Outcome::Pass;
        };
        let mut problems = Findings::new();
        for c in template.containers() {
            let problem = match c.image() {
                Some(image) => match self.judge(image) {
                    Ok(()) => continue,
                    Err(p) => Some((image, p)),
                },
                // A container without an image is never exempt.
                None => None,
            };
            problems.push_with(|| match problem {
                Some((image, p)) => format!("{} image `{image}` {p}", c.label()),
                None => format!("{} has no image", c.label()),
            });
        }
        if problems.is_empty() {
            return Outcome::Pass;
        }
        let allowed: Vec<String> = self.prefixes.iter().map(ToString::to_string).collect();
        let digest = if self.require_digest {
            ", pinned by digest"
        } else {
            ""
        };
        Outcome::Violation(format!(
            "{}: {}; policy {policy} allows images only from {}{digest}",
            describe_object(req),
            problems.join_and(),
            allowed.join(", "),
        ))
    }
}

/// What is wrong with one image.
enum Problem<'a> {
    ImageId,
    Invalid(RefError),
    /// The parsed image, and whether the policy has exact image entries.
    NotAllowed(ImageRef<'a>, bool),
    NoDigest,
}

impl std::fmt::Display for Problem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::ImageId => f.write_str(
                "is an image ID, not a pullable registry/repository[:tag][@digest] reference (the node would run whatever image it has cached under that ID)",
            ),
            Problem::Invalid(e) => write!(f, "is not a valid image reference ({e})"),
            Problem::NotAllowed(r, any_pin) => {
                let what = if *any_pin {
                    "is neither from an allowed registry nor an allowed image"
                } else {
                    "is not from an allowed registry"
                };
                write!(f, "({}/{}) {what}", r.registry(), r.repository())
            }
            Problem::NoDigest => f.write_str("is not pinned by digest (@sha256:…)"),
        }
    }
}

/// A string a container runtime takes as a local image ID rather than a reference to pull:
/// `sha256:<hex>` (the algorithm prefix with any length of hex) or a bare 64-hex ID.
fn is_image_id(image: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    match image.split_once(':') {
        Some((algo, rest))
            if !algo.contains('/')
                && algo.len() >= 3
                && algo.as_bytes()[..3].eq_ignore_ascii_case(b"sha") =>
        {
            hex(rest)
        }
        _ => image.len() == 64 && hex(image),
    }
}

impl Params for Registries {
    fn validate(&mut self) -> Result<(), String> {
        Registries::validate(self)
    }
}

impl Check for Registries {
    fn evaluate<'r>(&'r self, ctx: &'r EvalCtx<'r, '_>) -> Eval<'r> {
        Eval::Done(Registries::evaluate(self, ctx.policy, ctx.review))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::podspec::tests::{create, cronjob, deployment, pod};
    use rstest::rstest;
    use serde_json::json;

    const DIGEST: &str = "sha256:4b7ce07a7c0f1e3ef2f39b36ad4e8a5c4a2b3b8b8e1e1f5f6a7b8c9d0e1f2a3b";

    fn policy(allowed: &[&str], require_digest: bool) -> Registries {
        let mut r = Registries {
            allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
            require_digest,
            exempt_images: ExemptImages::default(),
            prefixes: Vec::new(),
            any_pin: false,
        };
        r.validate().unwrap();
        r
    }

    fn pod_with_image(image: &str) -> serde_json::Value {
        pod(json!({"containers": [{"name": "app", "image": image}]}))
    }

    #[rstest]
    #[case::exact_host("myregistry.io/app:1.2", true)]
    #[case::nested_path("myregistry.io/team/app/api:1.2", true)]
    #[case::host_uppercase("MyRegistry.IO/app:1.2", true)]
    #[case::look_alike_suffix_host("myregistry.io.evil.com/app:1.2", false)]
    #[case::look_alike_prefix_host("evilmyregistry.io/app", false)]
    #[case::subdomain("eu.myregistry.io/app", false)]
    #[case::other_port("myregistry.io:5000/app", false)]
    #[case::allowed_port("registry.internal:5000/tools/kubectl:1.33", true)]
    #[case::allowed_port_wrong_host("registry.internal.evil:5000/tools/kubectl", false)]
    #[case::port_prefix_only_with_port("registry.internal/tools/kubectl", false)]
    #[case::repo_prefix("ghcr.io/acme/web:2", true)]
    #[case::repo_prefix_exact("ghcr.io/acme:2", true)]
    #[case::repo_prefix_look_alike("ghcr.io/acme-evil/web:2", false)]
    #[case::repo_prefix_other_org("ghcr.io/other/web", false)]
    #[case::short_official("nginx", true)]
    #[case::short_official_tag("alpine:3.9.1", true)]
    #[case::short_official_digest(&format!("nginx@{DIGEST}"), true)]
    #[case::explicit_library("docker.io/library/nginx:1.27", true)]
    #[case::legacy_index_host("index.docker.io/library/nginx", true)]
    #[case::hub_user_repo("someone/nginx:1", false)]
    #[case::hub_user_repo_explicit("docker.io/someone/nginx", false)]
    #[case::tag_and_digest(&format!("myregistry.io/app:1.2@{DIGEST}"), true)]
    #[case::localhost("localhost/app", false)]
    #[case::invalid_uppercase_repo("myregistry.io/App", false)]
    #[case::invalid_short_digest("myregistry.io/app@sha256:abc", false)]
    #[case::empty("", false)]
    #[case::image_id_with_algorithm(&DIGEST, false)]
    #[case::image_id_short("sha256:4b7ce07a7c0f", false)]
    #[case::image_id_bare(&DIGEST[7..], false)]
    fn images_are_matched_on_the_parsed_reference(#[case] image: &str, #[case] ok: bool) {
        let p = policy(
            &[
                "myregistry.io",
                "registry.internal:5000",
                "ghcr.io/acme",
                "docker.io/library",
            ],
            false,
        );
        let got = p.evaluate("approved-registries", &create(pod_with_image(image)));
        assert_eq!(got == Outcome::Pass, ok, "{image}: {got:?}");
    }

    #[test]
    fn messages_name_every_offending_container_of_a_deployment() {
        let p = policy(&["myregistry.io", "docker.io/library"], false);
        let d = deployment(json!({
            "initContainers": [{"name": "migrate", "image": "myregistry.io.evil.com/migrate:1"}],
            "containers": [
                {"name": "web", "image": "myregistry.io/web:2"},
                {"name": "proxy", "image": "envoyproxy/envoy:v1.31"},
            ],
        }));
        assert_eq!(
            p.evaluate("approved-registries", &create(d)),
            Outcome::Violation(
                "Deployment app-ns/web: initContainer migrate image `myregistry.io.evil.com/migrate:1` \
                 (myregistry.io.evil.com/migrate) is not from an allowed registry and container proxy \
                 image `envoyproxy/envoy:v1.31` (docker.io/envoyproxy/envoy) is not from an allowed \
                 registry; policy approved-registries allows images only from myregistry.io, docker.io/library"
                    .into()
            )
        );
    }

    #[rstest]
    #[case::cronjob_ok(cronjob(json!({"containers": [{"name": "job", "image": "myregistry.io/job:1"}]})), None)]
    #[case::cronjob_bad(
        cronjob(json!({"containers": [{"name": "job", "image": "busybox"}]})),
        Some("CronJob app-ns/nightly: container job image `busybox` (docker.io/library/busybox) is not from an allowed registry; policy only-mine allows images only from myregistry.io")
    )]
    #[case::ephemeral_debugger(
        pod(json!({"containers": [{"name": "app", "image": "myregistry.io/app:1"}],
                   "ephemeralContainers": [{"name": "debugger", "image": "busybox:1.36"}]})),
        Some("Pod app-ns/web: ephemeralContainer debugger image `busybox:1.36` (docker.io/library/busybox) is not from an allowed registry; policy only-mine allows images only from myregistry.io")
    )]
    #[case::init_container(
        pod(json!({"containers": [{"name": "app", "image": "myregistry.io/app:1"}],
                   "initContainers": [{"name": "init", "image": "myregistry.io:443/init"}]})),
        Some("Pod app-ns/web: initContainer init image `myregistry.io:443/init` (myregistry.io:443/init) is not from an allowed registry; policy only-mine allows images only from myregistry.io")
    )]
    #[case::no_image(
        pod(json!({"containers": [{"name": "app"}]})),
        Some("Pod app-ns/web: container app has no image; policy only-mine allows images only from myregistry.io")
    )]
    fn pods_cronjobs_init_and_ephemeral_containers(
        #[case] obj: serde_json::Value,
        #[case] expected: Option<&str>,
    ) {
        let p = policy(&["myregistry.io"], false);
        let got = p.evaluate("only-mine", &create(obj));
        match expected {
            Some(m) => assert_eq!(got, Outcome::Violation(m.into())),
            None => assert_eq!(got, Outcome::Pass),
        }
    }

    #[rstest]
    #[case(&format!("myregistry.io/app@{DIGEST}"), true)]
    #[case(&format!("myregistry.io/app:1.2@{DIGEST}"), true)]
    #[case("myregistry.io/app:1.2", false)]
    #[case("myregistry.io/app", false)]
    fn digests_can_be_required(#[case] image: &str, #[case] ok: bool) {
        let p = policy(&["myregistry.io"], true);
        let got = p.evaluate("pinned", &create(pod_with_image(image)));
        if ok {
            assert_eq!(got, Outcome::Pass);
        } else {
            assert_eq!(
                got,
                Outcome::Violation(format!(
                    "Pod app-ns/web: container app image `{image}` is not pinned by digest (@sha256:…); \
                     policy pinned allows images only from myregistry.io, pinned by digest"
                ))
            );
        }
    }

    #[rstest]
    #[case(&[], "params.allowed: list at least one")]
    #[case(&["nginx"], "params.allowed[0]: `nginx` does not start with a registry host")]
    #[case(&["library/nginx"], "for Docker Hub write docker.io/library/nginx")]
    #[case(&["myregistry.io", "*.azurecr.io"], "params.allowed[1]: `*.azurecr.io` must be a registry host")]
    #[case(&["nginx:1.0"], "is an exact image and must start with its registry host")]
    #[case(&["bar.io/nginx:"], "is not a valid image reference")]
    #[case(&["https://myregistry.io"], "no scheme")]
    #[case(&["myregistry.io:http"], "invalid registry host")]
    #[case(&["my_registry.io"], "invalid registry host")]
    #[case(&["myregistry.io//app"], "empty path segment")]
    #[case(&["myregistry.io/Team"], "lower case")]
    fn bad_prefixes_are_named(#[case] allowed: &[&str], #[case] expected: &str) {
        let mut r = Registries {
            allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
            require_digest: false,
            exempt_images: ExemptImages::default(),
            prefixes: Vec::new(),
            any_pin: false,
        };
        let err = r.validate().unwrap_err();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn an_image_id_is_named_as_such() {
        let p = policy(&["docker.io/library"], false);
        assert_eq!(
            p.evaluate("r", &create(pod_with_image(DIGEST))),
            Outcome::Violation(format!(
                "Pod app-ns/web: container app image `{DIGEST}` is an image ID, not a pullable \
                 registry/repository[:tag][@digest] reference (the node would run whatever image \
                 it has cached under that ID); policy r allows images only from docker.io/library"
            ))
        );
    }

    #[rstest]
    #[case::same_tag("bar.io/nginx:1.0", true)]
    #[case::other_tag("bar.io/nginx:1.1", false)]
    #[case::no_tag("bar.io/nginx", false)]
    #[case::tag_plus_unnamed_digest(&format!("bar.io/nginx:1.0@{DIGEST}"), false)]
    #[case::other_repo("bar.io/nginx-evil:1.0", false)]
    #[case::short_hub_name_with_tag("ubuntu:20.14", true)]
    #[case::hub_other_tag("ubuntu:22.04", false)]
    #[case::pinned_digest(&format!("quay.io/app@{DIGEST}"), true)]
    #[case::pinned_digest_any_tag(&format!("quay.io/app:2@{DIGEST}"), true)]
    #[case::pinned_repo_without_digest("quay.io/app:2", false)]
    fn exact_image_entries_pin_tag_or_digest(#[case] image: &str, #[case] ok: bool) {
        let digest_entry = format!("quay.io/app@{DIGEST}");
        let p = policy(
            &[
                "bar.io/nginx:1.0",
                "docker.io/library/ubuntu:20.14",
                &digest_entry,
            ],
            false,
        );
        let got = p.evaluate("r", &create(pod_with_image(image)));
        assert_eq!(got == Outcome::Pass, ok, "{image}: {got:?}");
    }

    #[test]
    fn exact_entry_message_does_not_contradict_itself() {
        let p = policy(&["bar.io/nginx:1.0"], false);
        assert_eq!(
            p.evaluate("r", &create(pod_with_image("bar.io/nginx:2.0"))),
            Outcome::Violation(
                "Pod app-ns/web: container app image `bar.io/nginx:2.0` (bar.io/nginx) is neither \
                 from an allowed registry nor an allowed image; policy r allows images only from bar.io/nginx:1.0"
                    .into()
            )
        );
    }

    #[test]
    fn exempt_images_skip_their_containers_only() {
        let mut p: Registries =
            serde_yaml::from_str("allowed: [myregistry.io]\nexemptImages: ['safeimages.com/*']\n")
                .unwrap();
        p.validate().unwrap();
        let ok = pod(json!({"containers": [
            {"name": "app", "image": "myregistry.io/app:1"},
            {"name": "agent", "image": "safeimages.com/agent:3"}]}));
        assert_eq!(p.evaluate("r", &create(ok)), Outcome::Pass);
        let bad = pod(json!({"containers": [
            {"name": "agent", "image": "safeimages.com.evil.io/agent:3"}]}));
        assert!(matches!(
            p.evaluate("r", &create(bad)),
            Outcome::Violation(_)
        ));
    }

    #[test]
    fn prefixes_normalise() {
        assert_eq!(
            Prefix::parse("Index.Docker.IO/library/").unwrap(),
            Prefix {
                registry: "docker.io".into(),
                path: "library".into(),
                pin: None,
            }
        );
        assert_eq!(
            Prefix::parse("localhost:5000").unwrap().to_string(),
            "localhost:5000"
        );
    }

    #[test]
    fn delete_and_objects_without_pods_pass() {
        let p = policy(&["myregistry.io"], true);
        let svc =
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}});
        assert_eq!(p.evaluate("x", &create(svc)), Outcome::Pass);
    }
}
