//! Sample usage data generator (for demos, tests and benchmarks): fills a site with
//! realistic rows across the three diagnostics levels. To be written (issue 2).
