//! Pause points for crash tests: with `<VAR>=<stage>:<flag-file>` in the environment, a
//! step that reaches `<stage>` appends `SCT_TEST_PAUSED <stage>` to the flag file and
//! blocks until killed, so a test can SIGKILL it at an exact point without sleeping.
//! Each step documents its variable and stages (Prepare/Export: `usage::PAUSE_ENV`,
//! Import: `import::PAUSE_ENV`). Without the variable this is one environment lookup.

use std::io::Write;

/// Block forever at `stage` when `var` names it.
pub(crate) fn pause_point(var: &str, stage: &str) {
    let Ok(v) = std::env::var(var) else {
        return;
    };
    let Some((s, flag)) = v.split_once(':') else {
        return;
    };
    if s != stage {
        return;
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(flag)
    {
        let _ = writeln!(f, "SCT_TEST_PAUSED {stage}");
        let _ = f.flush();
    }
    loop {
        std::thread::park();
    }
}
