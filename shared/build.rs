// sqlx::migrate! embeds migrations/ at build time; rebuild when it changes
// (a new migration file is otherwise not seen until something else changes).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
