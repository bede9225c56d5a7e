//! Checks, names, dates and path encoding.

use super::*;

pub(super) fn check_scopes(scopes: &[String]) -> Result<()> {
    if scopes.is_empty() {
        return Err(Error::invalid(
            "gitlab provider scopes",
            format!(
                "at least one scope is needed, from: {}",
                KNOWN_SCOPES.join(", ")
            ),
        ));
    }
    for (i, scope) in scopes.iter().enumerate() {
        if !KNOWN_SCOPES.contains(&scope.as_str()) {
            let shown: String = scope.chars().filter(|c| !c.is_control()).take(40).collect();
            return Err(Error::invalid(
                "gitlab provider scopes",
                format!(
                    "`{shown}` is not a GitLab token scope; use one of: {}",
                    KNOWN_SCOPES.join(", ")
                ),
            ));
        }
        if scopes[..i].contains(scope) {
            return Err(Error::invalid(
                "gitlab provider scopes",
                format!("`{scope}` is listed twice"),
            ));
        }
    }
    Ok(())
}

pub(super) fn check_access_level(level: u32) -> Result<()> {
    if ACCESS_LEVELS.contains(&level) {
        Ok(())
    } else {
        Err(Error::invalid(
            "gitlab provider access_level",
            format!(
                "{level} is not a GitLab role; use 10 (Guest), 15 (Planner), 20 (Reporter), \
                 30 (Developer), 40 (Maintainer) or 50 (Owner)"
            ),
        ))
    }
}

pub(super) fn check_agent_id(agent_id: &str) -> Result<()> {
    if agent_id.trim().is_empty() {
        return Err(Error::invalid("agent id", "is empty"));
    }
    if agent_id.chars().count() > 255 || agent_id.chars().any(char::is_control) {
        return Err(Error::invalid(
            "agent id",
            "must be at most 255 characters without control characters",
        ));
    }
    Ok(())
}

pub(super) fn check_token_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid("gitlab token name", "is empty"));
    }
    if name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "gitlab token name",
            "must be at most 255 characters without control characters",
        ));
    }
    Ok(())
}

/// The agent id with characters outside letters, digits, space, `_ . - ( )` replaced by `-`,
/// at most 180 characters (so the display name stays under GitLab's 255).
pub(super) fn agent_label(agent_id: &str) -> String {
    agent_id
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-' | '(' | ')') {
                c
            } else {
                '-'
            }
        })
        .take(180)
        .collect()
}

pub(super) fn display_name(agent_id: &str) -> String {
    format!("strongroom agent {}", agent_label(agent_id))
}

/// `strongroom-<slug>-<hash12>` (see [`GitlabProviderConfig::service_account_username`]).
pub(super) fn derive_username(target: &str, agent_id: &str) -> String {
    let mut slug = String::new();
    for c in agent_id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.truncate(32);
    let slug = slug.trim_end_matches('-');
    let mut hasher = Sha256::new();
    hasher.update(b"strongroom gitlab service account\0");
    hasher.update(target.as_bytes());
    hasher.update(b"\0");
    hasher.update(agent_id.as_bytes());
    let digest = hex::encode(hasher.finalize());
    let short = &digest[..12];
    if slug.is_empty() {
        format!("strongroom-{short}")
    } else {
        format!("strongroom-{slug}-{short}")
    }
}

/// GitLab's username rules: 1 to 255 characters of letters, digits, `_`, `.`, `-`;
/// starting and ending with a letter or digit; no two special characters in a row; not
/// ending in `.git` or `.atom`.
pub fn is_valid_username(name: &str) -> bool {
    let special = |c: char| matches!(c, '_' | '.' | '-');
    let (Some(first), Some(last)) = (name.chars().next(), name.chars().last()) else {
        return false;
    };
    name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || special(c))
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && !name
            .as_bytes()
            .windows(2)
            .any(|w| special(w[0] as char) && special(w[1] as char))
        && !name.ends_with(".git")
        && !name.ends_with(".atom")
}

/// `YYYY-MM-DD`.
pub fn format_date(date: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// A `YYYY-MM-DD` date (GitLab's `expires_at`); `None` when it is not one.
pub fn parse_date(text: &str) -> Option<Date> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.get(..2)?.parse().ok()?;
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

/// One path segment percent-encoded: everything but `A-Z a-z 0-9 - . _ ~` (so
/// `group/sub` becomes `group%2Fsub`).
pub(super) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
