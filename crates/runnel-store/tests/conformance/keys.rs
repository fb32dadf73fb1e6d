//! API keys: authentication, listing, revocation, and the key hashes of an environment;
//! personal access tokens, and the keys derived from them (`api_key_ensure`).

use crate::harness::*;

/// Keys beside the bootstrap key: a second dev key, a staging key and a prod key,
/// created one minute apart.
struct Keys {
    dev: SecretKey,
    dev_second: SecretKey,
    staging: SecretKey,
    prod: SecretKey,
}

async fn insert_keys(store: &dyn Store, tenancy: &Tenancy) -> Keys {
    let keys = Keys {
        dev: tenancy.dev_key.clone(),
        dev_second: SecretKey::generate(EnvironmentKind::Dev),
        staging: SecretKey::generate(EnvironmentKind::Staging),
        prod: SecretKey::generate(EnvironmentKind::Prod),
    };
    store
        .api_key_insert(&keys.dev_second, &tenancy.dev.id, at(MINUTE))
        .await
        .unwrap();
    store
        .api_key_insert(&keys.staging, &tenancy.staging.id, at(2 * MINUTE))
        .await
        .unwrap();
    store
        .api_key_insert(&keys.prod, &tenancy.prod.id, at(3 * MINUTE))
        .await
        .unwrap();
    keys
}

/// What `api_key_list` shows for the keys of [`insert_keys`], none revoked.
fn listed(keys: &Keys) -> Vec<ApiKeyInfo> {
    [
        (&keys.dev, EnvironmentKind::Dev, at(0)),
        (&keys.dev_second, EnvironmentKind::Dev, at(MINUTE)),
        (&keys.staging, EnvironmentKind::Staging, at(2 * MINUTE)),
        (&keys.prod, EnvironmentKind::Prod, at(3 * MINUTE)),
    ]
    .into_iter()
    .map(|(key, environment, created_at)| ApiKeyInfo {
        prefix: key.display_prefix(),
        environment,
        created_at,
        revoked_at: None,
    })
    .collect()
}

pub(crate) async fn api_key_authenticate_finds_the_environment_of_a_live_key(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    for (key, environment) in [
        (&keys.dev, &tenancy.dev),
        (&keys.dev_second, &tenancy.dev),
        (&keys.staging, &tenancy.staging),
        (&keys.prod, &tenancy.prod),
    ] {
        assert_eq!(
            store
                .api_key_authenticate(&key.hash())
                .await
                .unwrap()
                .as_ref(),
            Some(environment),
            "{key:?}"
        );
    }
    let unknown = SecretKey::generate(EnvironmentKind::Prod);
    assert_eq!(
        store.api_key_authenticate(&unknown.hash()).await.unwrap(),
        None
    );
    // Keys are looked up by hash only: the secret itself is not a credential for storage.
    assert_eq!(
        store
            .api_key_authenticate(keys.prod.expose())
            .await
            .unwrap(),
        None
    );
}

pub(crate) async fn api_key_list_shows_prefixes_never_secrets(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    let list = store.api_key_list().await.unwrap();
    assert_eq!(list, listed(&keys));
    let shown = format!("{list:?}");
    for key in [&keys.dev, &keys.dev_second, &keys.staging, &keys.prod] {
        assert!(
            !shown.contains(key.expose()),
            "the list leaks a secret: {shown}"
        );
        assert!(
            !shown.contains(&key.hash()),
            "the list leaks a hash: {shown}"
        );
    }
}

