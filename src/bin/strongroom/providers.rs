//! `strongroom providers …`: the provider catalog and the drop-in folder.

use super::*;

#[derive(Subcommand)]
pub(crate) enum ProvidersCommand {
    /// List the providers (bundled and drop-in), and any provider file that could not be used.
    List,
    /// Show one provider: its credential type, fields, prefix checks and verification.
    Show {
        /// Provider name.
        name: String,
    },
}

/// The drop-in providers folder: the flag or variable, else `$STRONGROOM_HOME/providers`
/// when it exists.
pub(crate) fn providers_dir(flag: Option<PathBuf>) -> Result<Option<PathBuf>, Error> {
    match flag {
        Some(dir) => Ok(Some(dir)),
        None => {
            let home = default_home_from_env()?;
            check_home(&home)?;
            let dir = home.join("providers");
            Ok(dir.is_dir().then_some(dir))
        }
    }
}

/// Says on stderr which drop-in files replace a bundled provider: they decide the prefix
/// checks and where a credential is sent for verification, so they are never silent.
/// (Creating a credential of such a provider, and verifying one, name the file in the
/// audit row too.)
pub(crate) fn report_overrides(catalog: &Catalog) {
    for p in catalog.overrides() {
        eprintln!(
            "note: provider `{}` comes from the drop-in file {}, which overrides the bundled \
             definition",
            one_line(&p.name),
            one_line(&p.source)
        );
    }
}

pub(crate) fn providers(
    catalog: &Catalog,
    cmd: ProvidersCommand,
    out: &Output,
) -> Result<u8, Error> {
    match cmd {
        ProvidersCommand::List => {
            let all: Vec<&Provider> = catalog.providers().map(|p| p.as_ref()).collect();
            if out.json {
                let problems: Vec<String> =
                    catalog.problems().iter().map(|p| p.to_string()).collect();
                let overrides: Vec<serde_json::Value> = catalog
                    .overrides()
                    .map(|p| serde_json::json!({ "name": p.name, "source": p.source }))
                    .collect();
                let doc = serde_json::json!({
                    "providers": all, "problems": problems, "overrides": overrides,
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                println!(
                    "{:<16}  {:<28}  {:<20}  {:<12}  VERIFY",
                    "NAME", "DISPLAY NAME", "HANDLER", "CATEGORY"
                );
                for p in &all {
                    println!(
                        "{:<16}  {:<28}  {:<20}  {:<12}  {}",
                        cell(&p.name),
                        cell(&p.display_name),
                        cell(&p.handler_type),
                        cell(p.category.as_deref().unwrap_or("-")),
                        if p.verify.is_some() { "yes" } else { "no" }
                    );
                }
                for problem in catalog.problems() {
                    eprintln!("skipped: {}", one_line(&problem.to_string()));
                }
            }
            report_overrides(catalog);
            Ok(if catalog.problems().is_empty() { 0 } else { 2 })
        }
        ProvidersCommand::Show { name } => {
            // Asked for by name, a missing provider is not found (exit 3), as a credential is.
            let p = catalog.require(&name).map_err(|e| match e {
                Error::InvalidInput { reason, .. } => Error::NotFound {
                    what: format!("provider `{}`", name.escape_debug()),
                    hint: Some(reason),
                },
                other => other,
            })?;
            if out.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(p.as_ref()).unwrap_or_default()
                );
                return Ok(0);
            }
            println!("{} ({})", cell(&p.display_name), cell(&p.name));
            println!("  handler type: {}", cell(&p.handler_type));
            if let Some(c) = &p.category {
                println!("  category:     {}", cell(c));
            }
            let overrides = catalog.overrides().any(|o| o.name == p.name);
            println!(
                "  source:       {}{}",
                cell(&p.source),
                if overrides {
                    " (a drop-in file that overrides the bundled provider)"
                } else {
                    ""
                }
            );
            println!("  fields:");
            for f in &p.fields {
                let mut notes = vec![if f.spec.required {
                    "required"
                } else {
                    "optional"
                }];
                if f.spec.secret {
                    notes.push("secret");
                }
                let prefix = if f.prefix_check.is_empty() {
                    String::new()
                } else {
                    format!(", starts with {}", f.prefix_check.join(" or "))
                };
                println!(
                    "    {:<22} {} ({}{})",
                    cell(&f.spec.name),
                    cell(&f.spec.label),
                    notes.join(", "),
                    cell(&prefix)
                );
            }
            match &p.verify {
                Some(v) => println!(
                    "  verify:       {} {} (success: {:?}){}",
                    v.method,
                    cell(&v.endpoint),
                    v.success_codes,
                    if v.secret_in_url {
                        "; the secret goes in the URL (secret_in_url)"
                    } else {
                        ""
                    }
                ),
                None => println!("  verify:       none"),
            }
            Ok(0)
        }
    }
}
