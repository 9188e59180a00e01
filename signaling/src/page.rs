//! The web page, embedded in the binary (no build step, no files to deploy): `index.html`, the
//! stylesheet, and the native ES modules under `page/js/` that the browser loads itself
//! (`index.html` loads `/js/main.js`, which imports the others by relative path). The
//! Content-Security-Policy's `script-src 'self'` admits them: same origin, no inline script.

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every asset: (path, content type, body). A module added to `page/js/` is listed here too
/// (a test checks that every file there is).
const ASSETS: &[(&str, &str, &str)] = &[
    ("/index.html", HTML, include_str!("../page/index.html")),
    ("/style.css", CSS, include_str!("../page/style.css")),
    ("/js/main.js", JS, include_str!("../page/js/main.js")),
    ("/js/signal.js", JS, include_str!("../page/js/signal.js")),
    ("/js/peer.js", JS, include_str!("../page/js/peer.js")),
    ("/js/hints.js", JS, include_str!("../page/js/hints.js")),
    ("/js/room.js", JS, include_str!("../page/js/room.js")),
    ("/js/media.js", JS, include_str!("../page/js/media.js")),
    ("/js/prejoin.js", JS, include_str!("../page/js/prejoin.js")),
    ("/js/grid.js", JS, include_str!("../page/js/grid.js")),
    (
        "/js/speaking.js",
        JS,
        include_str!("../page/js/speaking.js"),
    ),
    ("/js/panel.js", JS, include_str!("../page/js/panel.js")),
    ("/js/chat.js", JS, include_str!("../page/js/chat.js")),
    ("/js/dom.js", JS, include_str!("../page/js/dom.js")),
    ("/js/state.js", JS, include_str!("../page/js/state.js")),
    ("/js/util.js", JS, include_str!("../page/js/util.js")),
];

/// The asset served at `path`: (content type, body). `/` is `index.html`.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS
        .iter()
        .find(|(p, ..)| *p == path)
        .map(|&(_, ctype, body)| (ctype, body.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    fn page_dir() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/page"))
    }

    fn text(path: &str) -> &'static str {
        let (_, body) = asset(path).unwrap_or_else(|| panic!("{path} is not served"));
        std::str::from_utf8(body).expect("assets are UTF-8")
    }

    #[test]
    fn index_and_stylesheet() {
        assert_eq!(asset("/").map(|(t, _)| t), Some(HTML));
        assert_eq!(asset("/"), asset("/index.html"));
        assert_eq!(asset("/style.css").map(|(t, _)| t), Some(CSS));
    }

    #[test]
    fn every_module_on_disk_is_served_as_javascript() {
        let mut modules = 0;
        for entry in std::fs::read_dir(page_dir().join("js")).expect("page/js exists") {
            let name = entry.expect("readable dir entry").file_name();
            let name = name.to_str().expect("UTF-8 file name");
            if !name.ends_with(".js") {
                continue;
            }
            let path = format!("/js/{name}");
            let (ctype, body) = asset(&path).unwrap_or_else(|| panic!("{path} is not served"));
            assert_eq!(ctype, JS, "{path}");
            let on_disk = std::fs::read(page_dir().join("js").join(name)).expect("readable module");
            assert_eq!(
                body,
                on_disk.as_slice(),
                "{path} is served as it is on disk"
            );
            modules += 1;
        }
        let listed = ASSETS.iter().filter(|(_, t, _)| *t == JS).count();
        assert_eq!(modules, listed, "every listed module exists in page/js");
    }

    #[test]
    fn index_loads_the_entry_module_and_every_import_is_served() {
        assert!(
            text("/").contains(r#"<script type="module" src="/js/main.js"></script>"#),
            "index.html loads /js/main.js as a module"
        );
        for &(path, ctype, body) in ASSETS {
            if ctype != JS {
                continue;
            }
            let mut imports = 0;
            for rest in body.split("} from '").skip(1) {
                let spec = rest.split('\'').next().unwrap_or_default();
                let target = spec
                    .strip_prefix("./")
                    .unwrap_or_else(|| panic!("{path}: import {spec:?} is not a sibling module"));
                assert!(
                    asset(&format!("/js/{target}")).is_some(),
                    "{path} imports {spec}, which is not served"
                );
                imports += 1;
            }
            let statements = body.lines().filter(|l| l.starts_with("import ")).count();
            assert_eq!(
                imports, statements,
                "{path}: every import statement was checked"
            );
        }
    }

    #[test]
    fn unknown_paths_are_not_served() {
        for path in [
            "",
            "/app.js",
            "/main.js",
            "/js",
            "/js/",
            "/js/nope.js",
            "/js/main.js/",
            "/JS/main.js",
            "/js/../index.html",
            "/page/js/main.js",
            "/index.htm",
            "/ws",
        ] {
            assert!(asset(path).is_none(), "{path:?} must not be served");
        }
    }
}