pub(crate) async fn api_key_revoke_by_unique_prefix_stops_authentication(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    let outcome = store
        .api_key_revoke(&keys.staging.display_prefix(), at(HOUR))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RevokeOutcome::Revoked {
            prefix: keys.staging.display_prefix()
        }
    );
    // A shorter prefix works when only one live key starts with it.
    let outcome = store.api_key_revoke("tr_prod", at(2 * HOUR)).await.unwrap();
    assert_eq!(
        outcome,
        RevokeOutcome::Revoked {
            prefix: keys.prod.display_prefix()
        }
    );

    assert_eq!(
        store
            .api_key_authenticate(&keys.staging.hash())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.api_key_authenticate(&keys.prod.hash()).await.unwrap(),
        None
    );
    assert_eq!(
        store.api_key_authenticate(&keys.dev.hash()).await.unwrap(),
        Some(tenancy.dev.clone())
    );
    assert_eq!(
        store
            .api_key_authenticate(&keys.dev_second.hash())
            .await
            .unwrap(),
        Some(tenancy.dev)
    );

    let mut want = listed(&keys);
    want[2].revoked_at = Some(at(HOUR));
    want[3].revoked_at = Some(at(2 * HOUR));
    assert_eq!(store.api_key_list().await.unwrap(), want);

    // A revoked key is no longer a match, so revoking it again finds nothing.
    assert_eq!(
        store
            .api_key_revoke(&keys.staging.display_prefix(), at(3 * HOUR))
            .await
            .unwrap(),
        RevokeOutcome::NotFound
    );
    assert_eq!(store.api_key_list().await.unwrap(), want);
}

pub(crate) async fn api_key_revoke_reports_an_unknown_prefix(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    for prefix in ["", "tr_nope_", "tr_dev_!", "xtr_dev_"] {
        assert_eq!(
            store.api_key_revoke(prefix, at(HOUR)).await.unwrap(),
            RevokeOutcome::NotFound,
            "{prefix}"
        );
    }
    assert_eq!(store.api_key_list().await.unwrap(), listed(&keys));
}

pub(crate) async fn api_key_revoke_refuses_an_ambiguous_prefix(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    assert_eq!(
        store.api_key_revoke("tr_dev_", at(HOUR)).await.unwrap(),
        RevokeOutcome::Ambiguous { matches: 2 }
    );
    assert_eq!(
        store.api_key_list().await.unwrap(),
        listed(&keys),
        "nothing is revoked"
    );
    assert_eq!(
        store.api_key_authenticate(&keys.dev.hash()).await.unwrap(),
        Some(tenancy.dev.clone())
    );
    assert_eq!(
        store
            .api_key_authenticate(&keys.dev_second.hash())
            .await
            .unwrap(),
        Some(tenancy.dev)
    );

    // Once one of the two is revoked, the same prefix names the other alone.
    store
        .api_key_revoke(&keys.dev.display_prefix(), at(2 * HOUR))
        .await
        .unwrap();
    assert_eq!(
        store.api_key_revoke("tr_dev_", at(3 * HOUR)).await.unwrap(),
        RevokeOutcome::Revoked {
            prefix: keys.dev_second.display_prefix()
        }
    );
}

/// Racing revokes of one key: one revokes it, the others find no live key.
pub(crate) async fn api_key_revoke_revokes_once_under_concurrent_revokes(store: Arc<dyn Store>) {
    const REVOKES: usize = 8;
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;
    let prefix = keys.staging.display_prefix();

    let start = Arc::new(Barrier::new(REVOKES));
    let mut revokes = JoinSet::new();
    for i in 0..REVOKES {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let prefix = prefix.clone();
        revokes.spawn(async move {
            start.wait().await;
            let now = at(HOUR + i as i64);
            (
                now,
                store.api_key_revoke(&prefix, now).await.expect("revoke"),
            )
        });
    }
    let outcomes = revokes.join_all().await;

    let revoked: Vec<DateTime<Utc>> = outcomes
        .iter()
        .filter(|(_, outcome)| {
            *outcome
                == RevokeOutcome::Revoked {
                    prefix: prefix.clone(),
                }
        })
        .map(|(now, _)| *now)
        .collect();
    assert_eq!(revoked.len(), 1, "exactly one revoke wins: {outcomes:?}");
    assert_eq!(
        outcomes
            .iter()
            .filter(|(_, outcome)| *outcome == RevokeOutcome::NotFound)
            .count(),
        REVOKES - 1,
        "{outcomes:?}"
    );
    let mut want = listed(&keys);
    want[2].revoked_at = Some(revoked[0]);
    assert_eq!(
        store.api_key_list().await.unwrap(),
        want,
        "the winner's time is kept"
    );
}

/// Two personal access tokens, created one and two hours in.
async fn insert_tokens(store: &dyn Store) -> (PersonalAccessToken, PersonalAccessToken) {
    let project = store.project_get().await.unwrap().expect("bootstrapped");
    let (first, second) = (
        PersonalAccessToken::generate(),
        PersonalAccessToken::generate(),
    );
    store
        .pat_insert(&first, &project.id, at(HOUR))
        .await
        .unwrap();
    store
        .pat_insert(&second, &project.id, at(2 * HOUR))
        .await
        .unwrap();
    (first, second)
}

