//! Policy kind `ports`: the `containerPort`s and `hostPort`s every container of a Pod or pod
//! template may declare, as lists of ports and inclusive ranges.
//!
//! With `spec.hostNetwork: true` a container's ports are ports of the node, so each
//! `containerPort` is also checked against `hostPorts` (the API server sets `hostPort` to the
//! `containerPort` in that case).

use serde::Deserialize;

use super::exempt::ExemptImages;
use super::podspec::Findings;
use super::{Check, Eval, EvalCtx, Outcome, Params};
use crate::admission::describe_object;
use crate::admission::{Raw, Review};

/// `params` of a `ports` policy. An unset list leaves that kind of port unrestricted; an empty
/// list allows none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ports {
    /// Allowed `containerPort`s: `[80, 443, 8000-8999]`.
    #[serde(default)]
    container_ports: Option<Vec<PortRange>>,
    /// Allowed `hostPort`s; `[]` forbids host ports.
    #[serde(default)]
    host_ports: Option<Vec<PortRange>>,
    /// Whether `hostNetwork: true` is acceptable when `hostPorts` is set: on the host network
    /// every port a container opens is a host port, declared or not. Default false.
    #[serde(default)]
    allow_host_network: bool,
    /// Images whose containers are not checked (`safeimages.com/*`).
    #[serde(default)]
    exempt_images: ExemptImages,
}

/// A port or an inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PortRange {
    low: u16,
    high: u16,
}

