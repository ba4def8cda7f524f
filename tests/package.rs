//! The Debian package and the files of `deploy/`.
//!
//! The package is built with cargo-deb from `[package.metadata.deb]`, with `--no-build`, from
//! this test's own `ftpct` binary placed where cargo-deb expects the release binary (in a
//! target directory of the test's own): what is checked here is the package (paths, modes,
//! control fields, conffiles, maintainer scripts), not the optimised binary, and CI does not
//! pay for a release build. `cargo deb` without `--no-build` makes the real package.
//!
//! cargo-deb and dpkg are required: without them the tests fail, saying what to install.
//! The lifecycle test installs the package with `dpkg --root` into a scratch root, running
//! the maintainer scripts outside a chroot (`--force-script-chrootless`, with `$DPKG_ROOT`
//! set) with stand-ins for `deb-systemd-helper`, `deb-systemd-invoke` and `systemctl` first
//! on `PATH`, so nothing of the machine's own systemd state is touched.
//! `unit_verifies_in_the_extracted_tree` needs root (a private mount namespace);
//! `nspawn_install_start_crash_stop` needs root and systemd-nspawn (systemd-container): it
//! installs and runs the package under a real systemd with `deploy/nspawn-check.sh`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const CARGO_DEB_HINT: &str = "cargo-deb is needed to build the package: install it with \
                              `cargo install cargo-deb --locked`";
const UNIT: &str = "lib/systemd/system/ftpct.service";
const CONF: &str = "etc/ftpct/ftpct.conf";

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn require(program: &str, args: &[&str], hint: &str) {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`{program} {}` failed: {}; {hint}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("cannot run {program}: {e}; {hint}"),
    }
}

