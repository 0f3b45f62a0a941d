//! The log budget of one plugin invocation: how many lines and bytes a plugin may write to
//! outboxd's log per attempt, and how long one line may be. A [`LogMeter`] is kept per
//! invocation: every line (from the `log` import, or captured guest output) goes through
//! [`LogMeter::admit`], which cuts long lines and refuses lines once the budget is spent;
//! [`LogMeter::summary`] is the one line saying what was suppressed. A plugin that logs in a
//! loop therefore costs a bounded amount of disk per attempt, however long it runs.

use std::borrow::Cow;

/// Limits of one invocation's log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBudget {
    /// Lines admitted per invocation.
    pub max_lines: u32,
    /// Bytes admitted per invocation (after cutting).
    pub max_bytes: usize,
    /// A longer line is cut to this many bytes (at a character boundary).
    pub max_line_bytes: usize,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self {
            max_lines: 100,
            max_bytes: 64 * 1024,
            max_line_bytes: 4 * 1024,
        }
    }
}

/// Spends one invocation's [`LogBudget`].
#[derive(Debug, Clone)]
pub struct LogMeter {
    budget: LogBudget,
    lines: u32,
    bytes: usize,
    cut_lines: u32,
    suppressed_lines: u64,
    suppressed_bytes: u64,
}

/// Cuts `text` to at most `max` bytes at a character boundary.
pub fn cut_at_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

impl LogMeter {
    pub fn new(budget: LogBudget) -> Self {
        Self {
            budget,
            lines: 0,
            bytes: 0,
            cut_lines: 0,
            suppressed_lines: 0,
            suppressed_bytes: 0,
        }
    }

    /// The line to log, cut to fit, or `None` when the budget is spent (the line is counted
    /// as suppressed). A cut line ends with `… [cut from N bytes]`.
    pub fn admit<'a>(&mut self, line: &'a str) -> Option<Cow<'a, str>> {
        let room = self.budget.max_bytes.saturating_sub(self.bytes);
        if self.lines >= self.budget.max_lines || room == 0 {
            self.suppressed_lines += 1;
            self.suppressed_bytes += line.len() as u64;
            return None;
        }
        let max = self.budget.max_line_bytes.min(room);
        self.lines += 1;
        if line.len() <= max {
            self.bytes += line.len();
            return Some(Cow::Borrowed(line));
        }
        let kept = cut_at_boundary(line, max);
        self.bytes += kept.len();
        self.cut_lines += 1;
        Some(Cow::Owned(format!("{kept}… [cut from {} bytes]", line.len())))
    }

    /// Lines refused so far.
    pub fn suppressed_lines(&self) -> u64 {
        self.suppressed_lines
    }

    /// The closing line of an invocation that went over its budget, if it did.
    pub fn summary(&self) -> Option<String> {
        if self.suppressed_lines == 0 && self.cut_lines == 0 {
            return None;
        }
        Some(format!(
            "log budget: {} lines ({} bytes) suppressed and {} lines cut; the budget per attempt is {} lines, {} bytes, {} bytes per line",
            self.suppressed_lines,
            self.suppressed_bytes,
            self.cut_lines,
            self.budget.max_lines,
            self.budget.max_bytes,
            self.budget.max_line_bytes
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_long_lines_costs_at_most_the_budget() {
        let mut m = LogMeter::new(LogBudget::default());
        let line = "x".repeat(64 * 1024);
        let mut written = 0;
        for _ in 0..10_000 {
            if let Some(l) = m.admit(&line) {
                written += l.len();
                assert!(l.len() <= 4 * 1024 + 40, "cut: {}", l.len());
                assert!(l.ends_with("… [cut from 65536 bytes]"));
            }
        }
        assert!(written <= 64 * 1024 + 16 * 40, "{written}");
        assert_eq!(m.suppressed_lines(), 10_000 - 16);
        let summary = m.summary().unwrap();
        assert!(summary.contains("9984 lines"), "{summary}");
        assert!(summary.contains(&format!("{} bytes", 9984 * 64 * 1024)), "{summary}");
    }

    #[test]
    fn lines_are_counted_and_cut_at_character_boundaries() {
        let mut m = LogMeter::new(LogBudget {
            max_lines: 2,
            max_bytes: 1000,
            max_line_bytes: 4,
        });
        assert_eq!(m.admit("ab").as_deref(), Some("ab"));
        assert_eq!(m.admit("aéé").as_deref(), Some("aé… [cut from 5 bytes]"));
        assert_eq!(m.admit("c"), None);
        assert!(
            m.summary()
                .unwrap()
                .starts_with("log budget: 1 lines (1 bytes) suppressed and 1 lines cut")
        );
        let quiet = LogMeter::new(LogBudget::default());
        assert_eq!(quiet.summary(), None);
    }
}
