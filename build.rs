//! `sqlx::migrate!` embeds the migration directories at compile time, and cargo
//! does not watch them by itself: this rebuilds the crate when a migration is
//! added or edited.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
