//! Which AWS credential source the environment and the shared files name (the order of
//! the AWS SDKs' default chain; see `credentials.rs` for how each one fetches), and the
//! partition's DNS suffix.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::super::Hidden;
use super::credentials::{CredentialProvider, Source};
use crate::error::{Error, Result};
use crate::transport::HttpTransport;

/// The DNS suffix of a region's partition: China regions are under `amazonaws.com.cn`.
pub(crate) fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// What the environment and the shared files say: the region, the endpoints and where the
/// credentials come from.
pub(crate) struct Found {
    pub(crate) region: Option<String>,
    pub(crate) provider: CredentialProvider,
}

/// The first source of the chain that the variables (read through `var`) and the shared
/// files name. `region` is the region in use, for the STS endpoint.
pub(crate) fn find(
    var: &dyn Fn(&str) -> Option<String>,
    region: Option<&str>,
    http: Arc<dyn HttpTransport>,
) -> Result<Found> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    // 1. The environment.
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => {
            return Ok(Found {
                region: None,
                provider: CredentialProvider::fixed(
                    "environment",
                    id,
                    secret,
                    get("AWS_SESSION_TOKEN"),
                    http,
                ),
            })
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::config(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: set both, or neither \
                 to use a profile, web identity, the container endpoint or instance metadata",
            ))
        }
        (None, None) => {}
    }
    // 2. The shared files.
    let home = get("HOME").or_else(|| get("USERPROFILE"));
    let path = |name: &str, default: &str| -> Option<String> {
        let p = get(name).or_else(|| home.as_ref().map(|h| format!("{h}/{default}")))?;
        Some(match (p.strip_prefix("~/"), &home) {
            (Some(rest), Some(h)) => format!("{h}/{rest}"),
            _ => p,
        })
    };
    let explicit = get("AWS_PROFILE");
    let name = explicit.clone().unwrap_or_else(|| "default".into());
    let mut profile = BTreeMap::new();
    let mut seen = false;
    if let Some(p) = path("AWS_CONFIG_FILE", ".aws/config") {
        if let Some(section) = read_profile(&p, &name, true)? {
            seen = true;
            profile.extend(section);
        }
    }
    if let Some(p) = path("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials") {
        if let Some(section) = read_profile(&p, &name, false)? {
            seen = true;
            profile.extend(section);
        }
    }
    if explicit.is_some() && !seen {
        return Err(Error::config(format!(
            "AWS_PROFILE={name} names a profile that is in neither the shared credentials file \
             nor the config file (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE)"
        )));
    }
    let profile_region = profile.get("region").cloned();
    let region = region.map(str::to_string).or(profile_region.clone());
    let sts_endpoint = || -> Result<String> {
        if let Some(url) = get("AWS_ENDPOINT_URL_STS").or_else(|| get("AWS_ENDPOINT_URL")) {
            return Ok(url);
        }
        let region = region.as_deref().ok_or_else(|| {
            Error::config("web identity credentials need a region (AWS_REGION) for STS")
        })?;
        Ok(format!("https://sts.{region}.{}/", dns_suffix(region)))
    };
    let session_name = || {
        get("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("strongroom-{now}")
        })
    };
    let found = |provider| {
        Ok(Found {
            region: profile_region.clone(),
            provider,
        })
    };
    match (
        profile.get("aws_access_key_id"),
        profile.get("aws_secret_access_key"),
    ) {
        (Some(id), Some(secret)) => {
            return found(CredentialProvider::fixed(
                "shared profile",
                id.clone(),
                secret.clone(),
                profile.get("aws_session_token").cloned(),
                http,
            ))
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::config(format!(
                "the AWS profile `{name}` has only one of aws_access_key_id and \
                 aws_secret_access_key"
            )))
        }
        (None, None) => {}
    }
    if let (Some(role_arn), Some(token_file)) = (
        profile.get("role_arn"),
        profile.get("web_identity_token_file"),
    ) {
        return found(CredentialProvider::fetching(
            Source::WebIdentity {
                token_file: token_file.clone(),
                role_arn: role_arn.clone(),
                session_name: profile
                    .get("role_session_name")
                    .cloned()
                    .unwrap_or_else(session_name),
                sts_endpoint: sts_endpoint()?,
            },
            http,
        ));
    }
    if profile.contains_key("role_arn")
        || profile.contains_key("credential_process")
        || profile.contains_key("sso_session")
        || profile.contains_key("sso_start_url")
    {
        return Err(Error::config(format!(
            "the AWS profile `{name}` uses a role with a source profile, a credential process \
             or SSO, which strongroom does not run: use static keys, web identity, the \
             container endpoint or instance metadata (docs/DEPLOYMENT.md)"
        )));
    }
    if explicit.is_some() {
        return Err(Error::config(format!(
            "the AWS profile `{name}` holds no credentials (aws_access_key_id and \
             aws_secret_access_key, or role_arn and web_identity_token_file)"
        )));
    }
    // 3. Web identity.
    match (get("AWS_WEB_IDENTITY_TOKEN_FILE"), get("AWS_ROLE_ARN")) {
        (Some(token_file), Some(role_arn)) => {
            return found(CredentialProvider::fetching(
                Source::WebIdentity {
                    token_file,
                    role_arn,
                    session_name: session_name(),
                    sts_endpoint: sts_endpoint()?,
                },
                http,
            ))
        }
        (Some(_), None) => {
            return Err(Error::config(
                "AWS_WEB_IDENTITY_TOKEN_FILE is set without AWS_ROLE_ARN: set the role to assume",
            ))
        }
        _ => {}
    }
    // 4. The container endpoint.
    let token = get("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(Hidden::new);
    let token_file = get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    if let Some(relative) = get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        if !relative.starts_with('/') {
            return Err(Error::invalid(
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "must be a path starting with /",
            ));
        }
        return found(CredentialProvider::fetching(
            Source::Container {
                url: format!("http://169.254.170.2{relative}"),
                token,
                token_file,
            },
            http,
        ));
    }
    if let Some(full) = get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        check_container_uri(&full)?;
        return found(CredentialProvider::fetching(
            Source::Container {
                url: full,
                token,
                token_file,
            },
            http,
        ));
    }
    // 5. Instance metadata.
    if get("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(Error::config(
            "no AWS credentials: none in the environment (AWS_ACCESS_KEY_ID), the shared \
             files (AWS_PROFILE), web identity (AWS_WEB_IDENTITY_TOKEN_FILE) or the \
             container endpoint (AWS_CONTAINER_CREDENTIALS_*), and instance metadata is \
             disabled (AWS_EC2_METADATA_DISABLED)",
        ));
    }
    let endpoint = get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|| "http://169.254.169.254".into())
        .trim_end_matches('/')
        .to_string();
    found(CredentialProvider::fetching(
        Source::Imds { endpoint },
        http,
    ))
}

