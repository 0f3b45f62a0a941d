//! What the shell and `man` know of the command line, generated from its clap definition
//! ([`Cli`]) so it cannot drift from it: `outboxd completions <shell>` (clap_complete) and
//! `outboxd man` (a roff page, clap_mangen; `outboxd man > outboxd.1`).

use clap::CommandFactory as _;

use super::Cli;

/// The completion script for `shell`, for the binary named `outboxd`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "outboxd", &mut out);
    out
}

/// The man page (section 1): the top-level command with every subcommand listed.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_completion_offers_the_subcommands() {
        let script = String::from_utf8(completions(clap_complete::Shell::Bash)).unwrap();
        assert!(script.contains("complete -F _outboxd"), "{script}");
        for sub in ["serve", "enqueue", "dead", "completions", "man"] {
            assert!(script.contains(sub), "{sub} missing");
        }
    }

    #[test]
    fn the_man_page_names_the_commands_and_the_version() {
        let page = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(page.contains(".TH outboxd 1"), "{page}");
        assert!(page.contains("serve"), "{page}");
        assert!(page.contains(super::super::VERSION), "{page}");
    }
}