pub(crate) async fn pat_authenticate_finds_the_project_of_a_live_token(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let project = store.project_get().await.unwrap().unwrap();
    let (first, second) = insert_tokens(&*store).await;

    for token in [&first, &second] {
        assert_eq!(
            store
                .pat_authenticate(&token.hash())
                .await
                .unwrap()
                .as_ref(),
            Some(&project),
            "{token:?}"
        );
    }
    assert_eq!(
        store
            .pat_authenticate(&PersonalAccessToken::generate().hash())
            .await
            .unwrap(),
        None
    );
    // Looked up by hash only, and a token is no secret key (nor the other way round).
    assert_eq!(store.pat_authenticate(first.expose()).await.unwrap(), None);
    assert_eq!(
        store.api_key_authenticate(&first.hash()).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .pat_authenticate(&tenancy.dev_key.hash())
            .await
            .unwrap(),
        None
    );
}

pub(crate) async fn pat_list_shows_prefixes_never_secrets(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    assert_eq!(store.pat_list().await.unwrap(), vec![]);
    let (first, second) = insert_tokens(&*store).await;

    let list = store.pat_list().await.unwrap();
    assert_eq!(
        list,
        vec![
            PersonalAccessTokenInfo {
                prefix: first.display_prefix(),
                created_at: at(HOUR),
                revoked_at: None,
            },
            PersonalAccessTokenInfo {
                prefix: second.display_prefix(),
                created_at: at(2 * HOUR),
                revoked_at: None,
            },
        ]
    );
    let shown = format!("{list:?}");
    for token in [&first, &second] {
        assert!(!shown.contains(token.expose()), "leaks a secret: {shown}");
        assert!(!shown.contains(&token.hash()), "leaks a hash: {shown}");
    }
    // Tokens are not secret keys: the key list is unchanged.
    assert_eq!(
        store.api_key_list().await.unwrap(),
        vec![ApiKeyInfo {
            prefix: tenancy.dev_key.display_prefix(),
            environment: EnvironmentKind::Dev,
            created_at: at(0),
            revoked_at: None,
        }]
    );
}

pub(crate) async fn pat_revoke_by_prefix_stops_authentication_and_leaves_keys_alone(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;
    let (first, second) = insert_tokens(&*store).await;

    // `tr_` starts every key and token: ambiguous, nothing revoked.
    assert_eq!(
        store.api_key_revoke("tr_", at(3 * HOUR)).await.unwrap(),
        RevokeOutcome::Ambiguous { matches: 6 }
    );
    assert_eq!(
        store.api_key_revoke("tr_pat_", at(3 * HOUR)).await.unwrap(),
        RevokeOutcome::Ambiguous { matches: 2 }
    );
    assert_eq!(
        store
            .api_key_revoke(&first.display_prefix(), at(3 * HOUR))
            .await
            .unwrap(),
        RevokeOutcome::Revoked {
            prefix: first.display_prefix()
        }
    );
    assert_eq!(store.pat_authenticate(&first.hash()).await.unwrap(), None);
    assert!(store
        .pat_authenticate(&second.hash())
        .await
        .unwrap()
        .is_some());
    // Once one is revoked, `tr_pat_` names the other alone.
    assert_eq!(
        store.api_key_revoke("tr_pat_", at(4 * HOUR)).await.unwrap(),
        RevokeOutcome::Revoked {
            prefix: second.display_prefix()
        }
    );
    assert_eq!(
        store.api_key_revoke("tr_pat_", at(5 * HOUR)).await.unwrap(),
        RevokeOutcome::NotFound
    );
    let listed_tokens = store.pat_list().await.unwrap();
    assert_eq!(
        listed_tokens
            .iter()
            .map(|t| t.revoked_at)
            .collect::<Vec<_>>(),
        vec![Some(at(3 * HOUR)), Some(at(4 * HOUR))]
    );
    // The secret keys are untouched.
    assert_eq!(store.api_key_list().await.unwrap(), listed(&keys));
}

