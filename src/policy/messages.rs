//! Load errors in the policy file's own terms.
//!
//! serde, serde_path_to_error and regex describe what they expected in Rust's terms
//! (`invalid type: sequence, expected struct Rules`, `expected u32`, a regex printed after
//! Gatehouse wrapped it in `^(?:…)$`). The functions here turn such text into what a person
//! editing YAML understands (`expected a mapping with required and/or max, found a list`);
//! they are called where load errors are built (`policy.rs`, the kinds, `notify::rule`).

/// What a Rust type name in an `expected …` stands for in a policy or configuration file.
const EXPECTED: &[(&str, &str)] = &[
    (
        "struct Rules",
        "a mapping with required and/or max (for example {required: [cpu, memory]})",
    ),
    (
        "struct NamespaceMatch",
        "a mapping with include and/or exclude",
    ),
    (
        "struct LabelSelector",
        "a mapping with matchLabels and/or matchExpressions",
    ),
    (
        "struct LabelExpression",
        "a mapping with key, operator and values",
    ),
    (
        "struct RawPolicy",
        "a mapping with name, kind, match and params",
    ),
    (
        "struct MatchSpec",
        "a mapping with resources (and optionally operations, namespaces, labelSelector)",
    ),
    (
        "struct RawRule",
        "a mapping with name, events, match and channels",
    ),
    (
        "struct Requirement",
        "a mapping with key and optionally pattern",
    ),
    ("a sequence", "a list"),
    ("a map", "a mapping"),
    ("a boolean", "true or false"),
    ("a string", "text"),
    ("a character", "a single character"),
    ("u8", "a whole number from 0 to 255"),
    ("u16", "a whole number from 0 to 65535"),
    ("u32", "a whole number from 0 to 4294967295"),
    ("u64", "a whole number of 0 or more"),
    ("usize", "a whole number of 0 or more"),
    ("i8", "a whole number"),
    ("i16", "a whole number"),
    ("i32", "a whole number"),
    ("i64", "a whole number"),
    ("f32", "a number"),
    ("f64", "a number"),
];

/// Turns a serde error message into words for people. Unknown shapes pass through, with
/// doubled backticks collapsed.
pub fn humanize(message: &str) -> String {
    let mut message = message.to_owned();
    // figment: "unknown field: found `x`, expected `one of `a`, `b``".
    for what in ["field", "variant"] {
        if let Some(rest) = message.strip_prefix(&format!("unknown {what}: found "))
            && let Some((found, expected)) = rest.split_once(", expected ")
        {
            let expected = expected
                .strip_prefix('`')
                .and_then(|e| e.strip_suffix('`'))
                .unwrap_or(expected);
            message = format!("unknown {what} {found}, expected {expected}");
        }
    }
    while message.contains("``") {
        message = message.replace("``", "`");
    }
    for (prefix, found_what) in [
        ("invalid type: found ", true),
        ("invalid value: found ", true),
        ("invalid value ", true),
        ("invalid type: ", true),
        ("invalid value: ", true),
        ("invalid length ", false),
    ] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            let found = if found_what {
                describe_found(found)
            } else {
                format!("{found} items")
            };
            return format!("expected {}, found {found}", describe_expected(expected));
        }
    }
    if let Some(rest) = message.strip_prefix("data did not match any variant of untagged enum ") {
        let _ = rest;
        return "expected a number or text".into();
    }
    if let Some(name) = message.strip_prefix("expected struct ") {
        return format!("expected {}", describe_expected(&format!("struct {name}")));
    }
    message
}

/// `sequence` → `a list`, `string "x"` → `the text "x"`, `integer `-1`` → `-1`.
fn describe_found(found: &str) -> String {
    let strip_ticks = |s: &str| s.trim_matches('`').to_owned();
    match found {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" | "unit" => "nothing (null)".into(),
        "newtype struct" | "tuple struct" | "unit struct" => "a value".into(),
        _ => {
            if let Some(s) = found.strip_prefix("string ") {
                format!("the text {s}")
            } else if let Some(n) = found
                .strip_prefix("integer ")
                .or_else(|| found.strip_prefix("floating point "))
            {
                format!("the number {}", strip_ticks(n))
            } else if let Some(b) = found.strip_prefix("boolean ") {
                strip_ticks(b)
            } else if let Some(c) = found.strip_prefix("character ") {
                format!("the character {}", strip_ticks(c))
            } else {
                found.to_owned()
            }
        }
    }
}

fn describe_expected(expected: &str) -> String {
    let expected = expected.trim();
    if let Some((_, words)) = EXPECTED.iter().find(|(rust, _)| *rust == expected) {
        return (*words).to_owned();
    }
    if expected.starts_with("struct ") || expected.starts_with("enum ") {
        return "a mapping".into();
    }
    if let Some(n) = expected.strip_prefix("a sequence of ") {
        return format!("a list of {n}");
    }
    expected.to_owned()
}

/// A regex error for `pattern` as the user wrote it (not as wrapped for anchoring):
/// `` `(unclosed` is not a valid regular expression: unclosed group ``.
pub fn regex_error(pattern: &str, error: &regex::Error) -> String {
    let why = match error {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .unwrap_or("it cannot be parsed")
            .to_owned(),
        regex::Error::CompiledTooBig(_) => "it is too large once compiled".to_owned(),
        _ => "it cannot be compiled".to_owned(),
    };
    format!("`{pattern}` is not a valid regular expression: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "invalid type: sequence, expected struct Rules",
        "expected a mapping with required and/or max (for example {required: [cpu, memory]}), found a list"
    )]
    #[case(
        "invalid type: string \"three\", expected u32",
        "expected a whole number from 0 to 4294967295, found the text \"three\""
    )]
    #[case(
        "invalid value: integer `-1`, expected u32",
        "expected a whole number from 0 to 4294967295, found the number -1"
    )]
    #[case(
        "invalid type: map, expected a sequence",
        "expected a list, found a mapping"
    )]
    #[case(
        "invalid type: string \"sure\", expected a boolean",
        "expected true or false, found the text \"sure\""
    )]
    #[case(
        "invalid type: unit value, expected struct Other",
        "expected a mapping, found nothing (null)"
    )]
    #[case(
        "invalid type: sequence, expected usize",
        "expected a whole number of 0 or more, found a list"
    )]
    #[case(
        "expected `one of ``listen``, ``port```",
        "expected `one of `listen`, `port`"
    )]
    #[case(
        "unknown field: found `lisen`, expected `one of `listen`, `port``",
        "unknown field `lisen`, expected one of `listen`, `port`"
    )]
    #[case(
        "invalid type: found string \"x\", expected u16",
        "expected a whole number from 0 to 65535, found the text \"x\""
    )]
    #[case(
        "unknown field `acton`, expected one of `name`, `kind`",
        "unknown field `acton`, expected one of `name`, `kind`"
    )]
    #[case(
        "data did not match any variant of untagged enum Raw",
        "expected a number or text"
    )]
    fn serde_messages_are_rewritten(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(humanize(input), expected);
    }

    #[test]
    fn regex_errors_show_the_pattern_as_written() {
        let wrapped = format!("^(?:{})$", "(unclosed");
        let err = regex::Regex::new(&wrapped).unwrap_err();
        assert_eq!(
            regex_error("(unclosed", &err),
            "`(unclosed` is not a valid regular expression: unclosed group"
        );
    }
}
