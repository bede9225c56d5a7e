//! The scope-pattern check: [`ListFilter::scopes`] asked of the store, each pattern alone,
//! combined, empty, AND-ed with other fields, and paged across patterns.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{put, sample_record};
use crate::model::{CredentialRecord, Scope, ScopeKind};
use crate::store::{ListFilter, OwnerMatch, Precondition, ScopeMatch, Store};

/// The credentials the check stores: a name, and its scope. Ids are chosen to trip a store
/// that matches owners with an unescaped `LIKE` (`_` and `%` in ids), by a bare substring
/// (`malice` ends with `alice`, `crm2` starts with `crm`), by bytes instead of characters
/// (non-ASCII ids), or that builds SQL from values (a quote).
fn population() -> Vec<(&'static str, Scope)> {
    let s = |r: crate::Result<Scope>| r.expect("a valid scope");
    vec![
        ("sys_a", Scope::SystemWide),
        ("sys_b", Scope::SystemWide),
        ("shared_crm", s(Scope::per_app_shared("crm"))),
        ("shared_crm2", s(Scope::per_app_shared("crm2"))),
        ("user_alice", s(Scope::per_user("alice"))),
        ("user_malice", s(Scope::per_user("malice"))),
        ("user_quote", s(Scope::per_user("o'neil"))),
        ("ppu_crm_alice", s(Scope::per_app_per_user("crm", "alice"))),
        ("ppu_crm_bob", s(Scope::per_app_per_user("crm", "bob"))),
        ("ppu_crm_a_ice", s(Scope::per_app_per_user("crm", "a_ice"))),
        ("ppu_crm_pct", s(Scope::per_app_per_user("crm", "%"))),
        (
            "ppu_crm2_alice",
            s(Scope::per_app_per_user("crm2", "alice")),
        ),
        ("ppu_c_m_alice", s(Scope::per_app_per_user("c_m", "alice"))),
        (
            "ppu_blog_malice",
            s(Scope::per_app_per_user("blog", "malice")),
        ),
        ("ppu_accent", s(Scope::per_app_per_user("crmé", "ålice"))),
        ("ppu_quote", s(Scope::per_app_per_user("o'neil", "o'neil"))),
        ("agent_alice", s(Scope::per_agent("alice"))),
    ]
}

/// The names of `records`, in the order listed (a short form for assertion messages).
fn in_order(records: &[CredentialRecord]) -> Vec<&str> {
    records.iter().map(|r| r.name.as_str()).collect()
}

/// What a pattern means, written independently of [`ScopeMatch::matches`] so that the
/// check does not take the store's (or the filter's) word for it.
fn expected(pattern: &ScopeMatch, scope: &Scope) -> bool {
    if scope.kind() != pattern.kind {
        return false;
    }
    match (&pattern.owner, scope) {
        (OwnerMatch::Any, _) => true,
        (OwnerMatch::Exactly(owner), scope) => *owner == scope.owner(),
        (OwnerMatch::App(wanted), Scope::PerAppPerUser { app, .. }) => wanted == app,
        (OwnerMatch::User(wanted), Scope::PerAppPerUser { user, .. }) => wanted == user,
        _ => false,
    }
}

