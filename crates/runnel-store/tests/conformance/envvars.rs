//! Environment variables: per-environment rows of sealed values, upserts that keep a
//! secret secret, all-or-nothing imports, and what a master-key rotation needs.

use runnel_store::{EnvVarImport, EnvVarRecord, EnvVarWrite};

use crate::harness::*;

fn write(name: &str, sealed: &str, is_secret: bool) -> EnvVarWrite {
    EnvVarWrite {
        name: name.to_owned(),
        value_sealed: sealed.to_owned(),
        is_secret,
    }
}

fn record(
    environment: &Environment,
    name: &str,
    sealed: &str,
    is_secret: bool,
    created: i64,
    updated: i64,
) -> EnvVarRecord {
    EnvVarRecord {
        environment_id: environment.id.clone(),
        name: name.to_owned(),
        value_sealed: sealed.to_owned(),
        is_secret,
        created_at: at(created),
        updated_at: at(updated),
    }
}

pub(crate) async fn env_var_upsert_update_delete_round_trip_per_environment(store: Arc<dyn Store>) {
    let t = bootstrap(&*store).await;
    store
        .env_var_upsert(&t.dev.id, &write("B", "v1:k:b", false), at(1))
        .await
        .unwrap();
    store
        .env_var_upsert(&t.dev.id, &write("A", "v1:k:a", true), at(2))
        .await
        .unwrap();
    store
        .env_var_upsert(&t.prod.id, &write("A", "v1:k:prod", false), at(3))
        .await
        .unwrap();
    assert_eq!(
        store.env_var_list(&t.dev.id).await.unwrap(),
        vec![
            record(&t.dev, "A", "v1:k:a", true, 2, 2),
            record(&t.dev, "B", "v1:k:b", false, 1, 1),
        ]
    );
    assert_eq!(
        store.env_var_list(&t.prod.id).await.unwrap(),
        vec![record(&t.prod, "A", "v1:k:prod", false, 3, 3)]
    );
    assert_eq!(store.env_var_list(&t.staging.id).await.unwrap(), vec![]);

    // An upsert replaces the value; a secret stays secret though the write says not.
    store
        .env_var_upsert(&t.dev.id, &write("A", "v1:k:a2", false), at(4))
        .await
        .unwrap();
    assert_eq!(
        store.env_var_get(&t.dev.id, "A").await.unwrap(),
        Some(record(&t.dev, "A", "v1:k:a2", true, 2, 4))
    );
    // A non-secret becomes secret when a write says so.
    store
        .env_var_upsert(&t.dev.id, &write("B", "v1:k:b2", true), at(5))
        .await
        .unwrap();
    assert_eq!(
        store.env_var_get(&t.dev.id, "B").await.unwrap(),
        Some(record(&t.dev, "B", "v1:k:b2", true, 1, 5))
    );

    assert!(store
        .env_var_update(&t.dev.id, "A", "v1:k:a3", at(6))
        .await
        .unwrap());
    assert!(!store
        .env_var_update(&t.staging.id, "A", "v1:k:x", at(6))
        .await
        .unwrap());
    assert_eq!(store.env_var_get(&t.staging.id, "A").await.unwrap(), None);
    assert_eq!(
        store.env_var_get(&t.dev.id, "A").await.unwrap(),
        Some(record(&t.dev, "A", "v1:k:a3", true, 2, 6))
    );

    assert!(store.env_var_delete(&t.dev.id, "A").await.unwrap());
    assert!(!store.env_var_delete(&t.dev.id, "A").await.unwrap());
    assert_eq!(store.env_var_get(&t.dev.id, "A").await.unwrap(), None);
    assert_eq!(
        store.env_var_get(&t.prod.id, "A").await.unwrap(),
        Some(record(&t.prod, "A", "v1:k:prod", false, 3, 3)),
        "another environment's variable of the same name is untouched"
    );
}

pub(crate) async fn env_var_import_without_override_writes_nothing_on_a_conflict(
    store: Arc<dyn Store>,
) {
    let t = bootstrap(&*store).await;
    store
        .env_var_upsert(&t.dev.id, &write("TAKEN", "v1:k:old", false), at(1))
        .await
        .unwrap();
    store
        .env_var_upsert(&t.dev.id, &write("ALSO", "v1:k:old2", false), at(1))
        .await
        .unwrap();
    let outcome = store
        .env_var_import(
            &t.dev.id,
            &[
                write("NEW", "v1:k:new", false),
                write("TAKEN", "v1:k:t", false),
                write("ALSO", "v1:k:a", false),
            ],
            false,
            at(2),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        EnvVarImport::Conflicts(vec!["ALSO".to_owned(), "TAKEN".to_owned()])
    );
    assert_eq!(
        store.env_var_list(&t.dev.id).await.unwrap(),
        vec![
            record(&t.dev, "ALSO", "v1:k:old2", false, 1, 1),
            record(&t.dev, "TAKEN", "v1:k:old", false, 1, 1),
        ],
        "nothing of the import was written"
    );

    // The same names in another environment do not conflict.
    assert_eq!(
        store
            .env_var_import(
                &t.staging.id,
                &[write("TAKEN", "v1:k:s", true)],
                false,
                at(3)
            )
            .await
            .unwrap(),
        EnvVarImport::Written
    );

    // With override, every variable is written.
    assert_eq!(
        store
            .env_var_import(
                &t.dev.id,
                &[
                    write("NEW", "v1:k:new", false),
                    write("TAKEN", "v1:k:t", true)
                ],
                true,
                at(4),
            )
            .await
            .unwrap(),
        EnvVarImport::Written
    );
    assert_eq!(
        store.env_var_list(&t.dev.id).await.unwrap(),
        vec![
            record(&t.dev, "ALSO", "v1:k:old2", false, 1, 1),
            record(&t.dev, "NEW", "v1:k:new", false, 4, 4),
            record(&t.dev, "TAKEN", "v1:k:t", true, 1, 4),
        ]
    );
}

/// Concurrent imports without override of one name: exactly one writes it.
pub(crate) async fn env_var_import_concurrent_imports_of_one_name_write_once(
    store: Arc<dyn Store>,
) {
    let t = bootstrap(&*store).await;
    let mut imports = JoinSet::new();
    for i in 0..8 {
        let (store, env) = (Arc::clone(&store), t.dev.id.clone());
        imports.spawn(async move {
            store
                .env_var_import(
                    &env,
                    &[
                        write(&format!("OWN_{i}"), "v1:k:own", false),
                        write("SHARED", &format!("v1:k:{i}"), false),
                    ],
                    false,
                    at(1),
                )
                .await
                .unwrap()
        });
    }
    let outcomes = imports.join_all().await;
    let written = outcomes
        .iter()
        .filter(|o| **o == EnvVarImport::Written)
        .count();
    assert_eq!(written, 1, "{outcomes:?}");
    let names: Vec<String> = store
        .env_var_list(&t.dev.id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names.len(), 2, "the winner's two variables only: {names:?}");
    assert!(names.contains(&"SHARED".to_owned()));
}
