//! The requests of the OCI distribution API that a pull makes, parsed and validated.
//!
//! Only reads exist here: `GET /v2/` (the version check), `GET|HEAD /v2/<name>/manifests/<ref>`
//! and `GET|HEAD /v2/<name>/blobs/<digest>`. Every part that later names an image or a file is
//! checked against the distribution spec's grammar, so nothing a client sends can reach a
//! command line or a path unvalidated.

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check every client starts with.
    Base,
    /// A manifest (or index) by tag or digest, as the image reference it resolves to.
    Manifest { image: String },
    /// A blob by digest (`sha256:<64 hex>`).
    Blob { digest: String },
}

/// A request that is not one of the reads above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("method {0} is not allowed: this mirror only serves pulls (GET and HEAD)")]
    Method(String),
    #[error("{0}: not a path of the registry API this mirror serves (/v2/, manifests, blobs)")]
    NotFound(String),
    #[error("invalid {what} {input:?} in the request")]
    Invalid { what: &'static str, input: String },
}

/// The registry a mirrored request was meant for: containerd adds `?ns=<host>` when it asks a
/// mirror. Without it the request names docker.io, as a reference without a host does.
pub fn upstream_registry(query: &str) -> &str {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ns="))
        .filter(|h| !h.is_empty())
        .unwrap_or("docker.io")
}

/// Parses `method` and the request target (path and query).
pub fn parse(method: &str, target: &str) -> Result<Route, RouteError> {
    if method != "GET" && method != "HEAD" {
        return Err(RouteError::Method(method.to_owned()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Base);
    }
    let not_found = || RouteError::NotFound(path.to_owned());
    let rest = path.strip_prefix("/v2/").ok_or_else(not_found)?;
    // The name may itself hold slashes, so split at the last "/manifests/" or "/blobs/".
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        check_name(name)?;
        let registry = upstream_registry(query);
        check_registry(registry)?;
        let image = if reference.starts_with("sha256:") {
            check_digest(reference)?;
            format!("{registry}/{name}@{reference}")
        } else {
            check_tag(reference)?;
            format!("{registry}/{name}:{reference}")
        };
        return Ok(Route::Manifest { image });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        check_name(name)?;
        check_digest(digest)?;
        return Ok(Route::Blob {
            digest: digest.to_owned(),
        });
    }
    Err(not_found())
}

fn invalid(what: &'static str, input: &str) -> RouteError {
    RouteError::Invalid {
        what,
        input: input.to_owned(),
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
fn check_name(name: &str) -> Result<(), RouteError> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    };
    if name.len() <= 255 && name.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(invalid("repository name", name))
    }
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
fn check_tag(tag: &str) -> Result<(), RouteError> {
    let ok = (1..=128).contains(&tag.len())
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.starts_with('_'))
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(invalid("tag", tag)) }
}

/// Only sha256, the digest every image here is addressed by.
fn check_digest(digest: &str) -> Result<(), RouteError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(invalid("digest", digest)),
    }
}

/// A host name with an optional port, as containerd passes it in `ns`.
fn check_registry(host: &str) -> Result<(), RouteError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid("registry", host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pulls_parse_to_the_image_they_name() {
        assert_eq!(parse("GET", "/v2/").unwrap(), Route::Base);
        assert_eq!(
            parse(
                "HEAD",
                "/v2/e2e-test-images/kitten/manifests/1.8?ns=registry.k8s.io"
            )
            .unwrap(),
            Route::Manifest {
                image: "registry.k8s.io/e2e-test-images/kitten:1.8".into()
            }
        );
        assert_eq!(
            parse("GET", "/v2/library/busybox/manifests/1.37-local").unwrap(),
            Route::Manifest {
                image: "docker.io/library/busybox:1.37-local".into()
            }
        );
        assert_eq!(
            parse("GET", &format!("/v2/pause/manifests/{D}?ns=registry.k8s.io")).unwrap(),
            Route::Manifest {
                image: format!("registry.k8s.io/pause@{D}")
            }
        );
        assert_eq!(
            parse("GET", &format!("/v2/a/b/c/blobs/{D}?ns=localhost")).unwrap(),
            Route::Blob { digest: D.into() }
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        assert!(matches!(parse("PUT", "/v2/"), Err(RouteError::Method(_))));
        assert!(matches!(
            parse("GET", "/etc/passwd"),
            Err(RouteError::NotFound(_))
        ));
        assert!(matches!(
            parse("GET", "/v2/x/tags/list"),
            Err(RouteError::NotFound(_))
        ));
        for bad in [
            "/v2/../etc/manifests/1",
            "/v2/UPPER/manifests/1",
            "/v2/a//b/manifests/1",
            "/v2/a/manifests/-x",
            "/v2/a/manifests/a b",
            "/v2/a/blobs/sha256:../../x",
            "/v2/a/blobs/md5:0123",
            "/v2/a/manifests/1?ns=evil;rm",
        ] {
            let err = parse("GET", bad).unwrap_err();
            assert!(matches!(err, RouteError::Invalid { .. }), "{bad}: {err}");
        }
    }
}
