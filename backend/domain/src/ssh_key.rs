//! An SSH public key as customers paste it: one line of an
//! `authorized_keys` or `.pub` file, `TYPE BASE64 [COMMENT]`.
//!
//! Parsed far enough to refuse what the node's SSH gateway would never
//! accept (an unknown type, a body that is not the type it claims, an RSA
//! key under 2048 bits, options before the type) and to name the key the
//! way `ssh-keygen -l` does: `SHA256:` and the unpadded base64 of the
//! SHA-256 of its body. The gateway finds a login's key by that name.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

use crate::ParseError;

/// Key types the gateway accepts.
const TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The smallest RSA modulus accepted, in bits (as OpenSSH since 9.x).
const MIN_RSA_BITS: usize = 2048;

/// A parsed public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPublicKey {
    algorithm: String,
    body: Vec<u8>,
    comment: String,
}

fn bad(reason: impl Into<String>) -> ParseError {
    ParseError::new("key", reason)
}

/// Reads one SSH `string` (a 32-bit length and that many bytes).
fn read_string<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = body.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    let (s, rest) = (rest.get(..len)?, rest.get(len..)?);
    *body = rest;
    Some(s)
}

impl SshPublicKey {
    /// Parses one line; surrounding blanks are ignored.
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        let line = line.trim();
        if line.is_empty() {
            return Err(bad("is empty: paste the one line of your .pub file"));
        }
        if line.contains('\n') {
            return Err(bad("is more than one line: add one key at a time"));
        }
        if line.starts_with("-----BEGIN") {
            return Err(bad(
                "is a PEM block (a private key?): paste the public key, the line of your .pub file",
            ));
        }
        let mut parts = line.splitn(3, char::is_whitespace);
        let algorithm = parts.next().unwrap_or_default();
        if !TYPES.contains(&algorithm) {
            return Err(bad(format!(
                "{} is not a key type the node accepts ({})",
                shorten(algorithm),
                TYPES.join(", ")
            )));
        }
        let encoded = parts.next().unwrap_or_default().trim();
        let body = STANDARD
            .decode(encoded)
            .map_err(|_| bad("its body is not base64: paste the whole line unchanged"))?;
        let mut rest = body.as_slice();
        if read_string(&mut rest) != Some(algorithm.as_bytes()) {
            return Err(bad(format!("its body is not an {algorithm} key")));
        }
        if algorithm == "ssh-rsa" {
            let _exponent = read_string(&mut rest).ok_or_else(|| bad("is a truncated RSA key"))?;
            let modulus = read_string(&mut rest).ok_or_else(|| bad("is a truncated RSA key"))?;
            let bits = modulus_bits(modulus);
            if bits < MIN_RSA_BITS {
                return Err(bad(format!(
                    "is an RSA key of {bits} bits; at least {MIN_RSA_BITS} are needed"
                )));
            }
        } else if rest.is_empty() {
            return Err(bad(format!("is a truncated {algorithm} key")));
        }
        let comment: String = parts
            .next()
            .unwrap_or_default()
            .trim()
            .chars()
            .take(200)
            .collect();
        Ok(Self {
            algorithm: algorithm.to_owned(),
            body,
            comment,
        })
    }

    /// The key's type, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The comment after the key, often `user@host`; may be empty.
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// `TYPE BASE64`, without the comment: how the key is stored.
    pub fn openssh(&self) -> String {
        format!("{} {}", self.algorithm, STANDARD.encode(&self.body))
    }

    /// `SHA256:…`, as `ssh-keygen -l` and the SSH client print it.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.body)
    }
}

/// The `SHA256:…` fingerprint of a key's wire-format body.
pub fn fingerprint_of(body: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(body)))
}

/// The bits of an RSA modulus (an `mpint`: big-endian, maybe a leading 0).
fn modulus_bits(modulus: &[u8]) -> usize {
    let first = modulus.iter().position(|b| *b != 0);
    first.map_or(0, |i| {
        let rest = modulus.len() - i - 1;
        rest * 8 + (8 - modulus[i].leading_zeros() as usize)
    })
}

/// At most 40 characters of what the user typed, for a message.
fn shorten(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    format!("{t:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key made by `ssh-keygen -t ed25519`, and its fingerprint as
    /// `ssh-keygen -lf` printed it.
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPvJFKfKUMrcCg/hBw3I6n+A48uSWfhqbdrZWVdqblnH tester@example";
    const ED25519_FP: &str = "SHA256:0H3lI/1MZDGby+5CwXUW+cDrs7byAxrEMZMTNVrF9Bk";

    #[test]
    fn a_key_line_is_parsed_and_named_as_ssh_keygen_names_it() {
        let k = SshPublicKey::parse(&format!("  {ED25519}\n")).unwrap();
        assert_eq!(k.algorithm(), "ssh-ed25519");
        assert_eq!(k.comment(), "tester@example");
        assert_eq!(k.fingerprint(), ED25519_FP);
        assert_eq!(
            k.openssh(),
            ED25519.trim_end_matches(" tester@example").to_owned()
        );
    }

    #[test]
    fn what_is_not_a_public_key_is_refused_with_why() {
        let why = |s: &str| SshPublicKey::parse(s).unwrap_err().reason;
        assert!(why("").contains("empty"));
        assert!(why("ssh-dss AAAAB3NzaC1kc3M=").contains("not a key type"));
        assert!(why("-----BEGIN OPENSSH PRIVATE KEY-----").contains("private key"));
        assert!(why("ssh-ed25519 not*base64").contains("not base64"));
        // An ed25519 body claimed to be RSA.
        let body = ED25519.split(' ').nth(1).unwrap();
        assert!(why(&format!("ssh-rsa {body}")).contains("not an ssh-rsa key"));
        assert!(why("command=\"x\" ssh-ed25519 AAAA").contains("not a key type"));
        assert!(why(&format!("{ED25519}\n{ED25519}")).contains("one line"));
        // A 1024-bit RSA key: exponent 65537, modulus of 128 bytes.
        let mut blob = Vec::new();
        for part in [&b"ssh-rsa"[..], &[1, 0, 1], &[0xc0; 128]] {
            blob.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
            blob.extend_from_slice(part);
        }
        let small = format!("ssh-rsa {}", STANDARD.encode(&blob));
        assert!(why(&small).contains("1024 bits"), "{}", why(&small));
    }
}
