//! Password hashing with argon2id at OWASP's recommended cost
//! (19 MiB of memory, 2 iterations, 1 lane).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string (`$argon2id$...`). CPU-heavy: call it
/// off the async executor.
pub fn hash(password: &SecretString) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let phc = hasher()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing a password failed: {e}"))?;
    Ok(phc.to_string())
}

/// Checks a password against a stored PHC string.
pub fn verify(password: &SecretString, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    hasher()
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_ok()
}

/// A hash of a random password, verified against when the account asked for
/// does not exist, so unknown and known emails cost the same time.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = SecretString::from(uuid::Uuid::new_v4().to_string());
        hash(&random).expect("hashing a random password works")
    })
}

/// A random password of 20 letters and digits (about 119 bits), for accounts
/// made by `stockade up`, staff or the API; shown once.
pub fn generate() -> SecretString {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    let s: String = (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    SecretString::from(s)
}

/// The shortest password accepted for an account.
pub const MIN_PASSWORD_LEN: usize = 10;

/// Refuses passwords that are too short or too long, with the reason.
pub fn check_strength(password: &SecretString) -> Result<(), stockade_domain::ParseError> {
    let len = password.expose_secret().chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(stockade_domain::ParseError {
            field: "password",
            reason: format!("must be at least {MIN_PASSWORD_LEN} characters"),
        });
    }
    if len > 1024 {
        return Err(stockade_domain::ParseError {
            field: "password",
            reason: "must be at most 1024 characters".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_same_password() {
        let pw = SecretString::from("correct horse battery".to_owned());
        let phc = hash(&pw).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(&pw, &phc));
        assert!(!verify(&SecretString::from("wrong".to_owned()), &phc));
        assert!(!verify(&pw, "not a hash"));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_strength(&SecretString::from("short".to_owned())).is_err());
        assert!(check_strength(&SecretString::from("long enough!".to_owned())).is_ok());
    }
}