impl PortRange {
    fn parse(text: &str) -> Result<Self, String> {
        let port = |s: &str| -> Result<u16, String> {
            match s.trim().parse::<u16>() {
                Ok(p) if p >= 1 => Ok(p),
                _ => Err(format!(
                    "`{text}` is not a port (1-65535) or a range such as 8000-8999"
                )),
            }
        };
        let (low, high) = match text.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(text)?;
                (p, p)
            }
        };
        if low > high {
            return Err(format!("`{text}`: the range ends before it starts"));
        }
        Ok(Self { low, high })
    }

    fn contains(&self, port: i64) -> bool {
        i64::from(self.low) <= port && port <= i64::from(self.high)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Port(i64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Port(p) => p.to_string(),
            Raw::Text(t) => t,
        };
        PortRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

fn show(ranges: &[PortRange]) -> String {
    if ranges.is_empty() {
        "none".into()
    } else {
        ranges
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Ports {
    /// Checks the parameters after parsing.
    pub fn validate(&self) -> Result<(), String> {
        if self.container_ports.is_none() && self.host_ports.is_none() {
            return Err("params: set containerPorts, hostPorts or both".into());
        }
        if self.allow_host_network && self.host_ports.is_none() {
            return Err(
                "params.allowHostNetwork: only means something with hostPorts (without hostPorts the host network is not restricted)"
                    .into(),
            );
        }
        self.exempt_images.validate("params.exemptImages")
    }

    /// Evaluates the ports of every container of the request's Pod or pod template.
    pub fn evaluate(&self, policy: &str, req: &Review<'_>) -> Outcome {
        let Some(template) = req.pod_template() else {
            return Outcome::Pass;
        };
        let host_network = template.host_network();
        let mut problems = Findings::new();
        if host_network && self.host_ports.is_some() && !self.allow_host_network {
            problems.push("hostNetwork: true (every port a container opens is a host port; set allowHostNetwork to accept it)".to_owned());
        }
        for c in template.containers() {
            if self.exempt_images.covers(c.image()) {
                continue;
            }
            let Some(ports) = c.ports else {
                continue;
            };
            for p in ports.iter_items() {
                let [protocol, container_port, host_port_raw] =
                    p.fields(["protocol", "containerPort", "hostPort"]);
                let protocol = protocol.and_then(Raw::as_str);
                let protocol = protocol.as_deref().unwrap_or("TCP");
                let container_port = container_port.and_then(Raw::as_i64);
                let host_port = host_port_raw
                    .and_then(Raw::as_i64)
                    .filter(|&h| h != 0)
                    .or(if host_network { container_port } else { None });
                if let (Some(allowed), Some(port)) = (&self.container_ports, container_port)
                    && !allowed.iter().any(|r| r.contains(port))
                {
                    problems.push_with(|| format!("{} containerPort {port}/{protocol}", c.label()));
                }
                if let (Some(allowed), Some(port)) = (&self.host_ports, host_port)
                    && !allowed.iter().any(|r| r.contains(port))
                {
                    let how = if host_network && host_port_raw.is_none() {
                        " (hostNetwork)"
                    } else {
                        ""
                    };
                    problems.push_with(|| format!("{} hostPort {port}/{protocol}{how}", c.label()));
                }
            }
        }
        if problems.is_empty() {
            return Outcome::Pass;
        }
        let mut allowed = Vec::new();
        if let Some(r) = &self.container_ports {
            allowed.push(format!("containerPorts {}", show(r)));
        }
        if let Some(r) = &self.host_ports {
            allowed.push(format!("hostPorts {}", show(r)));
        }
        Outcome::Violation(format!(
            "{}: {} not allowed; policy {policy} allows {}",
            describe_object(req),
            problems.join_and(),
            allowed.join(" and "),
        ))
    }
}

impl Params for Ports {
    fn validate(&mut self) -> Result<(), String> {
        Ports::validate(self)
    }
}

impl Check for Ports {
    fn evaluate<'r>(&'r self, ctx: &'r EvalCtx<'r, '_>) -> Eval<'r> {
        Eval::Done(Ports::evaluate(self, ctx.policy, ctx.review))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::podspec::tests::{create, cronjob, deployment, pod};
    use rstest::rstest;
    use serde_json::{Value, json};

    fn policy(yaml: &str) -> Ports {
        let p: Ports = serde_yaml::from_str(yaml).unwrap();
        p.validate().unwrap();
        p
    }

    const WEB: &str = "containerPorts: [80, 443, 8000-8999]\nhostPorts: []\n";

    fn with_port(port: Value) -> Value {
        pod(json!({"containers": [{"name": "web", "image": "nginx", "ports": [port]}]}))
    }

    #[rstest]
    #[case::listed_80(80, true)]
    #[case::listed_443(443, true)]
    #[case::unlisted_81(81, false)]
    #[case::range_low_bound(8000, true)]
    #[case::range_high_bound(8999, true)]
    #[case::below_range(7999, false)]
    #[case::above_range(9000, false)]
    fn container_ports_at_the_bounds(#[case] port: i64, #[case] ok: bool) {
        let got = policy(WEB).evaluate(
            "web-ports",
            &create(with_port(json!({"containerPort": port}))),
        );
        if ok {
            assert_eq!(got, Outcome::Pass, "{port}");
        } else {
            assert_eq!(
                got,
                Outcome::Violation(format!(
                    "Pod app-ns/web: container web containerPort {port}/TCP not allowed; \
                     policy web-ports allows containerPorts 80, 443, 8000-8999 and hostPorts none"
                ))
            );
        }
    }

    #[rstest]
    #[case::no_host_port(json!({"containerPort": 80}), None)]
    #[case::host_port_zero_is_none(json!({"containerPort": 80, "hostPort": 0}), None)]
    #[case::host_port_forbidden(json!({"containerPort": 80, "hostPort": 80}), Some("container web hostPort 80/TCP"))]
    #[case::udp(json!({"containerPort": 53, "protocol": "UDP"}), Some("container web containerPort 53/UDP"))]
    fn host_ports(#[case] port: Value, #[case] expected: Option<&str>) {
        let got = policy(WEB).evaluate("web-ports", &create(with_port(port)));
        match expected {
            None => assert_eq!(got, Outcome::Pass),
            Some(m) => assert_eq!(
                got,
                Outcome::Violation(format!(
                    "Pod app-ns/web: {m} not allowed; policy web-ports allows containerPorts 80, 443, 8000-8999 and hostPorts none"
                ))
            ),
        }
    }

    #[test]
    fn host_network_makes_container_ports_host_ports() {
        let p = policy("hostPorts: [9100]\nallowHostNetwork: true\n");
        let spec = |port: i64| {
            json!({"hostNetwork": true,
                   "containers": [{"name": "exporter", "image": "e", "ports": [{"containerPort": port}]}]})
        };
        assert_eq!(p.evaluate("hp", &create(pod(spec(9100)))), Outcome::Pass);
        assert_eq!(
            p.evaluate("hp", &create(deployment(spec(9101)))),
            Outcome::Violation(
                "Deployment app-ns/web: container exporter hostPort 9101/TCP (hostNetwork) not allowed; policy hp allows hostPorts 9100"
                    .into()
            )
        );
    }

    #[rstest]
    #[case::no_ports_empty_list("hostPorts: []", json!({"hostNetwork": true, "containers": [{"name": "x", "image": "busybox"}]}),
        Some("Pod app-ns/web: hostNetwork: true (every port a container opens is a host port; set allowHostNetwork to accept it) not allowed; policy p allows hostPorts none"))]
    #[case::with_listed_port("hostPorts: [9100]", json!({"hostNetwork": true, "containers": [{"name": "x", "image": "e", "ports": [{"containerPort": 9100}]}]}),
        Some("Pod app-ns/web: hostNetwork: true (every port a container opens is a host port; set allowHostNetwork to accept it) not allowed; policy p allows hostPorts 9100"))]
    #[case::allowed("{hostPorts: [], allowHostNetwork: true}", json!({"hostNetwork": true, "containers": [{"name": "x", "image": "busybox"}]}), None)]
    #[case::container_ports_only("containerPorts: [80]", json!({"hostNetwork": true, "containers": [{"name": "x", "image": "busybox"}]}), None)]
    #[case::pod_network("hostPorts: []", json!({"containers": [{"name": "x", "image": "busybox"}]}), None)]
    fn host_network_violates_a_host_port_restriction(
        #[case] yaml: &str,
        #[case] spec: Value,
        #[case] expected: Option<&str>,
    ) {
        let got = policy(yaml).evaluate("p", &create(pod(spec)));
        match expected {
            Some(m) => assert_eq!(got, Outcome::Violation(m.into())),
            None => assert_eq!(got, Outcome::Pass),
        }
    }

    #[test]
    fn exempt_images_skip_their_containers() {
        let p = policy("{containerPorts: [80], exemptImages: ['safeimages.com/*']}");
        let spec = json!({"containers": [
            {"name": "web", "image": "w", "ports": [{"containerPort": 80}]},
            {"name": "agent", "image": "safeimages.com/agent", "ports": [{"containerPort": 9999}]}]});
        assert_eq!(p.evaluate("p", &create(pod(spec))), Outcome::Pass);
        let spec = json!({"containers": [
            {"name": "agent", "image": "other.io/agent", "ports": [{"containerPort": 9999}]}]});
        assert!(matches!(
            p.evaluate("p", &create(pod(spec))),
            Outcome::Violation(_)
        ));
    }

    #[test]
    fn every_section_and_cronjobs() {
        let p = policy("containerPorts: [8080]\n");
        let spec = json!({
            "initContainers": [{"name": "sidecar", "image": "s", "restartPolicy": "Always",
                                "ports": [{"containerPort": 15090}]}],
            "containers": [{"name": "web", "image": "w", "ports": [{"containerPort": 8080}, {"containerPort": 9090}]}],
            "ephemeralContainers": [{"name": "debugger", "image": "d", "ports": [{"containerPort": 2345}]}],
        });
        assert_eq!(
            p.evaluate("one-port", &create(cronjob(spec))),
            Outcome::Violation(
                "CronJob app-ns/nightly: initContainer sidecar containerPort 15090/TCP, container web containerPort 9090/TCP \
                 and ephemeralContainer debugger containerPort 2345/TCP not allowed; policy one-port allows containerPorts 8080"
                    .into()
            )
        );
    }

    #[rstest]
    #[case("{}", "params: set containerPorts, hostPorts or both")]
    #[case("containerPorts: [0]", "`0` is not a port")]
    #[case("containerPorts: [65536]", "`65536` is not a port")]
    #[case("containerPorts: [9000-8000]", "the range ends before it starts")]
    #[case("containerPorts: [http]", "`http` is not a port")]
    #[case("containerPorts: [80-]", "`80-` is not a port")]
    #[case(
        "{containerPorts: [80], allowHostNetwork: true}",
        "params.allowHostNetwork: only means something with hostPorts"
    )]
    #[case(
        "{hostPorts: [], exemptImages: ['a*b/*']}",
        "params.exemptImages[0]: `a*b/*` may hold `*` only at the end"
    )]
    fn bad_params(#[case] yaml: &str, #[case] expected: &str) {
        let err = match serde_yaml::from_str::<Ports>(yaml) {
            Ok(p) => p.validate().unwrap_err(),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn full_range_bounds_parse() {
        let p = policy("containerPorts: ['1-65535']\n");
        for port in [1, 65535] {
            let got = p.evaluate("all", &create(with_port(json!({"containerPort": port}))));
            assert_eq!(got, Outcome::Pass);
        }
    }
}
