//! The store's key tables in `ARCHITECTURE.md` and `book/src/cache.md` are generated from the
//! engine's registry of store kinds (`src/engine/cache.rs`): this test fails when either drifts
//! from it, and `UPDATE_DOCS=1 cargo test --test cache_contract` rewrites them.

use std::fs;
use std::path::Path;

const BEGIN: &str = "<!-- cache-kinds:begin: generated from src/engine/cache.rs by `UPDATE_DOCS=1 cargo test --test cache_contract` -->";
const END: &str = "<!-- cache-kinds:end -->";

fn check(relative: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let text = fs::read_to_string(&path).unwrap();
    let start = text
        .find(BEGIN)
        .unwrap_or_else(|| panic!("{relative} has no `{BEGIN}` marker"));
    let end = text[start..]
        .find(END)
        .map(|at| start + at)
        .unwrap_or_else(|| panic!("{relative} has no `{END}` marker"));
    let generated = format!("{BEGIN}\n{}{END}", quant::engine::cache_table());
    let current = &text[start..end + END.len()];
    if current == generated {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        let updated = format!("{}{generated}{}", &text[..start], &text[end + END.len()..]);
        fs::write(&path, updated).unwrap();
        eprintln!("updated the store kind table of {relative}");
        return;
    }
    panic!(
        "the store kind table of {relative} differs from the registry in src/engine/cache.rs; \
         run `UPDATE_DOCS=1 cargo test --test cache_contract` to regenerate it"
    );
}

#[test]
fn architecture_table_is_the_registry() {
    check("ARCHITECTURE.md");
}

#[test]
fn book_table_is_the_registry() {
    check("book/src/cache.md");
}

#[test]
fn every_registered_kind_is_in_the_table() {
    let table = quant::engine::cache_table();
    for spec in quant::engine::KINDS {
        assert!(table.contains(&format!(
            "| `{}` | {} |",
            spec.kind.name(),
            spec.kind.version()
        )));
        for field in spec.fields {
            assert!(
                table.contains(&format!("**{}**", field.name)),
                "{}",
                field.name
            );
        }
    }
}
