//! Options accepted for compatibility but not supported yet are logged once per option
//! by the `runnel serve` process (the log-once state is process-wide, and the log is the
//! process's stderr), so it runs against the real binary, whose servers are processes of
//! their own.

mod common;

use common::{eventually, TestApp, SERVICE_TIMEOUT};
use serde_json::json;

#[tokio::test]
async fn options_not_supported_yet_are_accepted_and_logged_once_each() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    // Defaults and empty values are no use of the option: nothing is logged for them.
    server
        .trigger_new(
            key,
            "t",
            &json!({"options": {"region": "",
                "debounce": {}, "concurrency": [], "bulkActionId": ""}}),
        )
        .await;
    let used = json!({"options": {"region": "eu",
        "debounce": {"key": "k", "delay": "5s"}, "concurrency": ["openai"],
        "bulkActionId": "bulk_1"}});
    for _ in 0..3 {
        server.trigger_new(key, "t", &used).await;
    }
    let options = ["region", "debounce", "concurrency", "bulkActionId"];
    let logged = |name: &str| {
        let line = format!("option {name} is accepted but not supported yet");
        server.stderr().matches(&line).count()
    };
    eventually("every option logged", SERVICE_TIMEOUT, || async {
        options.iter().all(|name| logged(name) > 0).then_some(())
    })
    .await;
    for name in options {
        assert_eq!(logged(name), 1, "{name}: {}", server.stderr());
    }
}