/// A scratch directory of this test process under the target directory (those of earlier
/// test processes are removed the first time).
fn scratch(name: &str) -> PathBuf {
    static CLEAN: std::sync::Once = std::sync::Once::new();
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-test");
    let pid = std::process::id();
    CLEAN.call_once(|| {
        for e in fs::read_dir(&base).into_iter().flatten().flatten() {
            if !e
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{pid}-"))
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    });
    let dir = base.join(format!("{pid}-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The package, built once per test process.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        require(&cargo(), &["deb", "--version"], CARGO_DEB_HINT);
        require(
            "dpkg-deb",
            &["--version"],
            "dpkg-deb is needed: apt-get install dpkg",
        );
        let dir = scratch("build");
        let release = dir.join("target/release");
        fs::create_dir_all(&release).unwrap();
        fs::copy(env!("CARGO_BIN_EXE_ftpct"), release.join("ftpct")).unwrap();
        let out = dir.join("ftpct.deb");
        let res = run(Command::new(cargo())
            .args(["deb", "--no-build", "--fast", "--output"])
            .arg(&out)
            .current_dir(MANIFEST_DIR)
            .env("CARGO_TARGET_DIR", dir.join("target")));
        if !res.status.success() {
            let err = String::from_utf8_lossy(&res.stderr);
            let hint = if err.contains("no such command") {
                CARGO_DEB_HINT
            } else {
                ""
            };
            panic!("cargo deb failed ({}): {}\n{hint}", res.status, err.trim());
        }
        out
    })
}

/// `dpkg-deb -c`: path (without the leading `.`) → (mode string, owner).
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    ok(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').trim_end_matches('/');
            (path.to_string(), (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

fn field(deb: &Path, name: &str) -> String {
    ok(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_string()
}

/// The `Exec*=` command lines of a unit: (key, path without the prefix characters, args).
fn exec_lines(unit: &str) -> Vec<(String, String, Vec<String>)> {
    unit.lines()
        .filter(|l| l.starts_with("Exec"))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let mut words = v.split_whitespace();
            let prog = words.next()?.trim_start_matches(['-', '@', ':', '+', '!']);
            Some((
                k.to_string(),
                prog.to_string(),
                words.map(str::to_string).collect(),
            ))
        })
        .collect()
}

/// The `ftpct` command lines of a unit's `Exec*=` lines, as (key, args after the program):
/// those run directly and those inside a `/bin/sh -c '...'` script (up to the next `;`).
fn ftpct_commands(unit: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (key, prog, args) in exec_lines(unit) {
        if prog == "/usr/sbin/ftpct" {
            out.push((key, args));
        } else if prog == "/bin/sh" && args.first().map(String::as_str) == Some("-c") {
            let script = args[1..].join(" ");
            for part in script.split("/usr/sbin/ftpct ").skip(1) {
                let cmd = part.split(';').next().unwrap();
                out.push((
                    key.clone(),
                    cmd.split_whitespace().map(str::to_string).collect(),
                ));
            }
        }
    }
    out
}

/// The script of the unit's `ExecStopPost=+/bin/sh -c '...'` line, as the shell gets it
/// (systemd turns `$$` into `$`).
fn stop_post_script(unit: &str) -> String {
    let line = unit
        .lines()
        .find(|l| l.starts_with("ExecStopPost="))
        .expect("an ExecStopPost= line");
    let (_, script) = line
        .split_once("/bin/sh -c '")
        .unwrap_or_else(|| panic!("ExecStopPost is not a /bin/sh -c script: {line}"));
    script
        .strip_suffix('\'')
        .expect("the script ends the line")
        .replace("$$", "$")
}

#[test]
fn package_contents_and_control_fields() {
    let deb = deb();
    let files = contents(deb);
    for (path, mode) in [
        ("/usr/sbin/ftpct", "-rwxr-xr-x"),
        ("/lib/systemd/system/ftpct.service", "-rw-r--r--"),
        ("/etc/ftpct/ftpct.conf", "-rw-r--r--"),
        ("/usr/share/man/man8/ftpct.8.gz", "-rw-r--r--"),
        ("/usr/share/man/man5/ftpct.conf.5.gz", "-rw-r--r--"),
        ("/usr/share/doc/ftpct/copyright", "-rw-r--r--"),
        ("/usr/share/doc/ftpct/changelog.Debian.gz", "-rw-r--r--"),
    ] {
        let got = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from the package: {files:#?}"));
        assert_eq!(got.0, mode, "{path}");
        assert!(
            got.1 == "0/0" || got.1 == "root/root",
            "{path}: owner {}",
            got.1
        );
    }
    // Debian 12 ships units in /lib/systemd/system, not /usr/lib/systemd/system.
    assert!(
        !files.keys().any(|p| p.starts_with("/usr/lib/systemd")),
        "{files:#?}"
    );
    assert!(
        !files.keys().any(|p| p.starts_with("/usr/bin/")),
        "{files:#?}"
    );

    assert_eq!(field(deb, "Package"), "ftpct");
    assert_eq!(field(deb, "Section"), "net");
    let depends = field(deb, "Depends");
    for d in ["iptables", "init-system-helpers", "libc6"] {
        assert!(depends.contains(d), "Depends: {depends}");
    }
    // Sets are created through netlink: no ipset package needed.
    assert!(!depends.contains("ipset"), "Depends: {depends}");
    assert!(field(deb, "Suggests").contains("nftables"));

    let ctrl = scratch("control");
    ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl));
    assert_eq!(
        fs::read_to_string(ctrl.join("conffiles")).unwrap().trim(),
        "/etc/ftpct/ftpct.conf"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let p = ctrl.join(s);
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{s}");
        ok(Command::new("sh").arg("-n").arg(&p));
    }
    let postinst = fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(postinst.contains("deb-systemd-helper enable ftpct.service"));
    assert!(!postinst.contains("#DEBHELPER#"));
}

#[test]
fn files_land_where_the_unit_expects_them() {
    let root = scratch("extract");
    ok(Command::new("dpkg").arg("-x").arg(deb()).arg(&root));
    let unit = fs::read_to_string(root.join(UNIT)).unwrap();
    let lines = exec_lines(&unit);
    let keys: Vec<&str> = lines.iter().map(|(k, ..)| k.as_str()).collect();
    for k in ["ExecStartPre", "ExecStart", "ExecReload", "ExecStopPost"] {
        assert!(keys.contains(&k), "{k} missing in\n{unit}");
    }
    for (key, prog, _) in &lines {
        assert!(prog.starts_with('/'), "{key}: {prog} is not absolute");
        let packaged = root.join(prog.trim_start_matches('/'));
        if prog.starts_with("/usr/sbin/ftpct") {
            let mode = fs::metadata(&packaged)
                .unwrap_or_else(|e| panic!("{key}: {prog} not in the package: {e}"))
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "{prog} not executable");
        } else {
            assert!(
                Path::new(prog).exists(),
                "{key}: {prog} is neither packaged nor on this system"
            );
        }
    }
    for (k, v) in [
        ("Type", "notify"),
        ("RuntimeDirectory", "ftpct"),
        // The state file (in /run/ftpct by default) survives automatic restarts.
        ("RuntimeDirectoryPreserve", "restart"),
        ("StateDirectory", "ftpct"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("AmbientCapabilities", "CAP_NET_ADMIN"),
        // The daemon's bounding set is exactly CAP_NET_ADMIN; the rule commands run with
        // full privileges ("+"), for iptables' CAP_NET_RAW.
        ("CapabilityBoundingSet", "CAP_NET_ADMIN"),
        // The opt-in metrics endpoint on 127.0.0.1 stays reachable.
        ("IPAddressAllow", "localhost"),
        ("IPAddressDeny", "any"),
        ("ProtectProc", "invisible"),
    ] {
        assert!(
            unit.lines().any(|l| l == format!("{k}={v}")),
            "{k}={v} missing in\n{unit}"
        );
    }
    // ProcSubset=pid would hide /proc/sys/kernel/random/boot_id (state.rs) and
    // /proc/net/netfilter/nfnetlink_queue (the queue drop counters).
    assert!(!unit.contains("\nProcSubset="), "{unit}");
    for l in unit.lines().filter(|l| l.starts_with("Exec")) {
        let (k, v) = l.split_once('=').unwrap();
        let full = v.starts_with('+');
        assert_eq!(
            full,
            k == "ExecStartPre" || k == "ExecStopPost",
            "only the rule commands run with full privileges: {l}"
        );
    }
    let cmds = ftpct_commands(&unit);
    // Every --config the unit passes is the packaged file.
    for (key, args) in &cmds {
        for w in args.windows(2).filter(|w| w[0] == "--config") {
            assert!(
                root.join(w[1].trim_start_matches('/')).is_file(),
                "{key}: {w:?}"
            );
            assert_eq!(w[1], format!("/{CONF}"));
        }
    }
    for (key, action) in [("ExecStartPre", "--apply"), ("ExecStopPost", "--delete")] {
        assert!(
            cmds.iter()
                .any(|(k, a)| k == key && a[0] == "rules" && a.iter().any(|w| w == action)),
            "{key}: no `ftpct rules ... {action}` in {cmds:?}"
        );
    }
    // The control socket the daemon defaults to is in RuntimeDirectory=.
    assert!(ftpct::config::DEFAULT_SOCKET.starts_with("/run/ftpct/"));
    // The packaged binary runs and accepts the packaged configuration.
    let bin = root.join("usr/sbin/ftpct");
    ok(Command::new(&bin).arg("--version"));
    let out = ok(Command::new(&bin).arg("check-config").arg(root.join(CONF)));
    assert!(out.trim_end().ends_with(": ok"), "{out}");
    // The man pages render without warnings.
    for page in [
        "usr/share/man/man8/ftpct.8.gz",
        "usr/share/man/man5/ftpct.conf.5.gz",
    ] {
        let out = run(Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(root.join(page))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .stdin(Stdio::null()));
        assert!(out.status.success(), "man -l {page}");
        assert!(
            out.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ftpct"));
    }
}

/// The unit's command lines against the packaged binary (the `rules` ones only print: no
/// `--apply`/`--delete`, nothing reaches the kernel).
#[test]
fn unit_command_lines_are_accepted_by_the_binary() {
    let root = scratch("cmdlines");
    ok(Command::new("dpkg").arg("-x").arg(deb()).arg(&root));
    let unit = fs::read_to_string(root.join(UNIT)).unwrap();
    let bin = root.join("usr/sbin/ftpct");
    let conf = root.join(CONF);
    // With the packaged file, and with `backend = iptables-legacy` added to it: the backend
    // is the file's, no drop-in needed.
    let legacy_conf = root.join("legacy.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str("backend = \"iptables-legacy\"\n");
    fs::write(&legacy_conf, text).unwrap();
    let mut seen = 0;
    for (key, args) in ftpct_commands(&unit) {
        if args[0] != "rules" {
            continue;
        }
        seen += 1;
        for (file, expect) in [
            (&conf, "iptables-nft -t raw -A PREROUTING"),
            (&legacy_conf, "iptables-legacy -t raw -A PREROUTING"),
        ] {
            let args: Vec<String> = args
                .iter()
                .filter(|a| *a != "--apply" && *a != "--delete")
                .map(|a| {
                    if a == "/etc/ftpct/ftpct.conf" {
                        file.display().to_string()
                    } else {
                        a.clone()
                    }
                })
                .collect();
            let out = ok(Command::new(&bin).args(&args));
            assert!(out.contains("--comment ftpct"), "{key}: {out}");
            assert!(out.contains(expect), "{key} with {}: {out}", file.display());
        }
    }
    assert_eq!(seen, 2, "ExecStartPre and ExecStopPost");
}

/// The unit's `ExecStopPost` script removes the rules only after a clean stop
/// (`$SERVICE_RESULT` = success: `systemctl stop`/`restart`), not after a crash, a kill or a
/// failed start, when `Restart=on-failure` starts the daemon again and the rules must stay
/// (fail-closed while it restarts). Run with a stand-in for /usr/sbin/ftpct.
#[test]
fn stop_post_keeps_the_rules_when_systemd_restarts_the_daemon() {
    let dir = scratch("stoppost");
    let unit = fs::read_to_string(Path::new(MANIFEST_DIR).join("deploy/ftpct.service")).unwrap();
    let log = dir.join("calls.log");
    let stub = dir.join("ftpct");
    fs::write(
        &stub,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", log.display()),
    )
    .unwrap();
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    let script = stop_post_script(&unit).replace("/usr/sbin/ftpct", &stub.display().to_string());
    // The results systemd sets for ExecStopPost (systemd.exec(5)); with Restart=on-failure
    // every one but success is followed by a restart.
    for (result, code, status, deletes) in [
        ("success", "exited", "0", true),
        ("exit-code", "exited", "1", false),
        ("signal", "killed", "KILL", false),
        ("core-dump", "dumped", "SEGV", false),
        ("timeout", "killed", "TERM", false),
        ("watchdog", "killed", "ABRT", false),
        ("protocol", "", "", false),
        ("resources", "", "", false),
    ] {
        let out = ok(Command::new("/bin/sh")
            .args(["-c", &script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("SERVICE_RESULT", result)
            .env("EXIT_CODE", code)
            .env("EXIT_STATUS", status));
        let calls = take_log(&log);
        if deletes {
            assert_eq!(
                calls.trim(),
                "rules --config /etc/ftpct/ftpct.conf --delete",
                "{result}"
            );
        } else {
            assert!(calls.is_empty(), "{result}: {calls}");
            assert!(out.contains("rules stay"), "{result}: {out}");
        }
    }
    assert!(
        unit.lines().any(|l| l == "Restart=on-failure"),
        "the script assumes Restart=on-failure"
    );
}

/// `systemd-analyze verify` and `security --offline` on the packaged unit, with the packaged
/// binary at /usr/sbin/ftpct in a private mount namespace (tmpfs over /usr/sbin there only).
#[test]
fn unit_verifies_in_the_extracted_tree() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("unit_verifies_in_the_extracted_tree needs root (unshare -m); run as root");
    }
    require(
        "systemd-analyze",
        &["--version"],
        "systemd-analyze is needed: apt-get install systemd",
    );
    let root = scratch("verify");
    ok(Command::new("dpkg").arg("-x").arg(deb()).arg(&root));
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /usr/sbin; cp {r}/usr/sbin/ftpct /usr/sbin/ftpct; \
         MANPATH={r}/usr/share/man:/usr/share/man systemd-analyze verify {r}/{UNIT}; \
         systemd-analyze security --offline=yes --no-pager {r}/{UNIT}",
        r = root.display()
    );
    let out = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    let level: f64 = stdout
        .lines()
        .find_map(|l| l.split("Overall exposure level for ftpct.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{stdout}"));
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(level <= 2.0, "exposure {level} (was 1.4):\n{stdout}");
}

/// The package under a real systemd: `deploy/nspawn-check.sh` boots this machine's OS tree in
/// `systemd-nspawn` (volatile overlay, private network: nothing is written to the host),
/// installs the package, starts it (READY=1), checks the rules, the daemon's privileges, the
/// metrics endpoint, a reload, an FTP session across `kill -9` (rules kept, state restored,
/// the transfer completes), the iptables-legacy backend, upgrade, stop (rules and sets
/// removed), remove and purge. About 20 s. Skipped (saying so) only where `systemd-nspawn`
/// is not installed; `scripts/setup.sh` installs it (systemd-container).
#[test]
fn nspawn_install_start_crash_stop() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("nspawn_install_start_crash_stop needs root (systemd-nspawn); run as root");
    }
    if Command::new("systemd-nspawn")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!(
            "SKIPPED nspawn_install_start_crash_stop: systemd-nspawn is not installed \
             (apt-get install systemd-container, or scripts/setup.sh)"
        );
        return;
    }
    let out = run(Command::new("timeout")
        .arg("300")
        .arg("sh")
        .arg(Path::new(MANIFEST_DIR).join("deploy/nspawn-check.sh"))
        .arg(deb())
        .env("FTPCT_NSPAWN_REQUIRE_FTP", "1")
        .stdin(Stdio::null()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.trim_end().ends_with("PASS"),
        "deploy/nspawn-check.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Stand-ins for the systemd helpers the maintainer scripts call; each logs its arguments.
fn stubs(dir: &Path, log: &Path) -> PathBuf {
    let bin = dir.join("stubs");
    fs::create_dir_all(&bin).unwrap();
    for s in ["deb-systemd-helper", "deb-systemd-invoke", "systemctl"] {
        let p = bin.join(s);
        fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{s} $*\" >> '{}'\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn take_log(log: &Path) -> String {
    let s = fs::read_to_string(log).unwrap_or_default();
    let _ = fs::remove_file(log);
    s
}

/// Install, reinstall (upgrade path), keep an edited conffile, remove, purge: with
/// `dpkg --root` into a scratch root.
#[test]
fn dpkg_lifecycle_in_a_scratch_root() {
    require("dpkg", &["--version"], "dpkg is needed");
    let dir = scratch("dpkg-root");
    let root = dir.join("root");
    let admin = root.join("var/lib/dpkg");
    fs::create_dir_all(admin.join("info")).unwrap();
    fs::create_dir_all(admin.join("updates")).unwrap();
    fs::write(admin.join("status"), "").unwrap();
    let log = dir.join("calls.log");
    let stub_dir = stubs(&dir, &log);
    let path = format!(
        "{}:{}",
        stub_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-confold",
            ])
            .args(args)
            .env("PATH", &path)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        ok(&mut c)
    };
    let deb = deb().to_str().unwrap().to_string();
    let systemd_runs = Path::new("/run/systemd/system").is_dir();

    // First install: enabled, never started.
    dpkg(&["-i", &deb]);
    let calls = take_log(&log);
    assert!(
        calls.contains("deb-systemd-helper enable ftpct.service"),
        "{calls}"
    );
    assert!(!calls.contains(" start"), "started on install:\n{calls}");
    assert!(!calls.contains("restart"), "{calls}");
    for f in ["usr/sbin/ftpct", UNIT, CONF] {
        assert!(root.join(f).exists(), "{f} not installed");
    }
    let conffiles = ok(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f", "${Conffiles}", "ftpct"]));
    assert!(conffiles.contains("/etc/ftpct/ftpct.conf"), "{conffiles}");

    // The admin edits the configuration; a reinstall (upgrade path) keeps it and only
    // try-restarts (where systemd runs).
    let mut conf = fs::read_to_string(root.join(CONF)).unwrap();
    conf.push_str("queue = 4\n");
    fs::write(root.join(CONF), &conf).unwrap();
    dpkg(&["-i", &deb]);
    let calls = take_log(&log);
    assert_eq!(fs::read_to_string(root.join(CONF)).unwrap(), conf);
    assert!(!calls.contains(" start"), "{calls}");
    assert_eq!(
        calls.contains("deb-systemd-invoke try-restart ftpct.service"),
        systemd_runs,
        "{calls}"
    );

    // An edited file in the format of ftpct 0.1 is kept too; the upgrade says how to convert
    // it (the daemon reads it, with the same warning).
    let mut conf = fs::read_to_string(root.join(CONF)).unwrap();
    conf.push_str("backend = iptables-legacy\nfail_open = yes\n");
    fs::write(root.join(CONF), &conf).unwrap();
    let out = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--force-confold",
            "-i",
            &deb,
        ])
        .env("PATH", &path)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(fs::read_to_string(root.join(CONF)).unwrap(), conf);
    let want = format!("ftpct check-config --migrate {}", root.join(CONF).display());
    assert!(
        stderr.contains(&want),
        "the upgrade does not name `{want}`:\n{stderr}"
    );
    let _ = take_log(&log);

    // Remove: the conffile stays, the unit is masked.
    dpkg(&["-r", "ftpct"]);
    let calls = take_log(&log);
    assert!(
        calls.contains("deb-systemd-helper mask ftpct.service"),
        "{calls}"
    );
    assert_eq!(
        calls.contains("deb-systemd-invoke stop ftpct.service"),
        systemd_runs,
        "{calls}"
    );
    assert!(!root.join("usr/sbin/ftpct").exists());
    assert!(root.join(CONF).exists());

    // Purge: the conffile, the unit's state and the StateDirectory go.
    fs::create_dir_all(root.join("var/lib/private/ftpct")).unwrap();
    dpkg(&["--purge", "ftpct"]);
    let calls = take_log(&log);
    assert!(
        calls.contains("deb-systemd-helper purge ftpct.service"),
        "{calls}"
    );
    assert!(!root.join(CONF).exists());
    assert!(!root.join("var/lib/private/ftpct").exists());
}

