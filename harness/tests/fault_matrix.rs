//! The fault matrix on the virtual board: what the harness reports when a board loses power at
//! a bad moment, stays silent, drops its network connection or loses its serial port, and when
//! the run folder cannot be written.
//!
//! Every row runs `harness scenario run` (or `harness monitor`) end to end against a simulator
//! the harness starts, with the fault armed through the rig file (`[board.sim] faults`, the
//! simulator's control lines; see `harness::sim::control`) or sent by the test at a moment it
//! waits for. Each row ends in a classified report and checks that the capture holds every byte
//! the simulator sent (its `--tx-log`), byte for byte.
//!
//! No sleeps for synchronisation: the tests wait for process exits, index records and status
//! answers.

#[path = "support/runs.rs"]
mod runs;

use runs::{Bench, repo_root};

fn scenario_file(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("scenarios").join(name)).unwrap()
}

/// eboot's copy cut at several points (before the first sector, after an erase, in the
/// middle, one sector before the end): the board shows `@cp:` with no result and then crashes
/// (or stops in the ROM), triage says ota-copy-incomplete with "reflash over serial", and the
/// scenario's serial reflash brings 1.0.0 back.
#[test]
fn power_cut_during_the_eboot_copy_at_several_sectors() {
    let scenario = scenario_file("ota-copy-interrupted.toml");
    // What the board does at the power-on after the cut, as a real one would show it.
    let old_boots = "\r\n~ld\r\n\r\nHILFW app=sonoff-ota version=1.0.0";
    let crash_loop = "Exception (3):";
    let rom_stops = "ets_main.c";
    for (kind, cut, after) in [
        // Nothing erased yet: the old app is intact and boots.
        ("sonoff-basic", "power-cut-during-copy 0", old_boots),
        // eboot's own sector erased: the ROM finds no boot loader.
        ("sonoff-4ch", "power-cut-during-copy 0 erased", rom_stops),
        // Half new, half old: the app crashes at every boot.
        ("sonoff-basic", "power-cut-during-copy 7", crash_loop),
        // All but the last sector (the one with the app's checksum).
        ("sonoff-4ch", "power-cut-during-copy 15", crash_loop),
    ] {
        let mut bench = Bench::new(kind);
        let run = bench.run(&scenario, &[cut], &[]);
        assert_eq!(run.out.status.code(), Some(0), "{cut}: {}", run.said());
        run.assert_complete_and_lossless();
        let capture = runs::text(&std::fs::read(run.capture()).unwrap());
        // eboot's `@cp:` with no result, then the next power-on's banner.
        let (_, rest) = capture
            .split_once("@cp:\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,")
            .unwrap_or_else(|| panic!("{cut}: no unfinished copy: {capture:?}"));
        let next_banner = rest.find("rst cause:").unwrap_or(rest.len());
        assert!(
            rest[..next_banner].contains(after),
            "{cut}: expected {after:?} after the cut: {rest:?}"
        );
        let triage = run.step("10");
        assert!(
            triage["observed"]
                .as_str()
                .unwrap()
                .starts_with("ota-copy-incomplete"),
            "{cut}: {triage:#}"
        );
        let md = std::fs::read_to_string(run.folder.join("report.md")).unwrap();
        assert!(md.contains("eflash over serial"), "{md}");
    }
}
