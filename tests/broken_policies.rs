//! Every file in tests/data/broken-policies/ is refused at load, with the message its first
//! line (`# expect: …`) quotes, naming the file, and in the file's own terms: no Rust type
//! names, no doubled backticks, no pattern as Gatehouse wrapped it.

use std::path::Path;

/// What a message for people must not contain.
const FORBIDDEN: &[&str] = &[
    "struct ",
    "u8",
    "u16",
    "u32",
    "u64",
    "i64",
    "usize",
    "sequence",
    "``",
    "^(?:",
    "enum ",
    "Option<",
    "Vec<",
    "map, expected",
    "unit value",
];

#[test]
fn every_broken_policy_file_is_refused_with_a_message_for_people() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/broken-policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "corpus too small: {}", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expected = match text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
        {
            Some(e) => e.to_owned(),
            None if text.is_empty() => "the file holds no policies".to_owned(),
            None => panic!("{}: first line must be `# expect: …`", file.display()),
        };
        let shown = file.display().to_string();
        let err = match gatehouse::policy::load_policies(Some(file)) {
            Ok(p) => {
                failures.push(format!("{shown}: loaded {} policies", p.len()));
                continue;
            }
            Err(e) => e.to_string(),
        };
        println!("{err}");
        if !err.starts_with(&format!("{shown}: ")) {
            failures.push(format!("{err:?} does not start with the file name"));
        }
        if !err.contains(&expected) {
            failures.push(format!("{err:?} does not contain {expected:?}"));
        }
        for bad in FORBIDDEN {
            if err.contains(bad) {
                failures.push(format!("{err:?} contains {bad:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
