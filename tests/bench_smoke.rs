//! The benchmark suite runs end to end at the `tiny` scale and prints a table with every
//! comparison and the memory ramp. No timing is asserted: speed belongs in the benchmark.
//! (`harness = false`: this executable is also our side's child process in the suite.)

#[path = "../benches/suite/mod.rs"]
mod suite;

fn main() {
    if suite::child_main() {
        return;
    }
    // A ratio that two decimals would round onto its target gets a third.
    assert_eq!(suite::ratio_text(0.2038, 0.2), "0.204");
    assert_eq!(suite::ratio_text(0.1962, 0.2), "0.196");
    assert_eq!(suite::ratio_text(0.2, 0.2), "0.20");
    assert_eq!(suite::ratio_text(0.2138, 0.2), "0.21");
    assert_eq!(suite::ratio_text(0.1449, 0.15), "0.14");
    assert_eq!(suite::ratio_text(0.1504, 0.15), "0.150");
    let scale = suite::Scale::named("tiny").expect("tiny scale");
    let report = suite::run(&scale);
    assert!(
        report.starts_with("Machine: "),
        "no machine line:\n{report}"
    );
    assert!(
        report.lines().any(
            |l| l.starts_with("Limits measured in this run") && l.contains(" GB/s on one core")
        ),
        "no limits line:\n{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("Page cache: ") && l.contains(" µs per 4 KiB page")),
        "no page cache line:\n{report}"
    );
    for name in suite::COMPARISONS {
        let prefix = format!("| {name} | ");
        let timed = report
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .collect::<Vec<_>>();
        assert_eq!(
            timed.len(),
            3,
            "expected a timing row, a page cache row and a memory row for {name}:\n{report}"
        );
        let (cache, memory) = (timed[1], timed[2]);
        let cols: Vec<&str> = timed[0].split('|').map(str::trim).collect();
        // A comparison this machine cannot run (no root to mount a second file system)
        // says why, in both rows.
        if cols[4].starts_with("skipped: ") {
            assert!(
                cols[4].len() > "skipped: ".len(),
                "no reason in {}",
                timed[0]
            );
            assert!(cache.ends_with("| skipped |"), "page cache row {cache}");
            assert!(memory.ends_with("| skipped |"), "memory row {memory}");
            continue;
        }
        // Timing row: ratio column parses as a positive number.
        let ratio: f64 = cols[6]
            .parse()
            .unwrap_or_else(|_| panic!("ratio in {}", timed[0]));
        assert!(ratio > 0.0 && ratio.is_finite(), "ratio in {}", timed[0]);
        for c in [&cols[8], &cols[9]] {
            assert!(c.ends_with(" MiB"), "peak RSS in {}", timed[0]);
        }
        // The step's floor on this machine, and how far ours is above it: both measured
        // (a floor of zero would make every ratio meaningless).
        for c in [&cols[11], &cols[12]] {
            let v: f64 = c
                .parse()
                .unwrap_or_else(|_| panic!("floor column in {}", timed[0]));
            assert!(v > 0.0 && v.is_finite(), "floor column in {}", timed[0]);
        }
        // Page cache row: bytes each side writes through it, the stock side's time as
        // measured (the timing row's) and less fresh pages (never less than a tenth of
        // it), the ratio as measured and without fresh pages (a positive figure no
        // smaller than a tenth of the measured one, by the same bound).
        let pc: Vec<&str> = cache.split('|').map(str::trim).collect();
        for c in &pc[2..4] {
            assert!(
                c.ends_with(" MiB") || c.ends_with(" GiB"),
                "bytes in {cache}"
            );
        }
        assert_eq!(pc[4], cols[5], "stock side's time in {cache}");
        let theirs: f64 = cols[5].parse().unwrap();
        let less: f64 = pc[5]
            .parse()
            .unwrap_or_else(|_| panic!("stock side's time less fresh pages in {cache}"));
        assert!(
            less <= theirs && less >= theirs / 10.0 - 0.001,
            "stock side's time less fresh pages in {cache}"
        );
        assert_eq!(pc[6], cols[6], "measured ratio in {cache}");
        let without: f64 = pc[7]
            .parse()
            .unwrap_or_else(|_| panic!("ratio without fresh pages in {cache}"));
        assert!(
            without.is_finite() && without >= ratio / 10.0 - 0.01,
            "ratio without fresh pages in {cache}"
        );
        // Memory row: three sizes, each a measured (non-zero) figure.
        let mem: Vec<&str> = memory.split('|').map(str::trim).collect();
        for c in &mem[2..5] {
            let v: f64 = c.trim_end_matches(" MiB").parse().unwrap();
            assert!(v > 0.0, "memory in {memory}");
        }
    }
    let left = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name() == format!("run-{}", std::process::id()).as_str())
        })
        .unwrap_or(false);
    assert!(!left, "the benchmark left its data folder behind");
    println!("bench_smoke: ok");
}
