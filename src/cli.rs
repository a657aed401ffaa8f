//! Small pieces shared by the binaries: logging set-up from `-v`/`-q`.

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};

/// Logs to stderr: info by default, each `-v` one level more, each `-q` one less.
pub fn init_logging(verbose: u8, quiet: u8) {
    let level = match 3i16 + verbose as i16 - quiet as i16 {
        i16::MIN..=0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let config = ConfigBuilder::new()
        .set_time_level(LevelFilter::Debug)
        .set_target_level(LevelFilter::Debug)
        .set_thread_level(LevelFilter::Off)
        .build();
    let _ = TermLogger::init(level, config, TerminalMode::Stderr, ColorChoice::Never);
}
