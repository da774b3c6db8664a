//! `{{marker}}` templates: the component configuration files and the add-on manifests are
//! rendered with this one function, so both refuse a marker left without a value the same way.

/// A marker was left without a value: a template and its caller's values disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template marker left unrendered near: {near}")]
pub struct TemplateError {
    /// The rendered text from the marker on (up to 40 bytes), which names the marker.
    pub near: String,
}

/// Replace every `{{name}}` marker; a marker without a value is an error, never left behind.
pub fn render(template: &str, values: &[(&str, String)]) -> Result<String, TemplateError> {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    match out.find("{{") {
        Some(i) => {
            // Cut at a character boundary: a value may hold multi-byte text.
            let end = (i..=(i + 40).min(out.len()))
                .rev()
                .find(|&e| out.is_char_boundary(e))
                .unwrap_or(i);
            Err(TemplateError {
                near: out[i..end].to_string(),
            })
        }
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_marker_needs_a_value() {
        assert_eq!(render("a {{x}} b", &[("x", "1".into())]).unwrap(), "a 1 b");
        assert!(render("a {{x}}", &[]).unwrap_err().to_string().contains("{{x}}"));
    }
}
