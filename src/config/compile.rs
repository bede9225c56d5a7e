//! The compiler: an app config checked against the declared slots and the catalog, to a
//! [`Manifest`] or `file:line:column` diagnostics.

use super::*;

pub(super) fn diag(
    file: &str,
    severity: Severity,
    at: Pos,
    message: impl Into<String>,
) -> Diagnostic {
    Diagnostic {
        severity,
        file: file.to_string(),
        line: at.line.max(1),
        column: at.column.max(1),
        message: message.into(),
    }
}

/// Reads a `credential:` value: a bare name (scope `per_user`) or `{ref, scope, provider?,
/// slot?}`.
pub(super) fn read_ref(
    node: &Node,
) -> std::result::Result<(CredentialRef, Option<String>), (Pos, String)> {
    match &node.value {
        Value::Scalar(name, _) => {
            crate::model::validate_id("credential ref", name)
                .map_err(|e| (node.start, e.to_string()))?;
            Ok((CredentialRef::compact(name.clone()), None))
        }
        Value::Map(entries) => {
            for (k, _) in entries {
                match k.as_str() {
                    Some("ref" | "scope" | "provider" | "slot") => {}
                    _ => {
                        return Err((
                            k.start,
                            format!(
                            "unknown key `{}` in credential (expected ref, scope, provider, slot)",
                            k.as_str().unwrap_or("?")
                        ),
                        ))
                    }
                }
            }
            let text = |key: &str| -> std::result::Result<Option<(String, Pos)>, (Pos, String)> {
                match node.get(key) {
                    None => Ok(None),
                    Some(v) => match v.as_str() {
                        Some(s) => Ok(Some((s.to_string(), v.start))),
                        None => Err((v.start, format!("credential `{key}` must be a string"))),
                    },
                }
            };
            let (name, at) = text("ref")?
                .ok_or_else(|| (node.start, "credential needs `ref: NAME`".to_string()))?;
            crate::model::validate_id("credential ref", &name).map_err(|e| (at, e.to_string()))?;
            let scope = match text("scope")? {
                None => ScopeKind::PerUser,
                Some((s, at)) => match s.as_str() {
                    "system_wide" => ScopeKind::SystemWide,
                    "per_app_shared" => ScopeKind::PerAppShared,
                    "per_user" => ScopeKind::PerUser,
                    "per_app_per_user" => ScopeKind::PerAppPerUser,
                    _ => {
                        return Err((
                            at,
                            format!(
                                "unknown scope `{s}`; use system_wide, per_app_shared, per_user \
                                 or per_app_per_user"
                            ),
                        ))
                    }
                },
            };
            let provider = text("provider")?.map(|(p, _)| p);
            let slot = text("slot")?.map(|(s, _)| s);
            Ok((CredentialRef::explicit(name, scope, provider), slot))
        }
        Value::Seq(_) => Err((
            node.start,
            "credential must be a name or a mapping with ref, scope and provider".into(),
        )),
    }
}

/// Checks an inject path template against a block: it starts with `{block}`, names fields
/// only in whole segments, and does not pass through a value that is not a mapping.
pub(super) fn check_inject_path(template: &str, block: &Node) -> std::result::Result<(), String> {
    let segs = inject::path_segments(template)?;
    let mut node = Some(block);
    for seg in segs {
        let Some(current) = node else { break };
        match &current.value {
            Value::Map(_) => {
                node = match seg {
                    inject::PathSeg::Literal(key) => current.get(key),
                    inject::PathSeg::Field(_) => None,
                };
            }
            _ => {
                return Err(format!(
                    "inject path `{template}` does not resolve: it passes through a value that \
                     is not a mapping"
                ))
            }
        }
    }
    Ok(())
}

