// `sqlx::migrate!` embeds the migration files at compile time but cannot tell Cargo to
// watch their folder: a new migration must rebuild this crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
