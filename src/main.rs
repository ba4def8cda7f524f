//! `ftpct`: command line.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ftpct::config::{self, Settings};
use ftpct::control::{self, Request};
use ftpct::{daemon, replay, rules};

#[derive(Parser, Debug)]
#[command(
    name = "ftpct",
    version,
    about = "Userspace FTP ALG for Linux (NFQUEUE + ctnetlink)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground, in the current network namespace.
    Run {
        /// NFQUEUE number (overrides the config file).
        #[arg(long)]
        queue: Option<u16>,
        /// Configuration file (see ftpct.conf(5)); re-read on SIGHUP.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Control socket path (overrides the config file).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// FTP control ports, comma separated (overrides the config file).
        #[arg(long, value_delimiter = ',')]
        ports: Option<Vec<u16>>,
        /// Accept packets unprocessed when the queue is full, instead of dropping them.
        #[arg(long)]
        fail_open: bool,
        /// Log filter (tracing EnvFilter syntax, e.g. info or ftpct=debug).
        #[arg(long)]
        log: Option<String>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// State file (default: the socket path with .state appended).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Print, apply or delete the firewall rules ftpct needs.
    Rules {
        /// Take the queue, ports, set names and fail_open (as --bypass) from this
        /// configuration file (see ftpct.conf(5)); the other flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// NFQUEUE number [default: 0, or the config file's].
        #[arg(long)]
        queue: Option<u16>,
        /// FTP control ports, comma separated [default: 21, or the config file's].
        #[arg(long, value_delimiter = ',')]
        ports: Option<Vec<u16>>,
        /// Which tool installs the rules: iptables-nft, iptables-legacy or nft (default: the
        /// configuration file's `backend`, else iptables-nft).
        #[arg(long)]
        backend: Option<rules::Backend>,
        /// Install the rules (idempotent).
        #[arg(long, conflicts_with = "delete")]
        apply: bool,
        /// Remove exactly ftpct's rules.
        #[arg(long)]
        delete: bool,
        /// Let control packets bypass the queue when no daemon is bound (fail-open; sessions
        /// with rewrites then break across a daemon restart).
        #[arg(long)]
        bypass: bool,
    },
    /// Print the live expectation table (nf_conntrack_expect format).
    List {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print the tracked control connections.
    Sessions {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print the daemon's counters and latency figures.
    Stats {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Stream session and expectation events live (like `conntrack -E expect`).
    Events {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print the Prometheus metrics text.
    Metrics {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Validate a configuration file (TOML, or the format of ftpct 0.1 with a warning).
    CheckConfig {
        /// Print the file in the TOML format instead (a file in the old format translated
        /// line by line, comments kept; a TOML file as it is), e.g.
        /// `ftpct check-config --migrate old.conf > new.conf`.
        #[arg(long)]
        migrate: bool,
        file: PathBuf,
    },
    /// Run the core over a capture (pcap or pcapng) and print what it would have parsed,
    /// rewritten and expected. Needs no root.
    Replay {
        /// The capture (`-` reads standard input): Ethernet, Linux cooked v1/v2 or raw IP.
        file: PathBuf,
        /// JSON lines (one object per line with a `type` field) instead of text.
        #[arg(long)]
        json: bool,
        /// The client was behind MASQUERADE/SNAT to this address (capture on the client side).
        #[arg(long, value_name = "PUBLIC_IP", conflicts_with = "dnat")]
        snat: Option<IpAddr>,
        /// The server was behind DNAT from this address (capture on the server side).
        #[arg(long, value_name = "PUBLIC_IP")]
        dnat: Option<IpAddr>,
        /// FTP control ports, comma separated (default: the config file's, else 21).
        #[arg(long, value_delimiter = ',')]
        ports: Option<Vec<u16>>,
        /// Take the policy (and control ports) from this configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Sets up the logs: to stderr, filtered by `$RUST_LOG` if set, else by `filter` (the
/// `--log` flag or the configuration's `log`). An invalid filter is an error (never a silent
/// fallback to another level).
///
/// When stderr is the journal (systemd's `$JOURNAL_STREAM` names stderr's device and inode),
/// each line starts with its sd-daemon(3) priority (`<3>` error, `<4>` warning, `<6>` info,
/// `<7>` debug and trace), so that `journalctl -p warning` and syslog see the real levels, and
/// carries no timestamp or colours (journald adds its own time). Otherwise: plain fmt lines
/// with a timestamp, coloured on a terminal.
fn init_logs(filter: &str) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            config::log_filter(&env).map_err(|e| format!("RUST_LOG: {e}; fix or unset it"))?
        }
        _ => config::log_filter(filter).map_err(|e| format!("log filter: {e}"))?,
    };
    let journal = stderr_is_journal();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::stderr().is_terminal())
        .with_target(false);
    if journal {
        logs.event_format(JournalFormat(
            tracing_subscriber::fmt::format()
                .without_time()
                .with_target(false),
        ))
        .init();
    } else {
        logs.init();
    }
    Ok(())
}

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` is `DEVICE:INODE` of the
/// stream systemd connected, which a child with redirected stderr may still inherit, so it
/// is compared with stderr's own (sd-daemon(3), systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (
        dev.parse::<nix::libc::dev_t>(),
        ino.parse::<nix::libc::ino_t>(),
    ) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// The sd-daemon(3) priority prefix of a level: `<3>` (LOG_ERR) for errors, `<4>`
/// (LOG_WARNING), `<6>` (LOG_INFO), `<7>` (LOG_DEBUG) for debug and trace.
fn journal_priority(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "<3>",
        tracing::Level::WARN => "<4>",
        tracing::Level::INFO => "<6>",
        _ => "<7>",
    }
}

/// A log line format for the journal: the priority prefix, then the line of the wrapped
/// format (which must print no timestamp).
struct JournalFormat<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        writer.write_str(journal_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            queue,
            config,
            socket,
            ports,
            fail_open,
            log,
            metrics,
            state,
        } => {
            let overrides = config::Overrides {
                queue,
                socket,
                ports,
                fail_open,
                metrics,
                state_file: state,
            };
            run_daemon(config, log.as_deref(), overrides)
        }
        Cmd::Rules {
            config,
            queue,
            ports,
            backend,
            apply,
            delete,
            bypass,
        } => {
            let flags = RuleFlags {
                backend,
                queue,
                ports,
                bypass,
            };
            rules_command(config.as_deref(), RulesOp::of(apply, delete), flags)
        }
        Cmd::List { socket } => ask(&socket, Request::List),
        Cmd::Sessions { socket } => ask(&socket, Request::Sessions),
        Cmd::Stats { socket } => ask(&socket, Request::Stats),
        Cmd::Metrics { socket } => ask(&socket, Request::Metrics),
        Cmd::Events { socket } => match control::stream_events(&socket, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ftpct: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Replay {
            file,
            json,
            snat,
            dnat,
            ports,
            config,
        } => {
            let nat = match (snat, dnat) {
                (Some(ip), _) => replay::Nat::Snat(ip),
                (None, Some(ip)) => replay::Nat::Dnat(ip),
                (None, None) => replay::Nat::None,
            };
            replay_command(file, json, nat, ports, config.as_deref())
        }
        Cmd::CheckConfig {
            migrate: false,
            file,
        } => check_config(&file),
        Cmd::CheckConfig {
            migrate: true,
            file,
        } => migrate_config(&file),
    }
}

/// `ftpct run`: the settings of `config` with the command line's `overrides`, the logs, then
/// the daemon until it stops.
fn run_daemon(
    config: Option<PathBuf>,
    log: Option<&str>,
    overrides: config::Overrides,
) -> ExitCode {
    // The warnings (an old-format file, deprecated keys) are logged once logging is set
    // up, so that under systemd they reach the journal as warnings.
    let (mut s, warnings) = match load_quiet(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ftpct: {e}");
            return ExitCode::from(2);
        }
    };
    overrides.apply(&mut s);
    if let Err(e) = init_logs(log.unwrap_or(&s.log)) {
        eprintln!("ftpct: {e}");
        return ExitCode::from(2);
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    match daemon::run(daemon::RunOptions {
        settings: s,
        config_path: config,
        overrides,
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// What `ftpct rules` does with the rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RulesOp {
    /// Print them (no flag).
    Print,
    /// `--apply`.
    Apply,
    /// `--delete`.
    Delete,
}

impl RulesOp {
    /// From the flags `--apply` and `--delete` (clap refuses both).
    fn of(apply: bool, delete: bool) -> RulesOp {
        if apply {
            RulesOp::Apply
        } else if delete {
            RulesOp::Delete
        } else {
            RulesOp::Print
        }
    }
}

/// The flags of `ftpct rules` that override the configuration's rule specification.
struct RuleFlags {
    backend: Option<rules::Backend>,
    queue: Option<u16>,
    ports: Option<Vec<u16>>,
    bypass: bool,
}

impl RuleFlags {
    fn apply(self, spec: &mut rules::RuleSpec) {
        if let Some(b) = self.backend {
            spec.backend = b;
        }
        if let Some(q) = self.queue {
            spec.queue = q;
        }
        if let Some(p) = self.ports {
            spec.ports = p;
        }
        if self.bypass {
            spec.bypass = true;
        }
    }
}

/// `ftpct rules`: prints, applies or deletes the rules of `config`'s specification with the
/// command line's `flags`.
fn rules_command(config: Option<&std::path::Path>, op: RulesOp, flags: RuleFlags) -> ExitCode {
    let settings = match load_settings(config, "ftpct rules: ") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut spec = settings.rule_spec();
    flags.apply(&mut spec);
    // --apply and --delete say, per group, what was there and what they changed, and
    // what the kernel needs beside the rules (the nat PREROUTING base chain, the sets).
    let result = match op {
        RulesOp::Apply => rules::apply_report(&spec).map(|r| r.to_string()),
        RulesOp::Delete => rules::delete_report(&spec).map(|r| r.to_string()),
        RulesOp::Print => rules::render(&spec).map_err(rules::RulesError::from),
    };
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            if op == RulesOp::Apply {
                warn_small_sets(&spec, config);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ftpct rules: {e}");
            ExitCode::from(1)
        }
    }
}

/// `ftpct replay`: runs the capture `file` through the driver and prints what happened.
fn replay_command(
    file: PathBuf,
    json: bool,
    nat: replay::Nat,
    ports: Option<Vec<u16>>,
    config: Option<&std::path::Path>,
) -> ExitCode {
    let s = match load_settings(config, "ftpct: ") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut opts = replay::ReplayOptions::new(file);
    if json {
        opts.format = replay::OutputFormat::Json;
    }
    opts.nat = nat;
    opts.ports = ports.unwrap_or(s.ports);
    opts.policy = s.policy;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = replay::run(&opts, &mut out);
    let _ = out.flush();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        // `ftpct replay ... | head`: the reader is gone, nothing to report
        Err(replay::ReplayError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ftpct replay: {e}");
            ExitCode::from(1)
        }
    }
}

/// `ftpct check-config FILE`.
fn check_config(file: &std::path::Path) -> ExitCode {
    match config::load(file) {
        Ok(s) => {
            for w in &s.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `ftpct check-config --migrate FILE`.
fn migrate_config(file: &std::path::Path) -> ExitCode {
    match config::read(file).and_then(|text| config::migrate(&text, file)) {
        Ok((text, format)) => {
            if format == config::Format::Toml {
                eprintln!(
                    "{}: already in the TOML format: printed unchanged",
                    file.display()
                );
            }
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// After `ftpct rules --apply`: warns about ipsets that existed with a `maxelem` below
/// `max_expectations` (apply keeps them; only destroying and recreating them fixes it).
fn warn_small_sets(spec: &rules::RuleSpec, config: Option<&std::path::Path>) {
    if spec.backend == rules::Backend::Nft {
        return;
    }
    let small = ftpct::ipset::Ipset::open()
        .map_err(|e| e.to_string())
        .and_then(|mut set| rules::small_sets(&mut set, spec).map_err(|e| e.to_string()));
    match small {
        Ok(small) => {
            for s in small {
                eprintln!(
                    "ftpct rules: warning: {}",
                    s.message(
                        &spec.command_line(config, "--delete"),
                        &spec.command_line(config, "--apply")
                    )
                );
            }
        }
        Err(e) => eprintln!("ftpct rules: warning: cannot read the ipsets' maxelem: {e}"),
    }
}

/// The settings of `config` (or the defaults); on error, prints it and gives exit status 2.
fn load_settings(config: Option<&std::path::Path>, prefix: &str) -> Result<Settings, ExitCode> {
    match config {
        Some(p) => config::load(p)
            .inspect(|s| {
                for w in &s.warnings {
                    eprintln!("{prefix}warning: {w}");
                }
            })
            .map_err(|e| {
                eprintln!("{prefix}{e}");
                ExitCode::from(2)
            }),
        None => Ok(Settings::default()),
    }
}

/// The settings of `config` (or the defaults) and their warnings, without printing them.
fn load_quiet(
    config: Option<&std::path::Path>,
) -> Result<(Settings, Vec<String>), config::ConfigError> {
    match config {
        Some(p) => config::load(p).map(|s| {
            let w = s.warnings.clone();
            (s, w)
        }),
        None => Ok((Settings::default(), Vec::new())),
    }
}

fn ask(socket: &std::path::Path, req: Request) -> ExitCode {
    match control::query(socket, req) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ftpct: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A log writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_timestamp() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(move || w.clone())
            .with_ansi(false)
            .event_format(JournalFormat(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_target(false),
            ))
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::error!(queue = 3, "cannot bind");
            tracing::warn!("NFQUEUE overrun");
            tracing::info!(session = "S1", "control session start");
            tracing::debug!("message");
            tracing::trace!("detail");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "<3>ERROR cannot bind queue=3",
                "<4> WARN NFQUEUE overrun",
                "<6> INFO control session start session=\"S1\"",
                "<7>DEBUG message",
                "<7>TRACE detail",
            ],
            "{text}"
        );
    }

    #[test]
    fn journal_stream_must_be_stderr() {
        // A JOURNAL_STREAM inherited by a process whose stderr is elsewhere (a file, a pipe
        // of the test harness) is not the journal.
        use std::os::fd::AsRawFd;
        let st = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()).unwrap();
        std::env::set_var("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino));
        assert!(stderr_is_journal(), "stderr's own device and inode");
        std::env::set_var("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino + 1));
        assert!(!stderr_is_journal());
        std::env::set_var("JOURNAL_STREAM", "garbage");
        assert!(!stderr_is_journal());
        std::env::remove_var("JOURNAL_STREAM");
        assert!(!stderr_is_journal());
    }

    #[test]
    fn priorities() {
        assert_eq!(journal_priority(&tracing::Level::ERROR), "<3>");
        assert_eq!(journal_priority(&tracing::Level::WARN), "<4>");
        assert_eq!(journal_priority(&tracing::Level::INFO), "<6>");
        assert_eq!(journal_priority(&tracing::Level::DEBUG), "<7>");
        assert_eq!(journal_priority(&tracing::Level::TRACE), "<7>");
    }
}
