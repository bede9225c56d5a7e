//! The provider catalog: one TOML file per provider (name, display name, handler type, field
//! labels and prefix checks, and how to verify a credential live). The bundled files in
//! `providers/` are compiled in; a drop-in folder adds or overrides providers and can be
//! reloaded while the host runs.
//!
//! ```toml
//! [provider]
//! name = "stripe"
//! display_name = "Stripe"
//! handler_type = "multi_field"
//! icon = "stripe"
//! category = "payments"
//!
//! [[fields]]
//! name = "secret_key"
//! label = "Secret key"
//! prefix_check = "sk_"
//! required = true
//!
//! [verify]
//! endpoint = "https://api.stripe.com/v1/balance"
//! method = "GET"
//! auth_template = "Authorization: Bearer {secret_key}"
//! success_codes = [200]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::error::{Error, Result};
use crate::handlers::{FieldSpec, Fields, HandlerRegistry};

mod oauth;
mod parse;
pub(crate) mod template;

pub(crate) use crate::handlers::formats::secure_endpoint;
pub(crate) use oauth::RESERVED_AUTHORIZE_PARAMS;
pub use oauth::{ClientAuthMethod, OAuthSpec, ResponseStyle, TokenRequestFormat};
pub(crate) use parse::line_col;
use parse::parse_provider;

/// One provider file's text, parsed on its own (the fuzz targets' door: `crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn parse_provider_text(
    registry: &HandlerRegistry,
    file: &str,
    text: &str,
) -> std::result::Result<Provider, CatalogProblem> {
    parse_provider(registry, file, text).map(|(provider, _)| provider)
}

/// The bundled provider files, compiled into the crate.
const BUNDLED: &[(&str, &str)] = &[
    (
        "anthropic.toml",
        include_str!("../../providers/anthropic.toml"),
    ),
    ("aws.toml", include_str!("../../providers/aws.toml")),
    (
        "azure_openai.toml",
        include_str!("../../providers/azure_openai.toml"),
    ),
    (
        "deepseek.toml",
        include_str!("../../providers/deepseek.toml"),
    ),
    (
        "discord_oauth.toml",
        include_str!("../../providers/discord_oauth.toml"),
    ),
    ("gcp.toml", include_str!("../../providers/gcp.toml")),
    (
        "github_app.toml",
        include_str!("../../providers/github_app.toml"),
    ),
    (
        "github_copilot.toml",
        include_str!("../../providers/github_copilot.toml"),
    ),
    (
        "github_oauth.toml",
        include_str!("../../providers/github_oauth.toml"),
    ),
    (
        "github_pat.toml",
        include_str!("../../providers/github_pat.toml"),
    ),
    ("gitlab.toml", include_str!("../../providers/gitlab.toml")),
    (
        "google_oauth.toml",
        include_str!("../../providers/google_oauth.toml"),
    ),
    (
        "mockprovider.toml",
        include_str!("../../providers/mockprovider.toml"),
    ),
    ("mongodb.toml", include_str!("../../providers/mongodb.toml")),
    ("notion.toml", include_str!("../../providers/notion.toml")),
    ("openai.toml", include_str!("../../providers/openai.toml")),
    (
        "postgres.toml",
        include_str!("../../providers/postgres.toml"),
    ),
    ("redis.toml", include_str!("../../providers/redis.toml")),
    (
        "slack_oauth.toml",
        include_str!("../../providers/slack_oauth.toml"),
    ),
    ("stripe.toml", include_str!("../../providers/stripe.toml")),
    (
        "telegram.toml",
        include_str!("../../providers/telegram.toml"),
    ),
];

/// The names of the bundled provider files (`openai.toml`, ...).
pub fn bundled_files() -> impl Iterator<Item = &'static str> {
    BUNDLED.iter().map(|(name, _)| *name)
}

/// A field as a provider presents it: the handler's field with the provider's label,
/// requirement and prefix check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProviderField {
    /// The field (name, label, secret, required, format).
    #[serde(flatten)]
    pub spec: FieldSpec,
    /// Prefixes the value must start with (any one of them); empty for no check. Only a
    /// prefix is checked, never a length: token formats change.
    pub prefix_check: Vec<String>,
}

/// How to check a credential against the provider's API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifySpec {
    /// The URL; `{field}` placeholders take the credential's field values.
    pub endpoint: String,
    /// `GET`, `POST` or `HEAD`.
    pub method: String,
    /// Header lines (`Name: value`, one per line) with `{field}` placeholders, and
    /// `{basic:user_field:password_field}` for an HTTP Basic value.
    pub auth_template: String,
    /// Status codes that mean the credential works.
    pub success_codes: Vec<u16>,
    /// When set, a success also needs the response body to contain this text (for APIs
    /// that answer 200 with an error inside, like Slack's `"ok":false`).
    pub success_contains: Option<String>,
    /// The service takes the secret only in the URL (Telegram's `/bot{token}/`), so the
    /// endpoint may name a secret field. Off (the default), a file whose endpoint puts a
    /// secret field in the URL's path or query is refused: URLs end up in proxy and
    /// server logs, headers do not.
    pub secret_in_url: bool,
}

