//! What a jail runs: its command as a list of arguments (typed as one
//! shell-quoted line in forms) and its environment variables.

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// Most arguments of a command.
pub const MAX_ARGS: usize = 256;
/// Most environment variables of a jail.
pub const MAX_ENV: usize = 64;
/// Longest value of one environment variable, in bytes.
pub const MAX_ENV_VALUE: usize = 4096;

/// A command line as typed: split into arguments the way a POSIX shell
/// would (single and double quotes, backslashes), without running one.
pub fn parse_command_line(line: &str) -> Result<Vec<String>, ParseError> {
    let args = shlex::split(line).ok_or_else(|| {
        ParseError::new(
            "command",
            "a quote is not closed (or the line ends in a lone backslash)",
        )
    })?;
    check_command(&args)?;
    Ok(args)
}

/// Checks a command given as a list of arguments.
pub fn check_command(args: &[String]) -> Result<(), ParseError> {
    if args.len() > MAX_ARGS {
        return Err(ParseError::new(
            "command",
            format!("at most {MAX_ARGS} arguments"),
        ));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(ParseError::new("command", "an argument holds a NUL byte"));
    }
    Ok(())
}

/// A command as one line that [`parse_command_line`] splits back into the
/// same arguments.
pub fn command_line(args: &[String]) -> String {
    shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "))
}

/// One environment variable of a jail's command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// `[A-Za-z_][A-Za-z0-9_]*`.
    pub name: String,
    /// Any text without NUL, at most [`MAX_ENV_VALUE`] bytes.
    pub value: String,
    /// Never shown again once set (a password, a key).
    #[serde(default)]
    pub secret: bool,
}

impl EnvVar {
    /// A checked variable.
    pub fn new(name: &str, value: &str, secret: bool) -> Result<Self, ParseError> {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name.len() <= 128;
        if !valid {
            return Err(ParseError::new(
                "env",
                format!(
                    "{name:?} is not a variable name: letters, digits and _, not starting with a digit, at most 128"
                ),
            ));
        }
        if value.contains('\0') || value.len() > MAX_ENV_VALUE {
            return Err(ParseError::new(
                "env",
                format!(
                    "the value of {name} holds a NUL byte or is longer than {MAX_ENV_VALUE} bytes"
                ),
            ));
        }
        Ok(EnvVar {
            name: name.to_owned(),
            value: value.to_owned(),
            secret,
        })
    }
}

/// Checks a whole environment: each variable, no name twice, not too many.
pub fn check_env(vars: &[EnvVar]) -> Result<(), ParseError> {
    if vars.len() > MAX_ENV {
        return Err(ParseError::new(
            "env",
            format!("at most {MAX_ENV} variables"),
        ));
    }
    for (i, v) in vars.iter().enumerate() {
        EnvVar::new(&v.name, &v.value, v.secret)?;
        if vars[..i].iter().any(|w| w.name == v.name) {
            return Err(ParseError::new("env", format!("{} is given twice", v.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_splits_like_a_shell_and_joins_back() {
        let args = parse_command_line(r#"sh -c "echo 'hi there'; exit 3" x\ y"#).unwrap();
        assert_eq!(args, ["sh", "-c", "echo 'hi there'; exit 3", "x y"]);
        assert_eq!(parse_command_line(&command_line(&args)).unwrap(), args);
        assert_eq!(parse_command_line("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn an_unbalanced_quote_is_refused_by_name() {
        let e = parse_command_line(r#"sh -c "unterminated"#).unwrap_err();
        assert_eq!(e.field, "command");
        assert!(e.reason.contains("quote"), "{e}");
    }

    #[test]
    fn variables_are_checked_and_unique() {
        assert!(EnvVar::new("DATABASE_URL", "postgres://x", true).is_ok());
        for bad in ["", "1X", "A-B", "A B"] {
            assert_eq!(EnvVar::new(bad, "v", false).unwrap_err().field, "env");
        }
        assert!(EnvVar::new("A", "a\0b", false).is_err());
        let twice = [
            EnvVar::new("A", "1", false).unwrap(),
            EnvVar::new("A", "2", false).unwrap(),
        ];
        assert!(check_env(&twice).unwrap_err().reason.contains("twice"));
    }
}
