//! Which key of a TOML document a byte offset falls in, for error messages that name the key
//! (`board[1].power.line`, `step[2].flash.image`) next to the line. Pure; shared by the rig and
//! scenario file loaders.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The dotted key path (`board[1].power.line`) of the key or value at byte `pos`.
pub(crate) fn key_at(src: &str, pos: usize) -> Option<String> {
    let doc = DeTable::parse(src).ok()?;
    find_in_table(doc.get_ref(), pos)
}

/// Searches the whole tree: the span of a `[[board]]` element covers only its header, so a
/// parent's span says nothing about where its keys are.
fn find_in_table(table: &DeTable<'_>, pos: usize) -> Option<String> {
    for (key, value) in table {
        let name = key.get_ref();
        if key.span().contains(&pos) {
            return Some(name.to_string());
        }
        if let Some(inner) = find_in_value(value, pos) {
            return Some(if inner.starts_with('[') {
                format!("{name}{inner}")
            } else {
                format!("{name}.{inner}")
            });
        }
        if value.span().contains(&pos) {
            return Some(name.to_string());
        }
    }
    None
}

fn find_in_value(value: &Spanned<DeValue<'_>>, pos: usize) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(t) => find_in_table(t, pos),
        DeValue::Array(items) => {
            items
                .iter()
                .enumerate()
                .find_map(|(i, item)| match find_in_value(item, pos) {
                    Some(inner) if inner.starts_with('[') => Some(format!("[{i}]{inner}")),
                    Some(inner) => Some(format!("[{i}].{inner}")),
                    None => item.span().contains(&pos).then(|| format!("[{i}]")),
                })
        }
        _ => None,
    }
}
