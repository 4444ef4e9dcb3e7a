//! The `keypad-bridge` command: parse the CLI, set up logging, load the config, run.

use std::io::{ErrorKind, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keypad_bridge::{cli, config, daemon, owner};

#[derive(Parser)]
#[command(
    name = "keypad-bridge",
    version,
    about = "Per-person keypad codes for a Home Assistant alarm, over MQTT"
)]
struct Args {
    /// The config file.
    #[arg(
        long,
        global = true,
        env = "KEYPAD_BRIDGE_CONFIG",
        default_value = "/etc/keypad-bridge/config.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Check the config file and print every problem with its line and column.
    CheckConfig,
    /// Create the store, the secret and the master user (the main code).
    Init {
        /// The master's name.
        #[arg(long, default_value = "Master")]
        name: String,
    },
    /// Set a new code for the master (local recovery of a lost main code).
    ResetMaster,
    /// List the users (never their codes).
    Users,
    /// Show the activity log, newest first.
    Activity {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Lift the lockout of a source (keypad:NAME, homeassistant, admin), or of all of them.
    Unlock {
        /// The source to unlock; every source when left out.
        source: Option<String>,
    },
}

fn main() -> ExitCode {
    // Before any other thread exists: glibc reads these when it first needs a new arena.
    allocator::tune();
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let command = args.command.unwrap_or(Command::Run);
    if let Command::CheckConfig = command {
        return Ok(match load_config(&args.config) {
            Ok(_) => {
                println!("{}: the config is valid", args.config.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err:#}");
                ExitCode::FAILURE
            }
        });
    }
    let config = load_config(&args.config)?;
    let level = match command {
        Command::Run => config.log.level.as_str(),
        _ => "warn",
    };
    init_tracing(level);
    // Every command left opens the store: as its owner only, or what it creates belongs to
    // the wrong user (an `init` run as root, forgetting `sudo -u keypad-bridge`).
    owner::refuse_foreign_store(&config.store)?;
    let stdout = &mut std::io::stdout();
    match command {
        Command::Run => run_daemon(config)?,
        Command::CheckConfig => unreachable!("handled above"),
        Command::Init { name } => {
            let user = cli::init(&config, &name, || {
                cli::read_code("Main code", |raw| cli::check_format(&config, raw))
            })?;
            println!(
                "Created the master user {:?} ({}). Keep a backup of the secret file {}.",
                user.name,
                user.id,
                config.store.secret_file.display()
            );
        }
        Command::ResetMaster => {
            let user = cli::reset_master(&config, || {
                cli::read_code("New main code", |raw| cli::check_format(&config, raw))
            })?;
            println!("The master user {:?} has a new code.", user.name);
        }
        Command::Users => closed_stdout_is_the_end(cli::users(&config, stdout))?,
        Command::Activity { limit } => {
            closed_stdout_is_the_end(cli::activity(&config, limit, stdout))?
        }
        Command::Unlock { source } => {
            closed_stdout_is_the_end(cli::unlock(&config, source.as_deref(), stdout))?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes, `: `-separated, leaving out a cause the text already says
/// (a store error names its I/O error, which is also its source).
fn chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// A reader that stops reading (`users | head -1`, `grep -q`) ends a listing normally: what
/// it wanted has been written, and a listing changes nothing that a closed pipe could cut short.
fn closed_stdout_is_the_end(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(err)
            if err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The config at `path`; when there is no file there, the error says how to point at one.
fn load_config(path: &Path) -> anyhow::Result<config::Config> {
    config::load(path).map_err(|err| {
        let err = anyhow::Error::from(err);
        let missing = std::fs::metadata(path).is_err_and(|e| e.kind() == ErrorKind::NotFound);
        if !missing {
            return err;
        }
        anyhow::anyhow!(
            "{err:#}\n  Point at your config file with `--config PATH` or the environment \
             variable KEYPAD_BRIDGE_CONFIG=PATH. A commented example with every key is \
             config.example.yaml at the top of the source tree (the quick start runs \
             `keypad-bridge --config config.example.yaml`)."
        )
    })
}

/// Logs go to stderr (journald keeps them); `RUST_LOG`, when it is a valid filter, wins over
/// `log.level` (both read by [`config::log_filter`], which keeps sled at warnings).
fn init_tracing(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| config::log_filter(&text).ok())
        // `check` has refused a `log.level` that does not parse.
        .or_else(|| config::log_filter(level).ok())
        .unwrap_or_default();
    let logs = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Under systemd, stderr goes to journald: no colours, no timestamp of our own (journald
        // adds one), and each line starts with its syslog priority (`<4>` for a warning), so
        // that `journalctl -p warning` filters it.
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false);
        logs.with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .event_format(Journald(format)),
        )
        .init();
        return;
    }
    logs.with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal()),
    )
    .init();
}

/// A line format for journald: the syslog priority prefix (sd-daemon(3)), then the line.
struct Journald<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Journald<F>
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
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

fn run_daemon(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Argon2 and fsync run on the blocking pool; a handful of threads is plenty on a Pi.
        .max_blocking_threads(4)
        .build()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "stop requested");
            let _ = tx.send(());
        }
    });
    runtime.block_on(daemon::run(config, async {
        let _ = rx.await;
    }))
}

