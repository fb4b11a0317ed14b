//! `bit models` and `bit download`: the released models, listed and fetched.

use std::io::Write;

use bit_zoo::ModelHub;

use crate::CliResult;

/// `bit models`: the catalog, filtered.
pub fn models(filter: &[String], urls: bool) -> CliResult {
    // Written with `?`, not println!, so a closed pipe (`bit models | head`) ends quietly.
    let mut out = std::io::stdout().lock();
    let hub = ModelHub::from_env()?;
    let found = bit_zoo::search(&filter.join(" "));
    if found.is_empty() {
        return Err(format!("no released model matches `{}`", filter.join(" ")).into());
    }
    writeln!(
        out,
        "{:<44} {:<11} {:<7} {:>6} {:>5}  CACHED",
        "NAME", "FAMILY", "ARCH", "HEAD", "RES"
    )?;
    for m in &found {
        let derived = match m.provenance {
            bit_zoo::Provenance::Release => "",
            bit_zoo::Provenance::Derived => "*",
        };
        let cached = if hub.is_cached(m) { "yes" } else { "" };
        writeln!(
            out,
            "{:<44} {:<11} {:<7} {:>6} {:>5}  {cached}",
            m.name,
            m.family.to_string(),
            m.architecture.to_string(),
            format!("{}{derived}", m.head_size),
            format!("{}{derived}", m.resolution),
        )?;
        if urls {
            writeln!(out, "    {}", m.url(hub.base_url()))?;
        }
        for alias in m.hub_names() {
            writeln!(out, "    = {alias}")?;
        }
    }
    writeln!(
        out,
        "{} models; * = derived from the dataset, not stated by the release; = the same \
         weights on the Hugging Face hub (timm, transformers). Cache: {}",
        found.len(),
        hub.cache().root().display()
    )?;
    Ok(())
}

/// `bit download`: fetch and verify released models (and their label files).
pub fn download(names: &[String]) -> CliResult {
    let mut out = std::io::stdout().lock();
    let hub = ModelHub::from_env()?;
    for name in names {
        let entry = bit_zoo::find(name)?;
        let path = hub.fetch(&entry)?;
        writeln!(out, "{}: {}", entry.name, path.display())?;
        if let Some(labels) = entry.labels {
            hub.class_names(labels)?;
        }
    }
    Ok(())
}
