//! API keys: authentication, listing, revocation, and the key hashes of an environment.

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
