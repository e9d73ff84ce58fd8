//! Datadriven interaction tests of the consensus core: each file in
//! `tests/testdata/interaction/` is a script of commands (`add-nodes`,
//! `campaign`, `propose`, `stabilize`, `deliver-msgs`, ...) with the
//! transcript each must print. Regenerate with `REWRITE=1` and review the
//! diff; run one file with `RUN=<name>.txt`. The command language is
//! described in `interaction/commands.rs`.
//!
//! checklist: each testdata file names the checklist lines it shows in its
//! opening comment.

mod interaction;

use interaction::commands;
use interaction::env::InteractionEnv;

/// Where the scripts live.
const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testdata/interaction");

/// Runs every script, each in a fresh environment.
#[test]
fn interaction() {
    datadriven::walk(TESTDATA, |f| {
        let mut env = InteractionEnv::new();
        f.run(|tc| commands::run(&mut env, tc));
    });
}
