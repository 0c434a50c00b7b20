//! A Python program that runs a piece of code and the doctests in it, and reports the doctest counts: the TUI's
//! run-and-verify and the dataset generator's check of generated exercises both run code this way.

/// The line the program prints last, followed by `none` or `<tries> <failures>`.
pub const RESULT_MARK: &str = "PHI_TUI_RESULT";

/// Exit status of the program when the code does not compile.
pub const SYNTAX_ERROR_EXIT: i32 = 2;

/// A Python program that imports `code` as the module `block` (so `if __name__ == "__main__":` parts do not run,
/// as with `python3 -m doctest block.py`), then runs the doctests of its docstrings (module, functions, classes,
/// methods), and prints a result line. It exits with 0 when everything ran and every doctest passed, 1 when a
/// doctest failed or the code raised, [`SYNTAX_ERROR_EXIT`] when the code does not compile. The code travels
/// hex-encoded, so nothing in it can break out of the program's own source.
pub fn doctest_program(code: &str) -> String {
    let hex: String = code.bytes().map(|b| format!("{b:02x}")).collect();
    format!(
        r#"import doctest, sys, types
source = bytes.fromhex("{hex}").decode("utf-8")
try:
    compiled = compile(source, "block.py", "exec")
except SyntaxError as error:
    print("SyntaxError:", error)
    sys.exit({SYNTAX_ERROR_EXIT})
module = types.ModuleType("block")
module.__file__ = "block.py"
sys.modules["block"] = module
exec(compiled, module.__dict__)
sys.stdout.flush()
tests = doctest.DocTestFinder(exclude_empty=True).find(module, "block", module=module)
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
for test in sorted(tests, key=lambda t: t.name):
    runner.run(test)
if runner.tries == 0:
    print("{RESULT_MARK} none")
    sys.exit(0)
print("{RESULT_MARK}", runner.tries, runner.failures)
sys.exit(1 if runner.failures else 0)
"#
    )
}

/// The doctest counts a [`doctest_program`] printed: `Some(None)` when the code had no doctests, `Some(Some((tries,
/// failures)))` otherwise, and `None` when it printed no result line (the code did not compile or raised).
pub fn doctest_counts(stdout: &str) -> Option<Option<(usize, usize)>> {
    stdout.lines().rev().find_map(|line| {
        let rest = line.strip_prefix(RESULT_MARK)?;
        let numbers: Vec<usize> = rest.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        Some(match numbers.as_slice() {
            [tries, failures] => Some((*tries, *failures)),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_carries_the_code_hex_encoded() {
        let program = doctest_program("print(\"\"\"hi\"\"\")\n");
        assert!(program.contains("7072696e7428"), "{program}");
        assert!(!program.contains("print(\"\"\"hi"));
    }

    #[test]
    fn counts_come_from_the_result_line() {
        assert_eq!(doctest_counts("hello\nPHI_TUI_RESULT 3 1\n"), Some(Some((3, 1))));
        assert_eq!(doctest_counts("PHI_TUI_RESULT none\n"), Some(None));
        assert_eq!(doctest_counts("Traceback\n"), None);
    }
}
