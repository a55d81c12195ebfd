//! The dashboard page's files (`web/`), embedded in the binary: `GET /` needs nothing on disk and
//! fetches nothing from elsewhere. The page is plain JavaScript modules with no build step; edit
//! `web/` and rebuild. A file added to `web/` must be listed in [`FILES`] (a test checks).

/// Every served file: its path under `web/`, its content type, its bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", HTML, include_bytes!("../../web/index.html")),
    ("style.css", CSS, include_bytes!("../../web/style.css")),
    ("app.js", JS, include_bytes!("../../web/app.js")),
    ("charts.js", JS, include_bytes!("../../web/charts.js")),
    ("format.js", JS, include_bytes!("../../web/format.js")),
    ("store.js", JS, include_bytes!("../../web/store.js")),
    (
        "vendor/uplot/uPlot.iife.min.js",
        JS,
        include_bytes!("../../web/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "vendor/uplot/uPlot.min.css",
        CSS,
        include_bytes!("../../web/vendor/uplot/uPlot.min.css"),
    ),
    (
        "vendor/uplot/LICENSE",
        TEXT,
        include_bytes!("../../web/vendor/uplot/LICENSE"),
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
// Module scripts must be served with a JavaScript type, or browsers refuse to run them.
const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The content type and bytes of the file at the request path `path` (`/` is the page), if there
/// is one. Only the listed files are served: no path reaches the file system.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = if path.is_empty() { "index.html" } else { path };
    FILES
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// Every file of `web/` (but its READMEs), by its path relative to it.
    fn files_on_disk() -> BTreeSet<String> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else if path.extension().is_none_or(|e| e != "md") {
                    let relative = path.strip_prefix(root).unwrap();
                    out.insert(relative.to_str().unwrap().replace('\\', "/"));
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut out = BTreeSet::new();
        walk(&root, &root, &mut out);
        out
    }

    #[test]
    fn every_file_of_web_is_served_as_it_is_on_disk() {
        let listed: BTreeSet<String> = FILES.iter().map(|(n, _, _)| (*n).to_owned()).collect();
        assert_eq!(listed, files_on_disk(), "web/ and FILES differ");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        for name in &listed {
            let (_, bytes) = asset(&format!("/{name}")).unwrap();
            assert_eq!(bytes, std::fs::read(root.join(name)).unwrap(), "{name}");
        }
    }

    #[test]
    fn the_root_is_the_page_and_other_paths_are_not_found() {
        assert_eq!(asset("/").unwrap().0, HTML);
        assert_eq!(asset("/").unwrap().1, asset("/index.html").unwrap().1);
        assert_eq!(asset("/app.js").unwrap().0, JS);
        for path in [
            "/nope",
            "/../Cargo.toml",
            "/web/index.html",
            "//index.html",
            "/vendor/",
            "/vendor/README.md",
            "/INDEX.HTML",
        ] {
            assert_eq!(asset(path), None, "{path}");
        }
    }

    /// What the page refers to (`src`, `href`, module imports) is served, so it cannot load half.
    #[test]
    fn every_file_the_page_refers_to_is_served() {
        let reference = |text: &str, start: &str, end: char| -> Vec<String> {
            text.match_indices(start)
                .map(|(i, _)| {
                    let rest = &text[i + start.len()..];
                    rest[..rest.find(end).unwrap()].to_owned()
                })
                .collect()
        };
        let mut seen = 0;
        for (name, _, bytes) in FILES {
            let text = std::str::from_utf8(bytes).unwrap();
            let mut refs = Vec::new();
            if name.ends_with(".html") {
                refs.extend(reference(text, "src=\"", '"'));
                refs.extend(reference(text, "href=\"", '"'));
            } else if name.ends_with(".js") && !name.starts_with("vendor/") {
                refs.extend(reference(text, "from './", '\''));
            }
            for r in refs {
                if r.starts_with('#') || r.starts_with("data:") {
                    continue;
                }
                let r = r.trim_start_matches("./");
                assert!(asset(&format!("/{r}")).is_some(), "{name} refers to {r}");
                seen += 1;
            }
        }
        assert!(seen >= 8, "the page's references were not found ({seen})");
    }
}
