//! One-shot messages shown on the page after a redirect ("Jail web created").

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{HttpRequest, HttpResponse};

const COOKIE: &str = "stockade_flash";

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
    let (kind, msg) = c.value().split_once(':')?;
    let kind = match kind {
        "ok" => "ok",
        _ => "error",
    };
    let message = percent_decode(msg);
    Some(Flash { kind, message })
}

/// A 303 redirect that shows `message` on the next page.
pub fn redirect(location: &str, kind: &'static str, message: &str) -> HttpResponse {
    let value = format!("{kind}:{}", crate::format::url_encode(message));
    HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, location))
        .cookie(
            Cookie::build(COOKIE, value)
                .path("/")
                .http_only(true)
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
