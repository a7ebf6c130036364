//! The `serviceconnectiontool` command line (issue 2).