pub(crate) async fn api_key_ensure_stores_once_and_keeps_a_revoked_key_revoked(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let token = PersonalAccessToken::generate();
    let key = token.derive_key(EnvironmentKind::Staging, &tenancy.staging.id);

    for minute in [1, 2] {
        assert_eq!(
            store
                .api_key_ensure(&key, &tenancy.staging.id, at(minute * MINUTE))
                .await
                .unwrap(),
            KeyStanding::Live
        );
    }
    assert_eq!(
        store.api_key_authenticate(&key.hash()).await.unwrap(),
        Some(tenancy.staging.clone())
    );
    let derived = ApiKeyInfo {
        prefix: key.display_prefix(),
        environment: EnvironmentKind::Staging,
        created_at: at(MINUTE),
        revoked_at: None,
    };
    let list = store.api_key_list().await.unwrap();
    assert_eq!(list.len(), 2, "stored once: {list:?}");
    assert_eq!(list[1], derived, "the first ensure's time is kept");

    store
        .api_key_revoke(&key.display_prefix(), at(HOUR))
        .await
        .unwrap();
    assert_eq!(
        store
            .api_key_ensure(&key, &tenancy.staging.id, at(2 * HOUR))
            .await
            .unwrap(),
        KeyStanding::Revoked
    );
    assert_eq!(store.api_key_authenticate(&key.hash()).await.unwrap(), None);
    assert_eq!(
        store.api_key_list().await.unwrap()[1],
        ApiKeyInfo {
            revoked_at: Some(at(HOUR)),
            ..derived
        }
    );
}

/// Racing ensures of one key (the same token asking on several nodes at once): every
/// one answers `Live`, one row is stored.
pub(crate) async fn api_key_ensure_stores_once_under_concurrent_ensures(store: Arc<dyn Store>) {
    const ENSURES: usize = 8;
    let tenancy = bootstrap(&*store).await;
    let key = PersonalAccessToken::generate().derive_key(EnvironmentKind::Dev, &tenancy.dev.id);

    let start = Arc::new(Barrier::new(ENSURES));
    let mut ensures = JoinSet::new();
    for i in 0..ENSURES {
        let (store, start, key) = (Arc::clone(&store), Arc::clone(&start), key.clone());
        let environment = tenancy.dev.id.clone();
        ensures.spawn(async move {
            start.wait().await;
            store
                .api_key_ensure(&key, &environment, at(MINUTE + i as i64))
                .await
                .expect("ensure")
        });
    }
    let outcomes = ensures.join_all().await;
    assert_eq!(outcomes, vec![KeyStanding::Live; ENSURES]);
    let list = store.api_key_list().await.unwrap();
    assert_eq!(
        list.iter()
            .filter(|k| k.prefix == key.display_prefix())
            .count(),
        1,
        "{list:?}"
    );
}

// [auth]

pub(crate) async fn api_key_hashes_lists_the_live_keys_of_an_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    for (environment, want) in [
        (&tenancy.dev, vec![keys.dev.hash(), keys.dev_second.hash()]),
        (&tenancy.staging, vec![keys.staging.hash()]),
        (&tenancy.prod, vec![keys.prod.hash()]),
    ] {
        assert_eq!(
            store.api_key_hashes(&environment.id).await.unwrap(),
            Some((environment.clone(), want)),
            "{environment:?}"
        );
    }
}

pub(crate) async fn api_key_hashes_drops_revoked_keys_and_knows_no_other_environment(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    store
        .api_key_revoke(&keys.dev.display_prefix(), at(HOUR))
        .await
        .unwrap();
    store
        .api_key_revoke(&keys.prod.display_prefix(), at(HOUR))
        .await
        .unwrap();
    assert_eq!(
        store.api_key_hashes(&tenancy.dev.id).await.unwrap(),
        Some((tenancy.dev.clone(), vec![keys.dev_second.hash()]))
    );
    // An environment whose keys are all revoked still exists, with nothing to verify by.
    assert_eq!(
        store.api_key_hashes(&tenancy.prod.id).await.unwrap(),
        Some((tenancy.prod.clone(), vec![]))
    );
    let unknown = runnel_core::EnvironmentId::generate(0);
    assert_eq!(store.api_key_hashes(&unknown).await.unwrap(), None);
}