/// [`ListFilter::scopes`]: each pattern alone (any owner of a kind, one exact owner, one
/// app's per-app-per-user credentials, one user's in every app), patterns that match
/// nothing (an app or user pattern on another kind), combinations whose matches overlap
/// (each credential once), an empty list (nothing), patterns AND-ed with other fields,
/// and paging with `after_id` and `limit` across the union of patterns.
pub async fn list_scope_patterns(store: Arc<dyn Store>) {
    let mut all: Vec<CredentialRecord> = Vec::new();
    for (i, (name, scope)) in population().into_iter().enumerate() {
        let mut record = sample_record(name, scope);
        record.provider = if i % 2 == 0 { "openai" } else { "stripe" }.into();
        store
            .commit(put(record.clone(), Precondition::CreateOnly))
            .await
            .expect("create");
        all.push(record);
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let names = |records: &[CredentialRecord]| -> BTreeSet<String> {
        records.iter().map(|r| r.name.clone()).collect()
    };
    let list = |filter: ListFilter| {
        let store = store.clone();
        async move {
            store
                .list(&filter)
                .await
                .unwrap_or_else(|e| panic!("list({filter:?}): {e}"))
        }
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };

    // Each pattern alone, against what it must find by name.
    let scope = |r: crate::Result<Scope>| r.expect("a valid scope");
    let alone = [
        (
            ScopeMatch::kind(ScopeKind::SystemWide),
            set(&["sys_a", "sys_b"]),
        ),
        (
            ScopeMatch::scope(&scope(Scope::per_user("alice"))),
            set(&["user_alice"]),
        ),
        (
            ScopeMatch::scope(&scope(Scope::per_app_shared("crm"))),
            set(&["shared_crm"]),
        ),
        (
            ScopeMatch::scope(&scope(Scope::per_app_per_user("crm", "alice"))),
            set(&["ppu_crm_alice"]),
        ),
        (
            ScopeMatch::scope(&scope(Scope::per_user("o'neil"))),
            set(&["user_quote"]),
        ),
        (
            ScopeMatch::app_for_any_user("crm"),
            set(&[
                "ppu_crm_alice",
                "ppu_crm_bob",
                "ppu_crm_a_ice",
                "ppu_crm_pct",
            ]),
        ),
        (ScopeMatch::app_for_any_user("c_m"), set(&["ppu_c_m_alice"])),
        (ScopeMatch::app_for_any_user("crmé"), set(&["ppu_accent"])),
        (ScopeMatch::app_for_any_user("o'neil"), set(&["ppu_quote"])),
        (ScopeMatch::app_for_any_user("cr"), set(&[])),
        (
            ScopeMatch::user_in_any_app("alice"),
            set(&["ppu_crm_alice", "ppu_crm2_alice", "ppu_c_m_alice"]),
        ),
        (
            ScopeMatch::user_in_any_app("a_ice"),
            set(&["ppu_crm_a_ice"]),
        ),
        (ScopeMatch::user_in_any_app("%"), set(&["ppu_crm_pct"])),
        (ScopeMatch::user_in_any_app("ålice"), set(&["ppu_accent"])),
        (ScopeMatch::user_in_any_app("lice"), set(&[])),
        (ScopeMatch::kind(ScopeKind::PerAgent), set(&["agent_alice"])),
        // App and user patterns on kinds whose owners hold no `/`, and an exact owner of
        // the wrong shape for its kind, match nothing.
        (
            ScopeMatch {
                kind: ScopeKind::PerUser,
                owner: OwnerMatch::App("alice".into()),
            },
            set(&[]),
        ),
        (
            ScopeMatch {
                kind: ScopeKind::PerAgent,
                owner: OwnerMatch::User("alice".into()),
            },
            set(&[]),
        ),
        (
            ScopeMatch {
                kind: ScopeKind::PerUser,
                owner: OwnerMatch::Exactly("crm/alice".into()),
            },
            set(&[]),
        ),
    ];
    for (pattern, want) in alone {
        let by_oracle: Vec<_> = all
            .iter()
            .filter(|r| expected(&pattern, &r.scope))
            .cloned()
            .collect();
        assert_eq!(
            names(&by_oracle),
            want,
            "the check's own reading of {pattern:?}"
        );
        let got = list(ListFilter::in_scopes(vec![pattern.clone()])).await;
        assert_eq!(
            in_order(&got),
            in_order(&by_oracle),
            "list with the one scope pattern {pattern:?} returns exactly its credentials, in id \
             order"
        );
        assert_eq!(
            got, by_oracle,
            "list with the one scope pattern {pattern:?} returns exactly its credentials, in id \
             order"
        );
    }

    // Combinations, overlapping ones included; the empty list; AND with other fields.
    let alices_view = vec![
        ScopeMatch::kind(ScopeKind::SystemWide),
        ScopeMatch::scope(&scope(Scope::per_user("alice"))),
        ScopeMatch::user_in_any_app("alice"),
    ];
    let overlapping = vec![
        ScopeMatch::app_for_any_user("crm"),
        ScopeMatch::user_in_any_app("alice"),
        ScopeMatch::scope(&scope(Scope::per_app_per_user("crm", "alice"))),
    ];
    let filters = [
        ListFilter::in_scopes(alices_view.clone()),
        ListFilter::in_scopes(overlapping.clone()),
        ListFilter::in_scopes(vec![]),
        ListFilter {
            provider: Some("openai".into()),
            ..ListFilter::in_scopes(overlapping.clone())
        },
        ListFilter {
            scope_kind: Some(ScopeKind::PerUser),
            ..ListFilter::in_scopes(alices_view.clone())
        },
        ListFilter {
            scope: Some(scope(Scope::per_app_per_user("crm2", "alice"))),
            ..ListFilter::in_scopes(alices_view.clone())
        },
        ListFilter {
            name: Some("ppu_crm_bob".into()),
            ..ListFilter::in_scopes(alices_view.clone())
        },
        ListFilter {
            after_id: Some(all[all.len() / 2].id.clone()),
            limit: Some(3),
            ..ListFilter::in_scopes(overlapping.clone())
        },
    ];
    for filter in filters {
        let want: Vec<_> = all
            .iter()
            .filter(|r| {
                filter
                    .scopes
                    .as_ref()
                    .is_some_and(|patterns| patterns.iter().any(|p| expected(p, &r.scope)))
                    && filter.scope_kind.is_none_or(|k| k == r.scope.kind())
                    && filter.scope.as_ref().is_none_or(|s| *s == r.scope)
                    && filter.name.as_ref().is_none_or(|n| *n == r.name)
                    && filter.provider.as_ref().is_none_or(|p| *p == r.provider)
                    && filter.after_id.as_ref().is_none_or(|a| r.id > *a)
            })
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        assert_eq!(
            in_order(&list(filter.clone()).await),
            in_order(&want),
            "list({filter:?}): the patterns are an OR, AND-ed with the other fields"
        );
    }
    assert!(
        list(ListFilter::in_scopes(vec![])).await.is_empty(),
        "an empty pattern list matches nothing"
    );
    assert_eq!(
        names(&list(ListFilter::in_scopes(alices_view.clone())).await),
        set(&[
            "sys_a",
            "sys_b",
            "user_alice",
            "ppu_crm_alice",
            "ppu_crm2_alice",
            "ppu_c_m_alice"
        ]),
        "alice's view"
    );

    // Paging across patterns: two at a time, each credential once, in id order.
    for patterns in [alices_view, overlapping] {
        let want: Vec<_> = all
            .iter()
            .filter(|r| patterns.iter().any(|p| expected(p, &r.scope)))
            .cloned()
            .collect();
        assert!(want.len() > 2, "the check pages more than once");
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = list(ListFilter {
                after_id: after.clone(),
                limit: Some(2),
                ..ListFilter::in_scopes(patterns.clone())
            })
            .await;
            assert!(page.len() <= 2, "a page holds at most `limit`");
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            paged.extend(page);
        }
        assert_eq!(
            in_order(&paged),
            in_order(&want),
            "paging by after_id and limit over {patterns:?} visits every match once, in id \
             order"
        );
    }
}
