//! Output: tables for people, JSON for scripts, times as RFC 3339.

use super::*;

/// Rewrites the named millisecond fields of a JSON object (or of each object in an array) as
/// RFC 3339 text, as the CLI prints every time.
pub(crate) fn times_as_rfc3339(value: &mut serde_json::Value, fields: &[&str]) {
    match value {
        serde_json::Value::Array(items) => {
            for item in items {
                times_as_rfc3339(item, fields);
            }
        }
        serde_json::Value::Object(map) => {
            for field in fields {
                if let Some(slot) = map.get_mut(*field) {
                    if let Some(ms) = slot.as_i64() {
                        *slot = serde_json::Value::String(Timestamp(ms).to_string());
                    }
                }
            }
        }
        _ => {}
    }
}

/// The time fields of a credential's JSON form.
pub(crate) const CREDENTIAL_TIMES: [&str; 3] = ["created_at", "updated_at", "expires_at"];

pub(crate) struct Output {
    pub(crate) json: bool,
}

impl Output {
    pub(crate) fn infos(&self, infos: &[CredentialInfo]) {
        if self.json {
            let mut value = serde_json::to_value(infos).unwrap_or_default();
            times_as_rfc3339(&mut value, &CREDENTIAL_TIMES);
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            return;
        }
        println!(
            "{:<36}  {:<20}  {:<14}  {:<34}  {:<8}  VER",
            "ID", "NAME", "PROVIDER", "SCOPE", "STATE"
        );
        for i in infos {
            println!(
                "{:<36}  {:<20}  {:<14}  {:<34}  {:<8}  {}",
                cell(&i.id),
                cell(&i.name),
                cell(&i.provider),
                cell(&i.scope),
                i.state.as_str(),
                i.version
            );
        }
    }

    pub(crate) fn info(
        &self,
        info: &CredentialInfo,
        fields: Option<&BTreeMap<String, SecretString>>,
    ) {
        if self.json {
            let mut value = serde_json::to_value(info).unwrap_or_default();
            times_as_rfc3339(&mut value, &CREDENTIAL_TIMES);
            if let Some(fields) = fields {
                let shown: BTreeMap<&str, &str> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.expose_secret()))
                    .collect();
                value["fields"] = serde_json::to_value(shown).unwrap_or_default();
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            return;
        }
        println!("id:          {}", cell(&info.id));
        println!("name:        {}", cell(&info.name));
        println!(
            "provider:    {} ({})",
            cell(&info.provider),
            cell(&info.handler_type)
        );
        println!("scope:       {}", cell(&info.scope));
        println!("state:       {}", info.state);
        println!("version:     {}", info.version);
        if let Some(at) = info.expires_at {
            println!("expires_at:  {at}");
        }
        for (k, v) in &info.metadata {
            println!("meta {}: {}", cell(k), cell(v));
        }
        match fields {
            Some(fields) => {
                // A value keeps its line breaks (a PEM key stays readable) but no other
                // control character (println! escapes them); --json gives it exactly.
                for (k, v) in fields {
                    println!("field {}: {}", cell(k), v.expose_secret());
                }
            }
            None => println!("fields:      (hidden; --reveal to print them)"),
        }
    }
}

/// Set once a write to stdout has failed (a reader that went away: `| head`): later output
/// is dropped, and the command still finishes what it was doing.
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What `println!` and `print!` do in this CLI (see main.rs): the text, made
/// [`terminal_safe`], written to stdout; a closed stdout ends the output quietly instead of
/// panicking.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_GONE.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let text = args.to_string();
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(terminal_safe(&text).as_bytes())
        .and_then(|()| out.flush());
    if written.is_err() {
        STDOUT_GONE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What `eprintln!` and `eprint!` do: [`write_stdout`] for stderr (a failed write is
/// dropped: there is nowhere left to report it).
pub(crate) fn write_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let text = args.to_string();
    let _ = std::io::stderr()
        .lock()
        .write_all(terminal_safe(&text).as_bytes());
}

/// Is `c` a character that must not reach a terminal as it is: a C0 or C1 control, DEL,
/// or a bidirectional-text override that makes a line read other than it is?
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Appends `c` escaped (`\u{1b}`, `\n`).
fn push_escaped(out: &mut String, c: char) {
    out.extend(c.escape_debug());
}

/// `text` with every control character escaped except line breaks and tabs (and a `\r`
/// that ends a line), so that text from a database, a file or an error cannot move the
/// cursor, clear the screen or retitle the terminal. Applied to everything the CLI prints.
pub(crate) fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let keep =
        |c: char, next: Option<char>| matches!(c, '\n' | '\t') || (c == '\r' && next == Some('\n'));
    let mut chars = text.chars().peekable();
    let mut clean = true;
    while let Some(c) = chars.next() {
        if unsafe_char(c) && !keep(c, chars.peek().copied()) {
            clean = false;
            break;
        }
    }
    if clean {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if unsafe_char(c) && !keep(c, chars.peek().copied()) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `text` on one line: every control character escaped, line breaks and tabs too. For
/// table cells and error messages, where a line break could pass for another row.
pub(crate) fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A table cell: [`one_line`], as an owned string for padding with `{:<20}`.
pub(crate) fn cell(text: impl std::fmt::Display) -> String {
    one_line(&text.to_string()).into_owned()
}