/// Every key the configuration file accepts (`config::KEYS` and the deprecated ones; a unit
/// test in src/config.rs checks that they are the fields serde reads).
fn config_keys() -> Vec<String> {
    ftpct::config::KEYS
        .iter()
        .map(|(k, _)| *k)
        .chain(ftpct::config::DEPRECATED_KEYS)
        .map(String::from)
        .collect()
}

/// Keys still accepted (with a warning) but no longer used: documented in ftpct.conf(5) as
/// deprecated, absent from the shipped file.
const DEPRECATED_KEYS: [&str; 1] = ftpct::config::DEPRECATED_KEYS;

#[test]
fn default_config_and_man_page_cover_every_key_at_its_default() {
    let all = config_keys();
    let man = fs::read_to_string(Path::new(MANIFEST_DIR).join("deploy/man/ftpct.conf.5")).unwrap();
    for k in DEPRECATED_KEYS {
        assert!(all.iter().any(|x| x == k), "{k} is no longer accepted");
        assert!(
            man.lines().any(|l| l.starts_with(&format!(".BI {k} \""))),
            "ftpct.conf(5) does not document the deprecated {k}"
        );
    }
    let keys: Vec<String> = all
        .into_iter()
        .filter(|k| !DEPRECATED_KEYS.contains(&k.as_str()))
        .collect();
    assert!(keys.len() >= 17, "{keys:?}");
    let conf = fs::read_to_string(Path::new(MANIFEST_DIR).join("deploy/ftpct.conf")).unwrap();
    for k in &keys {
        assert!(
            conf.lines().any(|l| l.starts_with(&format!("#{k} ="))),
            "deploy/ftpct.conf lacks a commented `#{k} = default` line"
        );
        assert!(
            man.lines().any(|l| l.starts_with(&format!(".BI {k} \""))),
            "ftpct.conf(5) does not document {k}"
        );
    }
    // As shipped, every key is commented out: the file means the defaults...
    let shipped = ftpct::config::parse(&conf, Path::new("ftpct.conf")).unwrap();
    assert_eq!(shipped, ftpct::config::Settings::default());
    // ...and the commented values are the defaults.
    let uncommented: String = conf
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(r) if keys.iter().any(|k| r.starts_with(&format!("{k} ="))) => r,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let s = ftpct::config::parse(&uncommented, Path::new("ftpct.conf")).unwrap();
    assert_eq!(s, ftpct::config::Settings::default());
    assert_eq!(
        uncommented
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count(),
        keys.len()
    );
}

