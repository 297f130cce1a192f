//! `exemptImages`: per-image exemptions for the kinds that look at containers (`registries`,
//! `resources`, `ports`), as in gatekeeper's library.
//!
//! An entry is an image written with its registry host (`safeimages.com/istio/proxyv2:1.22`)
//! or such a prefix followed by a single trailing `*` (`safeimages.com/*`,
//! `ghcr.io/acme/agent:*`). It is compared with the container's image in its normalised form
//! (`registry/repository[:tag][@digest]`, `nginx` being `docker.io/library/nginx`), so
//! `safeimages.com/*` never covers `safeimages.com.evil.io/x`. An image that is not a valid
//! reference is never exempt.

use std::fmt;

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

    /// Whether there are no entries.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the container image `image` is exempt.
    pub(crate) fn covers(&self, image: Option<&str>) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        match image.map(ImageRef::parse) {
            Some(Ok(r)) => self.covers_ref(&r),
            _ => false,
        }
    }

    /// Whether the parsed image `r` is exempt: its normalised form
    /// (`registry/repository[:tag][@digest]`) equals an entry, or starts with an entry's text
    /// before its `*`. Compared piece by piece, without building either string.
    pub(crate) fn covers_ref(&self, r: &ImageRef<'_>) -> bool {
        self.entries.iter().any(|e| {
            let (body, prefix) = match e.strip_suffix('*') {
                Some(b) => (b, true),
                None => (e.as_str(), false),
            };
            // validate() made sure of the slash.
            let (host, rest) = body.split_once('/').unwrap_or((body, ""));
            let host = if host.eq_ignore_ascii_case("index.docker.io") {
                "docker.io"
            } else {
                host
            };
            let entry = host
                .bytes()
                .map(|b| b.to_ascii_lowercase())
                .chain(*b"/")
                .chain(rest.bytes());
            let mut image = r.normal_bytes();
            for want in entry {
                if image.next() != Some(want) {
                    return false;
                }
            }
            prefix || image.next().is_none()
        })
    }
}

/// Why a string is not an image reference (the texts of the distribution/reference library).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefError {
    /// Empty string.
    Empty,
    /// Does not follow `[host[:port]/]path[:tag][@digest]`.
    Format,
    /// The tag is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    Tag,
    /// The repository is longer than 255 characters.
    TooLong,
    /// The digest is not `algorithm:hex`.
    DigestFormat,
    /// The digest's hex has the wrong length for its algorithm.
    DigestLength,
    /// The digest's algorithm is not sha256, sha384 or sha512.
    DigestAlgorithm,
}

impl fmt::Display for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefError::Empty => "repository name must have at least one component",
            RefError::Format => "invalid reference format",
            RefError::Tag => "invalid tag format",
            RefError::TooLong => "repository name must not be more than 255 characters",
            RefError::DigestFormat => "invalid checksum digest format",
            RefError::DigestLength => "invalid checksum digest length",
            RefError::DigestAlgorithm => "unsupported digest algorithm",
        })
    }
}

/// An image reference parsed by hand, borrowing from the image string, with the
/// distribution/reference grammar and normalisation that `oci-spec`'s parser implements (tested
/// against it): `nginx` is `docker.io/library/nginx:latest`, `index.docker.io` is `docker.io`,
/// a first path component is a registry host only when it has a `.` or a `:` or is
/// `localhost`. Tags are ASCII, as in the Go grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageRef<'a> {
    /// The registry host with its port, as written (`docker.io` for Docker Hub).
    registry: &'a str,
    /// Whether the repository is `library/` followed by `name` (a Docker Hub official image
    /// written without it).
    library: bool,
    /// The repository (without the implied `library/`).
    name: &'a str,
    /// The tag; `latest` when neither a tag nor a digest is written.
    tag: Option<&'a str>,
    /// `algorithm:hex`.
    digest: Option<&'a str>,
}

const LIBRARY: &str = "library/";

