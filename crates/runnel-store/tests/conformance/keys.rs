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
        .api_key_insert(
            &keys.dev_second,
            &tenancy.dev.id,
            crate::harness::master_keys(),
            at(MINUTE),
        )
        .await
        .unwrap();
    store
        .api_key_insert(
            &keys.staging,
            &tenancy.staging.id,
            crate::harness::master_keys(),
            at(2 * MINUTE),
        )
        .await
        .unwrap();
    store
        .api_key_insert(
            &keys.prod,
            &tenancy.prod.id,
            crate::harness::master_keys(),
            at(3 * MINUTE),
        )
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
                .api_key_ensure(
                    &key,
                    &tenancy.staging.id,
                    crate::harness::master_keys(),
                    at(minute * MINUTE)
                )
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
            .api_key_ensure(
                &key,
                &tenancy.staging.id,
                crate::harness::master_keys(),
                at(2 * HOUR)
            )
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
                .api_key_ensure(
                    &key,
                    &environment,
                    crate::harness::master_keys(),
                    at(MINUTE + i as i64),
                )
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
            live_hashes(&*store, &environment.id).await,
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
        live_hashes(&*store, &tenancy.dev.id).await,
        Some((tenancy.dev.clone(), vec![keys.dev_second.hash()]))
    );
    // An environment whose keys are all revoked still exists, with nothing to verify by.
    assert_eq!(
        live_hashes(&*store, &tenancy.prod.id).await,
        Some((tenancy.prod.clone(), vec![]))
    );
    let unknown = runnel_core::EnvironmentId::generate(0);
    assert_eq!(live_hashes(&*store, &unknown).await, None);
}

/// The hashes of environment `id`'s live keys ([`KeyStore::api_keys_live`]).
async fn live_hashes(
    store: &dyn Store,
    id: &runnel_core::EnvironmentId,
) -> Option<(Environment, Vec<String>)> {
    store
        .api_keys_live(id)
        .await
        .unwrap()
        .map(|(environment, keys)| (environment, keys.into_iter().map(|k| k.hash).collect()))
}

// [secrets]

pub(crate) async fn keys_are_stored_sealed_under_the_master_key_bound_to_their_row(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;
    let derived = PersonalAccessToken::generate().derive_key(EnvironmentKind::Dev, &tenancy.dev.id);
    store
        .api_key_ensure(&derived, &tenancy.dev.id, master_keys(), at(HOUR))
        .await
        .unwrap();
    let (_, live) = store.api_keys_live(&tenancy.dev.id).await.unwrap().unwrap();
    let want = [&keys.dev, &keys.dev_second, &derived];
    assert_eq!(live.len(), want.len());
    for (key, stored) in want.iter().zip(&live) {
        let sealed = stored.sealed.as_deref().expect("stored sealed");
        assert!(!sealed.contains(key.expose()), "{sealed}");
        let context = runnel_store::secrets::api_key_context(&key.hash());
        assert_eq!(master_keys().open(sealed, &context).unwrap(), key.expose());
        // Bound to its row: another key's context does not open it.
        let other = runnel_store::secrets::api_key_context(&keys.prod.hash());
        assert!(master_keys().open(sealed, &other).is_err());
    }
    let found = store.api_key_find(&keys.dev.hash()).await.unwrap().unwrap();
    assert_eq!(
        found,
        runnel_store::FoundKey {
            environment: tenancy.dev.clone(),
            sealed: true
        }
    );
    // Already sealed: the conditional update leaves it.
    assert!(!store
        .api_key_seal_missing(&keys.dev, master_keys())
        .await
        .unwrap());
    let counts = store.sealed_key_ids().await.unwrap();
    assert_eq!(
        counts,
        vec![runnel_store::SealedCount {
            table: "api_keys",
            column: "key_sealed",
            key_id: Some(master_keys().current().id().to_owned()),
            count: 5,
        }]
    );
}

