//! The resources and subresources of the built-in API groups (Kubernetes 1.33, with the
//! alpha and beta APIs of that release), so that a typo in `match.resources` is refused at load
//! instead of never matching.
//!
//! Only the built-in groups are checked: a pattern whose group is another one (a custom
//! resource such as `example.com/widgets`) accepts any name. A pattern without a group
//! (`deployments`) matches every group, so it is accepted when some built-in group has the
//! resource, and otherwise only when it cannot be a mistyped built-in name (a custom resource
//! whose plural is close to a built-in one must name its group).

use super::matching::ResourcePattern;

/// A resource and its subresources.
type Resource = (&'static str, &'static [&'static str]);

/// `(group, [(resource, [subresources])])`; the core group is `""`.
pub(crate) const BUILT_IN: &[(&str, &[Resource])] = &[
    (
        "",
        &[
            ("bindings", &[]),
            ("componentstatuses", &[]),
            ("configmaps", &[]),
            ("endpoints", &[]),
            ("events", &[]),
            ("limitranges", &[]),
            ("namespaces", &["finalize", "status"]),
            ("nodes", &["proxy", "status"]),
            ("persistentvolumeclaims", &["status"]),
            ("persistentvolumes", &["status"]),
            (
                "pods",
                &[
                    "attach",
                    "binding",
                    "ephemeralcontainers",
                    "eviction",
                    "exec",
                    "log",
                    "portforward",
                    "proxy",
                    "resize",
                    "status",
                ],
            ),
            ("podtemplates", &[]),
            ("replicationcontrollers", &["scale", "status"]),
            ("resourcequotas", &["status"]),
            ("secrets", &[]),
            ("serviceaccounts", &["token"]),
            ("services", &["proxy", "status"]),
        ],
    ),
    (
        "admissionregistration.k8s.io",
        &[
            ("mutatingadmissionpolicies", &[]),
            ("mutatingadmissionpolicybindings", &[]),
            ("mutatingwebhookconfigurations", &[]),
            ("validatingadmissionpolicies", &["status"]),
            ("validatingadmissionpolicybindings", &[]),
            ("validatingwebhookconfigurations", &[]),
        ],
    ),
    (
        "apiextensions.k8s.io",
        &[("customresourcedefinitions", &["status"])],
    ),
    ("apiregistration.k8s.io", &[("apiservices", &["status"])]),
    (
        "apps",
        &[
            ("controllerrevisions", &[]),
            ("daemonsets", &["status"]),
            ("deployments", &["scale", "status"]),
            ("replicasets", &["scale", "status"]),
            ("statefulsets", &["scale", "status"]),
        ],
    ),
    (
        "authentication.k8s.io",
        &[("selfsubjectreviews", &[]), ("tokenreviews", &[])],
    ),
    (
        "authorization.k8s.io",
        &[
            ("localsubjectaccessreviews", &[]),
            ("selfsubjectaccessreviews", &[]),
            ("selfsubjectrulesreviews", &[]),
            ("subjectaccessreviews", &[]),
        ],
    ),
    ("autoscaling", &[("horizontalpodautoscalers", &["status"])]),
    ("batch", &[("cronjobs", &["status"]), ("jobs", &["status"])]),
    (
        "certificates.k8s.io",
        &[
            ("certificatesigningrequests", &["approval", "status"]),
            ("clustertrustbundles", &[]),
        ],
    ),
    (
        "coordination.k8s.io",
        &[("leasecandidates", &[]), ("leases", &[])],
    ),
    ("discovery.k8s.io", &[("endpointslices", &[])]),
    ("events.k8s.io", &[("events", &[])]),
    // Nothing is served from `extensions` since 1.22; listed so its old names get a suggestion.
    ("extensions", &[]),
    (
        "flowcontrol.apiserver.k8s.io",
        &[
            ("flowschemas", &["status"]),
            ("prioritylevelconfigurations", &["status"]),
        ],
    ),
    (
        "internal.apiserver.k8s.io",
        &[("storageversions", &["status"])],
    ),
    (
        "networking.k8s.io",
        &[
            ("ingressclasses", &[]),
            ("ingresses", &["status"]),
            ("ipaddresses", &[]),
            ("networkpolicies", &[]),
            ("servicecidrs", &["status"]),
        ],
    ),
    ("node.k8s.io", &[("runtimeclasses", &[])]),
    ("policy", &[("poddisruptionbudgets", &["status"])]),
    (
        "rbac.authorization.k8s.io",
        &[
            ("clusterrolebindings", &[]),
            ("clusterroles", &[]),
            ("rolebindings", &[]),
            ("roles", &[]),
        ],
    ),
    (
        "resource.k8s.io",
        &[
            ("deviceclasses", &[]),
            ("devicetaintrules", &[]),
            ("resourceclaims", &["status"]),
            ("resourceclaimtemplates", &[]),
            ("resourceslices", &[]),
        ],
    ),
    ("scheduling.k8s.io", &[("priorityclasses", &[])]),
    (
        "storage.k8s.io",
        &[
            ("csidrivers", &[]),
            ("csinodes", &[]),
            ("csistoragecapacities", &[]),
            ("storageclasses", &[]),
            ("volumeattachments", &["status"]),
            ("volumeattributesclasses", &[]),
        ],
    ),
    (
        "storagemigration.k8s.io",
        &[("storageversionmigrations", &["status"])],
    ),
];

/// Subresources a custom resource can have.
const CUSTOM_SUBRESOURCES: &[&str] = &["scale", "status"];

/// The resources of a built-in group, or `None` for other groups.
fn group(name: &str) -> Option<&'static [Resource]> {
    BUILT_IN
        .iter()
        .find(|(g, _)| *g == name)
        .map(|(_, resources)| *resources)
}

/// How a group and resource are written in a policy file: `apps/deployments`, `pods`.
fn written(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{group}/{resource}")
    }
}

