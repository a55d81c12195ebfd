//! The dashboard's static files, embedded in the binary. A placeholder page until the dashboard
//! lands.

/// The content type and bytes of the file at `path` (`/` for the page), if there is one.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/index.html" => Some((
            "text/html; charset=utf-8",
            b"<!doctype html><title>shopflow</title><p>shopflow: see <a href=\"/api/pipeline\">/api/pipeline</a>, <a href=\"/metrics\">/metrics</a>.</p>\n",
        )),
        _ => None,
    }
}