impl<'a> ImageRef<'a> {
    /// Parses `image`.
    pub(crate) fn parse(image: &'a str) -> Result<Self, RefError> {
        if image.is_empty() {
            return Err(RefError::Empty);
        }
        // The separators are ASCII, found byte by byte (references are short: a char
        // pattern's searcher costs more than the search).
        let (left, digest) = match split_once_byte(image, b'@') {
            Some((l, d)) => (l, Some(d)),
            None => (image, None),
        };
        let last = rfind_byte(left, b'/').map_or(0, |i| i + 1);
        let (name, tag) = match find_byte(&left[last..], b':') {
            Some(c) => (&left[..last + c], Some(&left[last + c + 1..])),
            None => (left, None),
        };
        if !valid_name(name) {
            return Err(RefError::Format);
        }
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(RefError::Tag);
        }
        let hex = match digest {
            Some(d) => Some(digest_hex(d).ok_or(RefError::DigestFormat)?),
            None => None,
        };
        // Docker's normalisation of the name.
        let (mut registry, mut rest) = ("docker.io", name);
        if let Some((first, after)) = split_once_byte(name, b'/')
            && (first.bytes().any(|b| b == b'.' || b == b':') || first == "localhost")
        {
            registry = first;
            rest = after;
        }
        if registry == "index.docker.io" {
            registry = "docker.io";
        }
        let library = registry == "docker.io" && find_byte(rest, b'/').is_none();
        let r = Self {
            registry,
            library,
            name: rest,
            tag: tag.or(if digest.is_none() {
                Some("latest")
            } else {
                None
            }),
            digest,
        };
        if r.repository_len() > 255 {
            return Err(RefError::TooLong);
        }
        if let (Some(d), Some(hex)) = (digest, hex) {
            let want = match d.split_once(':').map_or("", |(algo, _)| algo) {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => return Err(RefError::DigestAlgorithm),
            };
            if hex.len() != want {
                return Err(RefError::DigestLength);
            }
        }
        Ok(r)
    }

    /// The registry host with its port (`docker.io` for Docker Hub).
    pub(crate) fn registry(&self) -> &'a str {
        self.registry
    }

    /// The tag (`latest` when the image names neither a tag nor a digest).
    pub(crate) fn tag(&self) -> Option<&'a str> {
        self.tag
    }

    /// The digest, `algorithm:hex`.
    pub(crate) fn digest(&self) -> Option<&'a str> {
        self.digest
    }

    fn repository_len(&self) -> usize {
        self.name.len() + if self.library { LIBRARY.len() } else { 0 }
    }

    /// The repository (`library/nginx`), as a display.
    pub(crate) fn repository(&self) -> impl fmt::Display + 'a {
        let (library, name) = (self.library, self.name);
        DisplayFn(move |f: &mut fmt::Formatter<'_>| {
            if library {
                f.write_str(LIBRARY)?;
            }
            f.write_str(name)
        })
    }

    /// Whether the repository is `path`.
    pub(crate) fn repository_is(&self, path: &str) -> bool {
        if self.library {
            path.strip_prefix(LIBRARY) == Some(self.name)
        } else {
            self.name == path
        }
    }

    /// Whether the repository is `path` or continues it after a `/` (`path` non-empty).
    pub(crate) fn repository_under(&self, path: &str) -> bool {
        fn under(repo: &str, path: &str) -> bool {
            repo.strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
        if self.library {
            path == "library"
                || path
                    .strip_prefix(LIBRARY)
                    .is_some_and(|p| !p.is_empty() && under(self.name, p))
        } else {
            under(self.name, path)
        }
    }

    /// `registry/repository[:tag][@digest]`, the registry lower-cased, as bytes.
    fn normal_bytes(&self) -> impl Iterator<Item = u8> + 'a {
        let lib: &'static [u8] = if self.library {
            LIBRARY.as_bytes()
        } else {
            b""
        };
        let tag = self.tag.map(|t| t.as_bytes()).unwrap_or_default();
        let digest = self.digest.map(|d| d.as_bytes()).unwrap_or_default();
        self.registry
            .bytes()
            .map(|b| b.to_ascii_lowercase())
            .chain(*b"/")
            .chain(lib.iter().copied())
            .chain(self.name.bytes())
            .chain(self.tag.map(|_| b':'))
            .chain(tag.iter().copied())
            .chain(self.digest.map(|_| b'@'))
            .chain(digest.iter().copied())
    }
}

struct DisplayFn<F>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for DisplayFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// `[host[:port]/]component(/component)*`: either every `/`-separated part is a path
/// component, or the first is a registry host and the others (at least one) are.
fn valid_name(name: &str) -> bool {
    let mut parts = name.as_bytes().split(|&b| b == b'/');
    let first = parts.next().unwrap_or_default();
    let rest_ok = parts.clone().all(valid_component);
    if !rest_ok {
        return false;
    }
    valid_component(first) || (parts.next().is_some() && valid_domain(first))
}

