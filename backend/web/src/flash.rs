//! One-shot messages shown on the page after a redirect ("Jail web created").
//!
//! A message travels in a cookie that is `Secure` when the panel is served
//! over https (some carry a generated password) and signed with a key of
//! this process, so a client cannot make the panel show text of its own. A
//! message set by one web replica and read by another is not shown.

use std::sync::OnceLock;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{HttpRequest, HttpResponse};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const COOKIE: &str = "stockade_flash";

struct Config {
    secure: bool,
    key: [u8; 32],
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn made(secure: bool) -> Config {
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    Config { secure, key }
}

/// Sets whether flash cookies are `Secure`; called when the application is
/// built, before any request (the first call of the process decides).
pub(crate) fn configure(secure: bool) {
    let _ = CONFIG.set(made(secure));
}

fn current() -> &'static Config {
    CONFIG.get_or_init(|| made(false))
}

fn sign(value: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&current().key).expect("HMAC takes a key of any length");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A message for the next page.
#[derive(Debug, Clone)]
pub struct Flash {
    /// `ok` or `error`, used as a CSS class.
    pub kind: &'static str,
    /// The text.
    pub message: String,
}

/// Reads the flash of this request, if any.
pub fn take(req: &HttpRequest) -> Option<Flash> {
    let c = req.cookie(COOKIE)?;
    let (value, signature) = c.value().rsplit_once('.')?;
    let (kind, msg) = value.split_once(':')?;
    // The signature covers the text itself, however the cookie was escaped.
    let message = percent_decode(msg);
    let expected = sign(&format!("{kind}:{message}"));
    let same = expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return None;
    }
    let kind = match kind {
        "ok" => "ok",
        _ => "error",
    };
    Some(Flash { kind, message })
}

/// A 303 redirect that shows `message` on the next page.
pub fn redirect(location: &str, kind: &'static str, message: &str) -> HttpResponse {
    let signed = format!(
        "{kind}:{}.{}",
        crate::format::url_encode(message),
        sign(&format!("{kind}:{message}"))
    );
    HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, location))
        .cookie(
            Cookie::build(COOKIE, signed)
                .path("/")
                .http_only(true)
                .secure(current().secure)
                .same_site(SameSite::Lax)
                .finish(),
        )
        .finish()
}

/// Removes the flash cookie once shown.
pub fn clear(resp: &mut HttpResponse) {
    let mut gone = Cookie::build(COOKIE, "").path("/").finish();
    gone.make_removal();
    let _ = resp.add_cookie(&gone);
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_flash_the_client_wrote_is_not_shown() {
        use actix_web::test::TestRequest;
        let res = super::redirect("/", "ok", "Jail web created.");
        let cookie = res.cookies().next().unwrap().into_owned();
        let req = TestRequest::default()
            .cookie(cookie.clone())
            .to_http_request();
        assert_eq!(super::take(&req).unwrap().message, "Jail web created.");
        for forged in ["ok:Your%20new%20password%20is%20x", "ok:Hi.0000"] {
            let c = actix_web::cookie::Cookie::new(super::COOKIE, forged);
            let req = TestRequest::default().cookie(c).to_http_request();
            assert!(super::take(&req).is_none(), "{forged}");
        }
        let (value, sig) = cookie.value().rsplit_once('.').unwrap();
        let tampered = value.replace("created", "deleted");
        assert_ne!(tampered, value);
        let c = actix_web::cookie::Cookie::new(super::COOKIE, format!("{tampered}.{sig}"));
        let req = TestRequest::default().cookie(c).to_http_request();
        assert!(super::take(&req).is_none());
    }

    #[test]
    fn round_trips_any_text() {
        for s in [
            "Jail web created.",
            "quota exceeded: 512M requested; 0 left",
            "é <b>&",
        ] {
            assert_eq!(super::percent_decode(&crate::format::url_encode(s)), s);
        }
    }
}
