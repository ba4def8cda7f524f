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
    /// Validate a configuration file.
    CheckConfig { file: PathBuf },
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

fn init_logs(filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd, stderr goes to the journal ($JOURNAL_STREAM), which adds its own
    // timestamps and shows escape codes as they are.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::stderr().is_terminal())
        .with_target(false);
    if journal {
        logs.without_time().init();
    } else {
        logs.init();
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
            let mut s = match load_settings(config.as_deref(), "ftpct: ") {
                Ok(s) => s,
                Err(code) => return code,
            };
            let overrides = config::Overrides {
                queue,
                socket,
                ports,
                fail_open,
                metrics,
                state_file: state,
            };
            overrides.apply(&mut s);
            init_logs(log.as_deref().unwrap_or(&s.log));
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
        Cmd::Rules {
            config,
            queue,
            ports,
            backend,
            apply,
            delete,
            bypass,
        } => {
            let settings = match load_settings(config.as_deref(), "ftpct rules: ") {
                Ok(s) => s,
                Err(code) => return code,
            };
            let mut spec = rules::RuleSpec::from_settings(&settings);
            if let Some(b) = backend {
                spec.backend = b;
            }
            if let Some(q) = queue {
                spec.queue = q;
            }
            if let Some(p) = ports {
                spec.ports = p;
            }
            if bypass {
                spec.bypass = true;
            }
            let result = if apply {
                rules::apply(&spec)
                    .map(|n| format!("ftpct rules: {n} rules added (existing ones kept)"))
            } else if delete {
                rules::delete(&spec).map(|n| format!("ftpct rules: {n} rules removed"))
            } else {
                rules::render(&spec)
            };
            match result {
                Ok(text) => {
                    println!("{}", text.trim_end());
                    if apply {
                        warn_small_sets(&spec, config.as_deref());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ftpct rules: {e}");
                    ExitCode::from(1)
                }
            }
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
            let s = match load_settings(config.as_deref(), "ftpct: ") {
                Ok(s) => s,
                Err(code) => return code,
            };
            let mut opts = replay::ReplayOptions::new(file);
            if json {
                opts.format = replay::OutputFormat::Json;
            }
            opts.nat = match (snat, dnat) {
                (Some(ip), _) => replay::Nat::Snat(ip),
                (None, Some(ip)) => replay::Nat::Dnat(ip),
                (None, None) => replay::Nat::None,
            };
            opts.ports = ports.unwrap_or(s.ports);
            opts.policy = s.policy;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let result = replay::run(&opts, &mut out);
            let _ = out.flush();
            match result {
                Ok(_) => ExitCode::SUCCESS,
                // `ftpct replay ... | head`: the reader is gone, nothing to report
                Err(replay::ReplayError::Write(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ftpct replay: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::CheckConfig { file } => match config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
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
        Some(p) => config::load(p).map_err(|e| {
            eprintln!("{prefix}{e}");
            ExitCode::from(2)
        }),
        None => Ok(Settings::default()),
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
