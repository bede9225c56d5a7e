//! Exit codes and how a failure is told: `error: …` on stderr, or under `--json` one JSON
//! object on stderr, `{"error": {"kind": "…", "message": "…"}}`, so that a script reads the
//! failure the way it reads the output.

use super::*;

/// The exit code for `e`, as the README's table gives them.
pub(crate) fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::Config => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::PermissionDenied => 4,
        ErrorKind::AlreadyExists | ErrorKind::VersionConflict => 5,
        // Tampering or damage: nothing to retry.
        ErrorKind::DecryptFailed | ErrorKind::Corrupt => 6,
        // A provider refused the login or the refresh token (invalid_grant, access_denied).
        ErrorKind::Rejected => 7,
        // A master key that cannot be used now (not held, or the key service refused or
        // failed: disabled, destroyed, too old, throttled): an operator's fix, not tampering.
        ErrorKind::KeyUnavailable => 10,
        _ => 1,
    }
}

/// The `kind` of a JSON error: the error's kind in snake case.
pub(crate) fn kind_name(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::NotFound => "not_found",
        ErrorKind::AlreadyExists => "already_exists",
        ErrorKind::VersionConflict => "version_conflict",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::DecryptFailed => "decrypt_failed",
        ErrorKind::Unusable => "unusable",
        ErrorKind::KeyUnavailable => "key_unavailable",
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::InvalidInput => "invalid_input",
        ErrorKind::Config => "config",
        ErrorKind::Store => "store",
        ErrorKind::Rejected => "rejected",
        ErrorKind::Transport => "transport",
        ErrorKind::Io => "io",
        _ => "other",
    }
}

/// Tells a failure: `error: MESSAGE` on stderr, or the JSON error object under `--json`.
/// `kind` names it for scripts (see [`kind_name`]; the CLI's own failures use
/// `audit_chain_broken`, `usage`, `checkpoint_not_kept`).
pub(crate) fn tell_failure(json: bool, kind: &str, message: &str) {
    use std::io::Write;
    let text = if json {
        let doc = serde_json::json!({ "error": { "kind": kind, "message": message } });
        format!("{doc}\n")
    } else {
        // On one line, every control character escaped: error text can quote a database
        // row or a file.
        format!("error: {}\n", crate::output::one_line(message))
    };
    // Nothing more can be done about a closed stderr.
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Tells `e` as [`tell_failure`] does and returns its exit code.
pub(crate) fn tell_error(json: bool, e: &Error) -> u8 {
    tell_failure(json, kind_name(e), &e.to_string());
    exit_code(e)
}

/// Parses the command line. A usage error under `--json` is told as a JSON error (kind
/// `usage`, exit 2); help and version print as usual.
pub(crate) fn parse_cli() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let json = std::env::args_os().any(|a| a == "--json");
            let usage = !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if json && usage {
                let message = e.kind().as_str().map_or_else(
                    || e.to_string().trim().to_string(),
                    |_| {
                        // clap's rendered text without its `error: ` prefix and usage lines.
                        e.to_string()
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .trim_start_matches("error: ")
                            .to_string()
                    },
                );
                tell_failure(true, "usage", &message);
                std::process::exit(2);
            }
            e.exit()
        }
    }
}
