//! Triage throughput next to `grep -c 'rst cause'` on the same large capture.
//!
//! `cargo bench --bench triage_throughput` builds (once) a capture of at least 200 MiB under the
//! target directory, mixing the corpus logs (about 90 % of the bytes) with runs of random bytes
//! (about 10 %), then runs `grep -c 'rst cause' FILE` and `harness triage --format json FILE`
//! as child processes several times each and prints their throughput, CPU time and peak RSS.
//! The triage runs twice: with worker threads classifying lines (as many as by default),
//! and on one thread (`--threads 0`), so that both figures are in view.
//!
//! Targets (project issue 2): triage at >= 0.5 x grep's MB/s and < 64 MB peak RSS.
//!
//! Wall time is noisy on a shared machine, so the table also gives user CPU time and the
//! throughput it implies; the best of the runs of each command is reported (the least
//! disturbed one). Without `--bench` (as under `cargo test --benches`) it runs a small smoke
//! version that still checks the boot counts agree.
//!
//! Settings (environment): `TRIAGE_BENCH_MIB` (capture size, default 200),
//! `TRIAGE_BENCH_RUNS` (runs per command, default 5), `TRIAGE_BENCH_CHECK=1` (exit 1 when a
//! target is missed).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Seed of the capture's generator: the same seed and corpus give the same bytes.
const SEED: u64 = 0x7269_6167_6531;
/// Share of garbage bytes in the capture.
const GARBAGE_SHARE: f64 = 0.10;
/// Peak RSS target of the triage, in bytes (64 MB).
const RSS_TARGET: u64 = 64_000_000;
/// Throughput target of the triage relative to grep.
const RATIO_TARGET: f64 = 0.5;

