//! Environment variables in the engine: what the management API and tasks each read,
//! the checks on names and values, and a master-key rotation re-sealing every value.

mod common;

use std::collections::BTreeMap;

use common::harness;
use runnel_core::secrets::{MasterKey, MasterKeys};
use runnel_engine::envvars::{EnvVarView, EnvVarsError};
use runnel_engine::{Engine, EngineConfig};

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn tasks_get_clear_values_but_not_platform_names_and_the_api_gets_redactions() {
    let h = harness().await;
    let e = &h.engine;
    e.env_var_set(&h.dev, "PLAIN", "p", false).await.unwrap();
    e.env_var_set(&h.dev, "SECRET", "s", true).await.unwrap();
    e.env_var_import(
        &h.dev,
        &vars(&[
            ("TRIGGER_API_URL", "x"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "y"),
            ("OTEL_LOG_LEVEL", "debug"),
        ]),
        false,
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        e.env_vars_resolved(&h.dev).await.unwrap(),
        BTreeMap::from(
            [("OTEL_LOG_LEVEL", "debug"), ("PLAIN", "p"), ("SECRET", "s")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        )
    );
    assert_eq!(
        e.env_var_get(&h.dev, "SECRET").await.unwrap(),
        EnvVarView {
            name: "SECRET".into(),
            value: "<redacted>".into(),
            is_secret: true
        }
    );
    assert!(e.env_vars_resolved(&h.prod).await.unwrap().is_empty());

    // Checked before anything is written.
    assert!(matches!(
        e.env_var_import(
            &h.dev,
            &vars(&[("NEW", "1"), ("BAD NAME", "2")]),
            true,
            false
        )
        .await,
        Err(EnvVarsError::Invalid(_))
    ));
    assert!(matches!(
        e.env_var_get(&h.dev, "NEW").await,
        Err(EnvVarsError::NotFound)
    ));
    match e
        .env_var_import(&h.dev, &vars(&[("NEW", "1"), ("PLAIN", "2")]), false, false)
        .await
    {
        Err(EnvVarsError::Conflicts(names)) => assert_eq!(names, vec!["PLAIN".to_owned()]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        e.env_var_update(&h.dev, "NEW", "1").await,
        Err(EnvVarsError::NotFound)
    ));
}

#[tokio::test]
async fn a_rotation_reseals_every_value_under_the_new_key() {
    let h = harness().await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let with_keys = |keys: MasterKeys| {
        Engine::with_config(
            h.engine.store().clone(),
            h.clock.clone(),
            EngineConfig {
                master_keys: keys,
                ..EngineConfig::default()
            },
        )
    };
    let before = with_keys(MasterKeys::new(old.clone(), vec![]));
    before
        .env_var_set(&h.dev, "A", "alpha", true)
        .await
        .unwrap();
    before
        .env_var_set(&h.prod, "B", "beta", false)
        .await
        .unwrap();
    let store = h.engine.store();
    // The key ids env var values are sealed under, as the start-up check reads them.
    let env_var_key_ids = || async {
        store
            .sealed_key_ids()
            .await
            .unwrap()
            .into_iter()
            .filter(|count| count.table == "env_vars")
            .map(|count| count.key_id.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(env_var_key_ids().await, vec![old.id().to_owned()]);

    // What a start with the new key and the old one as previous does.
    let rotating = MasterKeys::new(new.clone(), vec![old.clone()]);
    let env_vars_resealed = |done: Vec<runnel_store::Resealed>| {
        done.into_iter()
            .find(|r| r.table == "env_vars")
            .unwrap()
            .resealed
    };
    assert_eq!(
        env_vars_resealed(store.sealed_reseal(&rotating).await.unwrap()),
        2
    );
    assert_eq!(
        env_vars_resealed(store.sealed_reseal(&rotating).await.unwrap()),
        0,
        "nothing left to re-seal"
    );
    assert_eq!(env_var_key_ids().await, vec![new.id().to_owned()]);

    let after = with_keys(MasterKeys::new(new, vec![]));
    assert_eq!(after.env_vars_resolved(&h.dev).await.unwrap()["A"], "alpha");
    assert_eq!(after.env_vars_resolved(&h.prod).await.unwrap()["B"], "beta");
    // The old key alone no longer opens them: a read fails rather than going without.
    assert!(matches!(
        before.env_vars_resolved(&h.dev).await,
        Err(EnvVarsError::Sealed { .. })
    ));
}
