//! Live verification templates: `{field}` placeholders in a provider's endpoint and auth
//! headers, filled from one credential's own fields only.

use zeroize::Zeroizing;

/// One piece of a template.
enum Piece<'a> {
    Text(&'a str),
    Field(&'a str),
    /// `{basic:user:password}`: base64 of `user:password`.
    Basic(&'a str, &'a str),
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "a `{` has no closing `}`".to_string())?;
        let inner = &after[..close];
        let valid = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        match inner.strip_prefix("basic:") {
            Some(pair) => match pair.split_once(':') {
                Some((u, p)) if valid(u) && valid(p) => out.push(Piece::Basic(u, p)),
                _ => {
                    return Err(format!(
                        "`{{{inner}}}` must be `{{basic:user_field:password_field}}`"
                    ))
                }
            },
            None if valid(inner) => out.push(Piece::Field(inner)),
            None => return Err(format!("`{{{inner}}}` is not a field placeholder")),
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("a `}` has no opening `{`".into());
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// The field names a template uses.
pub(crate) fn placeholders(template: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for piece in pieces(template)? {
        match piece {
            Piece::Text(_) => {}
            Piece::Field(n) => names.push(n.to_string()),
            Piece::Basic(u, p) => {
                names.push(u.to_string());
                names.push(p.to_string());
            }
        }
    }
    Ok(names)
}

/// Fills a template; `lookup` gives a field's value (`None`: the credential lacks it).
pub(crate) fn render(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<Zeroizing<String>>,
) -> Result<Zeroizing<String>, String> {
    use base64::Engine;
    let mut out = Zeroizing::new(String::with_capacity(template.len() + 64));
    let missing = |n: &str| format!("the credential has no `{n}` field, which the template uses");
    for piece in pieces(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Field(n) => out.push_str(&lookup(n).ok_or_else(|| missing(n))?),
            Piece::Basic(u, p) => {
                let user = lookup(u).ok_or_else(|| missing(u))?;
                let pass = lookup(p).ok_or_else(|| missing(p))?;
                let joined = Zeroizing::new(format!("{}:{}", user.as_str(), pass.as_str()));
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(joined.as_bytes()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(n: &str) -> Option<Zeroizing<String>> {
        match n {
            "token" => Some(Zeroizing::new("t0k".into())),
            "user" => Some(Zeroizing::new("aladdin".into())),
            "pass" => Some(Zeroizing::new("opensesame".into())),
            _ => None,
        }
    }

    #[test]
    fn templates_render_fields_and_basic_values() {
        assert_eq!(
            render("Authorization: Bearer {token}", &look)
                .expect("render")
                .as_str(),
            "Authorization: Bearer t0k"
        );
        assert_eq!(
            render("Authorization: Basic {basic:user:pass}", &look)
                .expect("render")
                .as_str(),
            "Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l"
        );
        assert!(render("x {missing}", &look).is_err());
        assert!(render("x {token", &look).is_err());
        assert!(render("x token}", &look).is_err());
        assert!(render("x {to ken}", &look).is_err());
        assert_eq!(
            placeholders("https://h/{a}/{basic:b:c}").expect("placeholders"),
            ["a", "b", "c"]
        );
    }
}
