//! `strongroom yaml …`: check app configs and migrate templates to credential refs.

use super::*;

#[derive(Subcommand)]
pub(crate) enum YamlCommand {
    /// Add `credential:` blocks where inline {{secret.X}} / {{env.X}} templates are used
    /// (keeping each template as the development fallback). Prints a unified diff unless
    /// --write is given. `${{ ... }}` (GitHub Actions) is not a template.
    ///
    /// In a folder it visits the *.yaml / *.yml files, not those whose name starts with `.`
    /// (nor hidden folders such as .git and .github), nor symbolic links (each skipped link
    /// is listed on stderr; name one as PATH to migrate it), nor the paths a
    /// .strongroomignore file in the folder or an --exclude pattern names (gitignore-style).
    /// A symbolic link named as PATH is written through: --write rewrites the file it
    /// points to and the link stays a link. A file that cannot be read, parsed or rewritten
    /// safely is reported and left as it was; the others are migrated; the exit code is
    /// then 2.
    MigrateCredentials {
        /// A YAML file, or a folder of *.yaml / *.yml files.
        path: PathBuf,
        /// Rewrite the files in place.
        #[arg(long)]
        write: bool,
        /// Also walk the folder's subfolders.
        #[arg(long)]
        recursive: bool,
        /// Skip the paths this gitignore-style pattern matches (relative to PATH; may be
        /// given several times), as a line of .strongroomignore would.
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
    },
    /// Compile an app config: list the blocks that name credentials, and every error and
    /// warning with file:line:column. Exits 2 when there are errors.
    Check {
        /// The app config.
        file: PathBuf,
        /// The app id (default: the file name without extension).
        #[arg(long)]
        app: Option<String>,
    },
}

pub(crate) fn yaml(catalog: &Catalog, cmd: YamlCommand, out: &Output) -> Result<u8, Error> {
    use strongroom::config::migrate::{migrate_file, yaml_walk, FileOutcome};
    match cmd {
        YamlCommand::MigrateCredentials {
            path,
            write,
            recursive,
            exclude,
        } => {
            let walk = yaml_walk(&path, recursive, &exclude).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
            let files = walk.files;
            let bar = indicatif::ProgressBar::new(files.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let (mut changed, mut failed, mut report) = (0usize, 0usize, Vec::new());
            for file in &files {
                match migrate_file(file, write) {
                    FileOutcome::Changed(m) => {
                        changed += 1;
                        if !write && !out.json {
                            // A closed pipe (`| head`) ends the output, not the run.
                            bar.suspend(|| write_stdout(format_args!("{}", m.diff())));
                        }
                        for s in &m.skipped {
                            bar.suspend(|| eprintln!("{s}"));
                        }
                        report.push(serde_json::json!({
                            "file": m.file, "status": "changed", "blocks": m.blocks,
                            "skipped": m.skipped.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                        }));
                    }
                    FileOutcome::Unchanged(m) => {
                        for s in &m.skipped {
                            bar.suspend(|| eprintln!("{s}"));
                        }
                        report.push(serde_json::json!({
                            "file": m.file, "status": "unchanged",
                            "skipped": m.skipped.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                        }));
                    }
                    FileOutcome::Failed(message) => {
                        failed += 1;
                        bar.suspend(|| eprintln!("error: {message}"));
                        report.push(serde_json::json!({
                            "file": file.display().to_string(), "status": "failed", "error": message,
                        }));
                    }
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            // Nothing is passed over without a word: the links a folder run does not follow.
            for link in &walk.skipped_links {
                if !out.json {
                    eprintln!(
                        "skipped {}: a symbolic link (a folder run does not follow links; name \
                         it as PATH to migrate what it points to)",
                        link.display()
                    );
                }
                report.push(serde_json::json!({
                    "file": link.display().to_string(), "status": "skipped",
                    "reason": "symbolic link",
                }));
            }
            if out.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            }
            eprintln!(
                "{} file(s): {changed} {}, {failed} could not be migrated{}",
                files.len(),
                if write {
                    "migrated"
                } else {
                    "would change (run again with --write)"
                },
                match walk.skipped_links.len() {
                    0 => String::new(),
                    n => format!("; {n} symbolic link(s) skipped"),
                }
            );
            Ok(if failed > 0 { 2 } else { 0 })
        }
        YamlCommand::Check { file, app } => {
            let config = strongroom::config::AppConfig::load(&file)?;
            let app = app.unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let slots = strongroom::config::Slots::new();
            match strongroom::config::compile(&app, &config, &slots, catalog) {
                Ok(manifest) => {
                    if out.json {
                        let entries: Vec<_> = manifest
                            .entries
                            .iter()
                            .map(|e| {
                                serde_json::json!({
                                    "block": e.block.to_string(), "slot": e.slot.id,
                                    "ref": e.reference.name, "scope": e.reference.scope.as_str(),
                                    "provider": e.reference.provider,
                                })
                            })
                            .collect();
                        let doc = serde_json::json!({ "entries": entries, "warnings": manifest.warnings });
                        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                    } else {
                        for e in &manifest.entries {
                            println!("{}", e.describe());
                        }
                        for w in &manifest.warnings {
                            eprintln!("{w}");
                        }
                    }
                    Ok(0)
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    Ok(2)
                }
            }
        }
    }
}