fn main() -> ExitCode {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let mib = env_num("TRIAGE_BENCH_MIB").unwrap_or(if bench_mode { 200 } else { 4 });
    let runs = env_num("TRIAGE_BENCH_RUNS").unwrap_or(if bench_mode { 5 } else { 1 });
    let check = std::env::var("TRIAGE_BENCH_CHECK").is_ok_and(|v| v == "1");
    match run(mib, runs.max(1) as usize, bench_mode, check) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("triage_throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn run(mib: u64, runs: usize, bench_mode: bool, check: bool) -> Result<ExitCode, String> {
    let corpus = corpus_logs()?;
    let path = capture(&corpus, mib << 20)?;
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    // Both commands read the file from the page cache, never from disk.
    warm_page_cache(&path)?;

    let harness = env!("CARGO_BIN_EXE_harness");
    // As `harness triage` picks by default (cli/triage.rs `default_threads`).
    let workers = match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        1 => 0,
        cores => (cores + 1).min(5),
    };
    let grep_cmd = || {
        let mut c = Command::new("grep");
        c.arg("-c").arg("rst cause").arg(&path);
        c
    };
    let triage_cmd = |threads: usize| {
        let mut c = Command::new(harness);
        c.args(["triage", "--format", "json", "--threads"])
            .arg(threads.to_string())
            .arg(&path);
        c
    };
    // Interleave the commands so that a burst of load on the machine hits all alike.
    let mut grep_runs = Vec::with_capacity(runs);
    let mut triage_runs = Vec::with_capacity(runs);
    let mut single_runs = Vec::with_capacity(runs);
    for _ in 0..runs {
        grep_runs.push(measure(grep_cmd())?);
        triage_runs.push(measure(triage_cmd(workers))?);
        single_runs.push(measure(triage_cmd(0))?);
    }
    let grep = Summary::of(&grep_runs);
    let triage = Summary::of(&triage_runs);
    let single = Summary::of(&single_runs);

    let grep_count: u64 = grep_runs[0]
        .stdout
        .trim()
        .parse()
        .map_err(|e| format!("grep printed {:?}: {e}", grep_runs[0].stdout))?;
    let report: serde_json::Value = serde_json::from_str(&triage_runs[0].stdout)
        .map_err(|e| format!("harness triage printed no JSON report: {e}"))?;
    let total_boots = report["total_boots"]
        .as_u64()
        .ok_or("the triage report has no total_boots")?;
    // Threads must not change the report.
    let same_report = single_runs[0].stdout == triage_runs[0].stdout;
    let class = report["class"].as_str().unwrap_or("?").to_string();

    let mb = size as f64 / 1e6;
    let ratio = |s: &Summary| {
        (
            grep.wall.as_secs_f64() / s.wall.as_secs_f64(),
            grep.user.as_secs_f64() / s.user.as_secs_f64(),
        )
    };
    let (wall_ratio, cpu_ratio) = ratio(&triage);
    let (single_wall_ratio, single_cpu_ratio) = ratio(&single);
    println!(
        "capture: {} ({:.1} MB, {runs} run(s) per command, best run shown)",
        path.display(),
        mb
    );
    println!(
        "triage: --threads {workers}: {workers} thread(s) classify lines while the main thread \
         reads and groups them; --threads 0: one thread does all"
    );
    println!();
    println!(
        "{:<30} {:>7} {:>7} {:>7} {:>7} {:>10} {:>10}",
        "command", "wall s", "MB/s", "user s", "sys s", "MB/user s", "peak RSS"
    );
    let parallel_name = format!("harness triage --threads {workers}");
    for (name, s) in [
        ("grep -c 'rst cause'", &grep),
        (parallel_name.as_str(), &triage),
        ("harness triage --threads 0", &single),
    ] {
        println!(
            "{:<30} {:>7.3} {:>7.0} {:>7.3} {:>7.3} {:>10.0} {:>7.1} MB",
            name,
            s.wall.as_secs_f64(),
            mb / s.wall.as_secs_f64(),
            s.user.as_secs_f64(),
            s.sys.as_secs_f64(),
            mb / s.user.as_secs_f64(),
            s.max_rss as f64 / 1e6,
        );
    }
    println!();
    println!(
        "throughput triage/grep, --threads {workers}: {wall_ratio:.2} (wall), {cpu_ratio:.2} \
         (user CPU); --threads 0: {single_wall_ratio:.2} (wall), {single_cpu_ratio:.2} (user CPU)"
    );
    println!(
        "boots: triage total_boots {total_boots}, grep lines with `rst cause` {grep_count}; class {class}"
    );

    let counts_agree = total_boots == grep_count;
    if !counts_agree {
        println!(
            "MISMATCH: every banner line of the capture holds `rst cause`, so the counts must agree"
        );
    }
    if !same_report {
        println!("MISMATCH: the report with --threads {workers} differs from --threads 0");
    }
    let speed_ok = wall_ratio >= RATIO_TARGET;
    let rss_ok = triage.max_rss.max(single.max_rss) < RSS_TARGET;
    println!(
        "target throughput >= {RATIO_TARGET} x grep (wall, --threads {workers}): {}",
        if speed_ok { "met" } else { "NOT met" }
    );
    println!(
        "target peak RSS < {} MB: {}",
        RSS_TARGET / 1_000_000,
        if rss_ok { "met" } else { "NOT met" }
    );
    if !bench_mode {
        println!("(smoke run: pass --bench, as `cargo bench` does, for the real figures)");
    }
    Ok(
        if !counts_agree || !same_report || (check && bench_mode && !(speed_ok && rss_ok)) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// The corpus logs, in file-name order.
fn corpus_logs() -> Result<Vec<Vec<u8>>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/corpus");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    let logs: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect::<Result<_, _>>()?;
    if logs.is_empty() {
        return Err(format!("no *.log files in {}", dir.display()));
    }
    Ok(logs)
}

/// The capture file for these logs and this size, generated unless it is already there.
fn capture(corpus: &[Vec<u8>], target: u64) -> Result<PathBuf, String> {
    // The name carries everything the bytes depend on, so a stale file is never reused.
    let mut h = Fnv::default();
    for log in corpus {
        h.write(log);
        h.write(&[0xff]);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!(
        "triage-capture-seed{SEED:x}-corpus{:016x}-{}MiB.log",
        h.0,
        target >> 20
    ));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= target) {
        return Ok(path);
    }
    let started = Instant::now();
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let written = generate(corpus, target, &mut out).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "generated {} ({:.1} MB) in {:.1} s",
        path.display(),
        written as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(path)
}