/// One provider of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Provider {
    /// The provider name credentials carry (`openai`).
    pub name: String,
    /// What a person is shown (`OpenAI`).
    pub display_name: String,
    /// The credential type (`api_key`).
    pub handler_type: String,
    /// An icon name for user interfaces.
    pub icon: Option<String>,
    /// A category (`llm`, `payments`, ...).
    pub category: Option<String>,
    /// The fields, in the handler's order, then any the provider adds (open-schema types).
    pub fields: Vec<ProviderField>,
    /// Live verification, when the provider's API allows it with a plain HTTP call.
    pub verify: Option<VerifySpec>,
    /// The authorization server (the `[oauth]` table), for the OAuth handler types.
    pub oauth: Option<OAuthSpec>,
    /// Where it was loaded from (`bundled:openai.toml` or a file path).
    pub source: String,
}

impl Provider {
    /// Checks a field set against this provider: required fields and prefix checks (the
    /// handler checks the rest). Errors name the field and the expected prefix, never the
    /// value.
    pub fn check_fields(&self, fields: &Fields) -> Result<()> {
        for field in &self.fields {
            match fields.get(&field.spec.name) {
                None if field.spec.required => {
                    return Err(Error::invalid(
                        field.spec.name.clone(),
                        format!(
                            "{} is required for {} credentials",
                            field.spec.label, self.display_name
                        ),
                    ))
                }
                None => {}
                Some(value) => {
                    let value = value.expose_secret();
                    if !field.prefix_check.is_empty()
                        && !field
                            .prefix_check
                            .iter()
                            .any(|p| value.starts_with(p.as_str()))
                    {
                        return Err(Error::invalid(
                            field.spec.name.clone(),
                            format!(
                                "{} keys start with {}; check that the value is a {} {}",
                                self.display_name,
                                field
                                    .prefix_check
                                    .iter()
                                    .map(|p| format!("`{p}`"))
                                    .collect::<Vec<_>>()
                                    .join(" or "),
                                self.display_name,
                                field.spec.label
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A problem found while loading a provider file: the file, the line and column (1-based),
/// and what is wrong. The other providers stay usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogProblem {
    /// The file (`providers/stripe.toml`, `bundled:stripe.toml`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for CatalogProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl From<CatalogProblem> for Error {
    fn from(p: CatalogProblem) -> Error {
        Error::config(p.to_string())
    }
}

/// The largest provider file the catalog reads: 256 KiB. A real one is a few KiB (the
/// largest bundled file is under 2 KiB); a bigger file is reported as a problem and
/// skipped, so no file in the providers folder can make every command slow or large.
pub const MAX_PROVIDER_FILE_BYTES: u64 = 256 * 1024;

/// Reads a provider file of at most [`MAX_PROVIDER_FILE_BYTES`], or says why not.
fn read_capped(path: &Path) -> std::result::Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let mut bytes = Vec::new();
    // One byte past the cap tells a file at the cap from a larger one without reading it all.
    file.take(MAX_PROVIDER_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > MAX_PROVIDER_FILE_BYTES {
        return Err(format!(
            "the file is larger than {} KiB, the most a provider file may hold; a provider \
             file describes one provider in a few KiB",
            MAX_PROVIDER_FILE_BYTES / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|_| "the file is not valid UTF-8".to_string())
}

/// The providers a vault knows.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    providers: BTreeMap<String, Arc<Provider>>,
    problems: Vec<CatalogProblem>,
    /// The names the bundled files define, to tell an override from an addition.
    bundled_names: std::collections::BTreeSet<String>,
}

impl Catalog {
    /// The bundled providers only.
    pub fn bundled(registry: &HandlerRegistry) -> Catalog {
        let mut catalog = Catalog::default();
        for (file, text) in BUNDLED {
            catalog.add_text(registry, &format!("bundled:{file}"), text);
        }
        catalog.bundled_names = catalog.providers.keys().cloned().collect();
        catalog
    }

    /// The bundled providers, then every `*.toml` file of `dir` (in name order), which may
    /// add providers or override bundled ones ([`Catalog::overrides`] lists those). A file
    /// that cannot be used is recorded in [`Catalog::problems`] and skipped; a missing
    /// folder is an error.
    ///
    /// A provider file decides where a credential's secret is sent for live verification,
    /// so the folder is refused (a configuration error) when group or others may write it,
    /// and so is each file group or others may write (recorded as a problem, skipped), as
    /// for the master key file.
    pub fn load(registry: &HandlerRegistry, dir: Option<&Path>) -> Result<Catalog> {
        let mut catalog = Catalog::bundled(registry);
        if let Some(dir) = dir {
            catalog.add_dir(registry, dir)?;
        }
        Ok(catalog)
    }

    fn add_dir(&mut self, registry: &HandlerRegistry, dir: &Path) -> Result<()> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir.display(), e))?;
        if let Some(mode) = writable_by_others(&meta) {
            return Err(Error::config(format!(
                "refusing the providers folder {}: group or others can write it (mode \
                 {mode:04o}), so they could change where credentials are sent for \
                 verification; run `chmod go-w {}`",
                dir.display(),
                dir.display()
            )));
        }
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        // Names defined by an earlier drop-in file: a second definition is a mistake,
        // while overriding a bundled provider is the point of the folder.
        let mut seen = std::collections::BTreeSet::new();
        for path in files {
            let shown = path.display().to_string();
            if let Some(mode) = std::fs::metadata(&path)
                .ok()
                .as_ref()
                .and_then(writable_by_others)
            {
                self.problems.push(CatalogProblem {
                    file: shown.clone(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "refusing the file: group or others can write it (mode {mode:04o}), so \
                         they could change where credentials are sent; run `chmod go-w {shown}`"
                    ),
                });
                continue;
            }
            match read_capped(&path) {
                Ok(text) => {
                    if let Some(name) = self.add_text_checked(registry, &shown, &text, &seen) {
                        seen.insert(name);
                    }
                }
                Err(message) => self.problems.push(CatalogProblem {
                    file: shown,
                    line: 1,
                    column: 1,
                    message,
                }),
            }
        }
        Ok(())
    }

    fn add_text(&mut self, registry: &HandlerRegistry, file: &str, text: &str) {
        let seen = std::collections::BTreeSet::new();
        self.add_text_checked(registry, file, text, &seen);
    }

    /// Parses and adds one file; `taken` holds names an earlier drop-in file defined.
    fn add_text_checked(
        &mut self,
        registry: &HandlerRegistry,
        file: &str,
        text: &str,
        taken: &std::collections::BTreeSet<String>,
    ) -> Option<String> {
        match parse_provider(registry, file, text) {
            Ok((provider, name_span)) => {
                if taken.contains(&provider.name) {
                    let (line, column) = line_col(text, name_span.start);
                    self.problems.push(CatalogProblem {
                        file: file.to_string(),
                        line,
                        column,
                        message: format!(
                            "provider `{}` is already defined by another file of this folder; \
                             give one of them another name",
                            provider.name
                        ),
                    });
                    return None;
                }
                let name = provider.name.clone();
                self.providers.insert(name.clone(), Arc::new(provider));
                Some(name)
            }
            Err(problem) => {
                self.problems.push(problem);
                None
            }
        }
    }

    /// Keeps the definitions `previous` loaded from files that now have a problem, so a
    /// file broken by an edit does not take its provider away; each such problem says so.
    pub(crate) fn carry_over(&mut self, previous: &Catalog) {
        for problem in &mut self.problems {
            for old in previous
                .providers
                .values()
                .filter(|p| p.source == problem.file)
            {
                self.providers.insert(old.name.clone(), old.clone());
                problem.message.push_str(&format!(
                    " (the previous definition of `{}` stays in use until the file is fixed)",
                    old.name
                ));
            }
        }
    }

    /// A provider by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }

    /// A provider by name, or an error that says how to see the known ones — and, when
    /// provider files could not be loaded, which and why: the one named after the provider
    /// first, since a broken file is the likely reason a provider is missing.
    pub fn require(&self, name: &str) -> Result<&Arc<Provider>> {
        self.get(name).ok_or_else(|| {
            let shown: String = name.chars().take(64).flat_map(char::escape_debug).collect();
            let mut reason = format!(
                "`{shown}` is not in the provider catalog (`strongroom providers list` shows the \
                 known ones; a TOML file in the providers folder adds one)"
            );
            let named_after = |p: &&CatalogProblem| {
                Path::new(&p.file)
                    .file_stem()
                    .is_some_and(|stem| stem.to_string_lossy() == name)
            };
            let mut problems: Vec<&CatalogProblem> =
                self.problems.iter().filter(named_after).collect();
            problems.extend(self.problems.iter().filter(|p| !named_after(p)));
            if !problems.is_empty() {
                const SHOWN: usize = 3;
                let listed: Vec<String> =
                    problems.iter().take(SHOWN).map(|p| p.to_string()).collect();
                reason.push_str(&format!(
                    "; {} provider file(s) could not be loaded and may define it: {}{}",
                    problems.len(),
                    listed.join("; "),
                    if problems.len() > SHOWN { "; …" } else { "" }
                ));
            }
            Error::invalid("provider", reason)
        })
    }

    /// Every provider, by name.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }

    /// The providers a drop-in file defines under the name of a bundled one (so the file,
    /// not the bundled definition, says where its credentials are verified), by name.
    pub fn overrides(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers
            .values()
            .filter(|p| !p.source.starts_with("bundled:") && self.bundled_names.contains(&p.name))
    }

    /// Files that could not be used, each with file, line and reason.
    pub fn problems(&self) -> &[CatalogProblem] {
        &self.problems
    }
}

/// The permission bits of a file or folder that group or others may write, if they may.
#[cfg(unix)]
fn writable_by_others(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    (mode & 0o022 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn writable_by_others(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_file_is_compiled_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("providers");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("providers/")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let bundled: Vec<String> = bundled_files().map(String::from).collect();
        assert_eq!(
            on_disk, bundled,
            "providers/*.toml and BUNDLED must list the same files"
        );
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
