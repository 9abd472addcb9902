//! Rebuilds the server when a migration changes: `sqlx::migrate!` embeds
//! `migrations/sqlite/` and `migrations/postgres/` at compile time, and cargo
//! does not otherwise know it reads them.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/sqlite");
    println!("cargo:rerun-if-changed=../migrations/postgres");
}