/// Writes corpus logs in random order with runs of random bytes between them until `target`
/// bytes are out; returns the bytes written.
///
/// A garbage run follows a log whenever garbage is below its share so far, which holds the
/// share close to [`GARBAGE_SHARE`] at any size. Runs are raw random bytes, so they hold
/// newlines, CRs and NULs like output at a wrong baud rate, and the log after one may start
/// in the middle of a garbage line (as after a reset that cut the app short).
fn generate(corpus: &[Vec<u8>], target: u64, out: &mut impl Write) -> std::io::Result<u64> {
    let mut rng = SplitMix64(SEED);
    let mut written = 0u64;
    let mut garbage = 0u64;
    let mut noise = Vec::with_capacity(4096);
    while written < target {
        let log = &corpus[rng.below(corpus.len() as u64) as usize];
        out.write_all(log)?;
        written += log.len() as u64;
        if (garbage as f64) < GARBAGE_SHARE * written as f64 {
            let len = 16 + rng.below(4080) as usize;
            noise.clear();
            while noise.len() < len {
                noise.extend_from_slice(&rng.next().to_le_bytes());
            }
            noise.truncate(len);
            out.write_all(&noise)?;
            written += len as u64;
            garbage += len as u64;
        }
    }
    Ok(written)
}

/// SplitMix64 (Steele, Lea, Flood 2014): a few lines, good enough to pick logs and make
/// noise, and fixed forever, unlike a library generator whose stream may change.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 64-bit FNV-1a, to name the capture after the corpus it was made from.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn warm_page_cache(path: &Path) -> Result<(), String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
    Ok(())
}

/// One run of a command.
struct Run {
    wall: Duration,
    user: Duration,
    sys: Duration,
    /// Peak resident set size in bytes.
    max_rss: u64,
    stdout: String,
}

/// Runs a command to its end, with its resource usage.
fn measure(mut cmd: Command) -> Result<Run, String> {
    let name = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let mut stdout = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut stdout)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    let pid = libc::pid_t::try_from(child.id()).map_err(|e| e.to_string())?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // std's `Child::wait` does not return the rusage, so reap the child with `wait4` directly.
    // SAFETY: `pid` is our own child, not yet reaped (`child` is never waited on by std), and
    // both pointers are to live, writable locals of the right types.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if reaped != pid {
        return Err(format!("wait4 {name}: {}", std::io::Error::last_os_error()));
    }
    // grep exits 1 when it finds nothing, which still gives a count.
    let ok = libc::WIFEXITED(status) && matches!(libc::WEXITSTATUS(status), 0 | 1);
    if !ok {
        return Err(format!("{name} failed (wait status {status:#x})"));
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok(Run {
        wall,
        user: tv(usage.ru_utime),
        sys: tv(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        max_rss: usage.ru_maxrss as u64 * 1024,
        stdout,
    })
}

/// The best of several runs of one command.
struct Summary {
    wall: Duration,
    user: Duration,
    sys: Duration,
    max_rss: u64,
}

impl Summary {
    /// Least wall and CPU time (the least disturbed runs), largest peak RSS (memory is a bound).
    fn of(runs: &[Run]) -> Summary {
        Summary {
            wall: runs.iter().map(|r| r.wall).min().unwrap_or_default(),
            user: runs.iter().map(|r| r.user).min().unwrap_or_default(),
            sys: runs.iter().map(|r| r.sys).min().unwrap_or_default(),
            max_rss: runs.iter().map(|r| r.max_rss).max().unwrap_or_default(),
        }
    }
}