/// Every built-in `(group, resource)`.
fn all() -> impl Iterator<Item = (&'static str, &'static str)> {
    BUILT_IN
        .iter()
        .flat_map(|(g, rs)| rs.iter().map(move |(r, _)| (*g, *r)))
}

/// Edit distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest built-in resource to `name`, within `candidates`, if close enough to be a typo.
fn closest(
    name: &str,
    candidates: impl Iterator<Item = (&'static str, &'static str)>,
) -> Option<(&'static str, &'static str)> {
    let limit = (name.len() / 4).max(2);
    candidates
        .map(|(g, r)| (distance(name, r), g, r))
        .filter(|(d, _, _)| *d <= limit)
        .min_by_key(|(d, _, _)| *d)
        .map(|(_, g, r)| (g, r))
}

/// Whether `s` looks like an API version (`v1`, `v1beta1`, `v2alpha1`).
fn is_version(s: &str) -> bool {
    s.strip_prefix('v').is_some_and(|rest| {
        rest.starts_with(|c: char| c.is_ascii_digit())
            && rest.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// Refuses a pattern naming a resource or subresource that no built-in group has, when it can
/// only be meant as a built-in one; the message suggests the likely intent.
pub(crate) fn check(text: &str, p: &ResourcePattern) -> Result<(), String> {
    let suggest = |s: String| {
        format!("resource `{text}` does not exist in Kubernetes 1.33; did you mean {s}?")
    };
    // `apps/v1/deployments`, `v1/pods`: a version written where it does not belong.
    if is_version(&p.resource) {
        if let Some(sub) = &p.subresource {
            let g = p.group.as_deref().unwrap_or("");
            if group(g).is_some_and(|rs| rs.iter().any(|(r, _)| r == sub)) {
                return Err(suggest(written(g, sub)));
            }
            if let Some((g, r)) = closest(sub, all()) {
                return Err(suggest(written(g, r)));
            }
        }
        return Err(format!(
            "resource `{text}`: write group/resource without a version (for example apps/deployments or pods)"
        ));
    }
    // `deployments.apps`: kubectl's resource.group spelling.
    if p.group.is_none()
        && let Some((r, g)) = p.resource.split_once('.')
    {
        let g = if g == "core" { "" } else { g };
        let hint = match group(g) {
            Some(rs) if rs.iter().any(|(x, _)| *x == r) => written(g, r),
            _ => format!("{g}/{r}"),
        };
        return Err(format!(
            "resource `{text}`: write the group first, as group/resource; did you mean {hint}?"
        ));
    }
    let check_sub = |subs: &[&str], g: &str, r: &str| -> Result<(), String> {
        match &p.subresource {
            Some(s) if s != "*" && !subs.contains(&s.as_str()) => Err(if subs.is_empty() {
                format!("resource `{text}`: {} has no subresources", written(g, r))
            } else {
                format!(
                    "resource `{text}`: {} has no subresource `{s}` (it has {})",
                    written(g, r),
                    subs.join(", ")
                )
            }),
            _ => Ok(()),
        }
    };
    match &p.group {
        Some(g) => {
            let Some(&(gs, resources)) = BUILT_IN.iter().find(|(x, _)| x == g) else {
                return Ok(()); // not a built-in group: any name
            };
            if p.resource == "*" {
                return Ok(());
            }
            if let Some((_, subs)) = resources.iter().find(|(r, _)| *r == p.resource) {
                return check_sub(subs, g, &p.resource);
            }
            let hint = closest(&p.resource, resources.iter().map(|(r, _)| (gs, *r)))
                .or_else(|| closest(&p.resource, all()))
                .or_else(|| all().find(|(_, r)| *r == p.resource));
            let shown = if g.is_empty() { "core" } else { g.as_str() };
            Err(match hint {
                Some((hg, hr)) => suggest(written(hg, hr)),
                None => format!(
                    "resource `{text}`: the built-in group {shown} has no resource `{}`",
                    p.resource
                ),
            })
        }
        None => {
            if p.resource == "*" {
                return Ok(());
            }
            let known: Vec<(&str, &[&str])> = BUILT_IN
                .iter()
                .flat_map(|(g, rs)| rs.iter().map(move |(r, s)| (*g, *r, *s)))
                .filter(|(_, r, _)| *r == p.resource)
                .map(|(g, _, s)| (g, s))
                .collect();
            if !known.is_empty() {
                let mut subs: Vec<&str> =
                    known.iter().flat_map(|(_, s)| s.iter().copied()).collect();
                subs.extend(CUSTOM_SUBRESOURCES);
                subs.sort_unstable();
                subs.dedup();
                return match &p.subresource {
                    Some(s) if s != "*" && !subs.contains(&s.as_str()) => Err(format!(
                        "resource `{text}`: {} has no subresource `{s}`",
                        p.resource
                    )),
                    _ => Ok(()),
                };
            }
            match closest(&p.resource, all()) {
                Some((g, r)) => Err(format!(
                    "{} (a custom resource must name its group, for example example.com/{})",
                    suggest(written(g, r)),
                    p.resource
                )),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn run(text: &str) -> Result<(), String> {
        check(text, &ResourcePattern::parse(text).unwrap())
    }

    #[rstest]
    #[case("deployments")]
    #[case("apps/deployments")]
    #[case("apps/deployments/scale")]
    #[case("deployments/scale")]
    #[case("core/pods/ephemeralcontainers")]
    #[case("pods/*")]
    #[case("apps/*")]
    #[case("*")]
    #[case("example.com/anything")]
    #[case("example.com/widgets/status")]
    #[case("widgets")]
    #[case("certificates.k8s.io/certificatesigningrequests/approval")]
    #[case("networking.k8s.io/ingresses")]
    fn real_names_load(#[case] text: &str) {
        assert_eq!(run(text), Ok(()), "{text}");
    }

    #[rstest]
    #[case(
        "apps/deployment",
        "resource `apps/deployment` does not exist in Kubernetes 1.33; did you mean apps/deployments?"
    )]
    #[case(
        "deployments.apps",
        "resource `deployments.apps`: write the group first, as group/resource; did you mean apps/deployments?"
    )]
    #[case(
        "apps/v1/deployments",
        "resource `apps/v1/deployments` does not exist in Kubernetes 1.33; did you mean apps/deployments?"
    )]
    #[case(
        "v1/pods",
        "resource `v1/pods` does not exist in Kubernetes 1.33; did you mean pods?"
    )]
    #[case(
        "deployment",
        "resource `deployment` does not exist in Kubernetes 1.33; did you mean apps/deployments? (a custom resource must name its group, for example example.com/deployment)"
    )]
    #[case(
        "extensions/deployments",
        "resource `extensions/deployments` does not exist in Kubernetes 1.33; did you mean apps/deployments?"
    )]
    #[case(
        "core/pod",
        "resource `core/pod` does not exist in Kubernetes 1.33; did you mean pods?"
    )]
    #[case(
        "batch/cronjob",
        "resource `batch/cronjob` does not exist in Kubernetes 1.33; did you mean batch/cronjobs?"
    )]
    #[case(
        "apps/deployments/scales",
        "resource `apps/deployments/scales`: apps/deployments has no subresource `scales` (it has scale, status)"
    )]
    #[case(
        "core/configmaps/status",
        "resource `core/configmaps/status`: configmaps has no subresources"
    )]
    #[case("pods/exex", "resource `pods/exex`: pods has no subresource `exex`")]
    fn typos_are_refused_with_a_suggestion(#[case] text: &str, #[case] expected: &str) {
        assert_eq!(run(text), Err(expected.to_owned()));
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("deployment", "deployments"), 1);
        assert_eq!(distance("pods", "pods"), 0);
        assert_eq!(distance("abc", "xyz"), 3);
    }
}
