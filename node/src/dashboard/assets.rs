//! The dashboard's static files, embedded in the binary: its own stylesheet and the vendored htmx and
//! uPlot (`assets/vendor/VENDORED.md` names each one's version, licence and SHA-256; a test below checks
//! them).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (path under `/ui/assets/`, content type, bytes).
pub const FILES: &[(&str, &str, &[u8])] = &[
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../assets/dashboard.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/dashboard.js"),
    ),
    (
        "vendor/htmx-2.0.11.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/vendor/htmx-2.0.11.min.js"),
    ),
    (
        "vendor/uPlot-1.6.32.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/vendor/uPlot-1.6.32.iife.min.js"),
    ),
    (
        "vendor/uPlot-1.6.32.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../assets/vendor/uPlot-1.6.32.min.css"),
    ),
];

pub async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => super::secure(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, *content_type)],
                *bytes,
            )
                .into_response(),
        ),
        None => super::secure((StatusCode::NOT_FOUND, "no such asset").into_response()),
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;

    /// file → SHA-256, from the table of `assets/vendor/VENDORED.md`.
    fn listed() -> BTreeMap<String, String> {
        let md = include_str!("../../../assets/vendor/VENDORED.md");
        md.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| file") && !l.starts_with("|---"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells[1].to_owned(), cells[6].to_owned())
            })
            .collect()
    }

    #[test]
    fn every_vendored_file_is_listed_with_its_sha256_and_matches_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/vendor");
        let listed = listed();
        assert!(listed.len() >= 5, "{listed:?}");
        let mut on_disk = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name == "VENDORED.md" {
                continue;
            }
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            let sum = hex::encode(Sha256::digest(&bytes));
            assert_eq!(
                listed.get(&name),
                Some(&sum),
                "assets/vendor/{name}: not listed in VENDORED.md, or its SHA-256 changed"
            );
            on_disk.push(name);
        }
        for name in listed.keys() {
            assert!(
                on_disk.contains(name),
                "VENDORED.md lists {name}, which is not there"
            );
        }
    }

    #[test]
    fn the_served_vendor_files_are_the_listed_ones() {
        let listed = listed();
        for (path, _, bytes) in super::FILES {
            if let Some(name) = path.strip_prefix("vendor/") {
                assert_eq!(
                    listed.get(name),
                    Some(&hex::encode(Sha256::digest(bytes))),
                    "{path}"
                );
            }
        }
    }
}