/// `ftpct --help`'s subcommands, and the long options of each (`ftpct SUB --help`), from the
/// binary itself, so that a new subcommand or flag fails this test until ftpct(8) has it.
fn cli_surface() -> Vec<(String, Vec<String>)> {
    let bin = env!("CARGO_BIN_EXE_ftpct");
    let help = ok(Command::new(bin).arg("--help"));
    let subs: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(subs.len() >= 9, "{help}");
    subs.into_iter()
        .map(|sub| {
            if sub == "help" {
                // `ftpct help [SUBCOMMAND]`: no options of its own.
                return (sub, Vec::new());
            }
            let help = ok(Command::new(bin).args([&sub, "--help"]));
            let flags = help
                .lines()
                .skip_while(|l| !l.starts_with("Options:"))
                .filter_map(|l| {
                    l.split([' ', ','])
                        .find(|w| w.starts_with("--"))
                        .map(|w| w.trim_start_matches('-').to_string())
                })
                .filter(|f| f != "help")
                .collect();
            (sub, flags)
        })
        .collect()
}

#[test]
fn man_page_names_every_subcommand() {
    let man = fs::read_to_string(Path::new(MANIFEST_DIR).join("deploy/man/ftpct.8")).unwrap();
    let esc = |s: &str| s.replace('-', "\\-");
    let synopsis = &man[man.find(".SH SYNOPSIS").unwrap()..man.find(".SH DESCRIPTION").unwrap()];
    let commands = &man[man.find(".SH COMMANDS").unwrap()..man.find(".SH FIREWALL").unwrap()];
    let surface = cli_surface();
    for (sub, flags) in &surface {
        let sub = esc(sub);
        // A synopsis block (.SY ftpct ... .YS) whose first line names it...
        let block = synopsis
            .split(".SY ftpct\n")
            .skip(1)
            .find(|b| {
                b.lines().next().is_some_and(|l| {
                    l.split([' ', '|', '"'])
                        .any(|w| w == sub || w == format!("{sub}\\fP"))
                })
            })
            .unwrap_or_else(|| panic!("ftpct(8) SYNOPSIS lacks the subcommand {sub}"));
        // ...an entry in COMMANDS...
        assert!(
            commands.contains(&format!(".TP\n.B {sub}\n"))
                || commands.contains(&format!(".TP\n.BI {sub} "))
                || commands.contains(&format!(".TP\n.BR {sub} ")),
            "ftpct(8) COMMANDS lacks the subcommand {sub}"
        );
        // ...and every option, in the block and as an entry.
        for f in flags {
            let f = format!("\\-\\-{}", esc(f));
            assert!(block.contains(&f), "ftpct(8) SYNOPSIS of {sub} lacks {f}");
            assert!(
                commands.contains(&format!(".B {f}\n"))
                    || commands.contains(&format!(".BI {f} \"")),
                "ftpct(8) COMMANDS does not describe {f} (of {sub})"
            );
        }
    }
    let all: Vec<&str> = surface.iter().map(|(s, _)| s.as_str()).collect();
    for sub in [
        "run",
        "rules",
        "events",
        "metrics",
        "replay",
        "check-config",
    ] {
        assert!(all.contains(&sub), "{all:?}");
    }
    for b in ["iptables\\-nft", "iptables\\-legacy", "nft"] {
        assert!(
            man.contains(&format!(".B {b}\n")),
            "ftpct(8) lacks the backend {b}"
        );
    }
}