pub(crate) async fn sealed_reseal_moves_values_to_the_current_key_once(store: Arc<dyn Store>) {
    use runnel_core::secrets::{MasterKey, MasterKeys};
    let old = MasterKeys::new(MasterKey::generate(), vec![]);
    let tenancy = {
        let dev_key = SecretKey::generate(EnvironmentKind::Dev);
        let boot = store
            .project_bootstrap(&dev_key, &old, at(0))
            .await
            .unwrap()
            .unwrap();
        (boot.environments, dev_key)
    };
    let staging = tenancy
        .0
        .iter()
        .find(|e| e.kind == EnvironmentKind::Staging)
        .unwrap();
    let key = SecretKey::generate(EnvironmentKind::Staging);
    store
        .api_key_insert(&key, &staging.id, &old, at(MINUTE))
        .await
        .unwrap();

    // An environment variable, sealed as the engine seals it.
    let var_context = runnel_core::envvars::seal_context(&staging.id, "API_TOKEN");
    store
        .env_var_upsert(
            &staging.id,
            &runnel_store::EnvVarWrite {
                name: "API_TOKEN".to_owned(),
                value_sealed: old.seal("s3cr3t", &var_context),
                is_secret: true,
            },
            at(MINUTE),
        )
        .await
        .unwrap();

    let rotated = MasterKeys::new(MasterKey::generate(), vec![old.current().clone()]);
    let done = store.sealed_reseal(&rotated).await.unwrap();
    assert_eq!(
        done,
        vec![
            runnel_store::Resealed {
                table: "api_keys",
                column: "key_sealed",
                resealed: 2,
                raced: 0,
                unopened: 0,
            },
            runnel_store::Resealed {
                table: "env_vars",
                column: "value_sealed",
                resealed: 1,
                raced: 0,
                unopened: 0,
            }
        ]
    );
    let again = store.sealed_reseal(&rotated).await.unwrap();
    assert!(again.iter().all(|r| r.resealed == 0), "{again:?}");
    assert_eq!(
        store.sealed_key_ids().await.unwrap(),
        vec![
            runnel_store::SealedCount {
                table: "api_keys",
                column: "key_sealed",
                key_id: Some(rotated.current().id().to_owned()),
                count: 2,
            },
            runnel_store::SealedCount {
                table: "env_vars",
                column: "value_sealed",
                key_id: Some(rotated.current().id().to_owned()),
                count: 1,
            }
        ]
    );
    let var = store
        .env_var_get(&staging.id, "API_TOKEN")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        MasterKeys::new(rotated.current().clone(), vec![])
            .open(&var.value_sealed, &var_context)
            .unwrap(),
        "s3cr3t"
    );
    // Only the new key is needed now.
    let new_only = MasterKeys::new(rotated.current().clone(), vec![]);
    let (_, live) = store.api_keys_live(&staging.id).await.unwrap().unwrap();
    let context = runnel_store::secrets::api_key_context(&key.hash());
    assert_eq!(
        new_only
            .open(live[0].sealed.as_deref().unwrap(), &context)
            .unwrap(),
        key.expose()
    );
}

pub(crate) async fn public_token_use_lets_one_use_through(store: Arc<dyn Store>) {
    use runnel_store::PublicTokenUse;
    let tenancy = bootstrap(&*store).await;
    let uses = (0..4).map(|_| {
        let store = store.clone();
        let env = tenancy.dev.id.clone();
        async move {
            store
                .public_token_use("token-a", &env, at(HOUR), at(0))
                .await
                .unwrap()
        }
    });
    let outcomes = futures_join_all(uses).await;
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == PublicTokenUse::First)
            .count(),
        1,
        "{outcomes:?}"
    );
    store
        .public_token_use_for("token-a", "batch:b1")
        .await
        .unwrap();
    assert_eq!(
        store
            .public_token_use("token-a", &tenancy.dev.id, at(HOUR), at(MINUTE))
            .await
            .unwrap(),
        PublicTokenUse::Again {
            used_for: Some("batch:b1".to_owned())
        }
    );
    // Another token is its own.
    assert_eq!(
        store
            .public_token_use("token-b", &tenancy.dev.id, at(HOUR), at(MINUTE))
            .await
            .unwrap(),
        PublicTokenUse::First
    );
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let mut set = JoinSet::new();
    for (i, future) in futures.enumerate() {
        set.spawn(async move { (i, future.await) });
    }
    let mut out: Vec<_> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, o)| o).collect()
}