/// The SDKs send the container authorization token only to HTTPS, to the loopback
/// interface, or to the ECS and EKS link-local endpoints: never over plain HTTP elsewhere.
fn check_container_uri(full: &str) -> Result<()> {
    let uri: http::Uri = full
        .parse()
        .map_err(|_| Error::invalid("AWS_CONTAINER_CREDENTIALS_FULL_URI", "is not a URL"))?;
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let allowed = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => {
            host == "localhost"
                || host.parse::<IpAddr>().is_ok_and(|ip| {
                    ip.is_loopback()
                        || ip == IpAddr::from([169, 254, 170, 2])
                        || ip == IpAddr::from([169, 254, 170, 23])
                        || ip == "fd00:ec2::23".parse::<IpAddr>().expect("an address")
                })
        }
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::invalid(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "must be https, or http to the loopback interface or the ECS / EKS endpoints \
             (169.254.170.2, 169.254.170.23, fd00:ec2::23)",
        ))
    }
}

/// The section for profile `name` of a shared file (`[name]` in the credentials file;
/// `[profile name]`, or `[default]`, in the config file), or none when the file or section
/// is missing. Keys are lower-cased; `#` and `;` start comments.
fn read_profile(
    path: &str,
    name: &str,
    config_file: bool,
) -> Result<Option<BTreeMap<String, String>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let wanted = |header: &str| -> bool {
        let header = header.trim();
        if config_file && name != "default" {
            header
                .strip_prefix("profile")
                .is_some_and(|rest| rest.starts_with(char::is_whitespace) && rest.trim() == name)
        } else {
            header == name
                || (config_file
                    && header
                        .strip_prefix("profile")
                        .is_some_and(|r| r.trim() == name))
        }
    };
    let mut section: Option<BTreeMap<String, String>> = None;
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = wanted(header);
            if inside && section.is_none() {
                section = Some(BTreeMap::new());
            }
            continue;
        }
        if !inside {
            continue;
        }
        if let (Some(map), Some((k, v))) = (section.as_mut(), line.split_once('=')) {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_uris_that_may_carry_the_token() {
        for ok in [
            "https://creds.example.com/x",
            "http://127.0.0.1:8080/creds",
            "http://localhost/creds",
            "http://169.254.170.2/v2/credentials/x",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
        ] {
            assert!(check_container_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://creds.example.com/x",
            "http://10.0.0.5/creds",
            "ftp://127.0.0.1/x",
            "not a url",
        ] {
            assert!(check_container_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared_file_sections() {
        let dir = std::env::temp_dir().join(format!("sr-aws-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("config");
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n\n[profile ci]\n# comment\nrole_arn = arn:aws:iam::1:role/r\n\
             web_identity_token_file=/t\n[profile cin]\nregion=cn-north-1\n",
        )
        .expect("write");
        let p = config.to_str().expect("utf-8");
        let d = read_profile(p, "default", true)
            .expect("read")
            .expect("default");
        assert_eq!(d["region"], "eu-west-1");
        let ci = read_profile(p, "ci", true).expect("read").expect("ci");
        assert_eq!(ci["web_identity_token_file"], "/t");
        assert!(!ci.contains_key("region"));
        assert!(read_profile(p, "c", true).expect("read").is_none());
        assert!(read_profile(&format!("{p}.missing"), "ci", true)
            .expect("a missing file is no profile")
            .is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn china_regions_use_the_cn_suffix() {
        assert_eq!(dns_suffix("cn-north-1"), "amazonaws.com.cn");
        assert_eq!(dns_suffix("cn-northwest-1"), "amazonaws.com.cn");
        assert_eq!(dns_suffix("eu-west-1"), "amazonaws.com");
    }
}
