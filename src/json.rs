//! Canonical JSON, the one way imgbuild writes JSON: sorted keys, two-space
//! indent, trailing newline. A leaf: it imports no stage.

/// `value` as canonical JSON.
pub fn canonical<T: serde::Serialize>(value: &T) -> String {
    let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    let mut s = serde_json::to_string_pretty(&value).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_sorted_and_the_text_ends_in_a_newline() {
        let mut m = std::collections::HashMap::new();
        m.insert("b", 1);
        m.insert("a", 2);
        assert_eq!(super::canonical(&m), "{\n  \"a\": 2,\n  \"b\": 1\n}\n");
    }
}
