//! Progress bars on long steps, only when a person is watching (stderr is
//! a terminal); scripts and logs get none.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub fn bytes(total: u64, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() || std::env::var_os("PAK_NO_PROGRESS").is_some() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

pub fn items(total: u64, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() || std::env::var_os("PAK_NO_PROGRESS").is_some() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:30} [{bar:30}] {pos}/{len}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}