/// Compiles an app config against the declared slots and the provider catalog: one manifest
/// entry per block with a `credential:` key, or every error found.
///
/// Errors: a malformed `credential:` value; a provider the slot does not accept; a provider
/// whose handler type the slot does not accept; a required slot with no credential; an
/// inject path that does not resolve; a block naming a slot its key does not declare.
/// Warnings: inline `{{secret.X}}`/`{{env.X}}` templates in a block without `credential:`;
/// a ref in a scope the slot does not prefer.
pub fn compile(
    app: &str,
    config: &AppConfig,
    slots: &Slots,
    catalog: &Catalog,
) -> std::result::Result<Manifest, CompileErrors> {
    let file = config.file.as_str();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut entries = Vec::new();

    struct Ctx<'a> {
        file: &'a str,
        slots: &'a Slots,
        catalog: &'a Catalog,
        errors: &'a mut Vec<Diagnostic>,
        warnings: &'a mut Vec<Diagnostic>,
        entries: &'a mut Vec<ManifestEntry>,
        doc: usize,
    }

    fn block(cx: &mut Ctx<'_>, key: &str, node: &Node, segs: &[Seg]) {
        let declared = cx.slots.for_block(key);
        let path = BlockPath {
            doc: cx.doc,
            segs: segs.to_vec(),
        };
        let Some((cred_key, cred)) = node.entry("credential") else {
            for slot in declared.iter().filter(|s| s.required) {
                cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    node.start,
                    format!(
                        "block {path} needs a credential for slot `{}` ({}); add \
                         `credential: {{ref: NAME, scope: SCOPE}}`",
                        slot.id, slot.label
                    ),
                ));
            }
            return;
        };
        let (reference, slot_id) = match read_ref(cred) {
            Ok(r) => r,
            Err((at, message)) => {
                cx.errors.push(diag(cx.file, Severity::Error, at, message));
                return;
            }
        };
        let slot: Arc<CredentialSlot> = match (&slot_id, declared.len()) {
            (Some(id), _) => match declared.iter().find(|s| &s.id == id) {
                Some(s) => s.clone(),
                None => {
                    cx.errors.push(diag(
                        cx.file,
                        Severity::Error,
                        cred.start,
                        format!(
                            "block {path} names slot `{id}`, which no module declares for `{key}` \
                             blocks (declared: {})",
                            names(declared.iter().map(|s| s.id.as_str()))
                        ),
                    ));
                    return;
                }
            },
            (None, 1) => declared[0].clone(),
            (None, 0) => Arc::new(default_slot(cx.catalog, reference.provider.as_deref())),
            (None, _) => {
                cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    cred.start,
                    format!(
                        "`{key}` blocks consume several slots ({}); say which with `slot:` in \
                         the credential",
                        names(declared.iter().map(|s| s.id.as_str()))
                    ),
                ));
                return;
            }
        };
        let before = cx.errors.len();
        if let Some(provider) = &reference.provider {
            if !slot.providers.is_empty() && !slot.providers.contains(provider) {
                cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    cred.start,
                    format!(
                        "block {path}: slot `{}` does not accept provider `{provider}` (it \
                         accepts {})",
                        slot.id,
                        names(slot.providers.iter().map(String::as_str))
                    ),
                ));
            }
            match cx.catalog.get(provider) {
                None => cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    cred.start,
                    format!("block {path}: provider `{provider}` is not in the provider catalog"),
                )),
                Some(p) => {
                    if !slot.handler_types.is_empty()
                        && !slot.handler_types.contains(&p.handler_type)
                    {
                        cx.errors.push(diag(
                            cx.file,
                            Severity::Error,
                            cred.start,
                            format!(
                                "block {path}: provider `{provider}` gives `{}` credentials, \
                                 which slot `{}` does not accept (it accepts {})",
                                p.handler_type,
                                slot.id,
                                names(slot.handler_types.iter().map(String::as_str))
                            ),
                        ));
                    }
                }
            }
        }
        for (field, template) in &slot.inject {
            if let Err(message) = check_inject_path(template, node) {
                cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    node.start,
                    format!(
                        "block {path}, slot `{}`, field `{field}`: {message}",
                        slot.id
                    ),
                ));
            }
        }
        if !slot.scopes_preferred.is_empty() && !slot.scopes_preferred.contains(&reference.scope) {
            cx.warnings.push(diag(
                cx.file,
                Severity::Warning,
                cred.start,
                format!(
                    "block {path}: slot `{}` expects a credential in {}, not {}",
                    slot.id,
                    names(slot.scopes_preferred.iter().map(|s| s.as_str())),
                    reference.scope
                ),
            ));
        }
        if cx.errors.len() == before {
            let has_fallback = has_templates(node);
            cx.entries.push(ManifestEntry {
                block: path,
                slot,
                reference,
                at: cred_key.start,
                has_fallback,
            });
        }
    }

    struct Blocks<'c, 'x> {
        cx: &'c mut Ctx<'x>,
    }
    impl<'a> Visit<'a> for Blocks<'_, '_> {
        fn mapping(&mut self, node: &'a Node, path: &[Seg], key: Option<&'a str>) {
            let key = key.unwrap_or("");
            if node.get("credential").is_some() || !self.cx.slots.for_block(key).is_empty() {
                block(self.cx, key, node, path);
            }
        }

        fn odd_key(&mut self, key: &'a Node, value: &'a Node, _path: &[Seg]) {
            if has_credential_key(key) || has_credential_key(value) {
                self.cx.errors.push(diag(
                    self.cx.file,
                    Severity::Error,
                    key.start,
                    odd_key_message(true),
                ));
            } else if has_templates(key) || has_templates(value) {
                self.cx.warnings.push(diag(
                    self.cx.file,
                    Severity::Warning,
                    key.start,
                    odd_key_message(false),
                ));
            }
        }
    }

    for (doc, root) in config.docs.iter().enumerate() {
        let mut cx = Ctx {
            file,
            slots,
            catalog,
            errors: &mut errors,
            warnings: &mut warnings,
            entries: &mut entries,
            doc,
        };
        walk(root, &mut Blocks { cx: &mut cx });
        for tb in template_blocks(doc, root).blocks {
            let (first, alias) = tb.scalars[0];
            let kinds: std::collections::BTreeSet<&str> = tb
                .scalars
                .iter()
                .flat_map(|(s, _)| templates(s.as_str().unwrap_or("")))
                .map(|(k, _)| {
                    if k == "env" {
                        "{{env.X}}"
                    } else {
                        "{{secret.X}}"
                    }
                })
                .collect();
            warnings.push(diag(
                file,
                Severity::Warning,
                alias.unwrap_or(first.start),
                format!(
                    "block {} uses inline {} templates{} without a `credential:` block; run \
                     `strongroom yaml migrate-credentials {file} --write` to add one",
                    tb.path,
                    names(kinds.into_iter()),
                    match alias {
                        Some(_) => format!(
                            " (reached through this alias; the template is at line {})",
                            first.start.line
                        ),
                        None => String::new(),
                    }
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(Manifest {
            app: app.to_string(),
            file: file.to_string(),
            entries,
            warnings,
            docs: config.docs.clone(),
        })
    } else {
        Err(CompileErrors { errors, warnings })
    }
}

/// The slot of a block whose key no module declares: any type, the provider's handler's
/// default injection when the provider is named, else `{block}.config.<field>` for every
/// field the credential has (worked out at injection).
pub(super) fn default_slot(catalog: &Catalog, provider: Option<&str>) -> CredentialSlot {
    let mut slot = CredentialSlot::new("default", "Credential");
    if let Some(p) = provider.and_then(|p| catalog.get(p)) {
        for f in &p.fields {
            slot.inject.insert(
                f.spec.name.clone(),
                format!("{{block}}.config.{}", f.spec.name),
            );
        }
    }
    slot
}

pub(super) fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = items.map(|s| format!("`{s}`")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
