//! Checks on the repository itself, for what a fresh minimal Debian (no procps, no `../shared`)
//! lacks: no code path runs the procps programs (`kill`, `pgrep`, `pkill`, `ps`, `killall`), and
//! the PyTorch reference data the parity tests read ships inside the repository.

use std::path::{Path, PathBuf};

use voxbridge_e2e::{reference_dir, workspace_root};

/// Programs of procps (and psmisc) that a minimal Debian does not have. Bash's builtin `kill` is
/// fine in shell scripts; the `kill` program is not.
const PROCPS: [&str; 5] = ["kill", "pgrep", "pkill", "ps", "killall"];

/// Runs programs only when a shell script names them as the first word of a command.
const PROGRAM_RUNNERS: [&str; 10] =
    ["env", "exec", "nohup", "setsid", "nice", "xargs", "timeout", "sudo", "runuser", "stdbuf"];

fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "reference" && name != "golden" {
                files_under(&path, keep, out);
            }
        } else if keep(&path) {
            out.push(path);
        }
    }
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// The string literals of a Rust source, each with the code before it on its line (comments,
/// character literals and lifetimes skipped; raw strings handled).
fn rust_string_literals(src: &str) -> Vec<(usize, String, String)> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut code_on_line) = (0, 1, String::new());
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            code_on_line.clear();
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                line += usize::from(chars[i] == '\n');
                i += 1;
            }
            i += 2;
        } else if c == '\'' {
            // '\n', '"', 'x' or a lifetime 'a
            if next == Some('\\') {
                i += 3; // past the quote, the backslash and the escaped character
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                code_on_line.push(c);
                i += 1;
            }
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && !code_on_line.ends_with(char::is_alphanumeric) {
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                code_on_line.push(c);
                i += 1;
                continue;
            }
            let (start, start_line) = (j + 1, line);
            j = start;
            let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            while j < chars.len() && !chars[j..].iter().take(close.len()).copied().eq(close.chars()) {
                line += usize::from(chars[j] == '\n');
                j += 1;
            }
            out.push((start_line, code_on_line.clone(), chars[start..j.min(chars.len())].iter().collect()));
            i = j + close.len();
        } else if c == '"' {
            let start_line = line;
            let mut text = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                    match chars.get(i) {
                        Some('n') => text.push('\n'),
                        Some('\n') => {
                            line += 1;
                            while chars.get(i + 1).is_some_and(|c| c.is_whitespace()) {
                                i += 1;
                            }
                        }
                        Some(&other) => text.push(other),
                        None => {}
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    text.push(chars[i]);
                }
                i += 1;
            }
            out.push((start_line, code_on_line.clone(), text));
            code_on_line.push_str("\"\"");
            i += 1;
        } else {
            code_on_line.push(c);
            i += 1;
        }
    }
    out
}

/// The procps programs a shell command line runs (`pgrep -x munged`, `env kill -9 1`,
/// `/bin/kill 1`; not the builtin `kill 1`).
fn shell_line_runs(line: &str) -> Vec<String> {
    let code = match line.find(" #") {
        Some(at) => &line[..at],
        None if line.trim_start().starts_with('#') => "",
        None => line,
    };
    let mut code = code.replace(['"', '\''], " ");
    for sep in ["&&", "||", "$(", "|", ";", "&", "(", ")", "{", "}", "`", "!"] {
        code = code.replace(sep, "\n");
    }
    let mut found = Vec::new();
    for command in code.lines() {
        let mut words = command.split_whitespace().peekable();
        let mut via_program = false;
        while let Some(word) = words.next() {
            let is_assignment = word.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if is_assignment
                || word.starts_with('-')
                || ["then", "do", "else", "elif", "if", "while", "until", "time", "command", "builtin"].contains(&word)
            {
                continue;
            }
            if PROGRAM_RUNNERS.contains(&basename(word)) || word.starts_with('$') {
                // `$sudo_ cmd`, `sudo cmd`, `timeout 5 cmd`, `runuser -u x -- cmd`: cmd is a program.
                via_program = true;
                if basename(word) == "timeout" {
                    words.next_if(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()));
                }
                if basename(word) == "runuser" || basename(word) == "sudo" {
                    while words.next_if(|w| w.starts_with('-') && *w != "--").is_some() {
                        words.next_if(|w| !w.starts_with('-'));
                    }
                }
                continue;
            }
            let name = basename(word);
            if PROCPS.contains(&name) && (name != "kill" || via_program || word.contains('/')) {
                found.push(word.to_string());
            }
            break;
        }
    }
    found
}