/// glibc's allocator, set for a daemon that must stay small (issue 11). By default glibc gives
/// each thread that allocates an arena of its own (up to 8 per core), and raises its mmap
/// threshold each time a large block is freed, after which large blocks (sled's 512 KiB log
/// buffers, the 3 MB whole roster at 10000 users, rumqttc's write buffer as it grows) come
/// from the arenas and stay there once freed. The peak resident memory while 10000 users
/// were added over MQTT was 57.0 MiB; 50.9 MiB with one arena, 50.3 MiB with a fixed 128 KiB
/// threshold, 49.5 MiB with both. An owner's `MALLOC_ARENA_MAX` or `MALLOC_MMAP_THRESHOLD_`
/// wins.
#[cfg(target_env = "gnu")]
mod allocator {
    /// Arenas for the whole process: one lock, which the daemon's few threads barely contend.
    pub const ARENA_MAX: i32 = 1;
    /// Blocks at least this large are mapped on their own and unmapped when freed; a fixed
    /// value also turns off glibc's raising of it.
    pub const MMAP_THRESHOLD: i32 = 128 * 1024;

    pub fn tune() {
        for (variable, param, value) in [
            ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENA_MAX),
            (
                "MALLOC_MMAP_THRESHOLD_",
                libc::M_MMAP_THRESHOLD,
                MMAP_THRESHOLD,
            ),
        ] {
            if std::env::var_os(variable).is_none() {
                // SAFETY: mallopt changes allocator parameters only; it takes the arena lock.
                unsafe { libc::mallopt(param, value) };
            }
        }
    }
}

/// Other C libraries (musl) have neither per-thread arenas nor glibc's threshold.
#[cfg(not(target_env = "gnu"))]
mod allocator {
    pub fn tune() {}
}

#[cfg(all(test, target_env = "gnu"))]
mod tests {
    /// How many arenas glibc has: malloc_info(3) writes one `<heap nr="…">` element each.
    fn arenas() -> usize {
        let mut buffer: *mut libc::c_char = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: the stream writes into a buffer it allocates, freed here once read.
        unsafe {
            let stream = libc::open_memstream(&mut buffer, &mut size);
            assert!(!stream.is_null());
            assert_eq!(libc::malloc_info(0, stream), 0);
            libc::fclose(stream);
            let xml = std::ffi::CStr::from_ptr(buffer)
                .to_string_lossy()
                .into_owned();
            libc::free(buffer.cast());
            xml.matches("<heap nr=").count()
        }
    }

    /// Blocks glibc has mapped on their own (mallinfo2's `hblks`).
    fn mapped_blocks() -> usize {
        // SAFETY: reads allocator statistics.
        unsafe { libc::mallinfo2() }.hblks
    }

    #[test]
    fn threads_share_one_arena_and_a_large_block_is_unmapped_when_freed() {
        super::allocator::tune();
        let before = arenas();
        // Four threads allocating at once: by default each would get an arena of its own.
        let ready = std::sync::Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ready = ready.clone();
                std::thread::spawn(move || {
                    ready.wait();
                    let blocks: Vec<Vec<u8>> = (0..1000).map(|i| vec![1; 64 + i]).collect();
                    ready.wait();
                    std::hint::black_box(blocks);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(arenas(), before, "a thread got an arena of its own");

        // By default freeing a mapped 1 MiB block raises the threshold to 1 MiB, and the
        // next 256 KiB block would come from the arena (and stay there once freed).
        let first = mapped_blocks();
        let large = std::hint::black_box(vec![1u8; 1 << 20]);
        assert_eq!(mapped_blocks(), first + 1, "a 1 MiB block is mapped");
        drop(large);
        let next = std::hint::black_box(vec![1u8; 256 << 10]);
        assert_eq!(
            mapped_blocks(),
            first + 1,
            "a 256 KiB block after it is mapped too"
        );
        drop(next);
        assert_eq!(mapped_blocks(), first, "and unmapped when freed");
    }
}