/// The first `b` (an ASCII byte) in `s`.
fn find_byte(s: &str, b: u8) -> Option<usize> {
    s.bytes().position(|x| x == b)
}

/// The last `b` (an ASCII byte) in `s`.
fn rfind_byte(s: &str, b: u8) -> Option<usize> {
    s.bytes().rposition(|x| x == b)
}

/// `s` around its first `b` (an ASCII byte, so both sides are whole text).
fn split_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    let i = find_byte(s, b)?;
    Some((&s[..i], &s[i + 1..]))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(b: &[u8]) -> bool {
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `label(\.label)*(:[0-9]+)?`, a label being `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`.
fn valid_domain(d: &[u8]) -> bool {
    let (host, port) = match d.iter().position(|&b| b == b':') {
        Some(i) => (&d[..i], Some(&d[i + 1..])),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.iter().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    host.split(|&b| b == b'.').all(|b| {
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
    })
}

/// `[\w][\w.-]{0,127}` (ASCII word characters).
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// The hex of a digest `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}`.
fn digest_hex(d: &str) -> Option<&str> {
    let (algo, hex) = d.split_once(':')?;
    let ok_algo = algo.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    });
    (ok_algo && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
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

    /// What `oci-spec`'s regex parser makes of `image`, in the same shape.
    fn oracle(image: &str) -> Option<(String, String, Option<String>, Option<String>)> {
        let r = oci_spec::distribution::Reference::try_from(image).ok()?;
        Some((
            r.registry().to_owned(),
            r.repository().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(str::to_owned),
        ))
    }

    fn mine(image: &str) -> Option<(String, String, Option<String>, Option<String>)> {
        let r = ImageRef::parse(image).ok()?;
        Some((
            r.registry().to_owned(),
            r.repository().to_string(),
            r.tag().map(str::to_owned),
            r.digest().map(str::to_owned),
        ))
    }

    const HEX64: &str = "4b7ce07a7c0f1e3ef2f39b36ad4e8a5c4a2b3b8b8e1e1f5f6a7b8c9d0e1f2a3b";

    #[rstest]
    #[case("nginx")]
    #[case("nginx:1.27")]
    #[case("library/nginx")]
    #[case("docker.io/nginx")]
    #[case("index.docker.io/nginx")]
    #[case("Index.Docker.IO/nginx")]
    #[case("docker.io")]
    #[case("test.com:5000")]
    #[case("test.com:tag")]
    #[case("localhost/app")]
    #[case("localhost:5000/app:1")]
    #[case("Localhost/app")]
    #[case("Foo/bar")]
    #[case("MyRegistry.IO/app:1.2")]
    #[case("myregistry.io/App")]
    #[case("foo_bar.com:8080")]
    #[case("foo/foo_bar.com:8080")]
    #[case("a_b.c/d")]
    #[case("a__b/c")]
    #[case("a___b/c")]
    #[case("a--b/c-d")]
    #[case("a-/b")]
    #[case("a./b")]
    #[case(".a/b")]
    #[case("a..b/c")]
    #[case("a._b")]
    #[case("host:5000/a/b/c:v1")]
    #[case("host:/a")]
    #[case("host:50a/a")]
    #[case("-host.io/a")]
    #[case("ho-st.io/a")]
    #[case("ho_st.io:1/a")]
    #[case("a//b")]
    #[case("a/")]
    #[case("/a")]
    #[case("a:")]
    #[case(":a")]
    #[case("a:b:c")]
    #[case("a:_b")]
    #[case("a:.b")]
    #[case("a:-b")]
    #[case("a:B.b-_9")]
    #[case("lowercase:Uppercase")]
    #[case("sha256:4b7ce07a7c0f")]
    #[case("a@sha256:abc")]
    #[case("a@sha256")]
    #[case("a@@sha256:0000")]
    #[case("a@md5:0123456789abcdef0123456789abcdef")]
    #[case("a@sha256-x:0123456789abcdef0123456789abcdef")]
    #[case("a@sha256+-x:0123456789abcdef0123456789abcdef")]
    #[case("a@1sha:0123456789abcdef0123456789abcdef")]
    #[case("Not A Reference")]
    #[case("a b")]
    #[case("")]
    fn parses_as_oci_spec_does(#[case] image: &str) {
        assert_eq!(mine(image), oracle(image), "{image}");
    }

    /// The one intended difference: `oci-spec`'s regex takes `\w` as Unicode, the Go grammar
    /// (what the kubelet and containerd parse with) as ASCII. Such a tag is refused.
    #[test]
    fn non_ascii_tags_are_refused() {
        assert!(oracle("a:é").is_some());
        assert_eq!(ImageRef::parse("a:é"), Err(RefError::Tag));
    }

    #[test]
    fn digests_tags_and_lengths_as_oci_spec() {
        let long = "a".repeat(250);
        let cases = [
            format!("nginx@sha256:{HEX64}"),
            format!("nginx:1@sha256:{HEX64}"),
            format!("nginx:1@sha256:{}", HEX64.to_uppercase()),
            format!("nginx@sha256:{HEX64}0"),
            format!("nginx@sha384:{HEX64}{}", &HEX64[..32]),
            format!("nginx@sha512:{HEX64}{HEX64}"),
            format!("nginx@sha512:{HEX64}"),
            format!("nginx@sha1:{HEX64}"),
            format!("ghcr.io/acme/web@sha256:{HEX64}"),
            long.clone(),
            "a".repeat(247),
            "a".repeat(248),
            format!("x.io/{}", "a".repeat(255)),
            format!("x.io/{}", "a".repeat(256)),
            format!("a:{}", "t".repeat(128)),
            format!("a:{}", "t".repeat(129)),
        ];
        for image in &cases {
            assert_eq!(mine(image), oracle(image), "{image}");
        }
    }

    /// Every string over a small alphabet of the grammar's characters, up to four long, and
    /// a few thousand longer ones built from grammar pieces: the hand parser and the oracle
    /// agree on all of them.
    #[test]
    fn agrees_with_oci_spec_on_generated_strings() {
        let alphabet = ['a', 'B', '1', '.', '_', '-', ':', '/', '@'];
        let mut checked = 0;
        let mut stack = vec![String::new()];
        while let Some(s) = stack.pop() {
            assert_eq!(mine(&s), oracle(&s), "{s:?}");
            checked += 1;
            if s.len() < 4 {
                for c in alphabet {
                    stack.push(format!("{s}{c}"));
                }
            }
        }
        let pieces = [
            "a",
            "b0",
            "x.io",
            "x.io:5000",
            "localhost",
            "docker.io",
            "index.docker.io",
            "/",
            "/",
            ":",
            ":v1",
            "_",
            "__",
            "-",
            "--",
            ".",
            "@sha256:",
            HEX64,
            "Up",
            "library",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut s = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = 1 + (seed % 6) as usize;
            let mut x = seed;
            for _ in 0..n {
                s.push_str(pieces[(x % pieces.len() as u64) as usize]);
                x /= pieces.len() as u64;
            }
            assert_eq!(mine(&s), oracle(&s), "{s:?}");
            checked += 1;
        }
        assert!(checked > 20_000);
    }

    #[rstest]
    #[case("nginx", "docker.io/library/nginx:latest")]
    #[case("Index.Docker.IO/library/nginx:1", "index.docker.io/library/nginx:1")]
    #[case(
        "MyReg.io:5000/a/b@sha256:4b7ce07a7c0f1e3ef2f39b36ad4e8a5c4a2b3b8b8e1e1f5f6a7b8c9d0e1f2a3b",
        "myreg.io:5000/a/b@sha256:4b7ce07a7c0f1e3ef2f39b36ad4e8a5c4a2b3b8b8e1e1f5f6a7b8c9d0e1f2a3b"
    )]
    fn normal_form(#[case] image: &str, #[case] normal: &str) {
        let r = ImageRef::parse(image).unwrap();
        assert_eq!(
            String::from_utf8(r.normal_bytes().collect()).unwrap(),
            normal
        );
    }

    #[rstest]
    #[case("nginx", "library", true)]
    #[case("nginx", "library/nginx", true)]
    #[case("nginx", "library/ngin", false)]
    #[case("nginx", "lib", false)]
    #[case("team/app", "team", true)]
    #[case("team/app", "tea", false)]
    #[case("team/app", "team/app", true)]
    #[case("x.io/team/app/api", "team/app", true)]
    #[case("x.io/team-evil/app", "team", false)]
    fn repository_prefixes(#[case] image: &str, #[case] path: &str, #[case] under: bool) {
        let r = ImageRef::parse(image).unwrap();
        assert_eq!(r.repository_under(path), under, "{image} under {path}");
        let repo = r.repository().to_string();
        assert_eq!(r.repository_is(path), repo == path);
    }
}
