//! (in progress)

pub fn run(_report: &mut super::Report, _quick: bool) {}