/// Shell lines of a script, with here-document bodies left out.
fn shell_lines(src: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut heredoc_end: Option<String> = None;
    for (n, line) in src.lines().enumerate() {
        if let Some(end) = &heredoc_end {
            if line.trim() == end {
                heredoc_end = None;
            }
            continue;
        }
        if let Some(at) = line.find("<<") {
            let tag: String = line[at + 2..]
                .trim_start_matches('-')
                .trim_start()
                .chars()
                .filter(|c| !matches!(c, '\'' | '"'))
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !tag.is_empty() {
                heredoc_end = Some(tag);
            }
        }
        out.push((n + 1, line));
    }
    out
}

/// Where the sources and scripts run one of the procps programs, as `path:line: what`.
fn procps_uses(root: &Path) -> Vec<String> {
    let this_file = root.join("tests/hygiene.rs");
    let mut rust = Vec::new();
    for dir in ["crates", "tests"] {
        files_under(&root.join(dir), &|p| p.extension().is_some_and(|e| e == "rs") && p != this_file, &mut rust);
    }
    let mut scripts = Vec::new();
    let is_script = |p: &Path| {
        p.extension().is_some_and(|e| e == "sh" || e == "sbatch" || e == "bash")
            || std::fs::read(p).is_ok_and(|b| b.starts_with(b"#!") && String::from_utf8_lossy(&b).contains("sh\n"))
    };
    for dir in ["scripts", "cluster"] {
        files_under(&root.join(dir), &is_script, &mut scripts);
    }
    assert!(!rust.is_empty() && !scripts.is_empty(), "nothing found to scan under {}", root.display());
    let mut uses = Vec::new();
    for path in &rust {
        let src = std::fs::read_to_string(path).unwrap();
        let shown = path.strip_prefix(root).unwrap().display();
        for (line, before, literal) in rust_string_literals(&src) {
            let before = before.trim_end();
            let spawns =
                ["Command::new(", "Command::new(&", "process::Command::new("].iter().any(|s| before.ends_with(s));
            if spawns && PROCPS.contains(&basename(literal.trim())) {
                uses.push(format!("{shown}:{line}: runs the `{}` program", literal.trim()));
            }
            // A shell command line in a string (`sh -c "pgrep -x munged"`).
            for program in literal.lines().flat_map(shell_line_runs) {
                if literal.trim_start().starts_with(&format!("{program} ")) {
                    uses.push(format!("{shown}:{line}: a shell command line runs `{program}`"));
                }
            }
        }
    }
    for path in &scripts {
        let src = std::fs::read_to_string(path).unwrap();
        let shown = path.strip_prefix(root).unwrap().display();
        for (n, line) in shell_lines(&src) {
            for program in shell_line_runs(line) {
                uses.push(format!("{shown}:{n}: runs `{program}`: {}", line.trim()));
            }
        }
    }
    uses
}

#[test]
fn no_code_path_runs_the_procps_programs() {
    let uses = procps_uses(&workspace_root());
    assert!(
        uses.is_empty(),
        "a minimal Debian has no procps: signal through nix, use bash's builtin kill, or read \
         /proc and pid files instead:\n{}",
        uses.join("\n")
    );
}

#[test]
fn the_procps_scanner_finds_what_it_is_meant_to() {
    let runs = |line: &str| shell_line_runs(line);
    assert_eq!(runs("pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged"), ["pgrep"]);
    assert_eq!(runs("if ps aux | grep -q x; then :; fi"), ["ps"]);
    assert_eq!(runs("x=$(pkill -f foo)"), ["pkill"]);
    assert_eq!(runs("sudo killall slurmd"), ["killall"]);
    assert_eq!(runs("env kill -9 \"$pid\""), ["kill"]);
    assert_eq!(runs("$sudo_ /bin/kill -TERM 1"), ["/bin/kill"]);
    assert_eq!(runs("echo x | xargs kill"), ["kill"]);
    for fine in [
        "kill \"${pids[@]}\" 2>/dev/null",
        "for pid in \"${pids[@]}\"; do kill -0 \"$pid\" 2>/dev/null && alive=1; done",
        "trap 'kill \"$moto_pid\" 2>/dev/null; rm -rf \"$scratch\"' EXIT",
        "# pgrep is not installed",
        "[[ $(cat /proc/$pid/comm) == munged ]] || runuser -u munge -- /usr/sbin/munged",
        "echo ps",
        "mkdir -p \"$dir/ps\"",
    ] {
        assert_eq!(runs(fine), Vec::<String>::new(), "{fine}");
    }
    let literals = rust_string_literals(
        "let c = '\"'; // \"ps\"\nlet _ = std::process::Command::new(\"kill\").args([r#\"-9\"#, \"1\"]);\n",
    );
    let texts: Vec<&str> = literals.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(texts, ["kill", "-9", "1"]);
    assert_eq!(literals[0].0, 2);
    assert!(literals[0].1.trim_end().ends_with("Command::new("), "{:?}", literals[0].1);

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (path, text) in [
        ("crates/a/src/lib.rs", "fn f() { let _ = std::process::Command::new(\"pgrep\").status(); }\n"),
        ("crates/a/src/ok.rs", "// Command::new(\"kill\") in a comment\nconst S: &str = \"ps\";\n"),
        ("tests/t.rs", "fn g() { Command::new(\"sh\").args([\"-c\", \"pkill -f x\"]); }\n"),
        ("scripts/up.sh", "#!/usr/bin/env bash\nkill -0 1\ncat <<EOF\nps aux\nEOF\nps aux | grep x\n"),
        ("cluster/templates/job.sbatch", "#!/bin/bash\nsrun --kill-on-bad-exit=1 x\n"),
    ] {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), text).unwrap();
    }
    let uses = procps_uses(root);
    assert_eq!(uses.len(), 3, "{uses:#?}");
    assert!(uses[0].starts_with("crates/a/src/lib.rs:1: runs the `pgrep` program"), "{uses:#?}");
    assert!(uses.iter().any(|u| u.starts_with("tests/t.rs:1:") && u.contains("pkill")), "{uses:#?}");
    assert!(uses.iter().any(|u| u.starts_with("scripts/up.sh:6: runs `ps`")), "{uses:#?}");
}

