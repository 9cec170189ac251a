//! `segctl build` writes format v2 unless told otherwise, and `segctl
//! inspect` shows the format version and the shard of a pack file.

use std::process::Command;

fn segctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args(args)
        .output()
        .expect("run segctl")
}

fn build(directory: &std::path::Path, extra: &[&str]) -> std::path::PathBuf {
    let input = directory.join("members.tsv");
    std::fs::write(&input, "alice\t7\nbob\t7\t1717100000\nbob\t9\n").unwrap();
    let output = directory.join(format!("crm-{}.segpack", extra.len()));
    let mut args = vec![
        "build",
        "--pack",
        "crm",
        "--version",
        "v1",
        "--built-at",
        "1717200000",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let result = segctl(&args);
    assert!(result.status.success(), "{result:?}");
    output
}

fn inspect(path: &std::path::Path) -> String {
    let result = segctl(&["inspect", path.to_str().unwrap()]);
    assert!(result.status.success(), "{result:?}");
    String::from_utf8(result.stdout).unwrap()
}

#[test]
fn build_writes_v2_by_default_and_inspect_shows_format_and_shard() {
    let directory = tempfile::tempdir().unwrap();
    let default = build(directory.path(), &[]);
    let bytes = std::fs::read(&default).unwrap();
    assert_eq!(segd::pack::read_header(&bytes).unwrap().format_version, 2);
    let shown = inspect(&default);
    assert!(shown.contains("format:      2\n"), "{shown}");
    assert!(
        shown.contains("shard:       unsharded (0 of 1)\n"),
        "{shown}"
    );
    assert!(shown.contains("memberships: 3\n"), "{shown}");
    // 2 segments (1 slot bit), bob last seen 28 hours before the build (5 bits).
    assert!(
        shown.contains(
            "entries:     1 bytes each (slot 3 bits, hours_ago 5 bits), 3 bytes in all\n"
        ),
        "{shown}"
    );

    let v1 = build(directory.path(), &["--format", "1"]);
    let v1_bytes = std::fs::read(&v1).unwrap();
    assert_eq!(
        segd::pack::read_header(&v1_bytes).unwrap().format_version,
        1
    );
    assert!(inspect(&v1).contains("format:      1\n"));
    assert!(
        !inspect(&v1).contains("entries:"),
        "format 1 stores no index"
    );
    // The same pack either way.
    assert_eq!(
        segd::pack::read_pack(&bytes).unwrap(),
        segd::pack::read_pack(&v1_bytes).unwrap()
    );

    let refused = segctl(&[
        "build",
        "--format",
        "3",
        "--pack",
        "x",
        "--version",
        "1",
        "--input",
        "-",
        "--output",
        "/dev/null",
    ]);
    assert!(!refused.status.success());
}