/// `ftpct check-config` on the file the 0.1 package shipped, edited as an admin would (old
/// syntax): accepted, with the warning that names `--migrate`; `--migrate` prints TOML that
/// check-config accepts without that warning; a broken old file prints nothing and exits 2;
/// a TOML file is printed as it is.
#[test]
fn check_config_reads_the_0_1_format_and_migrates_it() {
    let bin = env!("CARGO_BIN_EXE_ftpct");
    let dir = scratch("migrate");
    let mut old =
        fs::read_to_string(Path::new(MANIFEST_DIR).join("tests/data/ftpct-0.1.conf")).unwrap();
    old.push_str("ports = 21, 2121\nbackend = iptables-legacy # ours\nfail_open = yes\n");
    let old_path = dir.join("old.conf");
    fs::write(&old_path, &old).unwrap();
    let out = run(Command::new(bin).arg("check-config").arg(&old_path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim_end()
        .ends_with(": ok"));
    let want = format!("ftpct check-config --migrate {}", old_path.display());
    assert!(stderr.contains(&want), "{stderr}");

    let new = ok(Command::new(bin)
        .args(["check-config", "--migrate"])
        .arg(&old_path));
    assert_eq!(new.lines().count(), old.lines().count(), "{new}");
    assert!(new.contains("\nports = [21, 2121]\n"), "{new}");
    assert!(
        new.contains("\nbackend = \"iptables-legacy\" # ours\n"),
        "{new}"
    );
    assert!(
        new.contains("\n#socket = \"/run/ftpct/ftpct.sock\"\n"),
        "{new}"
    );
    let new_path = dir.join("new.conf");
    fs::write(&new_path, &new).unwrap();
    let out = run(Command::new(bin).arg("check-config").arg(&new_path));
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    // the same rules from both files
    let rules = |p: &Path| ok(Command::new(bin).args(["rules", "--config"]).arg(p));
    assert_eq!(rules(&old_path), rules(&new_path));
    // a TOML file: unchanged, with a note
    let out = run(Command::new(bin)
        .args(["check-config", "--migrate"])
        .arg(&new_path));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), new);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in the TOML format"));
    // an old file with an error: nothing on stdout, the error with its line, status 2
    fs::write(&old_path, "socket = /run/x.sock\nports = 21, x\n").unwrap();
    let out = run(Command::new(bin)
        .args(["check-config", "--migrate"])
        .arg(&old_path));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2: 'x' is not a TCP port", old_path.display())),
        "{stderr}"
    );
}
