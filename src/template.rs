//! `{{marker}}` templates: the component configuration files and the add-on manifests are
//! rendered with this one function, so both refuse a marker left without a value the same way.

/// Replace every `{{name}}` marker; a marker without a value is an error, never left behind.
pub fn render(template: &str, values: &[(&str, String)]) -> Result<String, String> {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    match out.find("{{") {
        Some(i) => Err(format!(
            "template marker left unrendered near: {}",
            &out[i..(i + 40).min(out.len())]
        )),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_marker_needs_a_value() {
        assert_eq!(render("a {{x}} b", &[("x", "1".into())]).unwrap(), "a 1 b");
        assert!(render("a {{x}}", &[]).unwrap_err().contains("{{x}}"));
    }
}