/// The reference files the parity and predict tests read, by folder.
const REFERENCE_FILES: [(&str, &[&str]); 4] = [
    (
        "mindeye2-tiny",
        &[
            "alphas_cumprod.npy",
            "config.json",
            "grad_ridge0_weight_softclip.npy",
            "grads_softclip.safetensors",
            "grads_softclip_f64.safetensors",
            "inputs.safetensors",
            "last.pth",
            "loss_inputs.safetensors",
            "losses.json",
            "model.safetensors",
            "outputs.safetensors",
            "param_counts_full.json",
            "prior.json",
            "prior.safetensors",
            "total_loss.json",
            "total_loss.safetensors",
        ],
    ),
    ("mindeye2-tiny-blurry", &["last.pth", "model.safetensors", "outputs_blurry.safetensors"]),
    (
        "mindeye1-tiny",
        &[
            "config.json",
            "inputs.safetensors",
            "last.pth",
            "loss_inputs.safetensors",
            "losses.json",
            "lowlevel.safetensors",
            "lowlevel_last.pth",
            "lowlevel_loss.json",
            "lowlevel_loss.safetensors",
            "lowlevel_loss_f64.safetensors",
            "model.safetensors",
            "outputs.safetensors",
            "param_counts_full.json",
            "prior.json",
            "prior.safetensors",
            "total_loss.json",
            "total_loss.safetensors",
            "total_loss_f64.safetensors",
        ],
    ),
    (
        "mindreader-tiny",
        &[
            "config.json",
            "eval.safetensors",
            "grads.json",
            "grads.safetensors",
            "grads_f64.safetensors",
            "inputs.safetensors",
            "losses.json",
            "model.pth",
            "model.safetensors",
            "outputs.safetensors",
            "param_counts_full.json",
        ],
    ),
];

#[test]
fn the_reference_data_ships_in_the_repository() {
    let root = workspace_root();
    let shipped = root.join("tests/reference");
    assert!(shipped.join("README.md").is_file(), "tests/reference/README.md describes the data");
    for (folder, files) in REFERENCE_FILES {
        for file in files {
            let path = shipped.join(folder).join(file);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            assert!(len > 0, "{} is missing from the repository", path.display());
        }
        // Without the override, the tests read the copy in the repository, not `../shared`.
        if std::env::var_os("VOXBRIDGE_REFERENCE").is_none_or(|v| v.is_empty()) {
            assert_eq!(reference_dir(folder), shipped.join(folder));
        }
    }
    // No test reads reference data from outside the repository.
    let mut sources = Vec::new();
    for dir in ["crates", "tests", "scripts", "tools"] {
        let keep = |p: &Path| p.extension().is_some_and(|e| e == "rs" || e == "sh" || e == "py");
        files_under(&root.join(dir), &keep, &mut sources);
    }
    let this_file = root.join("tests/hygiene.rs");
    let outside: Vec<String> = sources
        .iter()
        .filter(|p| **p != this_file)
        .flat_map(|p| {
            let src = std::fs::read_to_string(p).unwrap();
            let shown = p.strip_prefix(&root).unwrap().display().to_string();
            src.lines()
                .enumerate()
                .filter(|(_, l)| {
                    let code = l.split("//").next().unwrap_or("");
                    code.contains("/work/shared") || code.contains("\"../shared") || code.contains("shared/reference")
                })
                .map(|(n, l)| format!("{shown}:{}: {}", n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(outside.is_empty(), "code that looks for data outside the repository:\n{}", outside.join("\n"));
}
