//! The peer's console commands, parsed from one line of input. Pure code:
//! the peer process reads lines (rustyline on a terminal, plain lines from a
//! pipe) and hands each to [`Command::parse`].

use crate::manifest::{check_file_name, ManifestError};
use std::fmt;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `register-peer <filename>`: share `DIR/<filename>`.
    RegisterPeer(String),
    /// `list`: the shared files.
    List,
    /// `register-group <filename>`: join that file's downloading group.
    RegisterGroup(String),
    /// `upload [<filename>]`: start distributing a file this peer owns.
    Upload(Option<String>),
    /// `status`: what this peer shares and downloads.
    Status,
    /// `help`.
    Help,
    /// `quit`.
    Quit,
}

/// Why a line is not a command. `Display` says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but blanks (not worth a message).
    Empty,
    Unknown(String),
    /// The line's bytes are not UTF-8 (e.g. a Latin-1 file name from a script).
    NotUtf8,
    MissingName(&'static str),
    UnexpectedArgument(&'static str),
    BadName {
        command: &'static str,
        error: ManifestError,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => write!(f, "empty line"),
            ParseError::Unknown(word) => {
                write!(f, "unknown command {word:?}; type help for the list")
            }
            ParseError::NotUtf8 => write!(
                f,
                "the line is not valid UTF-8 text; type commands and file names in UTF-8"
            ),
            ParseError::MissingName(cmd) => {
                write!(f, "{cmd} needs a file name: {cmd} <filename>")
            }
            ParseError::UnexpectedArgument(cmd) => {
                write!(f, "{cmd} takes no argument; type {cmd} alone")
            }
            ParseError::BadName { command, error } => {
                write!(
                    f,
                    "{command}: {error}; give the plain name of a file in the peer's directory"
                )
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// The help text, one command a line.
pub const HELP: &str = "\
commands:
  register-peer <filename>   share DIR/<filename> with the other peers
  list                       show the shared files: name, size, chunks, owner, group size
  register-group <filename>  join the downloading group of a shared file
  upload [<filename>]        (owner) send the file to its downloading group
  status                     what this peer shares and which groups it is in
  help                       this text
  quit                       leave the tracker and stop (also SIGINT, SIGTERM)";

impl Command {
    /// Parses one line: a command word, then for the commands that take one,
    /// a file name (the rest of the line, so names may hold spaces).
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let line = line.trim();
        if line.is_empty() {
            return Err(ParseError::Empty);
        }
        let (word, rest) = match line.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim()),
            None => (line, ""),
        };
        let name = |command: &'static str| -> Result<String, ParseError> {
            if rest.is_empty() {
                return Err(ParseError::MissingName(command));
            }
            check_file_name(rest).map_err(|error| ParseError::BadName { command, error })?;
            Ok(rest.to_string())
        };
        let alone = |command: &'static str, cmd: Command| {
            if rest.is_empty() {
                Ok(cmd)
            } else {
                Err(ParseError::UnexpectedArgument(command))
            }
        };
        match word {
            "register-peer" => Ok(Command::RegisterPeer(name("register-peer")?)),
            "register-group" => Ok(Command::RegisterGroup(name("register-group")?)),
            "upload" if rest.is_empty() => Ok(Command::Upload(None)),
            "upload" => Ok(Command::Upload(Some(name("upload")?))),
            "list" => alone("list", Command::List),
            "status" => alone("status", Command::Status),
            "help" | "?" => alone("help", Command::Help),
            "quit" | "exit" => alone("quit", Command::Quit),
            other => Err(ParseError::Unknown(other.chars().take(40).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses() {
        let cases = [
            ("register-peer a.bin", Command::RegisterPeer("a.bin".into())),
            (
                "  register-peer   my movie.mp4  ",
                Command::RegisterPeer("my movie.mp4".into()),
            ),
            ("list", Command::List),
            (
                "register-group a.bin",
                Command::RegisterGroup("a.bin".into()),
            ),
            ("upload", Command::Upload(None)),
            ("upload a.bin", Command::Upload(Some("a.bin".into()))),
            ("status", Command::Status),
            ("help", Command::Help),
            ("?", Command::Help),
            ("quit", Command::Quit),
            ("exit", Command::Quit),
        ];
        for (line, expected) in cases {
            assert_eq!(Command::parse(line), Ok(expected), "{line:?}");
        }
    }

    #[test]
    fn every_mistake_is_an_error_that_says_what_to_do() {
        let cases = [
            ("", ParseError::Empty),
            ("   \t", ParseError::Empty),
            ("lst", ParseError::Unknown("lst".into())),
            ("register-peer", ParseError::MissingName("register-peer")),
            (
                "register-group  ",
                ParseError::MissingName("register-group"),
            ),
            ("list everything", ParseError::UnexpectedArgument("list")),
            ("quit now", ParseError::UnexpectedArgument("quit")),
        ];
        for (line, expected) in cases {
            assert_eq!(Command::parse(line), Err(expected), "{line:?}");
        }
        for line in [
            "register-peer ../etc/passwd",
            "register-peer /etc/passwd",
            "register-group ..",
            "upload a/b",
        ] {
            let err = Command::parse(line).unwrap_err();
            assert!(matches!(err, ParseError::BadName { .. }), "{line:?}");
            assert!(err.to_string().contains("plain name"), "{err}");
        }
    }
}
