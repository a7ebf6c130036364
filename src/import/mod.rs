//! Import: verify update packs and record them in the site (issue 5).
