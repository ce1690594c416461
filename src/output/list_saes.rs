//! The `list-saes` table: one line per layer and width, the L0s with the canonical one starred.

use crate::report::SaeListing;
use std::io::{self, Write};

pub fn write_list_saes_table(w: &mut dyn Write, doc: &SaeListing) -> io::Result<()> {
    let short = &doc.revision[..doc.revision.len().min(12)];
    let about = match (&doc.site, &doc.neuronpedia_model) {
        (Some(site), Some(model)) => format!(" (site {site}, trained on {model})"),
        _ => String::new(),
    };
    writeln!(
        w,
        "{} at {short}: {} SAEs{about}",
        doc.release,
        doc.saes.len()
    )?;
    // One line per layer and width.
    let mut lines: Vec<(String, String, String, String)> = Vec::new();
    for row in &doc.saes {
        let l0 = format!("{}{}", row.l0, if row.canonical { "*" } else { "" });
        match lines.last_mut() {
            Some(last) if last.0 == row.layer.to_string() && last.1 == row.width => {
                last.2.push_str("  ");
                last.2.push_str(&l0);
            }
            _ => lines.push((row.layer.to_string(), row.width.clone(), l0, String::new())),
        }
        if let (Some(id), Some(model)) = (&row.neuronpedia_id, &doc.neuronpedia_model) {
            lines.last_mut().expect("just pushed").3 = format!("{model}/{id}");
        }
    }
    let head = ("layer", "width", "average L0 (* canonical)", "neuronpedia");
    let w0 = lines
        .iter()
        .map(|l| l.0.len())
        .max()
        .unwrap_or(0)
        .max(head.0.len());
    let w1 = lines
        .iter()
        .map(|l| l.1.len())
        .max()
        .unwrap_or(0)
        .max(head.1.len());
    let w2 = lines
        .iter()
        .map(|l| l.2.len())
        .max()
        .unwrap_or(0)
        .max(head.2.len());
    let show_np = lines.iter().any(|l| !l.3.is_empty());
    let mut print = |a: &str, b: &str, c: &str, d: &str| {
        let line = format!("{a:>w0$}  {b:<w1$}  {c:<w2$}  {d}");
        let line = if show_np {
            line.trim_end()
        } else {
            line[..line.len() - d.len()].trim_end()
        };
        writeln!(w, "{line}")
    };
    print(head.0, head.1, head.2, head.3)?;
    for l in &lines {
        print(&l.0, &l.1, &l.2, &l.3)?;
    }
    Ok(())
}
