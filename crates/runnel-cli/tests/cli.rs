//! The `runnel` command line: first start, keys, graceful shutdown and restart.

mod support;

use serde_json::json;
use support::DataDir;

#[test]
fn first_start_prints_the_project_and_dev_key_once() {
    let dir = DataDir::new();
    let server = dir.start();
    let key = server.key();
    assert!(server.stdout_lines[0].starts_with("Created project proj_"));
    assert!(server.stdout_lines[0].ends_with("with environments dev, staging, prod."));
    assert!(key.starts_with("tr_dev_") && key.len() == "tr_dev_".len() + 24);
    let (id, _) = server
        .client(&key)
        .trigger_ok("t", &json!({"payload": [1, 2]}));
    drop(server);

    let again = dir.start();
    assert_eq!(again.printed_key, None, "the key is printed only once");
    assert_eq!(again.stdout_lines.len(), 1, "{:?}", again.stdout_lines);
    let reply = again.client(&key).retrieve(&id);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["payload"], json!([1, 2]));
}

#[test]
fn sigterm_stops_the_server_cleanly_and_nothing_is_lost() {
    let dir = DataDir::new();
    let server = dir.start();
    let key = server.key();
    let api = server.client(&key);
    let ids: Vec<String> = (0..20)
        .map(|i| api.trigger_ok("t", &json!({"payload": i})).0)
        .collect();
    drop(api);
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");

    let restarted = dir.start();
    let api = restarted.client(&key);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(api.retrieve(id).body["payload"], json!(i));
    }
}

#[test]
fn keys_create_list_and_revoke() {
    let dir = DataDir::new();
    let server = dir.start();
    let dev_key = server.key();

    let (ok, stdout, _) = dir.cli(&["keys", "create", "--env", "prod"]);
    assert!(ok);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let prod = lines[0];
    assert!(prod.starts_with("tr_prod_") && prod.len() == "tr_prod_".len() + 24);
    assert!(prod["tr_prod_".len()..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric()));
    let staging = dir.create_key("staging");
    assert!(staging.starts_with("tr_stg_"));

    let (ok, listing, _) = dir.cli(&["keys", "list"]);
    assert!(ok);
    for (key, env) in [
        (&dev_key, "dev"),
        (&prod.to_owned(), "prod"),
        (&staging, "staging"),
    ] {
        assert!(
            !listing.contains(key.as_str()),
            "the list shows a secret: {listing}"
        );
        let prefix = &key[..key.len() - 24 + 6];
        let row = listing
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} missing from {listing}"));
        assert!(row.split_whitespace().nth(1) == Some(env), "{row}");
        assert!(row.trim_end().ends_with('-'), "not revoked yet: {row}");
    }

    let (ok, _, stderr) = dir.cli(&["keys", "revoke", "tr_nope"]);
    assert!(!ok);
    assert!(stderr.contains("no live key"), "{stderr}");
    let (ok, _, stderr) = dir.cli(&["keys", "revoke", "tr_"]);
    assert!(!ok, "an ambiguous prefix revokes nothing");
    assert!(stderr.contains("3 live keys"), "{stderr}");

    let (ok, _, _) = dir.cli(&["keys", "revoke", &prod[..14]]);
    assert!(ok);
    let (_, listing, _) = dir.cli(&["keys", "list"]);
    let row = listing
        .lines()
        .find(|l| l.starts_with(&prod[..14]))
        .unwrap();
    assert!(
        !row.trim_end().ends_with('-'),
        "revocation time shown: {row}"
    );
    assert_eq!(server.client(prod).retrieve("run_abc").status, 401);
}

#[test]
fn keys_create_needs_a_project() {
    let dir = DataDir::new();
    let (ok, stdout, stderr) = dir.cli(&["keys", "create", "--env", "dev"]);
    assert!(!ok);
    assert!(stdout.is_empty());
    assert!(stderr.contains("runnel serve"), "{stderr}");
}
