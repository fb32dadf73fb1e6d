//! The keys page: the project's secret keys as `runnel keys list` shows them
//! ([`Engine::api_key_list`]): display prefixes only, never a key.
//!
//! [`Engine::api_key_list`]: runnel_engine::Engine::api_key_list

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::page::{self, Area, PageError};
use super::session::Session;
use crate::state::AppState;

/// `GET /dashboard/keys`.
pub(crate) async fn list(State(state): State<AppState>, session: Session) -> Response {
    let result = async {
        let keys = state.engine.api_key_list().await?;
        let content = html! {
            h1 { "Keys" }
            p.hint {
                "The secret keys of this project, by prefix. "
                code { "runnel keys create --env <env>" } " makes one, "
                code { "runnel keys revoke <prefix>" } " revokes one (its sessions end at once)."
            }
            (page::table("Keys", &["Prefix", "Environment", "Created", "Revoked"], html! {
                @for key in &keys {
                    tr data-key-prefix=(key.prefix) {
                        td {
                            code { (key.prefix) "…" }
                            @if key.prefix == session.key_prefix && key.revoked_at.is_none() {
                                " " span.hint { "(this session)" }
                            }
                        }
                        td { (key.environment.slug()) }
                        td { (page::time(key.created_at)) }
                        td { @match key.revoked_at { Some(at) => (page::time(at)), None => "No" } }
                    }
                }
            }))
        };
        Ok::<_, PageError>(page::ok(&session, Area::Keys, "Keys", content))
    };
    let result = result.await;
    session.respond(result)
}
